"""Shared glue for stage commands: locate the project, load and plan the study, run a fan-out stage."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from specscale.cache import RunStore
from specscale.launch import Launcher, LaunchReport, Task
from specscale.plan import StudyPlan, make_plan
from specscale.remote import RemoteError, restore_runs
from specscale.spec import load_study


def project_root() -> Path:
    """The DVC project: $SPECSCALE_ROOT, else the working directory (dvc runs stage commands from the repo root)."""
    return Path(os.environ.get("SPECSCALE_ROOT", os.getcwd())).resolve()


def load_plan(params: str | Path | None = None) -> tuple[StudyPlan, RunStore]:
    root = project_root()
    params_path = Path(params) if params else root / "params.yaml"
    study = load_study(params_path)
    return make_plan(study, params_path), RunStore(root)


def run_in_process(stage: str, plan: StudyPlan, store: RunStore) -> LaunchReport:
    """Single-run stages (tokenize, buckets) run in this process through the same debug path as tests."""
    run = plan.stage_runs(stage)[0]
    restore_from_remote(stage, [run.key], store)
    launcher = plan.study.launcher.copy()
    launcher.cluster = "debug"
    return Launcher(stage, store, launcher).run([Task(run.key, run.label, run.spec)])


def run_fan_out(stage: str, plan: StudyPlan, store: RunStore, only: set[str] | None = None) -> LaunchReport:
    runs = [r for r in plan.stage_runs(stage) if only is None or r.key in only]
    restore_from_remote(stage, [r.key for r in runs], store)
    tasks = [Task(r.key, r.label, r.spec) for r in runs]
    return Launcher(stage, store, plan.study.launcher).run(tasks)


def restore_from_remote(stage: str, keys: list[str], store: RunStore) -> None:
    """Pull the runs a colleague already pushed before deciding what to compute: DVC's run cache does not restore
    persistent outputs (remote.py). A no-op without a default remote or when every run is here."""
    try:
        restore_runs(store, stage, keys)
    except RemoteError as err:
        sys.exit(f"[{stage}] {err}")


def input_dir(store: RunStore, stage: str, key: str) -> Path:
    """A finished input run's directory, or a clear error telling the user which stage to run first."""
    path = store.final_dir(stage, key)
    if not store.is_done(stage, key):
        sys.exit(f"input run runs/{stage}/{key} is not finished: run `dvc repro {stage}` first")
    return path
