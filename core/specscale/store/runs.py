"""Content-hash run store: runs/<stage>/<key>/ is finished only when its _SUCCESS marker exists.

Work happens in runs/.work/<stage>/<key>/ (outside the DVC output, same filesystem) and is renamed into place in one
`os.rename`, so a killed job never leaves a half-run that looks finished, and a resumable job finds its partial state
where it left it. Before that rename every file and directory of the run is flushed to disk (fsync), and the
directories the rename changed are flushed after it: a crash of the machine, not only of the process, cannot publish a
run whose files are still only in the page cache.

Replacing a finished run (the `recompute` policy for runs made by other code, launch.py) never deletes the old run
before the new one is finished: the new run is built in the work dir while the old one stays published, then the
old run is moved aside to runs/.replaced/ and the new one renamed into place. A kill between those two renames
leaves the finished new run in the work dir, which `recover` publishes on the next launch.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

from specscale.store.fingerprint import as_moved, code_diff
from specscale.store.integrity import contents_digest, write_contents

# The names of the files and folders of runs/, each spelled here only (on-disk names: changing one strands old runs).
RUNS_DIR = "runs"  # under the project root
SUCCESS = "_SUCCESS"
SPEC_FILE = "spec.json"
PROVENANCE_FILE = "provenance.json"
RESULT_FILE = "result.json"  # a training run's validation loss and perplexity, diverged flag (train/train.py writes it)
TRAIN_LOG_FILE = "log.jsonl"  # a training run's per-step log: loss, lr factor, tokens/s (read by tools/calibrate.py)
VAL_LOG_FILE = "val_log.jsonl"  # a training run's validation loss at every kept checkpoint (train.checkpoint_val_tokens)
ERROR_LOG = "error.log"  # in a failed run's work dir: the traceback (the launcher writes it, `status` points at it)
WORK_DIR = ".work"  # runs/.work/<stage>/<key>/: work in progress
REPLACED_DIR = ".replaced"  # runs/.replaced/<stage>/<key>/: a finished run being replaced (RunStore.commit)
JOBS_DIR = ".jobs"  # runs/.jobs/<stage>.json: the launcher's job records
SCRATCH_DIR = ".scratch"  # runs/.scratch/: activation slices while the spectra stage measures them
SCRATCH_ENV = "SPECSCALE_SCRATCH"  # overrides runs/.scratch/ (e.g. node-local disk on a cluster)
KEY_LENGTH = 16
CODE_FIELD = "code_fingerprint"  # provenance: {file: sha256} of the code that made the run (fingerprint.py)
RUN_ID_FIELD = "run_id"  # provenance: unique per commit, so a run made from a since-recomputed input can be told
# "<stage>:<seconds>": RunStore.commit of that stage prints a line and waits that long after the run's last file and
# before it is published, so that the fault matrix (tests/test_faults.py) can kill a stage that writes its whole run
# in well under a second inside its writes. Unset in every real run.
TEST_HOLD_ENV = "SPECSCALE_TEST_HOLD"
INPUT_RUNS_FIELD = "input_runs"  # provenance: {input stage: its run_id when this run was committed}
# provenance: {input stage: integrity.contents_digest of that run when this run was committed}, so an input recomputed
# byte-identical is not "recomputed" for the runs made from it (runs made before this field: run ids are compared)
INPUT_CONTENTS_FIELD = "input_contents"
VOLATILE_FILES = (PROVENANCE_FILE,)  # differ between two runs that computed the same bytes (times, run ids)


def complete_log_records(log_path: Path) -> tuple[list[tuple[dict[str, Any], bytes]], int]:
    """The records of a JSON-lines log (each with its line, newline included) up to its first incomplete line, and
    the bytes from there to the end (0: all complete). A line is appended whole or, when the process dies mid-write
    (a kill, a full disk), cut short: only the tail can be torn, and everything from the first bad line on is it."""
    if not log_path.exists():
        return [], 0
    data = log_path.read_bytes()
    records, pos = [], 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:  # no newline: the last write did not finish
            break
        line = data[pos:end]
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError:
            break
        if record is not None:
            if not isinstance(record, dict) or "step" not in record:
                break
            records.append((record, data[pos:end + 1]))
        pos = end + 1
    return records, len(data) - pos


def stable_hash(obj: Any) -> str:
    """SHA-256 of canonical JSON (sorted keys, no whitespace), shortened to KEY_LENGTH hex digits."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


def run_key(stage: str, version: int, spec: dict[str, Any], inputs: dict[str, str]) -> str:
    """A run's key: its stage, the stage's semantic version, the output-relevant spec and its inputs' keys."""
    return stable_hash({"stage": stage, "version": version, "spec": spec, "inputs": inputs})


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename) so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(project_root: Path, device: str, wall_time_s: float, extra: dict | None = None) -> dict[str, Any]:
    """Code commit and dirty flag, package versions, host, device and wall time of one run. No environment
    variable is recorded except SLURM's job ids, and no command line: both can carry credentials."""
    commit = _git(["rev-parse", "HEAD"], project_root)
    dirty = _git(["status", "--porcelain", "--untracked-files=no"], project_root)
    packages = {}
    for name in ("specscale", "torch", "numpy", "scipy", "zarr", "xarray", "tokenizers", "submitit", "dvc"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    info = {
        "git_commit": commit,
        "git_dirty": bool(dirty) if dirty is not None else None,
        "packages": packages,
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "device": device,
        "wall_time_s": round(wall_time_s, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
    }
    info.update(extra or {})
    return info


def sync_tree(root: Path) -> None:
    """fsync every file and directory under `root` (directories after their entries), so that what was written
    there is on disk, not only in the page cache. One open and fsync per file, no reading."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            if not os.path.islink(os.path.join(dirpath, name)):  # a link's target is not part of the run
                _fsync(Path(dirpath) / name, os.O_RDONLY)
        _fsync(Path(dirpath), os.O_RDONLY | os.O_DIRECTORY)


def sync_dirs(*dirs: Path) -> None:
    """fsync directories whose entries changed (a rename into or out of them)."""
    for d in dict.fromkeys(dirs):  # once each, in order
        _fsync(d, os.O_RDONLY | os.O_DIRECTORY)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def scratch_root(project_root: Path) -> Path:
    """Where the activation slices of every measurement live while being measured: $SPECSCALE_SCRATCH when set
    (non-empty), else runs/.scratch/ (never a DVC output)."""
    override = os.environ.get(SCRATCH_ENV)
    return Path(override) if override else Path(project_root) / RUNS_DIR / SCRATCH_DIR


def _test_hold(stage: str, key: str) -> None:
    """The fault matrix's hold (TEST_HOLD_ENV): a no-op unless the variable names this stage."""
    name, _, seconds = os.environ.get(TEST_HOLD_ENV, "").partition(":")
    if name == stage:
        print(f"[{stage}] test hold: {key} written, not yet published ({seconds} s)", flush=True)
        time.sleep(float(seconds or 0))


class RunStore:
    """Finished runs under runs/<stage>/<key>/, work in progress under runs/.work/<stage>/<key>/."""

    def __init__(self, project_root: Path | str) -> None:
        self.project_root = Path(project_root).resolve()
        self.root = self.project_root / RUNS_DIR

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def final_dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def work_dir(self, stage: str, key: str) -> Path:
        return self.work_stage_dir(stage) / key

    def work_stage_dir(self, stage: str) -> Path:
        """runs/.work/<stage>/: every run of `stage` in progress (or failed, with its ERROR_LOG)."""
        return self.root / WORK_DIR / stage

    def jobs_path(self, stage: str) -> Path:
        """The launcher's job records of `stage` (runs/.jobs/<stage>.json)."""
        return self.root / JOBS_DIR / f"{stage}.json"

    def is_done(self, stage: str, key: str) -> bool:
        return (self.final_dir(stage, key) / SUCCESS).exists()

    def finished_keys(self, stage: str) -> set[str]:
        stage_dir = self.stage_dir(stage)
        if not stage_dir.is_dir():
            return set()
        return {p.name for p in stage_dir.iterdir() if (p / SUCCESS).exists()}

    def begin(self, stage: str, key: str, spec: dict[str, Any]) -> Path:
        """Create (or reuse, for resume) the work dir and write the spec the job will read."""
        work = self.work_dir(stage, key)
        work.mkdir(parents=True, exist_ok=True)
        spec_path = work / SPEC_FILE
        if spec_path.exists() and read_json(spec_path) != json.loads(json.dumps(spec, default=str)):
            # A stale work dir with another spec under the same key cannot happen unless the code changed the
            # hashing; start clean rather than resume from foreign state.
            shutil.rmtree(work)
            work.mkdir(parents=True)
        write_json(spec_path, spec)
        return work

    def commit(self, stage: str, key: str, device: str, wall_time_s: float, extra: dict | None = None,
               drop: Iterable[str] = (), code: Mapping[str, str] | None = None, replace: bool = False) -> Path:
        """Write provenance and _SUCCESS into the work dir, then rename it into place (atomic on one filesystem).

        `code`: the fingerprint of the code that ran ({file: sha256}, fingerprint.py), recorded beside the git
        commit. `replace`: this run recomputes a finished run and takes its place (see the module docstring);
        otherwise a finished run already in place wins and this work is discarded."""
        work, final = self.work_dir(stage, key), self.final_dir(stage, key)
        for name in drop:  # resume state and other scratch that must not be published
            target = work / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        info = provenance(self.project_root, device, wall_time_s, extra)
        spec = read_json(work / SPEC_FILE) if (work / SPEC_FILE).exists() else {}
        inputs = spec.get("inputs") or {}
        info.update({CODE_FIELD: dict(code) if code is not None else None, RUN_ID_FIELD: uuid.uuid4().hex,
                     INPUT_RUNS_FIELD: {s: self.load_provenance(s, k).get(RUN_ID_FIELD) for s, k in inputs.items()},
                     INPUT_CONTENTS_FIELD: {s: contents_digest(self.final_dir(s, k), VOLATILE_FILES)
                                            for s, k in inputs.items()}})
        write_json(work / PROVENANCE_FILE, info)
        _test_hold(stage, key)
        write_contents(work)  # what the run holds, checked before it is reused (integrity.py)
        (work / SUCCESS).write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z\n"))
        final.parent.mkdir(parents=True, exist_ok=True)
        if (final / SUCCESS).exists() and not replace:
            shutil.rmtree(work)
            return final
        # on disk before the rename publishes it: a run published before a crash holds what its record says
        sync_tree(work)
        if (final / SUCCESS).exists():
            aside = self.replaced_dir(stage, key)
            if aside.exists():
                shutil.rmtree(aside)
            aside.parent.mkdir(parents=True, exist_ok=True)
            os.rename(final, aside)  # from here until the next rename the run is missing, never half-finished
            os.rename(work, final)
            sync_dirs(final.parent, work.parent, aside.parent)
            shutil.rmtree(aside)
            return final
        if final.exists():  # an unfinished leftover (no _SUCCESS): never read, safe to replace
            shutil.rmtree(final)
        os.rename(work, final)
        sync_dirs(final.parent, work.parent)  # the rename itself, on disk
        return final

    def replaced_dir(self, stage: str, key: str) -> Path:
        """Where a finished run waits, during a replacement, between its two renames (outside the DVC outputs)."""
        return self.root / REPLACED_DIR / stage / key

    def recover(self, stage: str, key: str) -> bool:
        """Publish a finished run that a commit killed between writing _SUCCESS and its rename left in the work dir
        (for a replacement: after the old run was moved aside). True when it did."""
        work, final = self.work_dir(stage, key), self.final_dir(stage, key)
        if not (work / SUCCESS).exists() or (final / SUCCESS).exists():
            return False
        try:
            if final.exists():
                shutil.rmtree(final)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(work, final)
        except FileNotFoundError:  # the job's own commit got there first
            return False
        shutil.rmtree(self.replaced_dir(stage, key), ignore_errors=True)
        return True

    def load_provenance(self, stage: str, key: str | None) -> dict[str, Any]:
        """A finished run's provenance.json; {} when there is no such run."""
        path = self.final_dir(stage, key) / PROVENANCE_FILE if key else None
        return read_json(path) if path is not None and path.exists() else {}

    def recorded_code(self, stage: str, key: str | None) -> dict[str, str] | None:
        """The fingerprint of the code that made a finished run, in today's layout (fingerprint.as_moved); None when
        the run recorded none (or does not exist)."""
        return as_moved(self.load_provenance(stage, key).get(CODE_FIELD))

    def changes(self, stage: str, key: str, code: Mapping[str, str] | None) -> list[str]:
        """What differs between what made a finished run and today: the code files whose fingerprint changed
        (fingerprint.code_diff; nothing is compared when `code` is None) and 'input <stage> recomputed' for each
        input run replaced since this run was made. [] when nothing differs or nothing can be told."""
        prov = self.load_provenance(stage, key)
        out = code_diff(as_moved(prov.get(CODE_FIELD)), code) if code is not None else []
        run_ids, contents = prov.get(INPUT_RUNS_FIELD) or {}, prov.get(INPUT_CONTENTS_FIELD) or {}
        if run_ids or contents:
            inputs = self.load_spec(stage, key).get("inputs") or {}
            for input_stage in sorted(set(run_ids) | set(contents)):
                if self._input_changed(input_stage, inputs.get(input_stage), run_ids.get(input_stage),
                                       contents.get(input_stage)):
                    out.append(f"input {input_stage} recomputed")
        return out

    def _input_changed(self, stage: str, key: str | None, run_id: str | None, contents: str | None) -> bool:
        """Whether the finished input run `stage`/`key` holds other contents than the one a run was made from
        (`contents`, recorded at its commit); by run id for runs that recorded none. False when it cannot be told."""
        if not key or not self.is_done(stage, key):
            return False
        now = contents_digest(self.final_dir(stage, key), VOLATILE_FILES) if contents else None
        if contents and now:
            return contents != now
        now_id = self.load_provenance(stage, key).get(RUN_ID_FIELD)
        return bool(run_id and now_id and run_id != now_id)

    def load_spec(self, stage: str, key: str) -> dict[str, Any]:
        return read_json(self.final_dir(stage, key) / SPEC_FILE)
