"""The `slurm` launcher against a real SLURM: `dvc repro` of the smoke preset submits one job array per fan-out stage,
a second repro submits nothing, a preempted job requeues and resumes, a cancelled job fails alone and a rerun
finishes it.

Needs a running SLURM whose default partition `debug` accepts 1-CPU, 1-GB jobs and whose jobs can read and write
this machine's /tmp (single node): start one with `bash tests/cluster/start_slurm.sh`, then
`python -m pytest -m slurm`. The tests marked `slurm` skip with the reason when squeue is absent or not answering.
The two tests at the top check the sbatch parameters and the requeue wrapper without a cluster.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from helpers import file_listing, finished, make_smoke_project, provenance, run, smoke_params, write_params
from specscale.launch.launcher import RunTask, make_executor
from specscale.study.spec import LauncherSpec, SpecError
from stages.table import BY_NAME

LAUNCHER = {"cluster": "slurm", "partition": "debug", "cpus_per_task": 1, "mem_gb": 1, "timeout_min": 10,
            "poll_seconds": 1, "array_parallelism": 4}
TRAIN = {"threads": 1}  # one torch thread per 1-CPU job: two jobs share the 2 cores without oversubscription
LONG_STEPS = 3000  # the runs cancelled and preempted mid-training: long enough to be caught running (≈ 40-80 s)


# -- without a cluster ----------------------------------------------------------------------------------------------
def _fake_srun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """submitit's SlurmExecutor refuses to start unless `srun` is on PATH; these tests only render the sbatch file,
    so a stub that is never executed lets them run on a bare machine (no SLURM installed)."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text("#!/bin/sh\necho 'stub srun: never called by these tests' >&2\nexit 1\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")


def test_slurm_without_srun_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH: certainly no srun
    cfg = OmegaConf.structured(LauncherSpec)
    cfg.cluster = "slurm"
    with pytest.raises(SpecError, match=r"launcher.cluster is 'slurm' but `srun` is not on PATH.*cluster: local"):
        make_executor(cfg, tmp_path, "train")


def test_launcher_settings_reach_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_srun(tmp_path, monkeypatch)
    cfg = OmegaConf.structured(LauncherSpec)
    cfg.update({"cluster": "slurm", "partition": "gpu", "account": "proj", "qos": "high", "gpus_per_node": 2,
                "cpus_per_task": 16, "mem_gb": 64, "timeout_min": 1440, "array_parallelism": 7,
                "sbatch_extra": {"constraint": "h100"}, "setup": ["module load cuda"]})
    executor = make_executor(cfg, tmp_path, "train")
    text = executor._executor._make_submission_file_text("python -m x", "uid")
    for line in ("--partition=gpu", "--account=proj", "--qos=high", "--gpus-per-node=2", "--cpus-per-task=16",
                 "--mem=64GB", "--time=1440", "--constraint=h100", "--signal=USR2@90", "--job-name=specscale-train"):
        assert f"#SBATCH {line}\n" in text, (line, text)
    assert "\nmodule load cuda\n" in text
    assert executor._executor.parameters["array_parallelism"] == 7  # becomes --array=0-N%7 at submission
    cfg.gpus_per_node = 0
    text = make_executor(cfg, tmp_path, "train")._executor._make_submission_file_text("python -m x", "uid")
    assert "gpus-per-node" not in text, "CPU jobs must not request gres"


def test_run_task_checkpoints_as_the_same_call() -> None:
    """On preemption or time limit, submitit pickles what checkpoint() returns and requeues it."""
    task = pickle.loads(pickle.dumps(RunTask()))
    entry = BY_NAME["train"].entry
    delayed = pickle.loads(pickle.dumps(task.checkpoint(entry, "train", "abc", "/project")))
    assert isinstance(delayed.function, RunTask)
    assert delayed.args == (entry, "train", "abc", "/project") and not delayed.kwargs


# -- against a running SLURM ----------------------------------------------------------------------------------------
def _slurm_unavailable() -> str | None:
    if shutil.which("squeue") is None or shutil.which("sbatch") is None:
        return "SLURM commands not found (start a local cluster: bash tests/cluster/start_slurm.sh)"
    try:
        out = subprocess.run(["sinfo", "-h", "-p", "debug", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo does not answer within 20 s"
    if out.returncode != 0:
        return f"SLURM not answering: {out.stderr.strip()[:200]}"
    if not any(s.strip().startswith(("idle", "mix", "alloc")) for s in out.stdout.splitlines()):
        return f"partition debug has no usable node (states: {out.stdout.split() or 'none'})"
    return None


@pytest.fixture(scope="module")
def slurm_project(tmp_path_factory) -> Path:
    reason = _slurm_unavailable()
    if reason:
        pytest.skip(reason)
    root = make_smoke_project(tmp_path_factory.mktemp("slurm"), smoke_params(launcher=LAUNCHER, train=TRAIN))
    started = time.time()
    first = run(["dvc", "repro"], root, check=False, timeout=600)
    (root / "first_repro.log").write_text(first.stdout + first.stderr)
    print(f"first repro through SLURM: {time.time() - started:.0f}s")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return root


def _job_ids(project: Path, stage: str) -> dict[str, str]:
    """run key → SLURM job id (array job _ task) from each finished run's provenance."""
    ids = {}
    for key in finished(project, stage):
        prov = provenance(project, stage, key)
        ids[key] = f"{prov['slurm_job_id']}/{prov['slurm_array_task_id']}"
    return ids


@pytest.mark.slurm
def test_repro_runs_every_fan_out_stage_as_one_job_array(slurm_project: Path) -> None:
    log = (slurm_project / "first_repro.log").read_text()
    for stage in ("train", "activations", "spectra"):
        assert f"[{stage}] 3 runs: 0 cached, 3 to compute" in log
        arrays = re.findall(rf"\[{stage}\] submitted job array (\d+) with 3 tasks", log)
        assert len(arrays) == 1, log[-3000:]
        ids = _job_ids(slurm_project, stage)
        print(f"{stage}: job array {arrays[0]}, runs ran as SLURM jobs (job id/array task) {sorted(ids.values())}")
        assert len(ids) == 3 and all(v.split("/")[0].isdigit() for v in ids.values()), ids
        assert {v.split("/")[1] for v in ids.values()} == {"0", "1", "2"}, ids
        logs = slurm_project / "runs/.submitit" / stage
        assert all((logs / f"{arrays[0]}_{task}_0_log.out").exists() for task in range(3))
    assert (slurm_project / "results/betas.json").exists()
    assert not json.loads((slurm_project / "runs/.jobs/train.json").read_text()), "finished jobs are forgotten"


@pytest.mark.slurm
def test_second_repro_submits_nothing(slurm_project: Path) -> None:
    again = run(["dvc", "repro"], slurm_project)
    assert "Data and pipelines are up to date" in again.stdout
    assert "submitted" not in again.stdout
    status = run(["specscale", "status"], slurm_project).stdout
    for stage in ("train", "activations", "spectra"):
        assert f"{stage}: 3 cached" in status, status


def _records(project: Path) -> dict[str, dict]:
    path = project / "runs/.jobs/train.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:  # being rewritten
        return {}


def _wait(condition, timeout_s: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"dvc repro ended while waiting for {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@pytest.mark.slurm
def test_preempted_job_resumes_and_cancelled_job_fails_alone(slurm_project: Path) -> None:
    project = slurm_project
    before = {key: file_listing(project / "runs/train" / key) for key in finished(project, "train")}
    old_keys = set(before)
    params = smoke_params(launcher=LAUNCHER, train=TRAIN)
    params["ablations"] = {"long": {"vary": {"train.steps": [LONG_STEPS]}, "widths": [1, 2]}}
    write_params(project, params)
    log_path = project / "interrupted_repro.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(["dvc", "repro"], cwd=project, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait(lambda: len(set(_records(project)) - old_keys) == 2, 120, "two new training jobs", proc)
        records = {k: v for k, v in _records(project).items() if k not in old_keys}
        (preempted, p_rec), (cancelled, c_rec) = sorted(records.items())
        print(f"long runs: preempted job {p_rec['job_id']}, cancelled job {c_rec['job_id']}")
        for key in (preempted, cancelled):  # both mid-training: running, with resume state on disk
            _wait(lambda key=key: (project / "runs/.work/train" / key / "resume.pt").exists(), 180,
                  f"resume.pt of {key}", proc)
        status = run(["specscale", "status"], project).stdout
        assert f"job {c_rec['job_id']}" in status and ("running" in status or "queued" in status), status
        # time limit / preemption: SLURM's USR2 → submitit → RunTask.checkpoint → scontrol requeue (same job id)
        subprocess.run(["scancel", "--signal=USR2", p_rec["job_id"]], check=True)
        subprocess.run(["scancel", c_rec["job_id"]], check=True)
        proc.wait(timeout=420)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log_path.read_text()
    assert proc.returncode != 0, "a cancelled run must make the stage fail"
    assert "[train] 5 runs: 3 cached, 2 to compute" in out, out[-3000:]
    assert cancelled in out and "FAILED runs" in out, out[-3000:]
    # the preempted run was requeued, resumed from its resume.pt and finished; nothing else was touched
    assert preempted in finished(project, "train"), out[-3000:]
    p_out = Path(p_rec["folder"]) / f"{p_rec['job_id']}_0_log.out"
    p_err = Path(p_rec["folder"]) / f"{p_rec['job_id']}_0_log.err"
    assert "resumed from step" in p_out.read_text(), p_out.read_text()[-2000:]
    # USR2 is what SLURM sends 90 s before the time limit (--signal=USR2@90) or at preemption; the job then ran
    # twice under the same id (submitit's "Requeued job" line may be lost: SLURM kills the step as it requeues)
    assert "Caught signal SIGUSR2" in p_err.read_text(), p_err.read_text()[-2000:]
    assert p_out.read_text().count(f"Starting with JobEnvironment(job_id={p_rec['job_id']},") == 2, "same job id"
    assert cancelled not in finished(project, "train")
    assert {key: file_listing(project / "runs/train" / key) for key in old_keys} == before
    status = run(["specscale", "status"], project).stdout
    assert "failed" in status and f"{c_rec['job_id']}_0_log.err" in status, status
    # the rerun submits only the cancelled run, which resumes where it was killed
    rerun = run(["dvc", "repro"], project, timeout=600)
    assert "[train] 5 runs: 4 cached, 1 to compute" in rerun.stdout, rerun.stdout[-3000:]
    assert cancelled in finished(project, "train")
    assert len(finished(project, "spectra")) == 5
    new_job = provenance(project, "train", cancelled)["slurm_job_id"]
    assert new_job and new_job != c_rec["job_id"].split("_")[0]
    array = re.findall(r"\[train\] submitted job array (\d+) with 1 task ", rerun.stdout)
    assert len(array) == 1, rerun.stdout[-3000:]
    print(f"rerun of the cancelled run: job array {array[0]} (SLURM_JOB_ID {new_job})")
    # a one-task array is submitted as a plain job: its log is <id>_0_log.out, not <id>_0_0_log.out
    (rerun_log,) = Path(c_rec["folder"]).glob(f"{array[0]}_*log.out")
    assert "resumed from step" in rerun_log.read_text()
    assert json.loads((project / "runs/train" / cancelled / "result.json").read_text())["steps_done"] == LONG_STEPS
