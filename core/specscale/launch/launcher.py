"""Run a fan-out stage's missing runs through submitit: `debug` (in-process), `local` (subprocesses), `slurm`.

Only runs without a finished directory are submitted. Job ids are recorded in runs/.jobs/<stage>.json so that a
restarted `dvc repro` re-attaches to jobs still in flight instead of submitting them again. A failed run never stops
the others: failures are gathered and listed with their log paths at the end, and every finished run is kept. A
finished run made by other code (fingerprint.py) is never reused without a word: the first line names the files, and
`cache.on_code_change` decides: `warn` reuses it, `recompute` replaces it once the new run is finished.
"""

from __future__ import annotations

import errno
import fcntl
import shutil
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import submitit
from submitit.helpers import Checkpointable

from specscale.store.runs import ERROR_LOG, SPEC_FILE, RunStore, read_json, write_json
from specscale.store.fingerprint import CodeRef, files_text
from specscale.store.integrity import set_aside_if_damaged
from specscale.launch.inputs import Rebuild, check_inputs, lacking_text
from specscale.launch.slurm import ENDED, QUEUE, QUEUED_STATES
from specscale.study.spec import ON_CODE_CHANGE, SpecError

LOCAL_CONTROLLER_MARK = b"submitit.local._local"


@dataclass
class Task:
    key: str
    label: str
    spec: dict[str, Any]


@dataclass
class LaunchReport:
    stage: str
    total: int
    cached: list[str] = field(default_factory=list)
    computed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (key, label, log path)
    changed: dict[str, list[str]] = field(default_factory=dict)  # finished run made by other code → what differs

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


# What a stage run computes: (its spec.json, its work dir, the run store) → result fields for provenance. The
# launcher is given this function (from the stage table) and pickles it by reference for submitit's jobs.
RunOne = Callable[[dict[str, Any], Path, RunStore], dict[str, Any]]


def run_task(run_one: RunOne, stage: str, key: str, project_root: str,
             code: CodeRef | dict[str, str] | None = None, replace: bool = False) -> str:
    """Job entry point (pickled by submitit): run one stage run from its work dir and commit it atomically. `code`:
    a CodeRef, fingerprinted as the job starts (what it imported), or the launcher's fingerprint (in-process runs).
    `replace`: the run recomputes a finished run made by other code and takes its place once finished."""
    store = RunStore(project_root)
    work = store.work_dir(stage, key)
    spec = read_json(work / SPEC_FILE)
    fingerprint = code.fingerprint() if isinstance(code, CodeRef) else code
    started = time.time()
    result = run_one(spec, work, store) or {}
    if result.get("rank", 0) != 0:  # a multi-process run (one task per GPU): rank 0 alone commits
        return key
    device = result.pop("device", "cpu")
    drop = result.pop("drop", ())
    store.commit(stage, key, device=device, wall_time_s=time.time() - started, extra=result, drop=drop,
                 code=fingerprint, replace=replace)
    return key


class RunTask(Checkpointable):
    """`run_task` as a SLURM job that survives its time limit or preemption: on submitit's signal (USR2, sent
    before the limit or at preemption) `checkpoint()` (inherited) returns a DelayedSubmission of this same call and
    submitit requeues the job under the same id. Nothing needs saving here: the run's state lives in its work dir
    (training resumes from resume.pt), so the requeued call simply starts the run again and picks it up."""

    def __call__(self, run_one: RunOne, stage: str, key: str, project_root: str,
                 code: CodeRef | None = None, replace: bool = False) -> str:
        return run_task(run_one, stage, key, project_root, code, replace)


def _pid_alive_controller(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return LOCAL_CONTROLLER_MARK in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False


class AttachedJob:
    """A job known by its record: one submitted by an earlier launcher process (watched until it ends, never
    resubmitted), or any SLURM job (watched through squeue: submitit's own watcher needs sacct, see slurm.py)."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        self.job_id = str(record["job_id"])
        folder = Path(record["folder"])
        self.stdout = folder / f"{self.job_id}_0_log.out"
        self.stderr = folder / f"{self.job_id}_0_log.err"
        self._slurm = record["cluster"] == "slurm"

    def phase(self) -> str:
        """queued | running | ended. A SLURM job whose state cannot be read (squeue down) counts as running."""
        if self._slurm:
            state = QUEUE.state(self.job_id)
            if state == ENDED:
                return "ended"
            return "queued" if state in QUEUED_STATES else "running"
        return "running" if _pid_alive_controller(int(self.job_id)) else "ended"

    def alive(self) -> bool:
        return self.phase() != "ended"

    def done(self) -> bool:
        return not self.alive()


@dataclass
class _Handle:
    task: Task
    job: Any  # submitit.Job | AttachedJob
    started: float
    log_offset: int = 0

    def log_paths(self) -> tuple[Path | None, Path | None]:
        if isinstance(self.job, AttachedJob):
            return self.job.stdout, self.job.stderr
        paths = getattr(self.job, "paths", None)
        return (paths.stdout, paths.stderr) if paths else (None, None)


class StageLock:
    """One launcher per stage at a time; a restarted launcher waits for a live predecessor instead of racing it."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    def __enter__(self) -> "StageLock":
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"another launcher holds {self.path}; waiting for it to finish", flush=True)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def make_executor(launcher: Any, folder: Path, stage: str) -> submitit.Executor:
    """Always name the cluster: AutoExecutor would pick SLURM whenever `srun` is on PATH (docs/architecture.md, tool facts)."""
    if launcher.cluster == "slurm" and shutil.which("srun") is None:
        raise SpecError("launcher.cluster is 'slurm' but `srun` is not on PATH: run `dvc repro` on a SLURM login "
                          "node, or set `launcher: {cluster: local}` in params.yaml to run here")
    executor = submitit.AutoExecutor(folder=folder, cluster=launcher.cluster)
    params: dict[str, Any] = {"timeout_min": int(launcher.timeout_min), "name": f"specscale-{stage}"}
    # Training spreads one run over every GPU of the node (one task per GPU, DDP inside the run, see
    # distributed.py); the measurement stages use one GPU per run.
    gpus = int(launcher.gpus_per_node) if stage == "train" else min(1, int(launcher.gpus_per_node))
    tasks = max(1, gpus)
    if launcher.cluster == "slurm":
        params.update(
            slurm_partition=launcher.partition,
            slurm_array_parallelism=int(launcher.array_parallelism),
            # no --gpus-per-node=0 on CPU jobs: clusters without GPU gres may reject any gres request
            gpus_per_node=gpus or None,
            nodes=int(launcher.nodes),
            tasks_per_node=tasks,
            cpus_per_task=int(launcher.cpus_per_task),
            mem_gb=int(launcher.mem_gb),
            slurm_setup=list(launcher.setup),
            slurm_additional_parameters=dict(launcher.sbatch_extra),
        )
        if launcher.account:
            params["slurm_account"] = launcher.account
        if launcher.qos:
            params["slurm_qos"] = launcher.qos
        params = {k: v for k, v in params.items() if v is not None}
    elif launcher.cluster == "local" and launcher.gpus_per_node:
        params["gpus_per_node"] = gpus  # the local executor hides GPUs unless told
        params["tasks_per_node"] = tasks
    executor.update_parameters(**params)
    return executor


def _fmt_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Launcher:
    """Runs one stage's tasks with `run_one` (the stage table's entry point) under the launcher settings; `code` is
    the stage's code (None: nothing fingerprinted or compared), `on_code_change` one of ON_CODE_CHANGE, `rebuild`
    runs another stage again (None: a damaged input is set aside and the runs that read it fail)."""

    def __init__(self, stage: str, run_one: RunOne, store: RunStore, launcher: Any,
                 echo: Callable[[str], None] | None = None, code: CodeRef | None = None,
                 on_code_change: str = "warn", rebuild: Rebuild | None = None) -> None:
        if on_code_change not in ON_CODE_CHANGE:
            raise ValueError(f"cache.on_code_change is {on_code_change!r}, not one of {', '.join(ON_CODE_CHANGE)}")
        self.stage = stage
        self.run_one = run_one
        self.store = store
        self.cfg = launcher
        self.code = code
        self.on_code_change = on_code_change
        self._fingerprint: dict[str, str] | None = None  # today's, taken once per launch
        self._replace: set[str] = set()  # keys whose finished run is recomputed and replaced
        self.echo = echo if echo is not None else (lambda msg: print(msg, flush=True))
        self.rebuild = rebuild  # runs an input's stage again after its damaged run was set aside (launch/inputs.py)
        self.unwritten: list[tuple[Path, OSError]] = []  # the launcher's own files it could not write (disk full)
        self.jobs_path = store.jobs_path(stage)
        self.folder = store.root / ".submitit" / stage

    # -- job records --------------------------------------------------------------------------------------------
    def _records(self) -> dict[str, dict[str, Any]]:
        return read_json(self.jobs_path) if self.jobs_path.exists() else {}

    def _record(self, key: str, job: Any) -> None:
        records = self._records()
        records[key] = {"cluster": self.cfg.cluster, "job_id": str(job.job_id), "folder": str(self.folder),
                        "submitted_at": time.time()}
        write_json(self.jobs_path, records)

    def _forget(self, keys: list[str]) -> None:
        records = self._records()
        for key in keys:
            records.pop(key, None)
        write_json(self.jobs_path, records)

    # -- main ---------------------------------------------------------------------------------------------------
    def run(self, tasks: list[Task]) -> LaunchReport:
        report = LaunchReport(self.stage, total=len(tasks))
        self.jobs_path.parent.mkdir(parents=True, exist_ok=True)
        with StageLock(self.jobs_path.with_suffix(".lock")):
            self._fingerprint = self.code.fingerprint() if self.code is not None else None
            self._replace, missing = set(), []
            for task in tasks:
                self.store.recover(self.stage, task.key)  # a commit killed between its renames
                warning = self.store.is_done(self.stage, task.key) and set_aside_if_damaged(
                    self.store.root, self.stage, task.key)
                if warning:
                    self.echo(warning)
                if self.store.is_done(self.stage, task.key):
                    diff = self.store.changes(self.stage, task.key, self._fingerprint)
                    if diff:
                        report.changed[task.key] = diff
                    if diff and self.on_code_change == "recompute":
                        self._replace.add(task.key)
                        missing.append(task)
                    else:
                        report.cached.append(task.key)
                else:
                    missing.append(task)
            self.echo(self._first_line(report, len(missing)))
            if missing:
                missing = self._begin(self._with_inputs(missing, report), report)
            if missing:
                self._execute(missing, report)
            self._own_write(self.jobs_path, lambda: self._forget(report.cached + report.computed))
        self._summarise(report)
        return report

    def _with_inputs(self, missing: list[Task], report: LaunchReport) -> list[Task]:
        """The tasks whose input runs are all finished and intact: verified in full before any is read, damaged ones
        set aside and computed again (launch/inputs.py). Any other task fails, its log naming the input it lacks."""
        lacking = check_inputs(self.store, self.stage, {t.key: (t.spec.get("inputs") or {}).items() for t in missing},
                               self.rebuild, self.echo)
        for task in missing:
            if task.key in lacking:
                why = lacking_text(self.store, lacking[task.key])
                self._fail(task, report, why, self.store.work_dir(self.stage, task.key) / ERROR_LOG, why)
        return [t for t in missing if t.key not in lacking]

    def _begin(self, missing: list[Task], report: LaunchReport) -> list[Task]:
        """Work dirs and spec.json of the tasks to run; a task whose spec cannot be written (disk full) fails."""
        ready = []
        for task in missing:
            spec = self.store.work_dir(self.stage, task.key) / SPEC_FILE
            if self._own_write(spec, lambda: self.store.begin(self.stage, task.key, task.spec)):
                ready.append(task)
            else:
                self._fail(task, report, "its spec.json could not be written", None, None)
        return ready

    def _own_write(self, path: Path, write: Callable[[], Any]) -> bool:
        """Run one of the launcher's own writes; an OSError (ENOSPC: the disk is full) is remembered and reported
        with the failures, never a crash of the launcher: the runs' results and failures must still be listed."""
        try:
            write()
            return True
        except OSError as err:
            self.unwritten.append((path, err))
            self.echo(f"[{self.stage}] could not write {path}: {_os_error_text(err)}")
            return False

    def _fail(self, task: Task, report: LaunchReport, why: str, log: Path | None, text: str | None) -> None:
        """Record a failed run and write its error log (`text`, when given); a log that cannot be written is named
        in the failure list as such."""
        shown = "-"
        if log is not None and text is not None:
            written = self._own_write(log, lambda: (log.parent.mkdir(parents=True, exist_ok=True),
                                                    log.write_text(text)))
            shown = str(log) if written else f"{log} (could not be written)"
        report.failed.append((task.key, task.label, shown))
        self.echo(f"[{self.stage}] ✗ {task.label}: {why}; log: {shown}")

    def _first_line(self, report: LaunchReport, n_missing: int) -> str:
        """E.g. '[train] 39 runs: 39 cached (12 made by other code: core/specscale/model/gpt.py), 0 to compute'."""
        head, todo = f"[{self.stage}] {report.total} runs: {len(report.cached)} cached", f"{n_missing} to compute"
        if not report.changed:
            return f"{head}, {todo}"
        other, files = f"{len(report.changed)} made by other code", files_text(report.changed.values())
        if self.on_code_change == "recompute":
            return f"{head}, {todo} ({other}, recomputed: {files})"
        return f"{head} ({other}: {files}), {todo}"

    def _execute(self, missing: list[Task], report: LaunchReport) -> None:
        records = self._records()
        handles: list[_Handle] = []
        queue: list[Task] = []
        for task in missing:
            record = records.get(task.key)
            attached = AttachedJob(record) if record and record.get("cluster") == self.cfg.cluster else None
            if attached is not None and attached.alive():
                self.echo(f"[{self.stage}] re-attached to job {attached.job_id} ({task.label})")
                handles.append(_Handle(task, attached, time.time()))
            else:
                queue.append(task)
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.cfg.cluster == "debug" or (self.cfg.cluster == "local" and self.stage in self.cfg.inline_stages):
            self._run_debug(queue, report)
            queue = []
        elif self.cfg.cluster == "slurm" and queue:
            handles += self._submit_array(queue)
            queue = []
        self._monitor(handles, queue, report)

    def _run_debug(self, queue: list[Task], report: LaunchReport) -> None:
        """In-process, one run after another. Called directly rather than through submitit's DebugExecutor, which
        drops into pdb on an exception: a failed run must be recorded and the next one started."""
        for i, task in enumerate(queue, 1):
            self.echo(f"[{self.stage}] ▶ {task.label} ({i}/{len(queue)}, in-process)")
            started = time.time()
            try:
                run_task(self.run_one, self.stage, task.key, str(self.store.project_root), self._fingerprint,
                         task.key in self._replace)
            except Exception as err:  # a failed run must not stop the others
                traceback.print_exc()
                self._fail(task, report, f"failed ({type(err).__name__}: {str(err)[:200]})",
                           self.store.work_dir(self.stage, task.key) / ERROR_LOG, traceback.format_exc())
                continue
            self._finish(task, report, started, None)

    def _submit_array(self, queue: list[Task]) -> list[_Handle]:
        executor = make_executor(self.cfg, self.folder, self.stage)
        root = str(self.store.project_root)
        n = len(queue)
        jobs = executor.map_array(RunTask(), [self.run_one] * n, [self.stage] * n, [t.key for t in queue], [root] * n,
                                  [self.code] * n, [t.key in self._replace for t in queue])
        now = time.time()
        for task, job in zip(queue, jobs):
            self._record(task.key, job)
        self.echo(f"[{self.stage}] submitted job array {jobs[0].job_id.split('_')[0]} with {len(jobs)} "
                  f"task{'s' if len(jobs) > 1 else ''} (logs: {self.folder})")
        records = self._records()
        # watched through their records (squeue), exactly as a restarted launcher would re-attach to them
        return [_Handle(t, AttachedJob(records[t.key]), now) for t in queue]

    def _submit_local(self, task: Task) -> _Handle:
        executor = make_executor(self.cfg, self.folder, self.stage)
        job = executor.submit(run_task, self.run_one, self.stage, task.key, str(self.store.project_root), self.code,
                              task.key in self._replace)
        self._own_write(self.jobs_path, lambda: self._record(task.key, job))  # unrecorded: not re-attached later
        self.echo(f"[{self.stage}] ▶ {task.label} (job {job.job_id})")
        return _Handle(task, job, time.time())

    def _monitor(self, handles: list[_Handle], queue: list[Task], report: LaunchReport) -> None:
        total = len(handles) + len(queue)
        durations: list[float] = []
        last_status = 0.0
        while handles or queue:
            while queue and len(handles) < int(self.cfg.max_parallel):
                handles.append(self._submit_local(queue.pop(0)))
            for handle in list(handles):
                self._stream_log(handle)
                if handle.job.done():
                    handles.remove(handle)
                    self._stream_log(handle)
                    durations.append(time.time() - handle.started)
                    self._finish(handle.task, report, handle.started, handle.log_paths()[1])
            now = time.time()
            if handles and now - last_status > 60:
                finished = len(report.computed) + len(report.failed)
                eta = ""
                if durations:
                    per_run = sum(durations) / len(durations)
                    waves = (total - finished) / max(1, min(int(self.cfg.max_parallel), total - finished))
                    eta = f", ETA {_fmt_duration(per_run * waves)}"
                # a SLURM job waiting for resources (or requeued) is queued, not running
                waiting = sum(isinstance(h.job, AttachedJob) and h.job.phase() == "queued" for h in handles)
                self.echo(f"[{self.stage}] {finished}/{total} done, {len(handles) - waiting} running, "
                          f"{len(queue) + waiting} queued, {len(report.failed)} failed{eta}")
                last_status = now
            if handles or queue:
                time.sleep(float(self.cfg.poll_seconds))

    def _stream_log(self, handle: _Handle) -> None:
        """Relay new lines of a local job's stdout (its progress lines), prefixed with the run's label."""
        if self.cfg.cluster != "local":
            return
        stdout = handle.log_paths()[0]
        if stdout is None or not Path(stdout).exists():
            return
        with open(stdout, "rb") as fh:
            fh.seek(handle.log_offset)
            chunk = fh.read()
        cut = chunk.rfind(b"\n") + 1
        handle.log_offset += cut
        for line in chunk[:cut].decode(errors="replace").splitlines():
            if line.strip() and not line.startswith("submitit "):
                self.echo(f"    {handle.task.label}: {line}")

    def _finish(self, task: Task, report: LaunchReport, started: float, log: Path | None) -> None:
        n = len(report.computed) + len(report.failed) + 1
        # committed = published and the work dir renamed away: a failed recomputation leaves the old run published
        if self.store.is_done(self.stage, task.key) and not self.store.work_dir(self.stage, task.key).exists():
            report.computed.append(task.key)
            self.echo(f"[{self.stage}] ✓ {task.label} ({_fmt_duration(time.time() - started)}) [{n} of this launch]")
        else:
            report.failed.append((task.key, task.label, str(log) if log else "?"))
            self.echo(f"[{self.stage}] ✗ {task.label} failed; log: {log}")

    def _summarise(self, report: LaunchReport) -> None:
        reused = len(set(report.changed) & set(report.cached))
        note = f" ({reused} made by other code: specscale status --why)" if reused else ""
        self.echo(f"[{self.stage}] summary: {len(report.computed)} computed, {len(report.cached)} cached{note}, "
                  f"{len(report.failed)} failed")
        if report.failed:
            print(f"[{self.stage}] FAILED runs (finished runs are kept; rerun to retry only these):", file=sys.stderr)
            for key, label, log in report.failed:
                print(f"  {label}  key={key}  log={log}", file=sys.stderr)
        for path, err in self.unwritten:
            print(f"[{self.stage}] could not write {path}: {_os_error_text(err)}", file=sys.stderr)


def _os_error_text(err: OSError) -> str:
    """The error, and for ENOSPC what to do about it."""
    text = f"{err.strerror or err}"
    if err.errno == errno.ENOSPC:
        text += " (the disk is full: free space, then run `dvc repro` again)"
    return text
