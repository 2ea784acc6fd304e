"""The paper presets (specs/gpt2-160m.yaml, specs/gpt2-350m.yaml) equal the paper, field by field.

The paper's values are written out below, in the test, from docs/science.md §2–§8 and the authors' launch configs
(optimizer-scaling-laws/spectral-scaling-laws, configs/paper_runs/*): a preset edit that drifts from the paper fails
here, naming the field. Each preset is loaded as a user loads it (a params.yaml naming it) and expanded into run
specs, so what is compared is what the runs would get, optimizer hyperparameters resolved (Lion lrs tied to lr).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import make_project
from specscale.optim.factory import build_optimizer, roles_from_names
from specscale.study.spec import load_study, to_container
from stages.runner import plan_study
from specscale.study.sweep import expand_sweep
from specscale.model.build import kept_checkpoints, logged_steps, model_shape

# --- the paper's values --------------------------------------------------------------------------------------------

COMMON = {
    # §2 model family
    "model.pos_encoding": "rope",
    "model.rope_base": 10000.0,
    "model.postln_fraction": 0.0,
    "model.vocab_multiple": 64,  # GPT-2's 50,257 types padded to 50,304 rows
    "train.seq_len": 512,
    # §3 training protocol
    "data.source": "bin",
    "train.batch_size": 1024,  # sequences: 524,288 tokens per step
    "train.decay_fraction": 0.2,  # constant lr, no warmup, linear decay to 0 over the last 20%
    "train.val_tokens": 10_485_760,
    "train.precision": "auto",  # bf16 autocast on CUDA, fp32 logits
    "train.diverged_ppl": 1000.0,  # §7: × = validation perplexity > 1000
    "train.early_stop_loss_ratio": 0.0,  # the paper stops no run early
    "train.steps_multiplier": 1.0,
    "train.keep_all_checkpoints": False,
    # §5 what is measured
    "probe.sites": ["pre", "post"],
    "probe.min_bucket_tokens": 1000,
    "probe.bucket_rule": "paper",
    "probe.bucket_edges": [0.33, 0.67],
    "probe.pooled_tokens": 524_288,  # pooled spectra: the whole batch, all GPUs
    # §6 aggregation and fit
    "train.keep_checkpoints": 5,
    "fit.last_k": 5,
    "fit.headline_site": "post",
    "fit.reference_optimizer": "adamw",
}

PAPER = {
    "gpt2-160m": {
        **COMMON,
        "model.d_model": 768,
        "model.n_layers": 12,
        "model.n_heads": 12,
        "sweep.widths": [1, 2, 3, 4, 5, 6, 7, 8],
        "sweep.optimizers": ["adamw", "muon", "normuon", "dion_1_2", "dion_1_16"],
        "train.steps": 6000,
        "train.micro_batch_size": 64,  # device batch on 4 GPUs (4 micro-batches of 64 per rank)
        "train.log_every": 200,
        "probe.tokens_per_bucket": 43_690,  # ≈ 131,072 / 3 (rank 0's share of the batch on 4 GPUs)
        "launcher.gpus_per_node": 4,
    },
    "gpt2-350m": {
        **COMMON,
        "model.d_model": 1024,
        "model.n_layers": 24,
        "model.n_heads": 32,
        "sweep.widths": [1, 2, 3, 4],
        "sweep.optimizers": ["adamw", "muon", "normuon", "dion_1_16"],
        "train.steps": 8000,
        "train.micro_batch_size": 16,  # device batch on 8 GPUs (8 micro-batches of 16 per rank)
        "train.log_every": 400,
        "probe.tokens_per_bucket": 21_845,  # ≈ 65,536 / 3 (rank 0's share of the batch on 8 GPUs)
        "launcher.gpus_per_node": 8,
    },
}
LAST_FIVE = {"gpt2-160m": [5200, 5400, 5600, 5800, 6000], "gpt2-350m": [6400, 6800, 7200, 7600, 8000]}

# §4 optimizers (embedding and head lrs of Lion: lr and lr / √d_model, tied to lr as in the authors' code)
ADAMW = {"lr": 3e-3, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.01, "embed_lr": 3e-3,
         "embed_weight_decay": 0.0, "head_lr": 3e-3, "head_weight_decay": 0.0}
MATRIX = {"lr": 0.02, "momentum": 0.95, "weight_decay": 0.01, "scale_rule": "spectral"}
NS = {"nesterov": True, "ns_steps": 5, "ns_coeffs": "paper", "ns_dtype": "bfloat16"}  # §4.2: NS in bf16 on GPU
DION_PRECISION = {"state_dtype": "bfloat16", "q_dtype": "bfloat16"}  # §4.5: `mixed_precision: true`, M and Q in bf16
LION = {"lion_betas": [0.95, 0.98], "lion_weight_decay": 0.0}
DION_FRACTIONS = {"dion_1_2": 0.5, "dion_1_4": 0.25, "dion_1_8": 0.125, "dion_1_16": 0.0625}


def _paper_hparams(name: str, d_model: int) -> dict[str, Any]:
    if name == "adamw":
        return ADAMW
    lion = {**LION, "embed_lr": 0.02, "head_lr": 0.02 / math.sqrt(d_model)}
    if name == "muon":
        return {**MATRIX, **NS, **lion}
    if name == "normuon":
        return {**MATRIX, **NS, **lion, "beta2": 0.95}
    return {**MATRIX, **lion, **DION_PRECISION, "rank_fraction": DION_FRACTIONS[name]}


# --- loading -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(PAPER))
def preset(request, tmp_path_factory) -> tuple[str, Any, Path]:
    params = make_project(tmp_path_factory.mktemp(request.param), f"preset: {request.param}\n")
    return request.param, load_study(params), params


def _flat(study) -> dict[str, Any]:
    out = {}
    for section in ("data", "model", "train", "probe", "fit", "sweep", "launcher"):
        for key, value in to_container(study[section]).items():
            out[f"{section}.{key}"] = value
    return out


def test_fields_equal_the_paper(preset) -> None:
    name, study, _ = preset
    resolved = _flat(study)
    wrong = {k: (resolved.get(k), v) for k, v in PAPER[name].items() if resolved.get(k) != v}
    assert not wrong, f"{name}: (preset, paper) differ: {wrong}"
    assert len(study.sweep.seeds) == 1  # a single seed per configuration


def test_derived_quantities(preset) -> None:
    name, study, _ = preset
    t = study.train
    assert t.batch_size * t.seq_len == 524_288  # tokens per step
    share = t.batch_size // study.launcher.gpus_per_node * t.seq_len  # rank 0's share: the paper's bucket input
    assert share == {"gpt2-160m": 131_072, "gpt2-350m": 65_536}[name]
    assert study.probe.tokens_per_bucket == share // 3
    spec = expand_sweep(study, Path("params.yaml"))[0].spec
    assert model_shape(spec, 50257).vocab_size == 50304
    steps = logged_steps(int(t.steps), int(t.log_every))
    assert steps[:3] == [0, 1, int(t.log_every)] and steps[-5:] == LAST_FIVE[name]
    kept = kept_checkpoints(int(t.steps), int(t.log_every), int(t.keep_checkpoints), False)
    assert kept == [0, *LAST_FIVE[name]]


def _same(got, want) -> bool:
    """Numbers (and lists of them) to float64 rounding, everything else exactly (pytest ≥ 9.2's approx rejects
    strings such as 'bfloat16')."""
    if isinstance(want, (str, bool)) or want is None:
        return got == want
    return got == pytest.approx(want, rel=1e-12)


def test_every_run_has_the_papers_optimizer_settings(preset) -> None:
    name, study, params = preset
    runs = expand_sweep(study, params)
    for run in runs:
        opt = run.optimizer
        d = run.spec["model"]["d_model"]
        if all(arm != "main" and study.ablations[arm].optim for arm in run.arms):
            continue  # an arm with its own lr (the PostLN AdamW arms, checked below)
        hp = run.spec["optim"]["hparams"]
        expected = _paper_hparams(opt, d)
        wrong = {k: (hp.get(k), v) for k, v in expected.items() if not _same(hp.get(k), v)}
        assert not wrong, f"{name} {run.label}: (run spec, paper) differ: {wrong}"
        assert all(v is not None for v in hp.values()), f"{run.label}: a hyperparameter is left unresolved: {hp}"


def test_ablation_arms_160m(preset) -> None:
    name, study, params = preset
    runs = expand_sweep(study, params)
    if name == "gpt2-350m":
        assert not study.ablations  # §7: the scale check is the main sweep only
        assert len(runs) == 16
        return
    by_arm: dict[str, list] = {}
    for run in runs:
        for arm in run.arms:
            by_arm.setdefault(arm, []).append(run)
    assert len(by_arm["main"]) == 40  # 5 optimizers × 8 widths
    assert {r.spec["model"]["n_heads"] for r in by_arm["heads6"]} == {6} and len(by_arm["heads6"]) == 40
    assert {r.spec["model"]["pos_encoding"] for r in by_arm["nope"]} == {"nope"}
    # Matched loss: AdamW 12,000 steps with its own schedule, every logged checkpoint kept; labelled by its steps.
    long = by_arm["adamw_12k"]
    assert len(long) == 8 and {r.optimizer for r in long} == {"adamw"}
    assert all(r.spec["train"]["steps"] == 12000 and r.spec["train"]["keep_all_checkpoints"] for r in long)
    assert {r.varied_label for r in long} == {"steps=12000"}
    assert {r.optimizer for r in by_arm["dion_rank"]} == {"dion_1_4", "dion_1_8"}
    postln = [r for r in runs if r.spec["model"]["postln_fraction"] > 0]
    assert sorted({r.spec["model"]["postln_fraction"] for r in postln}) == [0.25, 0.5, 0.75, 1.0]
    adamw_lrs = sorted({r.spec["optim"]["hparams"]["lr"] for r in postln if r.optimizer == "adamw"})
    assert adamw_lrs == [1e-4, 3e-4]  # §8: AdamW PostLN at lr 1e-4 and 3e-4, every role at that lr
    for r in postln:
        hp = r.spec["optim"]["hparams"]
        if r.optimizer == "adamw":
            assert hp["embed_lr"] == hp["head_lr"] == hp["lr"]
        else:  # the other optimizers keep the paper's settings under PostLN
            assert {k: hp[k] for k in _paper_hparams(r.optimizer, 768)} == _paper_hparams(r.optimizer, 768)


def test_buckets_spec_follows_the_probe_fields(preset) -> None:
    _, study, params = preset
    spec = plan_study(study, params).buckets.spec
    assert spec["rule"] == "paper" and spec["edges"] == [0.33, 0.67] and spec["vocab_multiple"] == 64
    assert spec["tokens_per_bucket"] == study.probe.tokens_per_bucket and spec["pooled_tokens"] == 524_288


# --- Lion lr ties (docs/science.md §4.6: embedding lr = lr, head lr = lr / √d_model, as in the authors' code) ------


def test_a_sweep_over_lr_moves_the_tied_lion_lrs(tmp_path: Path) -> None:
    params = make_project(tmp_path, "preset: gpt2-160m\noptim: {muon: {lr: 0.01}, dion: {lr: 0.04}}\n"
                                    "ablations: {}\nsweep: {optimizers: [muon, dion_1_2, normuon], widths: [1]}\n"
                                    "fit: {reference_optimizer: muon, primary: {comparison: normuon - muon}}\n")
    runs = {r.optimizer: r.spec["optim"]["hparams"] for r in expand_sweep(load_study(params), params)}
    assert runs["muon"]["embed_lr"] == runs["muon"]["other_lr"] == 0.01
    assert runs["muon"]["head_lr"] == 0.01 / math.sqrt(768)
    assert runs["dion_1_2"]["embed_lr"] == 0.04 and runs["dion_1_2"]["head_lr"] == 0.04 / math.sqrt(768)
    assert runs["normuon"]["embed_lr"] == 0.02 and runs["normuon"]["head_lr"] == 0.02 / math.sqrt(768)
    # An explicit value unties that one lr only.
    params = make_project(tmp_path / "b", "preset: gpt2-160m\noptim: {muon: {lr: 0.01, head_lr: 0.005}}\n"
                                          "ablations: {}\nsweep: {optimizers: [muon], widths: [1]}\n")
    (run,) = expand_sweep(load_study(params), params)
    assert run.spec["optim"]["hparams"]["embed_lr"] == 0.01 and run.spec["optim"]["hparams"]["head_lr"] == 0.005


def test_a_sweep_over_adamw_lr_moves_every_role(tmp_path: Path) -> None:
    """Under AdamW the authors' code sets every param group's lr to lr (the head is not scaled by d_model)."""
    params = make_project(tmp_path, "preset: gpt2-160m\noptim: {adamw: {lr: 0.001}}\n"
                                    "ablations: {}\nsweep: {optimizers: [adamw], widths: [1]}\n")
    (run,) = expand_sweep(load_study(params), params)
    hp = run.spec["optim"]["hparams"]
    assert hp["lr"] == hp["embed_lr"] == hp["head_lr"] == hp["other_lr"] == 0.001
    params = make_project(tmp_path / "b", "preset: gpt2-160m\noptim: {adamw: {lr: 0.001, embed_lr: 0.002}}\n"
                                          "ablations: {}\nsweep: {optimizers: [adamw], widths: [1]}\n")
    (run,) = expand_sweep(load_study(params), params)
    assert run.spec["optim"]["hparams"]["embed_lr"] == 0.002 and run.spec["optim"]["hparams"]["head_lr"] == 0.001


def test_tied_lrs_reach_the_lion_param_groups() -> None:
    embed, head, q = (torch.nn.Parameter(torch.zeros(8, 4)) for _ in range(3))
    named = [("embed.weight", embed), ("blocks.0.attn.q.weight", q), ("head.weight", head)]
    opt = build_optimizer(roles_from_names(named), "muon", {"lr": 0.01}, d_model=16)
    lion = {g["role"]: g["lr"] for g in opt.optimizers["lion"].param_groups}
    assert lion == {"embed": 0.01, "head": 0.01 / 4}
