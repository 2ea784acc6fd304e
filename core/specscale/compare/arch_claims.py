"""Optimizer gain against architecture shift, over seeds (issue 20 §2; the paper's headline, docs/science.md §7):
results/compare/arch_claims.csv, rows in the claims format (specscale.stats.intervals.CLAIM_COLUMNS).

compare_arch_vs_optimizer gives, per seed, each architectural ablation's β beside its base's and the optimizer gain
(max over the base optimizers of β − β_reference) on the widths the two share. Over the seeds an ablation and its
base both have, three families (counted sets HEAD/MID/TAIL × soft/hard, as the paper counts its 30), each judged by
Holm over its rows (specscale.stats.families):
  architecture shift                β_ablated − β_base, paired t over seeds (signed; the paper compares |shift|)
  optimizer gain                    the gain on those widths, one-sample t over seeds (paired against 0)
  optimizer gain − |arch. shift|    per seed gain − |β_ablated − β_base|, paired t over seeds: resolved and > 0 is
                                    "the optimizer gain exceeds the architecture shift" for that cell
With one seed a side a row has no interval: verdict 'not tested' (the per-seed k of n in arch_vs_optimizer.json is
then the only statement, and the report says it is untested).
"""

from __future__ import annotations

import math

import pandas as pd

from specscale.measure.registry import display_name
from specscale.stats.families import CANDIDATE_COLUMNS, judge_paired

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
        margin = _seeds(part.assign(m=part["optimizer_gain"] - (part["beta_ablated"] - part["beta_base"]).abs()), "m")
        zeros = dict.fromkeys(margin, 0.0)  # the gain and the margin are tested against 0, paired seed by seed
        rows += [
            {"claim": f"{ablation} − base, {optimizer}: {what}", "family": SHIFT,
             "a": _seeds(part, "beta_ablated"), "b": _seeds(part, "beta_base"), "widths": widths},
            {"claim": f"optimizer gain (best − {reference}) on widths {widths}: {what}", "family": GAIN,
             "a": _seeds(part, "optimizer_gain"), "b": zeros, "widths": widths},
            {"claim": f"optimizer gain − |{ablation} shift|, {optimizer}: {what}", "family": MARGIN,
             "a": margin, "b": zeros, "widths": widths}]
    out = pd.DataFrame(rows, columns=CANDIDATE_COLUMNS)
    return out.drop_duplicates("claim").reset_index(drop=True)  # the gain is one claim for every ablation on its widths


def arch_claims(table: pd.DataFrame, reference: str) -> pd.DataFrame:
    """The three families above from compare_arch_vs_optimizer's per-seed table; CLAIM_COLUMNS."""
    return judge_paired(_candidates(table, reference) if not table.empty else pd.DataFrame())
