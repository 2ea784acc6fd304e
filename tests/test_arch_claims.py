"""Optimizer gain against architecture shift over seeds (compare/arch_claims.py): each claim's interval is scipy's
one-sample t over the per-seed values, Holm-adjusted within its family; one seed a side is 'not tested'."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from specscale.compare.arch_claims import GAIN, MARGIN, SHIFT, arch_claims
from specscale.stats.intervals import CLAIM_COLUMNS
from specscale.stats.multiplicity import holm_levels


def _table(seeds: list[int], ablated: list[float], base: list[float], gain: list[float],
           bucket: str = "TAIL", metric: str = "hard_rank") -> pd.DataFrame:
    """compare_arch_vs_optimizer's per-seed rows for one ablation × optimizer × set × metric."""
    return pd.DataFrame({"ablation": "n_heads=2", "optimizer": "muon", "seed": seeds, "bucket": bucket,
                         "metric": metric, "beta_ablated": ablated, "beta_base": base,
                         "arch_shift": np.abs(np.subtract(ablated, base)), "optimizer_gain": gain,
                         "status": "exceeds", "counted": True, "widths": "1,2,4", "reason": ""})


def test_each_claim_is_the_t_interval_over_seeds_of_its_per_seed_values() -> None:
    ablated, base, gain = [0.50, 0.62, 0.55], [0.45, 0.50, 0.53], [0.30, 0.41, 0.35]
    table = arch_claims(_table([0, 1, 2], ablated, base, gain), "adamw")
    assert list(table.columns) == CLAIM_COLUMNS
    claims = table.set_index("family")
    shift = np.subtract(ablated, base)
    for family, values in ((SHIFT, shift), (GAIN, np.array(gain)), (MARGIN, np.array(gain) - np.abs(shift))):
        row = claims.loc[family]
        ci = stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
        assert row["estimate"] == pytest.approx(values.mean(), rel=1e-12)
        assert (row["lo"], row["hi"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
        # one claim per family here: Holm at m = 1 is the unadjusted interval
        assert (row["lo_adj"], row["hi_adj"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
        assert row["n"] == "3 seeds, paired" and row["widths"] == "1,2,4"
        assert row["verdict"] == ("resolved" if ci.low > 0 or ci.high < 0 else "not resolved")
    assert claims.loc[SHIFT, "claim"] == "n_heads=2 − base, muon: TAIL β_hard post, trained"


def test_holm_adjusts_within_a_family() -> None:
    base = [0.45, 0.50, 0.53]
    cells = {"HEAD": [0.47, 0.58, 0.52], "MID": [0.60, 0.66, 0.70], "TAIL": [0.75, 0.80, 0.86]}  # β_ablated per seed
    table = pd.concat([_table([0, 1, 2], ablated, base, [0.3, 0.41, 0.35], bucket=b) for b, ablated in cells.items()],
                      ignore_index=True)
    shift = arch_claims(table, "adamw").query("family == @SHIFT").reset_index(drop=True)
    values = [np.subtract(cells[c.split(": ")[1].split(" ")[0]], base) for c in shift["claim"]]
    levels = holm_levels([stats.ttest_1samp(v, 0.0).pvalue for v in values])
    assert len(shift) == 3 and max(levels) == pytest.approx(1 - 0.05 / 3)  # Holm tests the smallest p at α/3
    for (_, r), v, level in zip(shift.iterrows(), values, levels):
        ci = stats.ttest_1samp(v, 0.0).confidence_interval(level)
        assert (r["lo_adj"], r["hi_adj"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
        assert r["lo_adj"] <= r["lo"] and r["hi_adj"] >= r["hi"]


def test_one_seed_is_not_tested_and_missing_or_uncounted_cells_state_nothing() -> None:
    one = _table([0], [0.5], [0.4], [0.3])
    claims = arch_claims(one, "adamw")
    assert set(claims["verdict"]) == {"not tested"} and len(claims) == 3
    assert claims["n"].eq("1 seed, paired").all()
    skipped = pd.concat([_table([0, 1], [0.5, 0.6], [0.4, 0.4], [0.3, 0.3]).assign(status="missing"),
                         _table([0, 1], [0.5, 0.6], [0.4, 0.4], [0.3, 0.3], bucket="GLOBAL").assign(counted=False)])
    assert arch_claims(skipped, "adamw").empty
    assert arch_claims(pd.DataFrame(), "adamw").empty


def test_from_the_per_seed_comparison_of_a_three_seed_study() -> None:
    """compare_arch_vs_optimizer on groups of 3 seeds → the claims over those seeds (what the compare stage writes)."""
    from test_compare import HEADS, make_betas, make_runs

    from specscale.compare import comparisons as cmp

    spec, cells = {}, {}
    adamw, muon, heads = [0.40, 0.45, 0.43], [0.90, 0.80, 0.86], [0.47, 0.49, 0.52]  # TAIL soft β per seed
    for s in range(3):
        spec |= {f"A{s}": {"opt": "adamw", "seed": s}, f"M{s}": {"opt": "muon", "seed": s},
                 f"A6{s}": {"opt": "adamw", "seed": s, "varied": HEADS}}
        cells |= {(f"A{s}", "TAIL", "soft_rank"): adamw[s], (f"M{s}", "TAIL", "soft_rank"): muon[s],
                  (f"A6{s}", "TAIL", "soft_rank"): heads[s]}
    runs = make_runs(spec)
    table = cmp.compare_arch_vs_optimizer(make_betas(cells), cmp.group_table(runs), "adamw").table
    claims = arch_claims(table, "adamw").set_index("family")
    shift, gain = np.subtract(heads, adamw), np.subtract(muon, adamw)
    for family, values in ((SHIFT, shift), (GAIN, gain), (MARGIN, gain - np.abs(shift))):
        ci = stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
        row = claims.loc[family]
        assert row["estimate"] == pytest.approx(values.mean(), rel=1e-12)
        assert (row["lo"], row["hi"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert claims.loc[MARGIN, "verdict"] == "resolved" and claims.loc[MARGIN, "estimate"] > 0
    assert claims.loc[SHIFT, "claim"] == "n_heads=6 − base, adamw: TAIL β_soft post, trained"
    assert claims.loc[GAIN, "claim"] == "optimizer gain (best − adamw) on widths 1,2,4: TAIL β_soft post, trained"
