"""The validate stage, first in dvc.yaml, and `specscale validate`: the whole study is checked before any stage
writes anything. params.yaml and its preset, every section (study/spec.py); every run's optimizer settings through
the optimizers' own checks (study/sweep.py with optim/factory.py); the data files `data.paths` names; the stages the
launcher is told to run inline. Each failure names the file and the key and exits non-zero.

The stage depends on the whole params.yaml (not on chosen keys, as the other stages do), so any edit, in any
section, is checked at the next `dvc repro`. It writes a record that tokenize lists as a dep, so every stage runs
after it; the record names only the params file and the preset, which every stage lists already, so a check that
passes reruns nothing downstream."""

from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import DictConfig

from specscale.optim.factory import check_hparams
from specscale.study.plan import StudyPlan
from specscale.study.spec import SpecError, load_study
from specscale.study.sweep import RunPoint, check_hyperparameters, expand_sweep
from specscale.tokens.corpus import unmatched_patterns


def check_study(params_path: Path, root: Path) -> tuple[DictConfig, list[RunPoint]]:
    """The study and its training runs, or SpecError naming `params_path` and the key. `root` is the project root,
    against which data globs resolve (as tokenize resolves them)."""
    study = load_study(params_path)
    points = expand_sweep(study, params_path)
    check_hyperparameters(study, points, check_hparams, params_path)
    if study.data.source in ("files", "bin"):
        globs = {"paths": study.data.paths, "val_paths": study.data.val_paths}
        for field, patterns in globs.items():
            for i, why in unmatched_patterns([str(p) for p in patterns], root):
                raise SpecError(f"{params_path}: key 'data.{field}[{i}]': {why}")
    stages = StudyPlan.run_stages()
    for i, name in enumerate(study.launcher.inline_stages):
        if name not in stages:  # the launcher compares names: a misspelt one would silently run in a subprocess
            raise SpecError(f"{params_path}: key 'launcher.inline_stages[{i}]': no stage '{name}'; stages that own "
                            f"runs: {', '.join(stages)}")
    return study, points


def write_record(study: DictConfig, params_path: Path, root: Path, record: Path) -> None:
    """What was checked, written whole (temporary file, then rename) so that DVC never hashes half a record."""
    params = params_path.resolve()
    shown = params.relative_to(root) if params.is_relative_to(root) else params
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_name(f".{record.name}.tmp")
    tmp.write_text(json.dumps({"params": str(shown), "preset": str(study.preset)}, indent=2) + "\n")
    os.replace(tmp, record)
