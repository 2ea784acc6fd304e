"""Where the time of a no-op `dvc repro` goes (issue: the default study's no-op repro should take ≤ 3 s).

    python benchmarks/noop_repro.py [PROJECT]     # PROJECT: a finished study (default: the current directory)

DVC decides that nothing changed without running any stage command (no `specscale stage ...` starts), so the time is
DVC's own: interpreter and import start-up, parsing dvc.yaml/dvc.lock/params, and checking the hash of every
dependency and output, which means a stat per file under runs/ (and a state-database lookup). The script times, best
of N in the same run: a bare interpreter, `dvc --version` (DVC's start-up floor), and the no-op `dvc repro`; it prints
each as a ratio to the bare-interpreter loop so machines of different speed compare, and the file counts by stage.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def best_of(cmd: list[str], cwd: Path, repeats: int) -> float:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
        best = min(best, time.perf_counter() - started)
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
        if cmd[-1] == "repro" and "up to date" not in out.stdout:
            raise SystemExit(f"not a finished study: `dvc repro` did work in {cwd}:\n{out.stdout[-2000:]}")
    return best


def bare_loop_seconds(n: int = 2_000_000) -> float:
    """The machine's speed: a bare Python loop, the unit every timing is also given in."""
    started = time.perf_counter()
    total = 0
    for i in range(n):
        total += i
    return time.perf_counter() - started


def main() -> int:
    project = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    repeats = 3
    loop = bare_loop_seconds()
    python = best_of([sys.executable, "-c", "pass"], project, repeats)
    dvc_floor = best_of(["dvc", "--version"], project, repeats)
    noop = best_of(["dvc", "repro"], project, repeats)
    runs = project / "runs"
    counts = {p.name: sum(1 for f in p.rglob("*") if f.is_file()) for p in sorted(runs.iterdir())
              if p.is_dir() and not p.name.startswith(".")} if runs.is_dir() else {}
    print(f"machine: bare loop of 2M additions {loop:.3f} s")
    print(f"python start-up       {python:6.2f} s  ({python / loop:5.1f} loops)")
    print(f"dvc --version         {dvc_floor:6.2f} s  ({dvc_floor / loop:5.1f} loops)")
    print(f"no-op dvc repro       {noop:6.2f} s  ({noop / loop:5.1f} loops; {noop / dvc_floor:.1f}× DVC's start-up)")
    print(f"files DVC checks under runs/: {sum(counts.values())} ({', '.join(f'{k} {v}' for k, v in counts.items())})")
    print(f"target ≤ 3 s: {'met' if noop <= 3.0 else 'NOT met'} on this machine")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
