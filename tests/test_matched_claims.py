"""Matched loss over seeds (compare/matched_claims.py): longer − base and other optimizer − longer, each the paired
t-interval over seeds of the per-seed β differences, Holm within its family."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from test_compare import make_betas, make_runs

from specscale.compare import comparisons as cmp
from specscale.compare.matched_claims import LONGER, MATCHED, matched_claims
from specscale.stats.intervals import CLAIM_COLUMNS

LONG = {"train.steps": 200}
ADAMW, MUON, ADAMW_2X = [0.40, 0.46, 0.43], [0.90, 0.80, 0.86], [0.55, 0.52, 0.60]  # TAIL β_hard per seed


def _study(seeds: range) -> tuple:
    spec, cells = {}, {}
    for s in seeds:
        spec |= {f"A{s}": {"opt": "adamw", "seed": s}, f"M{s}": {"opt": "muon", "seed": s},
                 f"L{s}": {"opt": "adamw", "seed": s, "varied": LONG}}
        cells |= {(f"A{s}", "TAIL", "hard_rank"): ADAMW[s], (f"M{s}", "TAIL", "hard_rank"): MUON[s],
                  (f"L{s}", "TAIL", "hard_rank"): ADAMW_2X[s]}
    return make_betas(cells), cmp.group_table(make_runs(spec))


def test_longer_and_matched_claims_are_paired_t_over_seeds() -> None:
    claims = matched_claims(*_study(range(3)))
    assert list(claims.columns) == CLAIM_COLUMNS
    tail = claims[claims["claim"].str.contains("TAIL β_hard")].set_index("family")
    longer, matched = np.subtract(ADAMW_2X, ADAMW), np.subtract(MUON, ADAMW_2X)
    assert tail.loc[LONGER, "claim"] == "adamw steps=200 − adamw: TAIL β_hard post, trained"
    assert tail.loc[MATCHED, "claim"] == "muon − adamw steps=200: TAIL β_hard post, trained"
    for family, values in ((LONGER, longer), (MATCHED, matched)):
        ci = stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
        row = tail.loc[family]
        assert row["estimate"] == pytest.approx(values.mean(), rel=1e-12)
        assert (row["lo"], row["hi"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
        assert row["n"] == "3 seeds, paired" and row["widths"] == "1,2,4"
    assert tail.loc[MATCHED, "verdict"] == "resolved"
    # cells with no β on either side (other sets and metrics) are listed, not tested
    assert set(claims.loc[~claims["claim"].str.contains("TAIL β_hard"), "verdict"]) == {"not tested"}


def test_one_seed_is_not_tested_and_no_longer_group_states_nothing() -> None:
    assert set(matched_claims(*_study(range(1)))["verdict"]) == {"not tested"}
    betas, groups = _study(range(3))
    assert matched_claims(betas, groups[groups["family"] != "steps"]).empty
