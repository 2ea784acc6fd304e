"""Holm's step-down adjustment and the per-test levels beside it (core/specscale/fit/multiplicity.py), against
hand-worked examples, and the Bonferroni level of a band over several looks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from specscale.stats.multiplicity import bonferroni_level, holm_adjust, holm_levels


def test_holm_adjusted_p_values_by_hand() -> None:
    """m = 4, p = (0.01, 0.04, 0.03, 0.005). Sorted: 0.005 × 4 = 0.02; 0.01 × 3 = 0.03; 0.03 × 2 = 0.06;
    0.04 × 1 = 0.04, raised to the running maximum 0.06. Back in input order: (0.03, 0.06, 0.06, 0.02)."""
    adjusted = holm_adjust([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    # capped at 1; a NaN (no test) stays NaN and is not counted in m: m = 2 here
    out = holm_adjust([0.6, math.nan, 0.7])
    assert out[0] == pytest.approx(1.0) and math.isnan(out[1]) and out[2] == pytest.approx(1.0)
    assert holm_adjust([0.02, math.nan, 0.04]) == pytest.approx([0.04, math.nan, 0.04], nan_ok=True)


def test_holm_levels_match_the_step_down_by_hand() -> None:
    """p = (0.01, 0.04, 0.03, 0.005), α = 0.05: rank 1 (0.005 ≤ 0.05/4) and rank 2 (0.01 ≤ 0.05/3) are rejected,
    rank 3 (0.03 > 0.05/2) stops the step-down: ranks 3 and 4 are both read at 1 − 0.05/2."""
    levels = holm_levels([0.01, 0.04, 0.03, 0.005])
    assert levels == pytest.approx([1 - 0.05 / 3, 1 - 0.05 / 2, 1 - 0.05 / 2, 1 - 0.05 / 4], abs=1e-15)
    # every p below its threshold: each rank at its own level, the last at 95%
    assert holm_levels([0.001, 0.002, 0.003]) == pytest.approx([1 - 0.05 / 3, 1 - 0.05 / 2, 0.95], abs=1e-15)
    assert math.isnan(holm_levels([math.nan, 0.01])[0])


def test_holm_intervals_agree_with_holm_decisions() -> None:
    """For t-tests, the interval at the row's Holm level excludes 0 exactly when the Holm-adjusted p < α."""
    rng = np.random.default_rng(3)
    samples = [(rng.normal(shift, 1.0, 4), rng.normal(0.0, 1.0, 4)) for shift in (0.0, 0.5, 1.5, 2.5, 4.0, 6.0)]
    tests = [stats.ttest_ind(a, b, equal_var=False) for a, b in samples]
    p = [t.pvalue for t in tests]
    adjusted, levels = holm_adjust(p), holm_levels(p)
    for t, adj, level in zip(tests, adjusted, levels):
        ci = t.confidence_interval(confidence_level=level)
        assert (ci.low > 0 or ci.high < 0) == (adj < 0.05)
    assert 0 < sum(adjusted < 0.05) < len(p)  # the example has both outcomes


def test_bonferroni_level_over_looks() -> None:
    assert bonferroni_level(18) == pytest.approx(1 - 0.05 / 18) and bonferroni_level(1) == 0.95
    with pytest.raises(ValueError, match="at least one look"):
        bonferroni_level(0)
