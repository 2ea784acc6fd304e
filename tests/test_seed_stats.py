"""β over training and across seeds (core/specscale/fit/seed_stats.py) on synthetic cases whose answer is known:
ranks built as c·D^β with a chosen β per step, and seed samples whose t-intervals scipy computes independently."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from specscale.fit.fit import fit_seeds
from specscale.fit.seed_stats import betas_per_step, optimizer_gaps, seed_means
from specscale.stats.intervals import gap_interval
from tolerances import rounding_tol

F64 = np.float64
WIDTHS = (64, 128, 256)  # ffn_dim D


def _runs(groups: dict[str, dict]) -> pd.DataFrame:
    """runs.csv rows, one per group and width; groups: name → {optimizer, seed, seed_group, arms, varied}."""
    rows = []
    for group, g in groups.items():
        for d in WIDTHS:
            config = g["optimizer"] + (" lr=0.01" if g.get("arms") == "tuned" else "")
            rows.append({"run": f"{group}-{d}", "group": group, "ffn_dim": d, "width_mult": d // WIDTHS[0],
                         "group_label": g["optimizer"],
                         "config": config,
                         "optimizer": g["optimizer"], "seed": g["seed"], "seed_group": g["seed_group"],
                         "arms": g.get("arms", "main"), "varied": json.dumps(g.get("varied", {})), "steps": 100,
                         "tokens_per_step": 2048})
    return pd.DataFrame(rows)


def test_beta_at_every_step_is_recovered_exactly() -> None:
    """rank(D, step) = 3·D^β(step) in every layer (layer 1 a constant factor higher): each step's β comes back to
    rounding, with all three widths and tokens = step × tokens per step."""
    beta = {0: 0.5, 50: 0.8, 100: 1.1}
    runs = _runs({"g": {"optimizer": "muon", "seed": 0, "seed_group": "s"}})
    long = pd.DataFrame([{"run": f"g-{d}", "step": s, "layer": layer, "site": "post", "bucket": "TAIL",
                          "metric": metric, "value": (3.0 + layer) * d ** b}
                         for d in WIDTHS for s, b in beta.items() for layer in (0, 1, 2)
                         for metric in ("soft_rank", "hard_rank", "renyi_2.0")])
    out = betas_per_step(long, runs)
    assert set(out["metric"]) == {"soft_rank", "hard_rank"}  # Rényi orders are not part of the over-training fit
    assert len(out) == 6 and out["fitted"].all() and (out["n_widths"] == 3).all()
    tol = rounding_tol(F64, n_ops=30, magnitude=1.0)  # a 3-point OLS on logs of exact powers
    for r in out.itertuples():
        assert abs(r.beta - beta[r.step]) <= tol
        assert r.tokens == r.step * 2048
        assert r.r2 == pytest.approx(1.0, abs=tol)


def test_a_step_missing_at_one_width_is_fitted_on_the_widths_that_have_it() -> None:
    runs = _runs({"g": {"optimizer": "adamw", "seed": 0, "seed_group": "s"}})
    long = pd.DataFrame([{"run": f"g-{d}", "step": s, "layer": 0, "site": "post", "bucket": "TAIL",
                          "metric": "hard_rank", "value": float(d) ** 0.5}
                         for d in WIDTHS for s in (0, 10) if not (s == 10 and d == 256)])
    out = betas_per_step(long, runs).set_index("step")
    assert out.loc[0, "n_widths"] == 3 and out.loc[10, "n_widths"] == 2
    assert not out.loc[10, "fitted"]  # two widths: no scaling-law fit (ols_loglog needs 3)


def test_seed_means_match_scipy_t_interval() -> None:
    betas = pd.DataFrame({"seed_group": "s", "phase": "trained", "bucket": "TAIL", "site": "post",
                          "metric": "hard_rank", "group_label": "muon", "optimizer": "muon", "fitted": True,
                          "seed": [0, 1, 2], "beta": [0.9, 1.1, 1.3]})
    (row,) = seed_means(betas, ["seed_group", "phase", "bucket", "site", "metric"]).itertuples()
    lo, hi = stats.t.interval(0.95, 2, loc=1.1, scale=stats.sem([0.9, 1.1, 1.3]))
    tol = rounding_tol(F64, n_ops=20, magnitude=2.0)
    assert row.n_seeds == 3 and abs(row.beta_mean - 1.1) <= tol
    assert abs(row.seed_ci95_low - lo) <= tol and abs(row.seed_ci95_high - hi) <= tol
    # one seed: a mean but no interval, and fit_seeds (betas_seeds.csv) leaves it out
    single = betas[betas["seed"] == 0]
    (one,) = seed_means(single, ["seed_group", "phase", "bucket", "site", "metric"]).itertuples()
    assert one.n_seeds == 1 and one.beta_mean == 0.9 and math.isnan(one.seed_ci95_low)
    assert fit_seeds(single).empty and len(fit_seeds(betas)) == 1


MUON = {0: 1.02, 1: 0.95, 2: 1.10}
ADAMW = {0: 0.44, 1: 0.50, 2: 0.41}


def test_welch_and_paired_gap_intervals_match_scipy() -> None:
    tol = rounding_tol(F64, n_ops=50, magnitude=2.0)
    welch = gap_interval(MUON, ADAMW, "welch")
    ref = stats.ttest_ind(list(MUON.values()), list(ADAMW.values()), equal_var=False).confidence_interval(0.95)
    assert abs(welch.diff - (np.mean(list(MUON.values())) - np.mean(list(ADAMW.values())))) <= tol
    assert abs(welch.low - ref.low) <= tol and abs(welch.high - ref.high) <= tol
    assert welch.n == welch.n_ref == 3
    paired = gap_interval(MUON, ADAMW, "paired")
    ref = stats.ttest_rel(list(MUON.values()), list(ADAMW.values())).confidence_interval(0.95)
    assert abs(paired.low - ref.low) <= tol and abs(paired.high - ref.high) <= tol
    # paired uses only the seeds both sides have
    partial = gap_interval({0: 1.0, 1: 1.2}, {1: 0.2, 2: 0.3}, "paired")
    assert partial.n == 1 and partial.diff == pytest.approx(1.0) and math.isnan(partial.low)
    # one seed a side: the difference of the means and no interval
    one = gap_interval({0: 1.0}, {0: 0.4})
    assert one.diff == pytest.approx(0.6) and math.isnan(one.low) and math.isnan(one.high)
    with pytest.raises(ValueError, match="fit.gap_interval 'bootstrap' is not one of welch, paired"):
        gap_interval(MUON, ADAMW, "bootstrap")


def test_optimizer_gaps_compare_within_an_arm_only() -> None:
    """The main arm's Muon is compared with the main arm's AdamW; an lr arm's Muon with the lr arm's AdamW."""
    groups = {}
    for opt, values, sg in (("muon", MUON, "m"), ("adamw", ADAMW, "a")):
        for seed in values:
            groups[f"{sg}{seed}"] = {"optimizer": opt, "seed": seed, "seed_group": sg}
            groups[f"{sg}lr{seed}"] = {"optimizer": opt, "seed": seed, "seed_group": f"{sg}lr", "arms": "tuned"}
    runs = _runs(groups)
    rows = []
    for group, g in groups.items():
        shift = 0.3 if g["seed_group"].endswith("lr") else 0.0  # the tuned arm's Muon and AdamW both +0.3
        value = (MUON if g["optimizer"] == "muon" else ADAMW)[g["seed"]] + shift
        rows.append({"group": group, "phase": "trained", "bucket": "TAIL", "site": "post", "metric": "hard_rank",
                     "beta": value, "fitted": True, "seed": g["seed"], "seed_group": g["seed_group"]})
    gaps = optimizer_gaps(pd.DataFrame(rows), runs, "adamw", ["phase", "bucket", "site", "metric"]).set_index("arm")
    assert set(gaps.index) == {"main", "tuned"} and set(gaps["optimizer"]) == {"muon"}
    expected = np.mean(list(MUON.values())) - np.mean(list(ADAMW.values()))
    tol = rounding_tol(F64, n_ops=20, magnitude=2.0)
    assert abs(gaps.loc["main", "diff"] - expected) <= tol and abs(gaps.loc["tuned", "diff"] - expected) <= tol
    assert gaps.loc["main", "beta_ref"] == pytest.approx(np.mean(list(ADAMW.values())), abs=tol)
    assert gaps.loc["main", "diff_ci95_low"] > 0  # Muon above AdamW in every seed, by far: the interval excludes 0
    assert (gaps["interval"] == "welch").all()
    assert gaps.loc["main", "comparison"] == "muon − adamw" and gaps.loc["tuned", "comparison"] == "muon lr=0.01 − adamw lr=0.01"
    # at every step: the same comparison on betas_per_step's table, which carries tokens per step
    steps = pd.DataFrame(rows).rename(columns={"phase": "step"}).assign(step=40, tokens_per_step=2048)
    per_step = optimizer_gaps(steps, runs, "adamw", ["step", "bucket", "site", "metric"])
    assert (per_step["tokens_per_step"] == 2048).all() and (per_step["step"] == 40).all()
    assert per_step["diff"].tolist() == gaps["diff"].tolist()


def test_scipy_implementations_give_the_hand_formulas_values() -> None:
    """gap_interval (Welch, paired), seed_mean_interval and bootstrap_beta now call scipy (ttest_ind with
    equal_var=False, ttest_rel, ttest_1samp, bootstrap); these are the values the hand-written formulas gave on the
    same examples before the switch (Welch–Satterthwaite dof, mean ± t·sd/√n, and the layer bootstrap's own loop
    over a default_rng(0), which scipy's bootstrap draws from in the same order)."""
    from specscale.fit.laws import bootstrap_beta, seed_mean_interval

    tol = rounding_tol(F64, n_ops=50, magnitude=2.0)
    welch, paired = gap_interval(MUON, ADAMW, "welch"), gap_interval(MUON, ADAMW, "paired")
    assert abs(welch.low - 0.41996855747501743) <= tol and abs(welch.high - 0.7266981091916496) <= tol
    assert abs(paired.low - 0.27489198822974936) <= tol and abs(paired.high - 0.8717746784369174) <= tol
    assert 0 < welch.p < 0.05 and 0 < paired.p < 0.05  # scipy's two-sided p-value, used by the Holm families
    s = seed_mean_interval([0.47, 0.33, 0.52, 0.41])
    assert abs(s.ci_low - 0.302333796290816) <= tol and abs(s.ci_high - 0.562666203709184) <= tol
    layers = [[10.0, 12.0, 11.0, 9.5], [15.0, 18.0, 16.5, 14.0], [24.0, 27.0, 21.0, 25.5], [33.0, 40.0, 36.0, 30.0]]
    boot = bootstrap_beta([64, 128, 256, 512], layers, n_boot=4000, seed=0)
    assert (boot.ci_low, boot.ci_high) == (0.49188632372745944, 0.6588273689279414)
    # no spread: the interval is the point, and a difference is certain (p 0) unless it is 0 (p 1)
    flat = gap_interval({0: 1.0, 1: 1.0}, {0: 0.5, 1: 0.5})
    assert (flat.low, flat.high, flat.p) == (0.5, 0.5, 0.0)
    same = gap_interval({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0}, "paired")
    assert (same.low, same.high, same.p) == (0.0, 0.0, 1.0)


def test_a_comparison_refits_both_sides_on_the_widths_they_share() -> None:
    """Muon seed 1 lacks k = 8 (a diverged run), every other group has k ∈ {1, 2, 4, 8}: every group of the
    comparison, both sides, is refitted on {1, 2, 4}, so the rank at k = 8 (off the power law) moves no β of it."""
    from specscale.fit.laws import fit_points
    from specscale.fit.seed_stats import rank_points

    widths = (64, 128, 256, 512)
    groups = {f"{o}{s}": {"optimizer": o, "seed": s, "seed_group": o} for o in ("muon", "adamw") for s in (0, 1, 2)}
    beta = {"muon": 0.9, "adamw": 0.5}
    rows, ranks = [], []
    for group, g in groups.items():
        for d in widths:
            if group == "muon1" and d == 512:
                continue  # diverged: not measured
            rows.append({"run": f"{group}-{d}", "group": group, "ffn_dim": d, "width_mult": d // 64,
                         "group_label": g["optimizer"], "config": g["optimizer"], "optimizer": g["optimizer"],
                         "seed": g["seed"], "seed_group": g["seed_group"], "arms": "main", "varied": "{}",
                         "steps": 100, "tokens_per_step": 2048})
            kink = 3.0 if d == 512 else 1.0  # k = 8 off the line: a fit that uses it gets another β
            value = kink * d ** (beta[g["optimizer"]] + 0.01 * g["seed"])
            ranks.append({"run": f"{group}-{d}", "phase": "trained", "bucket": "TAIL", "site": "post",
                          "metric": "hard_rank", "median": value})
    runs, ranks = pd.DataFrame(rows), pd.DataFrame(ranks)
    points = rank_points(ranks, runs)
    own = fit_points(points, ["group", "phase", "bucket", "site", "metric"], value_col="median")
    own = own.join(runs.drop_duplicates("group").set_index("group")[["seed", "seed_group"]], on="group")
    keys = ["phase", "bucket", "site", "metric"]
    (row,) = optimizer_gaps(own, runs, "adamw", keys, points=points).itertuples()
    tol = rounding_tol(F64, n_ops=60, magnitude=8.0)
    assert row.widths == "1,2,4"
    assert abs(row.diff - 0.4) <= tol and abs(row.beta - (0.9 + 0.01)) <= tol  # exact power laws on {1, 2, 4}
    # without the points there is nothing to refit: the row says which widths each side had
    (raw,) = optimizer_gaps(own, runs, "adamw", keys).itertuples()
    assert raw.widths == "1,2,4/1,2,4,8 vs 1,2,4,8" and abs(raw.diff - 0.4) > 0.01


def test_the_spec_offers_exactly_the_intervals_stats_computes() -> None:
    """fit.gap_interval's choices (study/spec.py) are the kinds specscale.stats.intervals computes and names."""
    from specscale.stats.intervals import TESTS
    from specscale.study.spec import GAP_INTERVALS

    assert tuple(TESTS) == GAP_INTERVALS
