"""β on the widths both sides of a comparison share (the fit stage refits; this module looks up).

A group's own β (results/betas.csv) is fitted on all its widths. When an ablation trained k ∈ {1, 2, 4} is set
beside a base trained on {1, 2, 4, 8}, both sides are read on {1, 2, 4}: the base's β from the fit stage's refit on
those widths (results/betas_shared.csv, specscale.fit.shared_widths), the ablation's own. Which widths a comparison
used is written beside it (`widths`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

Widths = frozenset[int]


def widths_text(widths: Iterable[float]) -> str:
    """'1,2,4': width multipliers k, ascending (as results/betas_shared.csv writes them)."""
    return ",".join(f"{float(k):g}" for k in sorted(widths))


def parse_widths(text: object) -> Widths:
    """'1,2,4' → {1, 2, 4}; '' or NaN → {}."""
    if not isinstance(text, str) or not text:
        return frozenset()
    return frozenset(int(float(k)) for k in text.split(","))


def group_widths(runs: pd.DataFrame) -> pd.Series:
    """group → its measured runs' widths as text (every run where runs.csv has no `measured` column): the widths its
    β is fitted on."""
    measured = runs[runs["measured"].astype(bool)] if "measured" in runs else runs
    return measured.groupby("group")["width_mult"].agg(lambda k: widths_text(set(k)))


class WidthBetas:
    """Trained β at one site by (group, set, metric) on a given width set: the group's own fit when the set is its
    own, its refit from results/betas_shared.csv when the set is smaller."""

    def __init__(self, betas: pd.DataFrame, shared: pd.DataFrame | None, groups: pd.DataFrame, site: str = "post"):
        self.widths = {g: parse_widths(w) for g, w in zip(groups["group"], groups["widths"])}
        self.own = {(r.group, r.bucket, r.metric): r for r in betas.itertuples()}
        self.shared = {}
        if shared is not None and not shared.empty:
            sel = shared[(shared["phase"] == "trained") & (shared["site"] == site)]
            self.shared = {(r.group, parse_widths(str(r.widths)), r.bucket, r.metric): r for r in sel.itertuples()}

    def common(self, *groups: str | None) -> Widths:
        """The widths every named group has."""
        sets = [self.widths.get(g, frozenset()) for g in groups if g is not None]
        return frozenset.intersection(*sets) if sets else frozenset()

    def _row(self, group: str, bucket: str, metric: str, widths: Widths) -> object | None:
        own = self.widths.get(group, frozenset())
        return self.own.get((group, bucket, metric)) if widths == own else self.shared.get(
            (group, widths, bucket, metric))

    def r2(self, group: str, bucket: str, metric: str, widths: Widths) -> float:
        """R² of the fit `beta` reads (NaN when there is none)."""
        row = self._row(group, bucket, metric, widths)
        return float(row.r2) if row is not None and bool(row.fitted) else math.nan

    def beta(self, group: str, bucket: str, metric: str, widths: Widths) -> tuple[float, str]:
        """(β, '') on `widths`, or (NaN, why not)."""
        own = self.widths.get(group, frozenset())
        if not widths or not widths <= own:
            return math.nan, f"not trained on widths {widths_text(widths)}"
        row = self._row(group, bucket, metric, widths)
        if row is None:
            return math.nan, "absent" if widths == own else f"no refit on the shared widths {widths_text(widths)}"
        if not (bool(row.fitted) and np.isfinite(row.beta)):
            reason = getattr(row, "reason", "")
            return math.nan, f"not fitted: {reason if isinstance(reason, str) and reason else 'NaN'}"
        return float(row.beta), ""
