"""The study files under specs/params/ (what docs/findings/ ran: `cp specs/params/X.yaml params.yaml && dvc repro`)
load, validate and plan the runs their findings report, so a preset edit cannot silently change a published study."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from helpers import REPO, make_project
from specscale.study.spec import load_study
from stages.runner import plan_study


def _plan(tmp_path: Path, name: str):
    params = make_project(tmp_path, (REPO / "specs" / "params" / f"{name}.yaml").read_text())
    study = load_study(params)
    return study, plan_study(study, params)


def test_tiny_long_plans_main_sweep_lr_sweep_and_tuned_arm(tmp_path):
    study, plan = _plan(tmp_path, "tiny-long")
    assert (study.data.source, study.train.steps, study.train.log_every) == ("stdlib", 1800, 100)
    arms = Counter(arm for run in plan.train for arm in run.point.arms)
    # main: 2 optimizers × 4 widths × 3 seeds; lr_sweep: 2 × 6 multipliers at k = 1, seed 0; tuned: AdamW's 12 runs
    # at 0.024 are new, Muon's 12 at 0.02 are the main sweep's runs (same key, one run in two arms)
    assert (arms["main"], arms["lr_sweep"], arms["tuned"]) == (24, 12, 24)
    assert len(plan.train) == len({run.key for run in plan.train}) == 24 + 12 + 12


def test_tiny_long_english_is_the_main_sweep_on_gcide(tmp_path):
    study, plan = _plan(tmp_path, "tiny-long-english")
    assert (study.data.source, list(study.data.paths)) == ("files", ["/usr/share/dictd/gcide.dict.dz"])
    assert (study.data.doc_bytes, study.train.steps, dict(study.ablations)) == (1024, 1800, {})
    assert Counter((run.point.optimizer, run.point.width) for run in plan.train) == {
        (opt, k): 3 for opt in ("adamw", "muon") for k in (1, 2, 4, 8)}


def test_the_default_plans_three_seeds_for_the_primary_and_one_for_every_other_family(tmp_path):
    params = make_project(tmp_path, (REPO / "params.yaml").read_text())
    study = load_study(params)
    plan = plan_study(study, params)
    assert (study.train.steps, study.fit.primary.comparison) == (600, "muon - adamw")
    arms = Counter(arm for run in plan.train for arm in run.point.arms)
    assert (arms["main"], arms["optimizers"], arms["heads"], arms["nope"], arms["postln"], arms["adamw_2x"]) == (
        24, 9, 6, 6, 2, 3)
    assert len(plan.train) == 50
    main = [run for run in plan.train if "main" in run.point.arms]
    assert Counter((run.point.optimizer, run.point.seed) for run in main) == {
        (opt, seed): 4 for opt in ("adamw", "muon") for seed in (0, 1, 2)}
    assert {run.spec["optim"]["hparams"]["lr"] for run in main if run.point.optimizer == "adamw"} == {0.024}


def test_arch_and_matched_loss_shares_the_defaults_main_sweep_and_seeds_every_arm(tmp_path):
    study, plan = _plan(tmp_path / "a", "arch-and-matched-loss")
    default = make_project(tmp_path / "d", (REPO / "params.yaml").read_text())
    candidate = plan_study(load_study(default), default)
    arms = Counter(arm for run in plan.train for arm in run.point.arms)
    assert (arms["main"], arms["heads"], arms["nope"], arms["adamw_2x"]) == (24, 18, 18, 9)
    assert {run.point.seed for run in plan.train} == {0, 1, 2}
    # the main sweep is the same runs (same keys): cached when the default ran
    main = {run.key for run in plan.train if "main" in run.point.arms}
    assert main == {run.key for run in candidate.train if "main" in run.point.arms}
