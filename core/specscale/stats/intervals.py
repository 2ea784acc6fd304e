"""Differences over seeds with their confidence intervals (scipy's t-tests), and the verdict a claim gets from its
interval (docs/science.md §6.4). Used by the fit stage (optimizer differences, contrasts) and the compare stage
(architecture shift against optimizer gain), so both judge a claim the same way.

A claim row (results/claims.csv and results/compare/arch_claims.csv) has the columns CLAIM_COLUMNS: the estimate,
its unadjusted 95% interval (lo, hi), its family-adjusted interval (lo_adj, hi_adj), how it was computed (method),
how many seeds (n), the widths both sides were fitted on, and the verdict of the adjusted interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

CLAIM_COLUMNS = ["claim", "family", "estimate", "lo", "hi", "lo_adj", "hi_adj", "method", "n", "widths", "verdict"]
TESTS = {"welch": "Welch t over seeds", "paired": "paired t over seeds"}  # the kinds of interval (fit.gap_interval)


def verdict(lo: float, hi: float) -> str:
    """'resolved' (the interval excludes 0), 'not resolved' (it holds 0) or 'not tested' (no interval)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "not tested"
    return "resolved" if lo > 0 or hi < 0 else "not resolved"


@dataclass(frozen=True)
class Gap:
    """β(optimizer) − β(reference) over seeds: means, difference, its interval, the ns on each side and the test's
    two-sided p-value (NaN without an interval)."""

    mean: float
    ref_mean: float
    diff: float
    low: float
    high: float
    n: int
    n_ref: int
    p: float = math.nan


def _flat(diff: float) -> tuple[float, float, float]:
    """(low, high, p) when no seed differs from another: the interval is the point and any difference is certain
    (scipy's t would be 0/0 or ±∞)."""
    return diff, diff, 0.0 if diff != 0.0 else 1.0


def gap_interval(values: dict[int, float], ref: dict[int, float], kind: str = "welch", level: float = 0.95) -> Gap:
    """values, ref: seed → β. welch: the two seed samples as independent (scipy's ttest_ind, equal_var=False:
    Welch–Satterthwaite dof); paired: the per-seed differences over the seeds both sides have (ttest_rel, n − 1 dof).
    The interval is the test's confidence interval at `level`. No interval with < 2 seeds."""
    if kind not in TESTS:
        raise ValueError(f"fit.gap_interval {kind!r} is not one of {', '.join(TESTS)}")
    a = np.array([v for v in values.values() if math.isfinite(v)], dtype=np.float64)
    b = np.array([v for v in ref.values() if math.isfinite(v)], dtype=np.float64)
    mean = float(a.mean()) if a.size else math.nan
    ref_mean = float(b.mean()) if b.size else math.nan
    if kind == "paired":
        common = sorted(s for s in set(values) & set(ref) if math.isfinite(values[s]) and math.isfinite(ref[s]))
        pa, pb = np.array([values[k] for k in common]), np.array([ref[k] for k in common])
        diff = float((pa - pb).mean()) if common else mean - ref_mean
        if len(common) < 2:
            return Gap(mean, ref_mean, diff, math.nan, math.nan, len(common), len(common))
        if np.ptp(pa - pb) == 0.0:
            low, high, p = _flat(diff)
            return Gap(mean, ref_mean, diff, low, high, len(common), len(common), p)
        res = stats.ttest_rel(pa, pb)
        ci = res.confidence_interval(confidence_level=level)
        return Gap(mean, ref_mean, diff, float(ci.low), float(ci.high), len(common), len(common), float(res.pvalue))
    diff = mean - ref_mean
    if a.size < 2 or b.size < 2:
        return Gap(mean, ref_mean, diff, math.nan, math.nan, int(a.size), int(b.size))
    if np.ptp(a) == 0.0 and np.ptp(b) == 0.0:  # every seed gave the same β on both sides
        low, high, p = _flat(diff)
        return Gap(mean, ref_mean, diff, low, high, int(a.size), int(b.size), p)
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(confidence_level=level)
    return Gap(mean, ref_mean, diff, float(ci.low), float(ci.high), int(a.size), int(b.size), float(res.pvalue))
