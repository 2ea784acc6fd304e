"""Many tests at once: Holm's step-down adjustment for a family of claims, and the Bonferroni level of a band that
holds over every kept step at once (docs/science.md §6; the claims that use them: specscale.fit.claims).

Holm (1979): order the family's m p-values p₍₁₎ ≤ … ≤ p₍ₘ₎; the hypothesis of rank i is rejected when every
p₍ⱼ₎ ≤ α/(m − j + 1) for j ≤ i. The adjusted p-value is max_{j ≤ i} min(1, (m − j + 1)·p₍ⱼ₎), and a claim is
resolved when it is below α. scipy has Benjamini–Hochberg (`false_discovery_control`), which bounds the false
discovery rate, not the chance of any false claim, so Holm is written out here.

An interval beside a Holm decision: the test of rank i is made at level α/(m − i + 1) until the step-down stops at
the first rank r it does not reject; every rank after r stops there too. So a row's interval is computed at
confidence 1 − α/(m − min(i, r) + 1): it excludes 0 exactly when Holm rejects (for a t-test and its t-interval),
which is what the report's verdict reads. These are the per-test levels of Holm's procedure, not simultaneous
intervals for the whole family.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

ALPHA = 0.05  # family-wise error rate of every family; the unadjusted intervals are 1 − ALPHA too


def _finite(p: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(the p-values as floats, the indices of the finite ones): a claim without a test is not in its family's m."""
    values = np.asarray(p, dtype=np.float64).ravel()
    return values, np.flatnonzero(np.isfinite(values))


def holm_adjust(p: ArrayLike) -> np.ndarray:
    """Holm-adjusted p-values, in the input's order; NaN where the input is NaN (not counted in m)."""
    values, ok = _finite(p)
    out = np.full(values.shape, math.nan)
    order = ok[np.argsort(values[ok], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):  # rank 0 is the smallest p-value
        running = max(running, min(1.0, (m - rank) * values[i]))
        out[i] = running
    return out


def holm_levels(p: ArrayLike, alpha: float = ALPHA) -> np.ndarray:
    """The confidence level at which each row's interval is computed beside its Holm decision (module docstring):
    1 − α/(m − min(i, r) + 1) with i the row's rank and r the rank where the step-down stops; NaN for a NaN p."""
    values, ok = _finite(p)
    out = np.full(values.shape, math.nan)
    order = ok[np.argsort(values[ok], kind="stable")]
    m, stopped = len(order), None
    for rank, i in enumerate(order):
        if stopped is None and values[i] > alpha / (m - rank):
            stopped = rank  # the first rank Holm does not reject: every later rank is tested at its level
        out[i] = 1.0 - alpha / (m - (rank if stopped is None else stopped))
    return out


def bonferroni_level(m: int, alpha: float = ALPHA) -> float:
    """Per-look confidence of a band that holds at all m looks at once with probability ≥ 1 − α, whatever the
    dependence between the looks (the union bound): 1 − α/m."""
    if m < 1:
        raise ValueError(f"a band needs at least one look, got m = {m}")
    return 1.0 - alpha / m
