"""Both sides of a comparison fitted on the widths they share.

β is a slope over widths, and which widths enter moves it: on the paper's released 160M points
(data/rank_points_160m.csv), fitting k ∈ {1, 2, 4} instead of {1, 2, 4, 8} moves β by a median 0.10 over its 40
cells, the size of the effects being compared. So a comparison of groups trained at different
widths (an ablation on k ∈ {1, 2, 4} against a base on {1, 2, 4, 8}, or a width missing on one side) refits every
group on the widths all of them have, and says which (`widths_label`).

The fit stage writes results/betas_shared.csv (`shared_width_fits`): each group refitted on its intersection with
every other width set of the study, so the compare stage can look up both sides of an ablation on shared widths
without fitting anything itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd

from specscale.fit.laws import fit_points

Widths = frozenset[int]
MIN_SHARED = 3  # a slope and its interval need three widths (laws.ols_loglog)


def widths_label(widths: Iterable[float]) -> str:
    """'1,2,4,8': the width multipliers k, ascending (the claims' and tables' `widths` column)."""
    return ",".join(f"{float(k):g}" for k in sorted(widths))


def group_widths(runs: pd.DataFrame) -> dict[str, Widths]:
    """group → the width multipliers of its measured runs (runs.csv; every run counts where `measured` is absent)."""
    measured = runs[runs["measured"].astype(bool)] if "measured" in runs else runs
    return {g: frozenset(int(k) for k in part["width_mult"]) for g, part in measured.groupby("group")}


def common_widths(groups: Iterable[str], widths: dict[str, Widths]) -> Widths:
    """The widths every one of `groups` has (empty when one has none)."""
    sets = [widths.get(g, frozenset()) for g in groups]
    return frozenset.intersection(*sets) if sets else frozenset()


def refit(points: pd.DataFrame, groups: Iterable[str], shared: Widths, keys: Sequence[str],
          value_col: str) -> pd.DataFrame:
    """β of each of `groups` per `keys` on the `shared` widths only. points: one row per run and keys with group,
    width_mult, ffn_dim and `value_col` (per-run medians, or a step's layer medians). Same columns as fit_points."""
    sel = points[points["group"].isin(list(groups)) & points["width_mult"].isin(list(shared))]
    sel = sel.sort_values("ffn_dim", kind="stable")  # the same summation order as the full fits
    return fit_points(sel, ["group", *keys], width_col="ffn_dim", value_col=value_col)


def shared_width_fits(ranks: pd.DataFrame, runs: pd.DataFrame, keys: Sequence[str], metrics: Sequence[str]
                      ) -> pd.DataFrame:
    """results/betas_shared.csv: every group refitted on each of its intersections with another group's width set
    that is smaller than its own and still has ≥ MIN_SHARED widths; one row per group, width set and `keys`, with the
    fit's columns and `widths`. ranks: ranks.csv (per-run medians); only `metrics` are refitted."""
    widths = group_widths(runs)
    info = runs.drop_duplicates("run").set_index("run")[["group", "width_mult", "ffn_dim"]]
    points = ranks[ranks["metric"].isin(list(metrics))].drop(columns=list(info.columns), errors="ignore").join(
        info, on="run")
    parts = []
    for group, own in sorted(widths.items()):
        for shared in sorted({own & other for other in set(widths.values())}, key=sorted):
            if shared == own or len(shared) < MIN_SHARED:
                continue
            fits = refit(points, [group], shared, keys, "median")
            parts.append(fits.assign(widths=widths_label(shared)))
    if not parts:
        return pd.DataFrame(columns=["group", *keys, "widths", "beta", "ci95_low", "ci95_high", "r2", "n_widths",
                                     "fitted"])
    out = pd.concat(parts, ignore_index=True)
    return out[["group", *keys, "widths", "beta", "ci95_low", "ci95_high", "r2", "n_widths", "fitted"]]
