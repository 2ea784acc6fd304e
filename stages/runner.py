"""Glue between the command line and the library: load and plan the study, run one stage from the stage table."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import DictConfig

from specscale.store.runs import RunStore
from specscale.store.fingerprint import CodeRef, ModuleGraph, package_dirs
from specscale.launch.inputs import check_inputs, lacking_text
from specscale.launch.launcher import Launcher, Task
from specscale.study.plan import StudyPlan, make_plan
from specscale.store.remote import RemoteError, restore_runs
from specscale.study.spec import load_study
from stages.table import BY_NAME, STAGES, VERSIONS, Stage


def project_root() -> Path:
    """The DVC project: $SPECSCALE_ROOT, else the working directory (dvc runs stage commands from the repo root)."""
    return Path(os.environ.get("SPECSCALE_ROOT", os.getcwd())).resolve()


def plan_study(study: DictConfig, where: Path | str = "params.yaml") -> StudyPlan:
    """The study's runs and keys, with every stage's version from the stage table."""
    return make_plan(study, VERSIONS, where)


def load_plan(params: str | Path | None = None) -> tuple[StudyPlan, RunStore]:
    root = project_root()
    params_path = Path(params) if params else root / "params.yaml"
    return plan_study(load_study(params_path), params_path), RunStore(root)


def stage_code(stage: Stage) -> CodeRef:
    """The code a stage runs: its script and every specscale module it imports (core cannot find the stage
    scripts itself: it never imports them, so their folder comes from here)."""
    return CodeRef.of(stage.module, package_dirs(Path(__file__).resolve().parent))


def fingerprints() -> dict[str, dict[str, str]]:
    """Today's code fingerprint of every stage that owns runs: {stage: {file: sha256}} (one graph for all)."""
    graph = ModuleGraph(package_dirs(Path(__file__).resolve().parent))
    return {s.name: graph.fingerprint(s.module) for s in STAGES if s.kind != "aggregate"}


def run_stage(stage: Stage, plan: StudyPlan, store: RunStore) -> int:
    """Run a stage: a single-run stage in this process (the debug path tests use), a fan-out stage's selected runs
    through the launcher, an aggregate stage's main. Returns the exit code. A damaged run that a stage is about to
    read is set aside and its stage run again, here (launch/inputs.py)."""
    rebuild = lambda name: run_stage(BY_NAME[name], plan, store)  # noqa: E731
    if stage.kind == "aggregate":
        read = [(s, r.key) for s in stage.reads for r in plan.stage_runs(s) if store.is_done(s, r.key)]
        lacking = check_inputs(store, stage.name, {stage.name: read}, rebuild, lambda msg: print(msg, flush=True),
                               transitive=False)
        if lacking:
            print(f"[{stage.name}] {lacking_text(store, lacking[stage.name])}", file=sys.stderr)
            return 1
        return stage.entry(plan, store)
    runs = plan.stage_runs(stage.name)
    launcher = plan.study.launcher
    if stage.kind == "single":
        launcher = launcher.copy()
        launcher.cluster = "debug"
    elif stage.select is not None:
        ready = stage.select(plan, store)
        runs = [r for r in runs if r.key in ready]
    restore_from_remote(stage.name, [r.key for r in runs], store)
    tasks = [Task(r.key, r.label, r.spec) for r in runs]
    return Launcher(stage.name, stage.entry, store, launcher, code=stage_code(stage),
                    on_code_change=plan.study.cache.on_code_change, rebuild=rebuild).run(tasks).exit_code


def restore_from_remote(stage: str, keys: list[str], store: RunStore) -> None:
    """Pull the runs a colleague already pushed before deciding what to compute: DVC's run cache does not restore
    persistent outputs (remote.py). A no-op without a default remote or when every run is here."""
    try:
        restore_runs(store, stage, keys)
    except RemoteError as err:
        sys.exit(f"[{stage}] {err}")
