"""Comparisons on hand-made tables: the optimizer-vs-architecture count (ties, missing cells, the reference, the
base match), the PostLN × rule, the paper side-by-side join, β over training, and the settings text that ties our
runs to the published rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from specscale.compare import comparisons as cmp
from specscale.compare.paper import load_published, our_cells, side_by_side

from tolerances import rounding_tol

WIDTHS = (1, 2, 4)
F64 = np.float64


def make_runs(spec: dict[str, dict]) -> pd.DataFrame:
    """runs.csv rows: spec = group → {optimizer, varied, extra, seed, widths, ppl (per width), diverged}."""
    rows = []
    for group, g in spec.items():
        for i, k in enumerate(g.get("widths", WIDTHS)):
            ppl = g.get("ppl", [50.0] * 8)[i]
            rows.append({"run": f"{group}-{k}", "group": group, "seed_group": group, "optimizer": g["opt"],
                         "optim_extra": g.get("extra", ""), "seed": g.get("seed", 0),
                         "varied": json.dumps(g.get("varied", {})), "group_label": g["opt"], "steps": 100,
                         "width_mult": k, "ffn_dim": 16 * k, "val_ppl": ppl, "diverged": g.get("diverged", False)})
    return pd.DataFrame(rows)


def make_betas(cells: dict[tuple[str, str, str], float | None]) -> pd.DataFrame:
    """betas.csv rows (trained, post): (group, bucket, metric) → β, or None for a cell that was not fitted."""
    rows = [{"group": g, "phase": "trained", "site": "post", "bucket": b, "metric": m,
             "beta": math.nan if v is None else v, "fitted": v is not None, "reason": "" if v is not None else "n<3",
             "r2": 0.9, "delta_soft_hard": math.nan} for (g, b, m), v in cells.items()]
    return pd.DataFrame(rows)


HEADS = {"model.n_heads": 6}


def test_count_with_ties_missing_and_uncounted_global() -> None:
    runs = make_runs({"A": {"opt": "adamw"}, "M": {"opt": "muon"},
                      "A6": {"opt": "adamw", "varied": HEADS}, "M6": {"opt": "muon", "varied": HEADS}})
    groups = cmp.group_table(runs)
    cells = {
        # base: gain = muon − adamw = 0.5 (HEAD soft), 0.2 (HEAD hard), 0.3 (MID soft), 0.3 (MID hard), 0.4 GLOBAL
        ("A", "HEAD", "soft_rank"): 0.4, ("M", "HEAD", "soft_rank"): 0.9,
        ("A", "HEAD", "hard_rank"): 0.25, ("M", "HEAD", "hard_rank"): 0.45,
        ("A", "MID", "soft_rank"): 0.5, ("M", "MID", "soft_rank"): 0.8,
        ("A", "MID", "hard_rank"): 0.25, ("M", "MID", "hard_rank"): 0.55,
        ("A", "GLOBAL", "soft_rank"): 0.5, ("M", "GLOBAL", "soft_rank"): 0.9,
        ("A", "GLOBAL", "hard_rank"): 0.5, ("M", "GLOBAL", "hard_rank"): 0.9,
        # ablations
        ("A6", "HEAD", "soft_rank"): 0.45,   # shift .05 < .5: exceeds
        ("M6", "HEAD", "soft_rank"): 0.8,    # shift .1 < .5: exceeds
        ("A6", "HEAD", "hard_rank"): 0.5,    # shift .25 > .2: exception
        ("M6", "HEAD", "hard_rank"): 0.25,   # shift .2 = gain .2: tie → not exceeding
        ("A6", "MID", "soft_rank"): None,    # not fitted → missing
        # ("M6", "MID", "soft_rank") absent → missing
        ("A6", "MID", "hard_rank"): 0.3,     # exceeds
        ("M6", "MID", "hard_rank"): 0.5,     # exceeds
        ("A6", "GLOBAL", "soft_rank"): 2.0,  # shift 1.5 > gain, but GLOBAL is not counted
    }
    res = cmp.compare_arch_vs_optimizer(make_betas(cells), groups, "adamw")
    assert (res.k, res.n) == (4, 6)
    exc = {(r.optimizer, r.bucket, r.metric, r.status) for r in res.exceptions.itertuples()}
    assert exc == {("adamw", "HEAD", "hard_rank", "not_exceeding"), ("muon", "HEAD", "hard_rank", "tie")}
    miss = {(r.optimizer, r.bucket, r.metric) for r in res.missing.itertuples()}
    assert miss == {("adamw", "MID", "soft_rank"), ("muon", "MID", "soft_rank")}
    assert "not fitted" in res.missing.set_index("optimizer").loc["adamw", "reason"]
    assert "absent" in res.missing.set_index("optimizer").loc["muon", "reason"]
    glob = res.table[(res.table["bucket"] == "GLOBAL") & (res.table["optimizer"] == "adamw")
                     & (res.table["metric"] == "soft_rank")].iloc[0]
    assert not glob["counted"] and glob["status"] == "not_exceeding"
    assert res.sentence().startswith("optimizer gain exceeds architecture shift in 4 of 6 comparisons")
    gain = res.gains.set_index(["bucket", "metric"]).loc[("HEAD", "soft_rank")]
    # 0.9 − 0.4 in float64: one rounding; the next-best gain differs by 0.2
    assert gain["gain"] == pytest.approx(0.5, abs=rounding_tol(F64, 1, magnitude=0.9)) and gain["best"] == "muon"


def test_count_without_reference_or_matching_base() -> None:
    """No AdamW in the base → every cell missing (reference not fitted). An ablation arm with its own lr has no base
    with the same optimizer settings. A one-width ablation is skipped, not missing."""
    runs = make_runs({"M": {"opt": "muon"}, "N": {"opt": "normuon"}, "M6": {"opt": "muon", "varied": HEADS},
                      "Mlr": {"opt": "muon", "extra": "lr=0.001", "varied": HEADS},
                      "P": {"opt": "muon", "varied": {"model.postln_fraction": 0.5}, "widths": [2]}})
    groups = cmp.group_table(runs)
    cells = {(g, "TAIL", m): 0.8 for g in ("M", "N", "M6", "Mlr") for m in cmp.FIT_METRICS}
    res = cmp.compare_arch_vs_optimizer(make_betas(cells), groups, "adamw")
    assert res.n == 0 and len(res.missing) == 4
    assert res.missing["reason"].str.contains("reference optimizer adamw not fitted").all()
    assert res.missing["reason"].str.contains("no base group with the same optimizer settings").sum() == 2
    assert len(res.skipped) == 1 and "postln_fraction=0.5" in res.skipped[0]


@pytest.mark.parametrize("ppl, flag, cell", [
    (41.94, False, "41.9"), (999.9, False, "999.9"), (1000.0, False, "1000.0"),  # the rule is "> 1000"
    (1000.1, False, "×"), (35.0, True, "×"), (math.nan, False, "×"), (math.inf, False, "×")])
def test_postln_cross_rule(ppl: float, flag: bool, cell: str) -> None:
    assert cmp.ppl_cell(ppl, flag) == cell


def test_postln_table_columns_and_labels() -> None:
    spec = {f"{o}{f}": {"opt": o, "extra": e, "varied": {"model.postln_fraction": f}, "widths": [4],
                        "ppl": [p], "diverged": d}
            for o, e, f, p, d in [("adamw", "lr=0.0001", 0.25, 64.6, False), ("adamw", "lr=0.0001", 1.0, 2e4, False),
                                  ("muon", "", 0.25, 28.7, False), ("muon", "", 1.0, 30.0, True)]}
    runs = make_runs(spec)
    table = cmp.postln_table(runs, cmp.group_table(runs)).set_index("optimizer")
    assert list(table.columns) == ["width_mult", "PostLN-25", "Full"]
    assert table.loc["adamw lr=0.0001", "PostLN-25"] == "64.6" and table.loc["adamw lr=0.0001", "Full"] == "×"
    assert table.loc["muon", "Full"] == "×"  # flagged diverged even though its perplexity is finite
    plain = make_runs({"A": {"opt": "adamw"}})
    assert cmp.postln_table(plain, cmp.group_table(plain)).empty


def test_settings_text_matches_published_rows() -> None:
    from specscale.study.labels import format_extra

    extra = format_extra({"lr": 1e-4, "embed_lr": 1e-4, "head_lr": 1e-4})
    assert extra == "lr=0.0001"
    assert format_extra({"lr": 3e-4, "momentum": 0.9}) == "lr=0.0003 momentum=0.9"
    published = set(load_published()["setting"])
    assert cmp.setting_of({"model.postln_fraction": 0.25}, extra) in published
    assert cmp.setting_of({"model.postln_fraction": 1.0}) in published
    assert cmp.setting_of({"train.steps": 12000}) in published
    assert cmp.setting_of({"model.n_heads": 6}) in published


def test_published_file_holds_section_8() -> None:
    pub = load_published()
    beta = pub[(pub["kind"] == "beta") & (pub["model"] == "gpt2-160m") & (pub["setting"] == "")]
    assert len(beta) == 5 * 4 * 2 + 2  # 5 optimizers × 4 buckets × soft/hard, + Dion ¼ and ⅛ TAIL hard
    cell = beta.set_index(["optimizer", "bucket", "metric"])["value"]
    assert cell[("adamw", "TAIL", "hard_rank")] == 0.44 and cell[("muon", "TAIL", "hard_rank")] == 1.02
    ppl = pub[pub["kind"] == "val_ppl"]
    assert len(ppl) == 6 * 8 and ppl["value"].between(25, 40).all()
    postln = pub[pub["kind"] == "postln_ppl"]
    assert len(postln) == 24 and postln["diverged"].sum() == 10 and postln.loc[postln["diverged"], "value"].isna().all()
    assert set(pub.loc[pub["model"] == "gpt2-350m", "optimizer"]) == {"adamw", "muon", "normuon", "dion_1_16"}


def _paper_inputs() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    runs = make_runs({"A": {"opt": "adamw", "ppl": [38.0, 36.0, 34.0]},
                      "P25": {"opt": "adamw", "extra": "lr=0.0003", "varied": {"model.postln_fraction": 0.25},
                              "widths": [4], "ppl": [40.0]},
                      "P50": {"opt": "adamw", "extra": "lr=0.0003", "varied": {"model.postln_fraction": 0.5},
                              "widths": [4], "ppl": [45.0]},
                      "P75": {"opt": "adamw", "extra": "lr=0.0003", "varied": {"model.postln_fraction": 0.75},
                              "widths": [4], "ppl": [3e3]}})
    betas = make_betas({("A", "TAIL", "hard_rank"): 0.50, ("A", "TAIL", "soft_rank"): 0.60})
    betas.loc[betas["metric"] == "soft_rank", "delta_soft_hard"] = 0.10
    return runs, betas, cmp.group_table(runs)


def test_paper_side_by_side_join() -> None:
    runs, betas, groups = _paper_inputs()
    table, note = side_by_side(load_published(), our_cells(betas, runs, groups), "gpt2-160m")
    assert "reproduction gaps" in note and "presets differ" not in note and table["presets_match"].all()
    assert set(table["model"]) == {"gpt2-160m"}
    row = table.set_index(["kind", "optimizer", "setting", "bucket", "metric"])
    tail = row.loc[("beta", "adamw", "", "TAIL", "hard_rank")]
    # differences of two decimals: one rounding each side (the oracle's expression too), at the larger operand
    assert (tail["paper"], tail["ours"]) == (0.44, 0.50)
    assert tail["diff"] == pytest.approx(0.06, abs=rounding_tol(F64, 2, magnitude=0.5))
    delta_diff = row.loc[("delta", "adamw", "", "TAIL", "delta_soft_hard"), "diff"]
    assert delta_diff == pytest.approx(0.10 - 0.18, abs=rounding_tol(F64, 2, magnitude=0.18))
    assert math.isnan(row.loc[("beta", "muon", "", "TAIL", "hard_rank"), "ours"])  # not in our sweep: kept, empty
    ppl = table[(table["kind"] == "val_ppl") & (table["setting"] == "")].set_index(["optimizer", "width_mult"])
    assert ppl.loc[("adamw", 1.0), "diff"] == pytest.approx(38.0 - 38.15, abs=rounding_tol(F64, 2, magnitude=38.15))
    assert ppl.loc[("adamw", 4.0), "ours"] == 34.0 and math.isnan(ppl.loc[("adamw", 8.0), "ours"])
    post = table[table["kind"] == "postln_ppl"].set_index("setting")
    p25 = post.loc["postln_fraction=0.25 lr=0.0003"]
    assert (p25["paper"], p25["ours"], p25["width_mult"]) == (41.9, 40.0, 4.0)  # published width unknown: any
    p50 = post.loc["postln_fraction=0.5 lr=0.0003"]  # paper ×, ours finite: no difference
    assert p50["paper_diverged"] and not p50["ours_diverged"] and math.isnan(p50["diff"])
    p75 = post.loc["postln_fraction=0.75 lr=0.0003"]  # both ×
    assert p75["paper_diverged"] and p75["ours_diverged"] and math.isnan(p75["diff"])


@pytest.mark.parametrize("preset, model, differ", [("tiny", "gpt2-160m", True), ("gpt2-350m", "gpt2-350m", False)])
def test_paper_model_by_preset(preset: str, model: str, differ: bool) -> None:
    runs, betas, groups = _paper_inputs()
    table, note = side_by_side(load_published(), our_cells(betas, runs, groups), preset)
    assert set(table["model"]) == {model} and ("presets differ" in note) == differ
    assert table["presets_match"].all() != differ


def test_decay_curve_is_normalised_and_log_spaced() -> None:
    lam = np.arange(1, 1001, dtype=float) ** -1.0
    idx, p = cmp.decay_curve(np.stack([lam, 2 * lam]), n_points=50)
    assert idx[0] == 1 and idx[-1] == 1000 and len(idx) <= 50
    # λ/Σλ of a 1000-term sum (1000 roundings + the division), the median of two equal rows, the oracle's division
    assert p[0] == pytest.approx(1 / lam.sum(), rel=rounding_tol(F64, 1000 + 3)) and np.all(np.diff(p) < 0)


def test_optimizer_labels_from_a_real_plan(tmp_path: Path) -> None:
    """The gpt2-160m preset's PostLN arms at lr 1e-4 / 3e-4 get the labels the published rows use."""
    from helpers import make_project

    from specscale.study.labels import optim_extras
    from specscale.study.spec import load_study
    from stages.runner import plan_study

    params = make_project(tmp_path, "preset: gpt2-160m\n")
    plan = plan_study(load_study(params), params)
    extras = optim_extras(plan)
    by_arm = {}
    for run in plan.train:
        for arm in run.point.arms:
            by_arm.setdefault(arm, set()).add(extras[run.key])
    assert by_arm["postln_adamw_lr1e-4"] == {"lr=0.0001"} and by_arm["postln_adamw_lr3e-4"] == {"lr=0.0003"}
    assert by_arm["main"] == {""} and by_arm["postln"] == {""}
