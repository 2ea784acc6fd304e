"""Shared test helpers, one meaning per name.

Projects of two kinds: `make_project` (specs/ + params.yaml text, enough to load and plan a study) and
`make_smoke_project` (a git repository with the whole pipeline and params.yaml from a dict, for `dvc repro`);
tiny synthetic token directories; running commands and reading what a project's runs hold."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
GIT_ID = ["-c", "user.email=t@t", "-c", "user.name=t"]


# --- a study's files only: load and plan ----------------------------------------------------------------------------

def make_project(root: Path, params: str) -> Path:
    """Copy the repo's specs/ into `root` and write `params` as root/params.yaml; returns the params path."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "specs", root / "specs")
    path = root / "params.yaml"
    path.write_text(params)
    return path


def listing(root: Path) -> list[tuple[str, int, int]]:
    """Every path under root with its size and mtime (ns): equal listings mean nothing was written."""
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


def write_tokens_dir(path: Path, vocab_size: int = 64, n_train: int = 20_000, n_val: int = 4_000,
                     seed: int = 0) -> Path:
    """train.bin / val.bin of a learnable synthetic stream (a noisy repeating pattern) plus tokens.json."""
    from specscale.tokens.shards import write_tokens

    rng = np.random.default_rng(seed)
    pattern = rng.integers(0, vocab_size, size=37)

    def stream(n: int) -> np.ndarray:
        tokens = np.resize(pattern, n)
        noise = rng.random(n) < 0.1
        tokens[noise] = rng.integers(0, vocab_size, size=int(noise.sum()))
        return tokens.astype(np.uint16)

    path.mkdir(parents=True, exist_ok=True)
    write_tokens(path / "train.bin", stream(n_train))
    write_tokens(path / "val.bin", stream(n_val))
    (path / "tokens.json").write_text(json.dumps({"vocab_size": vocab_size}))
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- throwaway DVC projects on the smoke preset: the pipeline's code in a git repository ----------------------------

def smoke_params(widths: list[int] = (1, 2, 3), launcher: dict[str, Any] | None = None, **sections: Any) -> dict:
    """The smoke preset with a tiny sweep: AdamW × `widths`, one seed, no ablations."""
    params = {
        "preset": "smoke",
        "data": {}, "model": {}, "train": {}, "probe": {}, "fit": {}, "optim": {},
        "sweep": {"optimizers": ["adamw"], "widths": list(widths), "seeds": [0]},
        "ablations": {},
        "launcher": launcher or {"cluster": "debug", "max_parallel": 1},
    }
    params.update(sections)
    return params


def write_params(project: Path, params: dict) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run(cmd: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None,
        timeout: float | None = 900) -> subprocess.CompletedProcess:
    """Run a command; on failure (with check) the assertion shows the tail of its output."""
    full_env = {**os.environ, "DVC_NO_ANALYTICS": "1", **(env or {})}
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=full_env, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def git_commit(project: Path, message: str) -> None:
    run(["git", *GIT_ID, "add", "-A"], project)
    run(["git", *GIT_ID, "commit", "-qm", message, "--allow-empty"], project)


def pipeline_files() -> list[str]:
    """Top-level files and folders the pipeline needs: DVC's own, and every dependency in dvc.yaml that lives in
    the repository (code, specs, templates, README), read from dvc.yaml so that new stages need no edit here."""
    names = {"dvc.yaml", ".dvc", ".dvcignore", ".gitignore", "specs", "core", "stages"}
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    for stage in spec.get("stages", {}).values():
        names.update(str(dep).split("/")[0] for dep in stage.get("deps", []))
    for plot in spec.get("plots", []):
        for value in (plot.values() if isinstance(plot, dict) else []):
            if isinstance(value, dict) and value.get("template"):
                names.add(str(value["template"]).split("/")[0])
    return sorted(n for n in names if (REPO / n).exists() and n not in ("runs", "results"))


def make_smoke_project(root: Path, params: dict) -> Path:
    """Copy the pipeline (dvc.yaml, code, specs, DVC config) into `root`, write params.yaml, commit it to git;
    returns the project root."""
    root.mkdir(parents=True, exist_ok=True)
    for name in pipeline_files():
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__", "cache", "tmp",
                                                                            "config.local"))
        else:
            shutil.copy(src, root / name)
    write_params(root, params)
    run(["git", "init", "-q"], root)
    git_commit(root, "init")
    return root


def finished(project: Path, stage: str) -> set[str]:
    d = project / "runs" / stage
    return {p.name for p in d.iterdir() if (p / "_SUCCESS").exists()} if d.is_dir() else set()


def provenance(project: Path, stage: str, key: str) -> dict[str, Any]:
    return json.loads((project / "runs" / stage / key / "provenance.json").read_text())


def file_listing(path: Path) -> dict[str, tuple[int, int]]:
    """Every file under `path` with its size and mtime: equal listings mean nothing was rewritten or lost."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file()}


def du(path: Path) -> int:
    """Bytes of every file under `path` (apparent size, like `du -sb`)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0
