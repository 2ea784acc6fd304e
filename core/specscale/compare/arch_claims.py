"""Optimizer gain against architecture shift, over seeds (issue 20 §2; the paper's headline, docs/science.md §7):
results/compare/arch_claims.csv, rows in the claims format (specscale.stats.intervals.CLAIM_COLUMNS).

compare_arch_vs_optimizer gives, per seed, each architectural ablation's β beside its base's and the optimizer gain
(max over the base optimizers of β − β_reference) on the widths the two share. Over the seeds an ablation and its
base both have, three families (counted sets HEAD/MID/TAIL × soft/hard, as the paper counts its 30), each judged by
Holm over its rows (specscale.stats.multiplicity):
  architecture shift                β_ablated − β_base, paired t over seeds (signed; the paper compares |shift|)
  optimizer gain                    the gain on those widths, one-sample t over seeds (paired against 0)
  optimizer gain − |arch. shift|    per seed gain − |β_ablated − β_base|, paired t over seeds: resolved and > 0 is
                                    "the optimizer gain exceeds the architecture shift" for that cell
With one seed a side a row has no interval: verdict 'not tested' (the per-seed k of n in arch_vs_optimizer.json is
then the only statement, and the report says it is untested).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from specscale.measure.registry import display_name
from specscale.stats.intervals import CLAIM_COLUMNS, TESTS, gap_interval, verdict
from specscale.stats.multiplicity import holm_levels

SHIFT, GAIN, MARGIN = "architecture shift", "optimizer gain", "optimizer gain − |architecture shift|"


def _seeds(part: pd.DataFrame, column: str) -> dict[int, float]:
    return {int(s): float(v) for s, v in zip(part["seed"], part[column]) if math.isfinite(v)}


def _candidates(table: pd.DataFrame, reference: str) -> pd.DataFrame:
    """One row per claim: its name, family, the two seed samples it compares (paired) and its widths."""
    counted = table[table["counted"].astype(bool) & (table["status"] != "missing")]
    rows = []
    for (ablation, optimizer, bucket, metric, widths), part in counted.groupby(
            ["ablation", "optimizer", "bucket", "metric", "widths"], sort=True):
        what = f"{bucket} β_{display_name(metric)} post, trained"
        shift = _seeds(part.assign(s=part["beta_ablated"] - part["beta_base"]), "s")
        margin = _seeds(part.assign(m=part["optimizer_gain"] - (part["beta_ablated"] - part["beta_base"]).abs()), "m")
        zeros = {s: 0.0 for s in shift}
        rows += [
            {"claim": f"{ablation} − base, {optimizer}: {what}", "family": SHIFT,
             "a": _seeds(part, "beta_ablated"), "b": _seeds(part, "beta_base"), "widths": widths},
            {"claim": f"optimizer gain (best − {reference}) on widths {widths}: {what}", "family": GAIN,
             "a": _seeds(part, "optimizer_gain"), "b": zeros, "widths": widths},
            {"claim": f"optimizer gain − |{ablation} shift|, {optimizer}: {what}", "family": MARGIN,
             "a": margin, "b": zeros, "widths": widths}]
    out = pd.DataFrame(rows, columns=["claim", "family", "a", "b", "widths"])
    return out.drop_duplicates("claim").reset_index(drop=True)  # the gain is one claim for every ablation on its widths


def arch_claims(table: pd.DataFrame, reference: str) -> pd.DataFrame:
    """The three families above from compare_arch_vs_optimizer's per-seed table; CLAIM_COLUMNS."""
    cand = _candidates(table, reference) if not table.empty else pd.DataFrame()
    if cand.empty:
        return pd.DataFrame(columns=CLAIM_COLUMNS)
    gaps = [gap_interval(r.a, r.b, "paired") for r in cand.itertuples()]
    cand = cand.assign(estimate=[g.diff for g in gaps], lo=[g.low for g in gaps], hi=[g.high for g in gaps],
                       p=[g.p for g in gaps], n=[f"{g.n} seed{'' if g.n == 1 else 's'}, paired" for g in gaps])
    out = []
    for family, rows in cand.groupby("family", sort=False):
        levels = holm_levels(rows["p"].to_numpy(dtype=np.float64))
        m = int(np.isfinite(rows["p"].to_numpy(dtype=np.float64)).sum())
        for r, level in zip(rows.itertuples(), levels):
            if math.isfinite(level):
                g = gap_interval(r.a, r.b, "paired", level)
                lo, hi = g.low, g.high
                method = f"{TESTS['paired']}, 95%; Holm over the family's {m} tests: this one at {100 * level:.4g}%"
            else:
                lo = hi = math.nan
                method = f"{TESTS['paired']}: no interval (fewer than 2 seeds with both sides)"
            out.append({"claim": r.claim, "family": family, "estimate": r.estimate, "lo": r.lo, "hi": r.hi,
                        "lo_adj": lo, "hi_adj": hi, "method": method, "n": r.n, "widths": r.widths,
                        "verdict": verdict(lo, hi)})
    return pd.DataFrame(out, columns=CLAIM_COLUMNS)
