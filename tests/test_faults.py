"""The fault matrix: every stage against every fault we can inject on one machine, on a real `dvc repro` of the smoke
preset. After each fault, `dvc repro` is run again and must complete, lose or recompute no finished run, and give
results identical to an uninterrupted run's. Each fault ends in `recovered` (silently, or with a warning naming what
was set aside) or `clear error` (the message names the file and what to do); the matrix is printed at the end.

Faults: SIGKILL of the whole `dvc repro` process group at seeded points in each stage; disk full (a real tmpfs that
is too small, when the test may mount one) while a stage writes; a damaged file of a finished run (checkpoint, token
shard, tokenizer, probe set, spectrum chunk, spec.json) or of a killed run (resume.pt); DVC's own `.dvc/tmp/rwlock` or
`dvc.lock` torn by a kill inside DVC's in-place rewrite (cleared by `specscale recover`); a second `dvc repro` while one
runs; a remote that fills up mid-push and a clone that fills up mid-pull.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from helpers import finished, git_commit, make_smoke_project, run, smoke_params
from specscale.store.runs import TEST_HOLD_ENV

pytestmark = pytest.mark.slow

STAGES = ("tokenize", "buckets", "train", "activations", "spectra", "fit", "compare", "report")
FAN_OUT = ("tokenize", "buckets", "train", "activations", "spectra")  # stages that own runs/<stage>/<key>/
RESULTS = ("runs.csv", "ranks.csv", "betas.csv", "betas_per_layer.csv", "betas_seeds.csv", "betas.json",
           "perplexity.json", "compare.json")
KILLS_PER_STAGE = 1  # one seeded point per stage, proven to land (a rerun of what follows costs ≈ 1 min each)
MATRIX: dict[tuple[str, str], str] = {}  # (stage, fault) → outcome, printed by the `matrix` fixture
LANDED: dict[tuple[str, str], list[str]] = {}  # (stage, fault) → where each injection struck, printed with it
# smoke: AdamW × 3 widths, 40 steps with resume points every 10 steps, under the default `local` launcher (training
# runs are submitit subprocesses with job records in runs/.jobs/; activations and spectra run inline, its default)
# data.max_bytes: a token shard over 2 MiB (2.6 MB), so that a byte flipped in its middle is one that a digest of a
# file's first and last MiB would miss
PARAMS = smoke_params(train={"resume_every": 10}, data={"max_bytes": 3_200_000},
                      launcher={"cluster": "local", "max_parallel": 1})
KILL_TRIES = 4  # attempts per kill point before a cell fails for want of a kill that landed in its stage
# Stages that write their whole run in well under a second on the smoke preset: a kill timed from outside lands
# before or after their writes, not inside. Their cells kill during the hold the store makes, at the tests' request,
# between a run's last file and its publication (store/runs.py, TEST_HOLD_ENV), at a seeded point of the hold.
HELD = {"buckets", "activations"}
HOLD_SECONDS = 20


def _results(project: Path) -> dict[str, bytes]:
    return {name: (project / "results" / name).read_bytes() for name in RESULTS}


def _finished_runs(project: Path) -> dict[tuple[str, str], int]:
    """(stage, key) → mtime of its _SUCCESS: a run recomputed or lost changes or drops its entry."""
    return {(s, k): (project / "runs" / s / k / "_SUCCESS").stat().st_mtime_ns for s in FAN_OUT
            for k in finished(project, s)}


def _repro(project: Path, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    return run(["dvc", "repro"], project, check=check, timeout=timeout)


def _skip(cell: tuple[str, str], why: str) -> None:
    """Skip a cell and keep it in the printed matrix as skipped (never silently absent from the totals)."""
    MATRIX[cell] = "skipped"
    pytest.skip(why)


def _stage_processes(group: int, stage: str) -> list[int]:
    """Pids of the processes in process group `group` whose command line runs `specscale stage <stage>` (the stage
    command DVC started, and for a fan-out stage under the local launcher its job subprocesses' parent)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if os.getpgid(int(proc.name)) == group and f"stage {stage}" in cmdline:
                pids.append(int(proc.name))
        except (OSError, ProcessLookupError):
            continue
    return pids


def _files_under(root: Path) -> list[Path]:
    """Every file below `root`, read while the stage may be creating and removing folders there (os.walk skips a
    folder that vanished between listing and reading; Path.rglob raises)."""
    return [Path(folder) / name for folder, _, names in os.walk(root) for name in names]


def _partial_files(project: Path, stage: str) -> list[Path]:
    """Files of the stage's unfinished work: runs/.work/<stage>/<key>/* without the spec.json `begin` writes first,
    and the spectra stage's activation slices in runs/.scratch/."""
    work = [p for p in _files_under(project / "runs" / ".work" / stage) if p.name != "spec.json"]
    scratch = _files_under(project / "runs" / ".scratch") if stage == "spectra" else []
    return work + scratch


class Repro:
    """`dvc repro` in its own process group, its output read line by line with arrival times."""

    def __init__(self, project: Path, env: dict[str, str] | None = None) -> None:
        env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(["dvc", "repro"], cwd=project, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait_for(self, text: str, timeout: float = 600) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, line in list(self.lines):
                if text in line:
                    return t
            if self.proc.poll() is not None:
                self.reader.join(5)
                if any(text in line for _, line in self.lines):
                    continue
                raise AssertionError(f"`dvc repro` ended before {text!r}:\n" + self.text()[-3000:])
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not seen within {timeout} s")

    def wait_for_file(self, pattern: str, root: Path, timeout: float = 600) -> Path:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = sorted(root.glob(pattern))
            if found:
                return found[0]
            if self.proc.poll() is not None:
                raise AssertionError(f"`dvc repro` ended before {pattern} appeared:\n" + self.text()[-3000:])
            time.sleep(0.02)
        raise AssertionError(f"{pattern} did not appear within {timeout} s")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self.reader.join(5)

    def kill_inside(self, project: Path, stage: str) -> str | None:
        """SIGKILL the whole group now; where it landed ('<stage> command running, N unfinished files in …') when the
        stage's command was alive at the kill and (for a stage that owns runs) its work area still holds unfinished
        files after it (nothing moves them once the group is dead, so they were unfinished at the kill); None when the
        kill came too late for that (the stage had ended or published its run, or the group was gone)."""
        alive = _stage_processes(self.proc.pid, stage) if self.proc.poll() is None else []
        self.kill()
        partial = _partial_files(project, stage) if stage in FAN_OUT else []
        if not alive or (stage in FAN_OUT and not partial):
            return None
        if stage not in FAN_OUT:
            return f"`specscale stage {stage}` running"
        where = sorted({"/".join(p.relative_to(project).parts[:4]) for p in partial})  # runs/.work/<stage>/<key>
        return f"`specscale stage {stage}` running, {len(partial)} unfinished files in {', '.join(where)}"

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


@pytest.fixture(scope="module")
def matrix(request):
    yield MATRIX
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    width = max([len(f) for _, f in MATRIX] + [10])
    lines = ["", "fault matrix: stage × fault → outcome; where the fault struck"]
    for stage in STAGES:
        for (s, fault), outcome in sorted(MATRIX.items()):
            if s != stage:
                continue
            wheres = LANDED.get((s, fault)) or ["—"]
            lines.append(f"{stage:<12} {fault:<{width}} {outcome:<12} {wheres[0]}")
            lines += [f"{'':<12} {'':<{width}} {'':<12} {w}" for w in wheres[1:]]
    skipped = sum(v == "skipped" for v in MATRIX.values())
    injected = len(MATRIX) - skipped
    survived = sum(v.startswith(("recovered", "clear error")) for v in MATRIX.values())
    lines.append(f"faults injected: {injected}, survived: {survived}, skipped: {skipped}, runs lost: 0 (checked "
                 "after every fault)")
    # shown even under output capture (the module's teardown runs inside pytest's capture)
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        for line in lines:
            if reporter is not None:
                reporter.write_line(line)
            else:
                print(line)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """An uninterrupted run, stage by stage: its results, the duration of each stage, and a copy of the project
    before each stage (so a fault can be injected into one stage without rerunning everything before it)."""
    base = tmp_path_factory.mktemp("faults")
    project = make_smoke_project(base / "ref", PARAMS)
    snapshots, durations, sizes = {}, {}, {}
    for stage in STAGES:
        snapshots[stage] = base / f"before_{stage}"
        shutil.copytree(project, snapshots[stage], symlinks=True)
        sizes[stage] = _du(project)
        started = time.monotonic()
        run(["dvc", "repro", stage], project)
        durations[stage] = time.monotonic() - started
    return {"project": project, "results": _results(project), "snapshots": snapshots, "durations": durations,
            "sizes": sizes, "final_size": _du(project), "base": base}


def _du(path: Path) -> int:
    """Bytes a copy of `path` takes on tmpfs: every file and directory rounded up to whole 4 KiB pages."""
    pages = lambda n: -(-max(n, 1) // 4096) * 4096  # noqa: E731
    return sum(pages(p.stat().st_size) if p.is_file() else 4096 for p in path.rglob("*") if not p.is_symlink())


def _copy(reference: dict, stage: str, dest: Path) -> Path:
    shutil.copytree(reference["snapshots"][stage], dest, symlinks=True)
    return dest


def _check_recovered(project: Path, reference: dict, before: dict[tuple[str, str], int]) -> None:
    after = _finished_runs(project)
    lost = {k for k in before if k not in after}
    recomputed = {k for k in before if k in after and after[k] != before[k]}
    assert not lost and not recomputed, f"finished runs lost {sorted(lost)} or recomputed {sorted(recomputed)}"
    got = _results(project)
    differ = [name for name in RESULTS if got[name] != reference["results"][name]]
    assert differ == [], f"results differ from the uninterrupted run: {differ}"


# --- SIGKILL of the whole `dvc repro` at seeded points ---------------------------------------------------------------
@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_anywhere_in_a_stage(stage: str, reference: dict, matrix, tmp_path: Path) -> None:
    """Kill the whole `dvc repro` group at a seeded point inside the stage, and prove it landed there: the stage's
    command was running and, for a stage that owns runs, its work area held unfinished files. A kill that came too
    late is retried sooner (half the delay, the last try at the first unfinished file); a point with no landed kill
    in KILL_TRIES fails the cell."""
    rng = random.Random(f"kill-{stage}")
    outcomes: list[str] = []
    landings: list[str] = []
    for point in range(KILLS_PER_STAGE):
        first = rng.uniform(0.0, 0.8 * reference["durations"][stage])
        # a kill that came too late is tried sooner; the last try kills at the first unfinished file it sees
        for attempt, delay in enumerate([first / 2 ** i for i in range(KILL_TRIES - 1)] + [0.0]):
            project = _copy(reference, stage, tmp_path / f"p{point}-{attempt}")
            repro = Repro(project, {TEST_HOLD_ENV: f"{stage}:{HOLD_SECONDS}"} if stage in HELD else None)
            repro.wait_for(f"Running stage '{stage}'")
            if stage in HELD:  # the seeded delay counts from the start of the hold (a fraction of it)
                repro.wait_for(f"[{stage}] test hold")
                delay = min(delay, HOLD_SECONDS / 2)
            elif stage in FAN_OUT:  # the seeded delay counts from the stage's first unfinished file
                _wait_for_partial(repro, project, stage)
            time.sleep(delay)
            if stage in FAN_OUT and stage not in HELD:  # between two runs: kill once the next one has begun its work
                _poll_for_partial(repro, project, stage)
            landed = repro.kill_inside(project, stage)
            if landed:
                landings.append(f"{delay:.2f} s{' into the test hold' if stage in HELD else ''}: {landed}")
                break
        else:
            raise AssertionError(f"no kill landed inside {stage} in {KILL_TRIES} tries (last delay {delay:.3f} s)")
        before = _finished_runs(project)
        out = _repro(project, check=False)
        # the kill may land inside DVC's own in-place rewrite of .dvc/tmp/rwlock or dvc.lock
        if out.returncode != 0 and _torn_by_the_kill(out.stdout + out.stderr):
            said = _recover_torn(project)
            torn = re.findall(r"^set aside (\S+) →", said, re.M)
            outcomes.append(f"after `specscale recover` ({', '.join(torn)} torn)")
            out = _repro(project, check=False)
        assert out.returncode == 0, f"rerun after a kill {delay:.1f} s into {stage} failed:\n{out.stdout[-3000:]}" \
                                    f"\n{out.stderr[-2000:]}"
        _check_recovered(project, reference, before)
    MATRIX[(stage, "SIGKILL")] = " ".join(["recovered", *sorted(set(outcomes))])
    LANDED[(stage, "SIGKILL")] = landings


def _poll_for_partial(repro: Repro, project: Path, stage: str) -> None:
    """Return as soon as the stage's work area holds an unfinished file, or its command has ended."""
    checked = time.monotonic()
    while not _partial_files(project, stage) and repro.proc.poll() is None:
        if time.monotonic() - checked > 0.1:  # reading /proc costs milliseconds: look for the command 10 times a second
            if not _stage_processes(repro.proc.pid, stage):
                return
            checked = time.monotonic()
        time.sleep(0.002)


def _wait_for_partial(repro: Repro, project: Path, stage: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not _partial_files(project, stage):
        if repro.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{stage} wrote no unfinished file before it ended:\n{repro.text()[-3000:]}")
        time.sleep(0.005)


# DVC's own words for the two files it rewrites in place (dvc/rwlock.py, dvc/utils/strictyaml.py)
TORN_MESSAGES = ("Unable to read RWLock-file", "'./dvc.lock' is invalid", "'./dvc.lock' validation failed")


def _torn_by_the_kill(output: str) -> bool:
    return any(m in output for m in TORN_MESSAGES)


def _recover_torn(project: Path) -> str:
    out = run(["specscale", "recover"], project)
    assert "set aside" in out.stdout and "run `dvc repro` to go on" in out.stdout, out.stdout
    return out.stdout


# --- DVC's own files torn by a kill inside their rewrite (the SIGKILL cells meet this only by chance) -----------------
@pytest.mark.parametrize("name", [".dvc/tmp/rwlock", "dvc.lock"])
def test_dvc_file_torn_by_a_kill(name: str, reference: dict, matrix, tmp_path: Path) -> None:
    project = tmp_path / "p"
    shutil.copytree(reference["project"], project, symlinks=True)
    target = project / name
    assert target.exists()
    target.write_bytes(b"")  # what a kill between DVC's open("w") and the close of its buffered dump leaves
    LANDED[("report", f"{name} torn")] = [f"{name} emptied after a finished study"]
    before = _finished_runs(project)
    out = _repro(project, check=False)
    assert out.returncode != 0 and _torn_by_the_kill(out.stdout + out.stderr), out.stdout[-2000:] + out.stderr[-2000:]
    assert "run `specscale recover`" in run(["specscale", "status"], project).stdout
    said = _recover_torn(project)
    assert name in said, said
    out = _repro(project, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    _check_recovered(project, reference, before)  # without dvc.lock every stage reran, reusing its finished runs
    MATRIX[("report", f"{name} torn")] = "clear error"


# --- disk full while a stage writes (a real, too-small tmpfs) ---------------------------------------------------------
class TinyDisk:
    """A tmpfs mounted at `path` with a size limit that can be raised, or None when this test may not mount."""

    def __init__(self, path: Path, size: int, cell: tuple[str, str]) -> None:
        self.path = path
        path.mkdir(parents=True)
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            _skip(cell, f"cannot mount a small tmpfs here ({out.stderr.strip()[:120]}): run as root for real ENOSPC")

    def grow(self, size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture
def tiny_disk(tmp_path: Path):
    disks: list[TinyDisk] = []

    def make(name: str, size: int, cell: tuple[str, str]) -> TinyDisk:
        disk = TinyDisk(tmp_path / name, size, cell)
        disks.append(disk)
        return disk

    yield make
    for disk in disks:
        disk.close()


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


# what each stage writes that can fill a disk: checkpoints, a zarr store, a spectrum, a results file
# (No activations or fit cell: each writes a few kB here (a manifest; CSVs), so a disk sized to fill inside them
# filled in the next stage instead, spectra and report: those cells tested another stage under a false name.)
DISK_FULL = {"train": "checkpoint", "spectra": "spectrum and scratch slices", "report": "figures"}


@pytest.mark.parametrize("stage", list(DISK_FULL))
def test_disk_full_while_writing(stage: str, reference: dict, matrix, tiny_disk) -> None:
    index = STAGES.index(stage)
    before_size = reference["sizes"][stage]
    after_size = reference["sizes"][STAGES[index + 1]] if index + 1 < len(STAGES) else reference["final_size"]
    # room for everything before the stage and about half of what the stage adds: the snapshot is copied onto a
    # disk with spare room, then a filler file takes all but half the stage's bytes of what is free (tmpfs charges
    # no page for a directory, so a size computed from the snapshot's pages left the report room to finish)
    cell = (stage, f"disk full ({DISK_FULL[stage]})")
    added = max(after_size - before_size, 128 * 1024)
    disk = tiny_disk("disk", before_size + 2 * added + (4 << 20), cell)
    project = disk.path / "p"
    shutil.copytree(reference["snapshots"][stage], project, symlinks=True)
    filler = disk.path / "filler"
    free = _free_bytes(disk.path)
    filler.write_bytes(b"\0" * max(free - added // 2, 0))
    first = _repro(project, check=False)
    assert first.returncode != 0, f"{stage} should have run out of space:\n{first.stdout[-2000:]}"
    text = first.stdout + first.stderr
    assert "No space left on device" in text or "ENOSPC" in text, text[-3000:]
    assert f"failed to reproduce '{stage}'" in text, f"the disk filled outside {stage}:\n{text[-3000:]}"
    LANDED[cell] = [next(line.strip() for line in text.splitlines() if "No space left" in line or "ENOSPC" in line)]
    before = _finished_runs(project)
    filler.unlink()
    disk.grow(2 * reference["final_size"] + (512 << 20))
    out = _repro(project, check=False)
    assert out.returncode == 0, out.stdout[-3000:]
    _check_recovered(project, reference, before)
    MATRIX[cell] = "recovered"


# --- a damaged file of a finished run, found by the next `dvc repro` --------------------------------------------------
def _first_file(project: Path, stage: str, pattern: str) -> Path:
    files = sorted((project / "runs" / stage).glob(f"*/{pattern}"))
    assert files, f"no runs/{stage}/*/{pattern}"
    return files[0]


def _truncate(path: Path) -> str:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return f"cut to {len(data) // 2:,} of {len(data):,} B"


def _flip(path: Path) -> str:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return f"byte {len(data) // 2:,} of {len(data):,} flipped"


def _flip_mid_large(path: Path) -> str:
    assert path.stat().st_size > 2 << 20, f"{path.name} is {path.stat().st_size:,} B: not a file over 2 MiB"
    return _flip(path)


def _edit_spec(path: Path) -> str:
    path.write_text(path.read_text().replace('"seed": 0', '"seed": 7'))
    return "seed 0 → 7"


# fault → (stage, file pattern inside a run dir, how it is damaged, the stage of a run removed so that the next
# `dvc repro` reads the damaged run as its input, or None); every one is promised `recovered`. A file over 2 MiB is
# digested whole only when a stage reads it (store/integrity.py: the quick check at a stage's start compares sizes)
DAMAGE = {
    "checkpoint truncated": ("train", "ckpt/step_000040.pt", _truncate, None),
    "checkpoint flipped mid-file": ("train", "ckpt/step_000040.pt", _flip, None),
    "token shard truncated": ("tokenize", "train.bin", _truncate, None),
    "token shard > 2 MiB flipped mid-file, then read": ("tokenize", "train.bin", _flip_mid_large, "train"),
    "tokenizer.json damaged": ("tokenize", "tokenizer.json", _flip, None),
    "probe set damaged": ("buckets", "probe_set.npz", _flip, None),
    "spectrum chunk flipped": ("spectra", "spectra.zarr/eigenvalues/c/0/0/0/0/0", _flip, None),
    "spec.json edited": ("train", "spec.json", _edit_spec, None),
}


@pytest.mark.parametrize("fault", list(DAMAGE))
def test_damaged_file_of_a_finished_run(fault: str, reference: dict, matrix, tmp_path: Path) -> None:
    stage, pattern, damage, reader = DAMAGE[fault]
    project = tmp_path / "p"
    shutil.copytree(reference["project"], project, symlinks=True)
    target = _first_file(project, stage, pattern)
    rel = str(target.relative_to(project))
    LANDED[(stage, fault)] = [f"{rel}: {damage(target)}"]
    gone = {(stage, target.relative_to(project / "runs" / stage).parts[0])}
    if reader:  # a run that reads the damaged one, removed: the next `dvc repro` computes it again
        key = sorted(finished(project, reader))[0]
        shutil.rmtree(project / "runs" / reader / key)
        gone.add((reader, key))
        LANDED[(stage, fault)].append(f"runs/{reader}/{key} removed, so that it is computed again from it")
    before = {k: v for k, v in _finished_runs(project).items() if k not in gone}
    out = _repro(project, check=False)
    text = out.stdout + out.stderr
    # recovery is promised: the damaged run set aside (never deleted), named, computed again, the same results
    assert out.returncode == 0, f"not recovered from {fault}:\n{text[-3000:]}"
    assert rel in text, f"the damaged file must be named in the output:\n{text[-3000:]}"
    assert list((project / "runs" / ".quarantine").rglob(target.name)), "the damaged run must be kept aside"
    _check_recovered(project, reference, before)
    MATRIX[(stage, fault)] = "recovered"


def _killed_after_first_resume_point(reference: dict, tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A project whose `dvc repro` was killed once a training run wrote its first resume point, and that run's file
    `name` in the work area (its resume state, its log)."""
    project = _copy(reference, "train", tmp_path / "p")
    repro = Repro(project)
    # the first resume point (step 10) is written (tmp + os.replace: complete once visible); kill at once, since on a
    # fast machine the remaining 30 smoke steps finish, and the run leaves the work area, in well under a second
    repro.wait_for_file("runs/.work/train/*/resume.pt", project)
    repro.kill()
    found = sorted((project / "runs" / ".work" / "train").glob(f"*/{name}"))
    assert found, f"a killed training run leaves its {name} in the work area"
    return project, found[0]


def test_damaged_resume_state_restarts_the_run(reference: dict, matrix, tmp_path: Path) -> None:
    project, resume = _killed_after_first_resume_point(reference, tmp_path, "resume.pt")
    LANDED[("train", "resume.pt damaged")] = [f"{resume.relative_to(project)}: {_truncate(resume)}"]
    before = _finished_runs(project)
    out = _repro(project, check=False)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert "resume.pt" in text and "restart" in text, text[-3000:]
    _check_recovered(project, reference, before)
    MATRIX[("train", "resume.pt damaged")] = "recovered"


def test_torn_training_log_resumes(reference: dict, matrix, tmp_path: Path) -> None:
    """A killed training run whose log.jsonl ends in half a record (what a full disk or a crash mid-write leaves)
    resumes from its last complete record instead of failing on every later `dvc repro`."""
    project, log = _killed_after_first_resume_point(reference, tmp_path, "log.jsonl")
    with open(log, "a") as fh:
        fh.write('{"step": 99, "loss": 1.2')  # no closing brace, no newline
    LANDED[("train", "log.jsonl torn")] = [f"{log.relative_to(project)}: half a record appended"]
    before = _finished_runs(project)
    out = _repro(project, check=False)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert "log.jsonl" in text, f"the torn log must be named:\n{text[-3000:]}"
    _check_recovered(project, reference, before)
    MATRIX[("train", "log.jsonl torn")] = "recovered"


# --- two `dvc repro` at once ------------------------------------------------------------------------------------------
def test_second_repro_while_one_runs(reference: dict, matrix, tmp_path: Path) -> None:
    project = _copy(reference, "train", tmp_path / "p")
    first = Repro(project)
    first.wait_for("Running stage 'train'")
    assert _stage_processes(first.proc.pid, "train"), "the first `dvc repro` must be inside its train stage"
    second = _repro(project, check=False)
    assert second.returncode != 0 and "lock" in (second.stdout + second.stderr).lower(), second.stdout[-2000:]
    LANDED[("train", "second repro")] = ["a second `dvc repro` while the first ran `specscale stage train`"]
    first.proc.wait(900)
    first.reader.join(5)
    assert first.proc.returncode == 0, first.text()[-3000:]
    _check_recovered(project, reference, {})
    MATRIX[("train", "second repro")] = "clear error"


# --- remote storage that fails mid-push and mid-pull ------------------------------------------------------------------
def test_remote_full_mid_push_and_clone_full_mid_pull(reference: dict, matrix, tiny_disk, tmp_path: Path) -> None:
    project = tmp_path / "p"
    shutil.copytree(reference["project"], project, symlinks=True)
    pushed = _du(project / ".dvc" / "cache")
    remote = tiny_disk("remote", max(pushed // 2, 256 * 1024), ("report", "remote full mid-push"))
    run(["dvc", "remote", "add", "-d", "store", str(remote.path / "store")], project)
    git_commit(project, "results and remote")  # dvc.lock and .dvc/config, as a collaborator would receive them
    first = run(["dvc", "push"], project, check=False)
    assert first.returncode != 0 and "No space left" in first.stdout + first.stderr, first.stdout[-2000:]
    # nothing local changed (`dvc status` exits 0 whether or not something changed: read what it says)
    assert "Data and pipelines are up to date" in run(["dvc", "status"], project).stdout
    remote.grow(4 * pushed + (64 << 20))
    run(["dvc", "push"], project)
    MATRIX[("report", "remote full mid-push")] = "recovered"

    LANDED[("report", "remote full mid-push")] = [f"push of {pushed:,} B to a {max(pushed // 2, 256 * 1024):,} B "
                                                  "remote failed with ENOSPC"]
    clone_disk = tiny_disk("clone", max(_du(reference["project"]) // 2, 512 * 1024), ("report", "clone full mid-pull"))
    clone = clone_disk.path / "c"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    pull = run(["dvc", "pull"], clone, check=False)
    assert pull.returncode != 0 and "No space left" in pull.stdout + pull.stderr, pull.stdout[-2000:]
    clone_disk.grow(4 * _du(reference["project"]) + (512 << 20))
    run(["dvc", "pull"], clone)
    pulled = _finished_runs(clone)
    assert set(pulled) == set(_finished_runs(reference["project"]))  # every finished run came back
    _repro(clone)
    _check_recovered(clone, reference, pulled)  # nothing recomputed after the pull, same results
    LANDED[("report", "clone full mid-pull")] = ["pull into a clone on a disk half the project's size failed with "
                                                 "ENOSPC"]
    MATRIX[("report", "clone full mid-pull")] = "recovered"
