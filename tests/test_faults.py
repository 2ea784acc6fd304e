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

pytestmark = pytest.mark.slow

STAGES = ("tokenize", "buckets", "train", "activations", "spectra", "fit", "compare", "report")
FAN_OUT = ("tokenize", "buckets", "train", "activations", "spectra")  # stages that own runs/<stage>/<key>/
RESULTS = ("runs.csv", "ranks.csv", "betas.csv", "betas_per_layer.csv", "betas_seeds.csv", "betas.json",
           "perplexity.json", "compare.json")
KILLS_PER_STAGE = 2
MATRIX: dict[tuple[str, str], str] = {}  # (stage, fault) → outcome, printed by the `matrix` fixture
# smoke: AdamW × 3 widths, 40 steps with resume points every 10 steps, debug launcher (one process group)
PARAMS = smoke_params(train={"resume_every": 10})


def _results(project: Path) -> dict[str, bytes]:
    return {name: (project / "results" / name).read_bytes() for name in RESULTS}


def _finished_runs(project: Path) -> dict[tuple[str, str], int]:
    """(stage, key) → mtime of its _SUCCESS: a run recomputed or lost changes or drops its entry."""
    return {(s, k): (project / "runs" / s / k / "_SUCCESS").stat().st_mtime_ns for s in FAN_OUT
            for k in finished(project, s)}


def _repro(project: Path, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    return run(["dvc", "repro"], project, check=check, timeout=timeout)


class Repro:
    """`dvc repro` in its own process group, its output read line by line with arrival times."""

    def __init__(self, project: Path) -> None:
        env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"}
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

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


@pytest.fixture(scope="module")
def matrix(request):
    yield MATRIX
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    faults = sorted({f for _, f in MATRIX})
    width = max([len(f) for f in faults] + [len(v) for v in MATRIX.values()] + [10])
    lines = ["", "fault matrix (stage × fault → outcome)", f"{'stage':<12} " + " ".join(f"{f:<{width}}" for f in faults)]
    for stage in STAGES:
        cells = [MATRIX.get((stage, f), "—") for f in faults]
        if any(c != "—" for c in cells):
            lines.append(f"{stage:<12} " + " ".join(f"{c:<{width}}" for c in cells))
    injected = len(MATRIX)
    survived = sum(v.startswith(("recovered", "clear error")) for v in MATRIX.values())
    lines.append(f"faults injected: {injected}, survived: {survived}, runs lost: 0 (checked after every fault)")
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
    rng = random.Random(f"kill-{stage}")
    outcomes: list[str] = []
    for point in range(KILLS_PER_STAGE):
        project = _copy(reference, stage, tmp_path / f"p{point}")
        delay = rng.uniform(0.0, reference["durations"][stage])
        repro = Repro(project)
        repro.wait_for(f"Running stage '{stage}'")
        time.sleep(delay)
        repro.kill()
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

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        path.mkdir(parents=True)
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({out.stderr.strip()[:120]}): run as root for real ENOSPC")

    def grow(self, size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture
def tiny_disk(tmp_path: Path):
    disks: list[TinyDisk] = []

    def make(name: str, size: int) -> TinyDisk:
        disk = TinyDisk(tmp_path / name, size)
        disks.append(disk)
        return disk

    yield make
    for disk in disks:
        disk.close()


# what each stage writes that can fill a disk: checkpoints, a zarr store, a spectrum, a results file
DISK_FULL = {"train": "checkpoint", "activations": "zarr store", "spectra": "spectrum", "fit": "results file"}


@pytest.mark.parametrize("stage", list(DISK_FULL))
def test_disk_full_while_writing(stage: str, reference: dict, matrix, tiny_disk) -> None:
    index = STAGES.index(stage)
    before_size = reference["sizes"][stage]
    after_size = reference["sizes"][STAGES[index + 1]] if index + 1 < len(STAGES) else reference["final_size"]
    # room for everything before the stage and about half of what the stage adds (plus tmpfs block rounding)
    disk = tiny_disk("disk", before_size + max((after_size - before_size) // 2, 64 * 1024))
    project = disk.path / "p"
    try:
        shutil.copytree(reference["snapshots"][stage], project, symlinks=True)
    except OSError:
        pytest.skip("the snapshot does not fit the small disk (block overhead)")
    first = _repro(project, check=False)
    assert first.returncode != 0, f"{stage} should have run out of space:\n{first.stdout[-2000:]}"
    text = first.stdout + first.stderr
    assert "No space left on device" in text or "ENOSPC" in text, text[-3000:]
    assert f"'{stage}'" in text  # DVC names the stage that failed
    before = _finished_runs(project)
    disk.grow(2 * reference["final_size"] + (512 << 20))
    out = _repro(project, check=False)
    assert out.returncode == 0, out.stdout[-3000:]
    _check_recovered(project, reference, before)
    MATRIX[(stage, f"disk full ({DISK_FULL[stage]})")] = "recovered"


# --- a damaged file of a finished run, found by the next `dvc repro` --------------------------------------------------
def _first_file(project: Path, stage: str, pattern: str) -> Path:
    files = sorted((project / "runs" / stage).glob(f"*/{pattern}"))
    assert files, f"no runs/{stage}/*/{pattern}"
    return files[0]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_spec(path: Path) -> None:
    path.write_text(path.read_text().replace('"seed": 0', '"seed": 7'))


DAMAGE = {  # fault → (stage, file pattern inside a run dir, how it is damaged)
    "checkpoint truncated": ("train", "ckpt/step_000040.pt", _truncate),
    "token shard truncated": ("tokenize", "train.bin", _truncate),
    "tokenizer.json damaged": ("tokenize", "tokenizer.json", _flip),
    "probe set damaged": ("buckets", "probe_set.npz", _flip),
    "spectrum chunk flipped": ("spectra", "spectra.zarr/eigenvalues/c/0/0/0/0/0", _flip),
    "spec.json edited": ("train", "spec.json", _edit_spec),
}


@pytest.mark.parametrize("fault", list(DAMAGE))
def test_damaged_file_of_a_finished_run(fault: str, reference: dict, matrix, tmp_path: Path) -> None:
    stage, pattern, damage = DAMAGE[fault]
    project = tmp_path / "p"
    shutil.copytree(reference["project"], project, symlinks=True)
    target = _first_file(project, stage, pattern)
    damage(target)
    before = {k: v for k, v in _finished_runs(project).items() if k != (stage, target.relative_to(
        project / "runs" / stage).parts[0])}
    out = _repro(project, check=False)
    text = out.stdout + out.stderr
    rel = str(target.relative_to(project))
    if out.returncode == 0:  # recovered: the damaged run was set aside (never deleted) and computed again
        assert rel in text, f"the damaged file must be named in the output:\n{text[-3000:]}"
        assert list((project / "runs" / ".quarantine").rglob(target.name)), "the damaged run must be kept aside"
        _check_recovered(project, reference, before)
        MATRIX[(stage, fault)] = "recovered"
    else:
        assert rel in text and ("delete" in text or "remove" in text), text[-3000:]
        MATRIX[(stage, fault)] = "clear error"


def test_damaged_resume_state_restarts_the_run(reference: dict, matrix, tmp_path: Path) -> None:
    project = _copy(reference, "train", tmp_path / "p")
    repro = Repro(project)
    # the first resume point (step 10) is written (tmp + os.replace: complete once visible); kill at once, since on a
    # fast machine the remaining 30 smoke steps finish, and the run leaves the work area, in well under a second
    repro.wait_for_file("runs/.work/train/*/resume.pt", project)
    repro.kill()
    resumes = sorted((project / "runs" / ".work" / "train").glob("*/resume.pt"))
    assert resumes, "a killed training run leaves its resume state in the work area"
    _truncate(resumes[0])
    before = _finished_runs(project)
    out = _repro(project, check=False)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert "resume.pt" in text and "restart" in text, text[-3000:]
    _check_recovered(project, reference, before)
    MATRIX[("train", "resume.pt damaged")] = "recovered"


# --- two `dvc repro` at once ------------------------------------------------------------------------------------------
def test_second_repro_while_one_runs(reference: dict, matrix, tmp_path: Path) -> None:
    project = _copy(reference, "train", tmp_path / "p")
    first = Repro(project)
    first.wait_for("Running stage 'train'")
    second = _repro(project, check=False)
    assert second.returncode != 0 and "lock" in (second.stdout + second.stderr).lower(), second.stdout[-2000:]
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
    remote = tiny_disk("remote", max(pushed // 2, 256 * 1024))
    run(["dvc", "remote", "add", "-d", "store", str(remote.path / "store")], project)
    git_commit(project, "results and remote")  # dvc.lock and .dvc/config, as a collaborator would receive them
    first = run(["dvc", "push"], project, check=False)
    assert first.returncode != 0 and "No space left" in first.stdout + first.stderr, first.stdout[-2000:]
    assert run(["dvc", "status"], project).returncode == 0  # nothing local changed
    remote.grow(4 * pushed + (64 << 20))
    run(["dvc", "push"], project)
    MATRIX[("report", "remote full mid-push")] = "recovered"

    clone_disk = tiny_disk("clone", max(_du(reference["project"]) // 2, 512 * 1024))
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
    MATRIX[("report", "clone full mid-pull")] = "recovered"
