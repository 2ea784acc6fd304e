"""Claims over seeds judged in families: each claim compares two seed samples (seed → β) paired by seed; its
interval is scipy's paired t (specscale.stats.intervals.gap_interval) and, in its family, at the level Holm's
step-down tests it at (specscale.stats.multiplicity.holm_levels). Used by the compare stage's claims
(architecture shift, matched loss); the fit stage judges its own families in specscale.fit.claims."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from specscale.stats.intervals import CLAIM_COLUMNS, TESTS, gap_interval, verdict
from specscale.stats.multiplicity import holm_levels

CANDIDATE_COLUMNS = ["claim", "family", "a", "b", "widths"]  # a, b: seed → value; the claim is a − b


def holm_method(test: str, m: int, level: float) -> str:
    """The `method` text of a claim judged by Holm in its family: the test, and the level it was made at."""
    return f"{test}, 95%; Holm over the family's {m} tests: this one at {100 * level:.4g}%"


def judge_paired(cand: pd.DataFrame) -> pd.DataFrame:
    """Candidates (CANDIDATE_COLUMNS, one row per claim) → CLAIM_COLUMNS: estimate and 95% interval over the seeds
    both sides have, Holm-adjusted interval within the family, verdict; fewer than 2 such seeds: not tested."""
    if cand.empty:
        return pd.DataFrame(columns=CLAIM_COLUMNS)
    gaps = [gap_interval(r.a, r.b, "paired") for r in cand.itertuples()]
    cand = cand.assign(estimate=[g.diff for g in gaps], lo=[g.low for g in gaps], hi=[g.high for g in gaps],
                       p=[g.p for g in gaps], n=[f"{g.n} seed{'' if g.n == 1 else 's'}, paired" for g in gaps])
    out = []
    for family, rows in cand.groupby("family", sort=False):
        p = rows["p"].to_numpy(dtype=np.float64)
        m = int(np.isfinite(p).sum())
        for r, level in zip(rows.itertuples(), holm_levels(p)):
            if math.isfinite(level):
                g = gap_interval(r.a, r.b, "paired", level)
                lo, hi = g.low, g.high
                method = holm_method(TESTS["paired"], m, level)
            else:
                lo = hi = math.nan
                method = f"{TESTS['paired']}: no interval (fewer than 2 seeds with both sides)"
            out.append({"claim": r.claim, "family": family, "estimate": r.estimate, "lo": r.lo, "hi": r.hi,
                        "lo_adj": lo, "hi_adj": hi, "method": method, "n": r.n, "widths": r.widths,
                        "verdict": verdict(lo, hi)})
    return pd.DataFrame(out, columns=CLAIM_COLUMNS)
