"""Spectral scaling-law fits: rank ∝ D^β across FFN widths (docs/science.md §6).

Pipeline per (model, optimizer, bucket, metric):
  1. per run and layer, median over the last K logged checkpoints;
  2. median across layers (band: SD of the layer medians, ddof 1);
  3. OLS of ln(rank) on ln(D); β = slope, 95% interval β ± t(0.975, n−2)·SE;
  4. Δ₁,₂ = β_soft − β_hard.
Step 3 on the paper's per-width ranks (``data/rank_points_160m.csv``) reproduces their table
(``data/beta_table_160m.csv``) exactly; the tests assert it row by row.

Three different intervals live here, answering different questions:
  * ``ols_loglog``: the fit interval — uncertainty of the slope given scatter of the per-width points about the line;
  * ``bootstrap_beta``: a layer-resampling interval — how much β moves if the layers had been different draws
    (the per-width point is a median over layers);
  * ``seed_mean_interval``: a between-seed interval — spread of β over independent training seeds.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

DATA_DIR = Path(__file__).resolve().parents[1] / "data"  # specscale/data: package data (pyproject)
PAPER_RANK_POINTS = DATA_DIR / "rank_points_160m.csv"  # Jha & Reagen 2026, per-width ranks (GPT-2 160M)
PAPER_BETA_TABLE = DATA_DIR / "beta_table_160m.csv"  # their fitted β, 95% CI, R², n_widths

FIT_GROUP_COLS: tuple[str, ...] = ("model", "optimizer", "bucket", "metric")
DELTA_METRIC = "delta_soft_hard"  # metric label of the Δ₁,₂ = β_soft − β_hard rows added by add_deltas


@dataclass(frozen=True)
class FitResult:
    """OLS fit of ln(rank) = intercept + β ln(D). Unfitted results carry NaN numbers and a reason."""

    beta: float
    intercept: float
    r2: float
    se: float  # standard error of β
    ci_low: float
    ci_high: float
    n: int  # number of points used (one per width unless widths repeat)
    fitted: bool
    reason: str = ""
    level: float = 0.95


def _not_fitted(n: int, reason: str, level: float) -> FitResult:
    nan = math.nan
    return FitResult(nan, nan, nan, nan, nan, nan, n, False, reason, level)


def ols_loglog(widths: ArrayLike, ranks: ArrayLike, level: float = 0.95) -> FitResult:
    """Fit rank = e^intercept · D^β by OLS in log-log space, with a t-interval on β at ``level``.

    ``widths``: FFN widths D (or any positive multiple of them: the slope is unchanged), shape (n,).
    ``ranks``: the effective rank at each width, shape (n,). Points with a NaN rank (a missing measurement) are
    dropped. Fewer than 3 distinct widths, or a non-positive value, give ``fitted=False`` with β = NaN.
    """
    x = np.asarray(widths, dtype=np.float64).ravel()
    y = np.asarray(ranks, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"widths and ranks differ in length: {x.size} vs {y.size}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    if np.any(x <= 0) or np.any(y <= 0):
        return _not_fitted(n, "non-positive width or rank (log undefined)", level)
    n_distinct = int(np.unique(x).size)
    if n_distinct < 3:
        return _not_fitted(n, f"need >= 3 distinct widths for a slope and its interval, have {n_distinct}", level)
    lx, ly = np.log(x), np.log(y)
    dx, dy = lx - lx.mean(), ly - ly.mean()
    sxx = float(dx @ dx)
    beta = float(dx @ dy) / sxx
    intercept = float(ly.mean() - beta * lx.mean())
    resid = dy - beta * dx
    ss_res = float(resid @ resid)
    ss_tot = float(dy @ dy)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan  # flat ranks: R² undefined
    dof = n - 2
    se = math.sqrt(ss_res / dof / sxx)
    half = float(stats.t.ppf(0.5 + level / 2.0, dof)) * se
    return FitResult(beta, intercept, r2, se, beta - half, beta + half, n, True, "", level)


class Aggregation(NamedTuple):
    """Result of aggregate_checkpoints_and_layers.

    per_run: one row per run (group columns) with median, sd, n_layers.
    per_layer: one row per run and layer with the checkpoint median ``value`` and ``n_steps`` used.
    """

    per_run: pd.DataFrame
    per_layer: pd.DataFrame


def aggregate_checkpoints_and_layers(
    df: pd.DataFrame,
    last_k: int = 5,
    group_cols: Sequence[str] = ("run",),
    layer_col: str = "layer",
    step_col: str = "step",
    value_col: str = "value",
) -> Aggregation:
    """Steps 1-2 of §6 on a long table with one row per (group…, layer, step).

    Per run (``group_cols``, e.g. ("run",) or ("run", "bucket", "metric")) and layer: median of ``value`` over the
    last ``last_k`` logged steps of that layer (fewer if fewer were logged). Then per run: median and SD (ddof 1; NaN
    for a single layer) across the layer medians, and the number of layers.
    """
    if last_k < 1:
        raise ValueError(f"last_k must be >= 1, got {last_k}")
    groups = list(group_cols)
    missing = [c for c in [*groups, layer_col, step_col, value_col] if c not in df.columns]
    if missing:
        raise ValueError(f"aggregation table lacks column(s): {', '.join(missing)}")
    keys = [*groups, layer_col]
    ordered = df.sort_values([*keys, step_col])
    # The last K rows of each (run, layer) after sorting by step are its last K logged checkpoints.
    tail = ordered.groupby(keys, sort=True, dropna=False).tail(last_k)
    per_layer = (
        tail.groupby(keys, sort=True, dropna=False)[value_col]
        .agg(value="median", n_steps="count")
        .reset_index()
    )
    per_run = (
        per_layer.groupby(groups, sort=True, dropna=False)["value"]
        .agg(median="median", sd=lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else math.nan, n_layers="count")
        .reset_index()
    )
    return Aggregation(per_run=per_run, per_layer=per_layer)


@dataclass(frozen=True)
class BootstrapResult:
    beta: float  # β of the fit to the full-data layer medians
    ci_low: float
    ci_high: float
    n_boot: int
    level: float


def bootstrap_beta(
    widths: ArrayLike,
    layer_values: Sequence[ArrayLike],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> BootstrapResult:
    """Layer-resampling percentile interval for β.

    ``layer_values[i]`` holds the per-layer values (e.g. checkpoint medians, shape (L_i,)) at ``widths[i]``.
    Each replicate resamples the layers of every width with replacement, takes the median across layers as the
    width's rank, and refits the OLS slope; the interval is the (1−level)/2 and (1+level)/2 percentiles of the
    replicate slopes. It measures sensitivity to which layers were measured, not the scatter of the widths about
    the power law (that is ``ols_loglog``'s interval), so the two need not agree.
    """
    x = np.asarray(widths, dtype=np.float64).ravel()
    if len(layer_values) != x.size:
        raise ValueError(f"{x.size} widths but {len(layer_values)} sets of layer values")
    if np.unique(x).size < 3:
        raise ValueError("need >= 3 distinct widths")
    sets = [np.asarray(v, dtype=np.float64).ravel() for v in layer_values]
    if any(s.size == 0 or np.any(~np.isfinite(s)) or np.any(s <= 0) for s in sets):
        raise ValueError("every width needs >= 1 finite positive layer value")
    point = ols_loglog(x, [np.median(s) for s in sets], level=level).beta
    lx = np.log(x)
    dx = lx - lx.mean()

    def slope(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        """OLS slope of the log-median per width; scipy hands every replicate at once (vectorized)."""
        log_med = np.stack([np.log(np.median(s, axis=axis)) for s in samples], axis=-1)
        return (log_med - log_med.mean(axis=-1, keepdims=True)) @ dx / float(dx @ dx)

    # scipy resamples each width's layers independently (one sample per width), drawing from the generator in the
    # order the hand-written loop did, so the interval is the same to the bit for the same seed (tested). scipy wants
    # two observations a sample: a width with one layer resamples to that value either way, so it is doubled.
    sets = [np.repeat(s, 2) if s.size == 1 else s for s in sets]
    res = stats.bootstrap(sets, slope, n_resamples=n_boot, confidence_level=level, method="percentile",
                          vectorized=True, rng=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    return BootstrapResult(point, float(lo), float(hi), int(n_boot), level)


@dataclass(frozen=True)
class SeedInterval:
    mean: float
    ci_low: float
    ci_high: float
    sd: float
    n: int
    computed: bool
    reason: str = ""


def seed_mean_interval(betas: ArrayLike, level: float = 0.95) -> SeedInterval:
    """Mean of β across seeds with a t-interval (n − 1 dof): mean ± t((1+level)/2, n−1)·sd/√n (scipy's ttest_1samp).

    With fewer than 2 finite values no interval exists: ``computed=False`` (the mean of a single seed is still given).
    """
    b = np.asarray(betas, dtype=np.float64).ravel()
    b = b[np.isfinite(b)]
    n = int(b.size)
    if n < 2:
        mean = float(b[0]) if n == 1 else math.nan
        return SeedInterval(mean, math.nan, math.nan, math.nan, n, False, f"need >= 2 seeds, have {n}")
    mean = float(b.mean())
    sd = float(b.std(ddof=1))
    if sd == 0.0:  # every seed gave the same β: scipy's t is 0/0, the interval is the point
        return SeedInterval(mean, mean, mean, sd, n, True)
    ci = stats.ttest_1samp(b, 0.0).confidence_interval(confidence_level=level)
    return SeedInterval(mean, float(ci.low), float(ci.high), sd, n, True)


def _ci_names(level: float) -> tuple[str, str]:
    tag = f"{100.0 * level:g}".replace(".", "_")
    return f"ci{tag}_low", f"ci{tag}_high"


def fit_points(
    df: pd.DataFrame,
    group_cols: Sequence[str] = FIT_GROUP_COLS,
    width_col: str = "ffn_dim",
    value_col: str = "rank",
    level: float = 0.95,
) -> pd.DataFrame:
    """Fit β for every group of a per-width rank table (one row per group and width).

    Returns one row per group: the group columns, beta, ci95_low, ci95_high, r2, n_widths, intercept, se, fitted,
    reason (interval columns are named after ``level``). The intercept is ln(rank) at D = 1 in ``width_col`` units.
    """
    groups = list(group_cols)
    missing = [c for c in [*groups, width_col, value_col] if c not in df.columns]
    if missing:
        raise ValueError(f"rank table lacks required column(s): {', '.join(missing)}")
    lo_name, hi_name = _ci_names(level)
    rows = []
    for key, part in df.groupby(groups, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        res = ols_loglog(part[width_col].to_numpy(), part[value_col].to_numpy(), level=level)
        n_widths = int(part.loc[part[value_col].notna(), width_col].nunique())
        rows.append(
            {
                **dict(zip(groups, key)),
                "beta": res.beta,
                lo_name: res.ci_low,
                hi_name: res.ci_high,
                "r2": res.r2,
                "n_widths": n_widths,
                "intercept": res.intercept,
                "se": res.se,
                "fitted": res.fitted,
                "reason": res.reason,
            }
        )
    columns = [*groups, "beta", lo_name, hi_name, "r2", "n_widths", "intercept", "se", "fitted", "reason"]
    return pd.DataFrame(rows, columns=columns)


def soft_minus_hard(table: pd.DataFrame, group_cols: Sequence[str], soft: str = "soft_rank",
                    hard: str = "hard_rank") -> pd.Series:
    """Δ₁,₂ = β_soft − β_hard per group of a β table (one row per group and metric), indexed by ``group_cols``.

    NaN where either fit is missing or not fitted. The one Δ implementation: `add_deltas` (rows, for fit-points)
    and the pipeline's delta column both use it.
    """
    ok = table[table["metric"].isin([soft, hard])]
    beta = ok["beta"].where(ok["fitted"].astype(bool))
    wide = ok.assign(beta=beta).pivot_table(index=list(group_cols), columns="metric", values="beta",
                                            aggfunc="first", dropna=False)
    nan = pd.Series(math.nan, index=wide.index)
    return (wide.get(soft, nan) - wide.get(hard, nan)).rename(DELTA_METRIC)


def add_deltas(
    table: pd.DataFrame,
    soft: str = "soft_rank",
    hard: str = "hard_rank",
    group_cols: Sequence[str] = ("model", "optimizer", "bucket"),
) -> pd.DataFrame:
    """Append one row per group with metric ``DELTA_METRIC`` and beta = Δ₁,₂ = β_soft − β_hard.

    Δ > 0: the spectrum's mass sits in few modes (hard rank grows slower than soft). Interval, R², intercept and SE
    of a Δ row are NaN: the two fits share their data, so no interval follows from the two separate ones.
    A group lacking either fitted metric gets Δ = NaN and fitted False.
    """
    groups = list(group_cols)
    base = table[table["metric"] != DELTA_METRIC]
    deltas = soft_minus_hard(base, groups, soft, hard) if base["metric"].isin([soft, hard]).any() else None
    new_rows = []
    for key, part in base.groupby(groups, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        by_metric = {m: r for m, r in zip(part["metric"], part.to_dict("records"))}
        s, h = by_metric.get(soft), by_metric.get(hard)
        if s is None and h is None:
            continue  # neither metric in this group (e.g. Rényi-only): nothing to difference
        delta = float(deltas.loc[key if len(key) > 1 else key[0]])
        ok = not math.isnan(delta)
        row = {c: math.nan for c in table.columns}
        row.update(dict(zip(groups, key)))
        row.update(
            metric=DELTA_METRIC,
            beta=delta,
            n_widths=min(s["n_widths"], h["n_widths"]) if ok else 0,
            fitted=ok,
            reason="" if ok else f"needs fitted {soft} and {hard}",
        )
        new_rows.append(row)
    if not new_rows:
        return base.reset_index(drop=True)
    out = pd.concat([base, pd.DataFrame(new_rows, columns=table.columns)], ignore_index=True)
    # Group order kept; within a group the metrics in their order, the Δ row last.
    out["_is_delta"] = out["metric"] == DELTA_METRIC
    out = out.sort_values([*groups, "_is_delta", "metric"], kind="stable")
    return out.drop(columns="_is_delta").reset_index(drop=True)


def format_fit_table(table: pd.DataFrame, level: float = 0.95) -> str:
    """Readable text table: one line per (model, optimizer, bucket, metric) with β, CI, R², n; Δ rows included."""
    lo_name, hi_name = _ci_names(level)
    pct = f"{100.0 * level:g}%"

    def num(v: float, spec: str) -> str:
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    lines = []
    header = (
        f"{'model':<12} {'optimizer':<11} {'bucket':<7} {'metric':<16} {'beta':>8}  "
        f"{pct + ' CI':<18} {'R2':>6} {'n':>3}"
    )
    lines.append(header)
    lines.append("-" * len(header))
    for r in table.to_dict("records"):
        if r["metric"] == DELTA_METRIC:
            label, ci = "Δ soft−hard", ""
        else:
            label = str(r["metric"])
            ci = f"[{num(r[lo_name], '.3f')}, {num(r[hi_name], '.3f')}]" if r["fitted"] else str(r["reason"])
        lines.append(
            f"{str(r.get('model', '')):<12} {str(r.get('optimizer', '')):<11} {str(r.get('bucket', '')):<7} "
            f"{label:<16} {num(r['beta'], '+.4f'):>8}  {ci:<18} {num(r['r2'], '.3f'):>6} {int(r['n_widths']):>3}"
        )
    return "\n".join(lines)


def fit_points_cli(path: str, out: str | None = None) -> int:
    """Fit a per-width rank CSV (columns model, optimizer, bucket, metric, ffn_dim, rank), print, optionally save.

    Returns 0 on success, 2 on an unreadable file or missing columns (the message names both).
    """
    required = [*FIT_GROUP_COLS, "ffn_dim", "rank"]
    try:
        df = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        print(f"error: cannot read rank table {path}: {err}", file=sys.stderr)
        return 2
    missing = [c for c in required if c not in df.columns]
    if missing:
        print(
            f"error: {path} lacks required column(s): {', '.join(missing)} "
            f"(needs {', '.join(required)}; has {', '.join(map(str, df.columns))})",
            file=sys.stderr,
        )
        return 2
    table = add_deltas(fit_points(df))
    print(format_fit_table(table))
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index=False)
        print(f"wrote {len(table)} rows to {out}")
    return 0
