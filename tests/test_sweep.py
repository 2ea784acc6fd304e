"""Sweep expansion (counts, dedup, seeds, labels) and run keys: what changes a key, what never does."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from helpers import REPO, make_project
from stages.runner import plan_study
from specscale.store.runs import stable_hash
from specscale.study.spec import SpecError, load_study
from specscale.study.sweep import expand_sweep

# The smoke preset with its model and sweep spelt out, so that editing the preset does not move these tests.
SMOKE = "preset: smoke\nmodel: {d_model: 32, n_heads: 2}\n"
SWEEP6 = "sweep: {optimizers: [adamw, muon], widths: [1, 2, 3], seeds: [0]}\n"
# One run: adamw, k=1, seed 0. Every key test perturbs this study.
ONE = SMOKE + "sweep: {optimizers: [adamw], widths: [1], seeds: [0]}\n"


def _study(tmp_path: Path, text: str):
    params = make_project(tmp_path, text)
    return load_study(params), params


def _runs(tmp_path: Path, text: str):
    study, params = _study(tmp_path, text)
    return expand_sweep(study, params)


def _plan(tmp_path: Path, text: str):
    study, params = _study(tmp_path, text)
    return plan_study(study, params)


# --- counts and dedup ----------------------------------------------------------------------------------------------


def test_main_sweep_count_and_order(tmp_path: Path) -> None:
    runs = _runs(tmp_path, SMOKE + SWEEP6)
    assert [(r.optimizer, r.width, r.seed) for r in runs] == [
        ("adamw", 1, 0), ("adamw", 2, 0), ("adamw", 3, 0), ("muon", 1, 0), ("muon", 2, 0), ("muon", 3, 0)]
    assert all(r.arms == ["main"] and r.varied == {} for r in runs)
    assert len({r.spec["model"]["ffn_mult"] for r in runs}) == 3


STUDY = """preset: tiny
model: {d_model: 64, n_heads: 4}
sweep: {optimizers: [adamw, muon, normuon, dion_1_2, dion_1_16], widths: [1, 2, 4, 8], seeds: [0]}
ablations:
  heads: {vary: {model.n_heads: [2]}, optimizers: [adamw, muon], widths: [1, 2, 4]}
  nope: {vary: {model.pos_encoding: [nope]}, optimizers: [adamw, muon], widths: [1, 2, 4]}
  postln: {vary: {model.postln_fraction: [0.5, 1.0]}, optimizers: [adamw, muon], widths: [2]}
  adamw_2x: {vary: {train.steps: [1000]}, optimizers: [adamw]}
"""


def test_study_with_ablations_count(tmp_path: Path) -> None:
    runs = _runs(tmp_path, STUDY)
    # main 5 opt × 4 widths = 20; heads 2×3 = 6; nope 2×3 = 6; postln 2 fractions × 2 opt × 1 width = 4;
    # adamw_2x: 1 opt × 4 widths (the main sweep's widths) = 4.
    assert len(runs) == 40
    by_arm: dict[str, int] = {}
    for r in runs:
        for arm in r.arms:
            by_arm[arm] = by_arm.get(arm, 0) + 1
    assert by_arm == {"main": 20, "heads": 6, "nope": 6, "postln": 4, "adamw_2x": 4}
    assert runs[0].arms == ["main"] and all(r.arms == ["main"] for r in runs[:20])  # main sweep first
    assert sorted(r.width for r in runs if r.arms == ["adamw_2x"]) == [1, 2, 4, 8]
    assert {r.spec["train"]["steps"] for r in runs if r.arms == ["adamw_2x"]} == {1000}


def test_project_params_yaml_expands(tmp_path: Path) -> None:
    study, params = _study(tmp_path, (REPO / "params.yaml").read_text())
    runs = expand_sweep(study, params)
    n_main = len(study.sweep.optimizers) * len(study.sweep.widths) * len(study.sweep.seeds)
    assert len(runs) > n_main and sum("main" in r.arms for r in runs) == n_main
    plan = plan_study(study, params)
    assert len(plan.keys("train")) == len(plan.train) == len(runs)


def test_ablation_repeating_base_values_shares_runs(tmp_path: Path) -> None:
    text = ("preset: tiny\nmodel: {d_model: 64, n_heads: 4}\n"
            "sweep: {optimizers: [adamw, muon, normuon], widths: [1, 2, 4, 8]}\n"
            "ablations:\n  heads: {vary: {model.n_heads: [4, 2]}, optimizers: [adamw, muon], widths: [1, 2, 4]}\n")
    runs = _runs(tmp_path, text)
    assert len(runs) == 12 + 6  # the 6 n_heads=4 runs are main-sweep runs
    shared = [r for r in runs if r.arms == ["main", "heads"]]
    assert sorted((r.optimizer, r.width) for r in shared) == [(o, k) for o in ("adamw", "muon") for k in (1, 2, 4)]
    assert all(r.spec["model"]["n_heads"] == 4 and r.varied == {} for r in shared)
    own = [r for r in runs if r.arms == ["heads"]]
    assert len(own) == 6 and all(r.spec["model"]["n_heads"] == 2 and r.varied == {"model.n_heads": 2} for r in own)
    from specscale.store.runs import stable_hash

    assert len({stable_hash(r.spec) for r in runs}) == len(runs)


def test_dedup_across_int_and_float_spellings(tmp_path: Path) -> None:
    """`postln_fraction: [0]` is the base 0.0: same run, not a second one hashed from the int."""
    runs = _runs(tmp_path, ONE + "ablations:\n  p: {vary: {model.postln_fraction: [0, 1]}}\n"
                                "  r: {vary: {model.rope_base: [10000]}}\n")
    assert len(runs) == 2
    assert runs[0].arms == ["main", "p", "r"]
    assert runs[1].spec["model"]["postln_fraction"] == 1.0
    assert isinstance(runs[1].spec["model"]["postln_fraction"], float)


def test_two_ablations_with_identical_runs_dedup(tmp_path: Path) -> None:
    runs = _runs(tmp_path, ONE + "ablations:\n  a: {vary: {model.n_heads: [1]}}\n  b: {vary: {model.n_heads: [1]}}\n")
    assert len(runs) == 2 and runs[1].arms == ["a", "b"]


def test_vary_is_a_cartesian_product(tmp_path: Path) -> None:
    runs = _runs(tmp_path, ONE + "ablations:\n  a: {vary: {model.n_heads: [1, 4], model.pos_encoding: [rope, nope]},"
                                 " widths: [1, 2]}\n")
    # 2 × 2 values × 2 widths = 8, minus (n_heads 2 is not among them) nothing shared with main → 1 + 8
    assert len(runs) == 9
    assert {(r.spec["model"]["n_heads"], r.spec["model"]["pos_encoding"]) for r in runs[1:]} == {
        (1, "rope"), (1, "nope"), (4, "rope"), (4, "nope")}


def test_seed_is_an_axis(tmp_path: Path) -> None:
    one = _runs(tmp_path / "a", SMOKE + SWEEP6)
    two = _runs(tmp_path / "b", SMOKE + SWEEP6.replace("seeds: [0]", "seeds: [0, 1]"))
    assert len(two) == 2 * len(one) == 12
    from specscale.store.runs import stable_hash

    keys = {stable_hash(r.spec) for r in two}
    assert len(keys) == 12
    for r0 in one:
        r1 = next(r for r in two if r.seed == 1 and r.optimizer == r0.optimizer and r.width == r0.width)
        assert stable_hash(r1.spec) != stable_hash(r0.spec)
        assert {**r1.spec, "seed": 0} == r0.spec  # the seed is the only difference


def test_ablation_with_its_own_seeds(tmp_path: Path) -> None:
    runs = _runs(tmp_path, ONE + "ablations:\n  s: {vary: {model.n_heads: [2]}, seeds: [0, 1, 2]}\n")
    # n_heads 2 is the base: seed 0 is the main run, seeds 1, 2 are new
    assert len(runs) == 3 and runs[0].arms == ["main", "s"] and [r.seed for r in runs] == [0, 1, 2]


def test_labels(tmp_path: Path) -> None:
    runs = _runs(tmp_path, ONE + "ablations:\n  h: {vary: {model.n_heads: [1]}, widths: [2]}\n")
    assert [r.label for r in runs] == ["adamw k=1 seed=0", "adamw k=2 seed=0 n_heads=1"]


def test_run_spec_holds_every_hparam_and_no_speed_fields(tmp_path: Path) -> None:
    from specscale.optim.defaults import default_hparams

    (run,) = _runs(tmp_path, ONE + "optim: {adamw: {lr: 0.01}}\n")
    assert set(run.spec) == {"data", "model", "train", "optim", "seed"}
    # every role's lr tied to lr and written as a number (defaults.resolve_lr_ties)
    tied = {"embed_lr": 0.01, "head_lr": 0.01, "other_lr": 0.01}
    assert run.spec["optim"] == {"name": "adamw", "hparams": {**default_hparams("adamw"), "lr": 0.01, **tied}}
    assert "threads" not in run.spec["train"] and "resume_every" not in run.spec["train"]


def test_arm_optim_overrides_only_that_arm(tmp_path: Path) -> None:
    runs = _runs(tmp_path, ONE + "optim: {adamw: {lr: 0.01}}\n"
                                 "ablations:\n  a: {vary: {model.n_heads: [2]}, optim: {adamw: {lr: 0.5}}}\n")
    assert len(runs) == 2  # same model, different lr: its own run
    assert [r.spec["optim"]["hparams"]["lr"] for r in runs] == [0.01, 0.5]
    assert runs[1].arms == ["a"]


# --- keys ----------------------------------------------------------------------------------------------------------


def _train_key(tmp_path: Path, extra: str) -> str:
    plan = _plan(tmp_path, ONE + extra)
    assert len(plan.train) == 1
    return plan.train[0].key


@pytest.mark.parametrize("extra", [
    "optim: {adamw: {lr: 0.001}}",
    "optim: {adamw: {betas: [0.9, 0.99]}}",
    "train: {steps: 41}",
    "train: {batch_size: 4}",
    "train: {decay_fraction: 0.5}",
    "model: {d_model: 64}",
    "model: {postln_fraction: 0.5}",
    "data: {vocab_size: 256}",
    "data: {max_bytes: 1000000}",
])
def test_relevant_field_changes_the_train_key(tmp_path: Path, extra: str) -> None:
    assert _train_key(tmp_path / "base", "") != _train_key(tmp_path / "changed", extra + "\n")


def test_width_changes_the_train_key(tmp_path: Path) -> None:
    plan = _plan(tmp_path, SMOKE + "sweep: {optimizers: [adamw], widths: [1, 2, 3]}\n")
    assert len({t.key for t in plan.train}) == 3


@pytest.mark.parametrize("extra", [
    "launcher: {max_parallel: 7}",
    "launcher: {cluster: debug}",
    "launcher: {cluster: slurm, partition: gpu, timeout_min: 5}",
    "train: {threads: 3}",
    "train: {resume_every: 3}",
    "fit: {last_k: 1, bootstrap: 5}",
    "sweep: {optimizers: [adamw, muon], widths: [1, 2]}",  # more runs, same key for the one we had
    "ablations:\n  a: {vary: {model.n_heads: [1]}}",
])
def test_launcher_and_speed_fields_keep_the_train_key(tmp_path: Path, extra: str) -> None:
    base_plan = _plan(tmp_path / "base", ONE)
    plan = _plan(tmp_path / "changed", ONE + extra + "\n")
    t0 = base_plan.train[0]
    t1 = next(t for t in plan.train if t.label == t0.label)
    assert t1.key == t0.key
    a1 = next(a for a in plan.activations if a.label == t0.label)
    assert a1.key == base_plan.activations[0].key  # nothing downstream changes either
    assert next(s for s in plan.spectra if s.label == t0.label).key == base_plan.spectra[0].key


def test_speed_fields_ride_in_runtime(tmp_path: Path) -> None:
    plan = _plan(tmp_path, ONE + "train: {threads: 3, resume_every: 7}\n")
    spec = plan.train[0].spec
    assert spec["runtime"] == {"threads": 3, "resume_every": 7}
    assert spec["stage"] == "train" and spec["inputs"] == {"tokenize": plan.tokenize.key}


def test_downstream_keys_follow_the_train_key(tmp_path: Path) -> None:
    base = _plan(tmp_path / "base", ONE)
    changed = _plan(tmp_path / "lr", ONE + "optim: {adamw: {lr: 0.001}}\n")
    assert changed.train[0].key != base.train[0].key
    assert changed.activations[0].key != base.activations[0].key
    assert changed.spectra[0].key != base.spectra[0].key
    assert changed.activations[0].inputs["train"] == changed.train[0].key
    assert changed.spectra[0].inputs["train"] == changed.train[0].key
    assert changed.buckets.key == base.buckets.key and changed.tokenize.key == base.tokenize.key


def test_data_change_propagates_through_tokenize(tmp_path: Path) -> None:
    base = _plan(tmp_path / "base", ONE)
    changed = _plan(tmp_path / "v", ONE + "data: {vocab_size: 256}\n")
    for stage in ("tokenize", "buckets", "train", "activations", "spectra"):
        assert changed.keys(stage).isdisjoint(base.keys(stage)), stage


def test_probe_changes_leave_train_and_hit_only_their_stage(tmp_path: Path) -> None:
    base = _plan(tmp_path / "base", ONE)
    alphas = _plan(tmp_path / "alphas", ONE + "probe: {alphas: [0.0, 1.0]}\n")
    keep = _plan(tmp_path / "keep", ONE + "probe: {keep_activations: all}\n")
    sites = _plan(tmp_path / "sites", ONE + "probe: {sites: [post]}\n")
    batch = _plan(tmp_path / "batch", ONE + "probe: {batch_size: 2}\n")
    for plan in (alphas, keep, sites, batch):
        assert plan.train[0].key == base.train[0].key
    assert alphas.activations[0].key == base.activations[0].key and alphas.spectra[0].key != base.spectra[0].key
    assert keep.activations[0].key != base.activations[0].key and keep.spectra[0].key == base.spectra[0].key
    assert sites.activations[0].key != base.activations[0].key and sites.spectra[0].key != base.spectra[0].key
    assert batch.activations[0].key == base.activations[0].key and batch.spectra[0].key == base.spectra[0].key


def test_keys_are_deterministic(tmp_path: Path) -> None:
    a = _plan(tmp_path / "a", STUDY)
    b = _plan(tmp_path / "b", STUDY)
    for stage in ("tokenize", "buckets", "train", "activations", "spectra"):
        assert [r.key for r in a.stage_runs(stage)] == [r.key for r in b.stage_runs(stage)]
    assert len(a.keys("train")) == len(a.train) == 40
    assert all(len(k) == 16 and int(k, 16) >= 0 for k in a.keys("train"))


# --- group_spec ----------------------------------------------------------------------------------------------------


def test_group_spec_is_equal_across_widths_only(tmp_path: Path) -> None:
    runs = _runs(tmp_path, SMOKE + SWEEP6.replace("seeds: [0]", "seeds: [0, 1]") +
                           "ablations:\n  h: {vary: {model.n_heads: [1]}, optimizers: [adamw]}\n")
    groups: dict[tuple, list] = {}
    for r in runs:
        groups.setdefault((r.optimizer, r.seed, r.spec["model"]["n_heads"]), []).append(r)
    assert len(groups) == 2 * 2 + 2  # (adamw, muon) × 2 seeds at n_heads=2, adamw × 2 seeds at n_heads=1
    distinct = []
    for members in groups.values():
        assert sorted(r.width for r in members) == [1, 2, 3]
        specs = [r.group_spec() for r in members]
        assert all(s == specs[0] for s in specs)
        assert "ffn_mult" not in specs[0]["model"]
        distinct.append(specs[0])
    assert all(distinct[i] != distinct[j] for i in range(len(distinct)) for j in range(i))
    assert all("ffn_mult" in r.spec["model"] for r in runs)  # group_spec does not mutate the run spec


def test_steps_multiplier_is_relative_to_the_base_and_not_hashed(tmp_path: Path) -> None:
    """An arm 'twice the steps' follows train.steps, and is the same run as an arm naming the absolute value."""
    relative = STUDY.replace("{vary: {train.steps: [1000]}", "{vary: {train.steps_multiplier: [2]}")
    for steps in (400, 700):
        runs = _runs(tmp_path / str(steps), relative.replace("preset: tiny\n", f"preset: tiny\ntrain: {{steps: {steps}}}\n"))
        doubled = [r for r in runs if r.arms == ["adamw_2x"]]
        assert {r.spec["train"]["steps"] for r in doubled} == {2 * steps}
        assert all("steps_multiplier" not in r.spec["train"] for r in runs)  # resolved, never part of a key
        # labelled by what it resolved to: the matched-loss family and the paper's 'steps=12000' read the same
        assert doubled[0].varied == {"train.steps": 2 * steps} and doubled[0].group_label == f"adamw steps={2 * steps}"
    absolute = _runs(tmp_path / "abs", STUDY.replace("[1000]", "[800]"))
    relative_400 = _runs(tmp_path / "rel", relative)
    assert ({stable_hash(r.spec) for r in absolute if r.arms == ["adamw_2x"]}
            == {stable_hash(r.spec) for r in relative_400 if r.arms == ["adamw_2x"]})


def test_lr_multiplier_arm_sweeps_each_optimizers_lr(tmp_path: Path) -> None:
    """`vary: {optim.lr_multiplier: [...]}`: each optimizer at its own lr × m, tied per-role lrs following; labelled
    by the resolved lr; × 1 is the main sweep's run."""
    text = SMOKE + ("sweep: {optimizers: [adamw, muon], widths: [1], seeds: [0]}\n"
                    "ablations:\n  lr: {vary: {optim.lr_multiplier: [0.5, 1]}}\n")
    runs = _runs(tmp_path, text)
    assert len(runs) == 4  # 2 main runs + 2 at × 0.5; × 1 is the main runs
    by_label = {r.label: r for r in runs}
    adamw = by_label["adamw k=1 seed=0 lr=0.0015"].spec["optim"]["hparams"]
    assert adamw["lr"] == adamw["embed_lr"] == adamw["head_lr"] == adamw["other_lr"] == 3e-3 * 0.5
    muon = by_label["muon k=1 seed=0 lr=0.01"].spec["optim"]["hparams"]
    d_model = by_label["muon k=1 seed=0 lr=0.01"].spec["model"]["d_model"]
    assert muon["lr"] == muon["embed_lr"] == 0.02 * 0.5 and muon["head_lr"] == 0.02 * 0.5 / math.sqrt(d_model)
    assert by_label["adamw k=1 seed=0"].arms == ["main", "lr"]


def test_lr_multiplier_must_be_positive(tmp_path: Path) -> None:
    text = ONE + "ablations:\n  lr: {vary: {optim.lr_multiplier: [0.5, -1]}}\n"
    with pytest.raises(SpecError, match=r"ablations\.lr\.vary\.optim\.lr_multiplier.*numbers > 0"):
        _study(tmp_path, text)
