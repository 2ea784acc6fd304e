"""The data behind the figures, as plain long tables (no drawing here: plots.py draws them).

Shared by the report (altair) and by the compare stage, which writes the same tables as JSON for `dvc plots`
(DVC renders its own Vega-Lite v5 templates from them), so both views always show the same numbers.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from specscale.measure.registry import FIT_METRICS

METRIC_NAMES = {"soft_rank": "soft", "hard_rank": "hard"}


def first_seed(groups: pd.DataFrame) -> pd.DataFrame:
    """Figures of curves show the lowest seed only (seed spread is shown on the β figure)."""
    return groups[groups["seed"] == groups["seed"].min()] if len(groups) else groups


def rank_width_data(ranks: pd.DataFrame, betas: pd.DataFrame, runs: pd.DataFrame, groups: pd.DataFrame,
                    site: str = "post", n_line: int = 24) -> pd.DataFrame:
    """Rank against width for the base architecture (trained phase): measured medians with a ±1 SD band of the layer
    medians (kind='measured') and the fitted line e^intercept · D^β over the measured range (kind='fit')."""
    base = first_seed(groups[groups["family"] == "base"]).set_index("group")
    if base.empty or ranks.empty:
        return pd.DataFrame()
    sel = ranks[(ranks["phase"] == "trained") & (ranks["site"] == site) & ranks["metric"].isin(FIT_METRICS)]
    sel = sel.join(runs.set_index("run")[["group"]], on="run")
    sel = sel[sel["group"].isin(base.index)]
    rows = []
    for r in sel.itertuples():
        sd = 0.0 if not np.isfinite(r.sd) else float(r.sd)
        # A log axis cannot show a band reaching zero: floor the lower edge at a tenth of the median.
        rows.append({"display": base.loc[r.group, "display"], "bucket": r.bucket, "metric": METRIC_NAMES[r.metric],
                     "ffn_dim": int(r.ffn_dim), "rank": float(r.median), "low": max(r.median - sd, r.median / 10),
                     "high": r.median + sd, "kind": "measured"})
    fits = betas[(betas["phase"] == "trained") & (betas["site"] == site) & betas["metric"].isin(FIT_METRICS)
                 & betas["group"].isin(base.index) & betas["fitted"].astype(bool)]
    for f in fits.itertuples():
        dims = sel.loc[sel["group"] == f.group, "ffn_dim"]
        if dims.empty:
            continue
        for d in np.geomspace(dims.min(), dims.max(), n_line):
            rank = math.exp(f.intercept) * d ** f.beta
            rows.append({"display": base.loc[f.group, "display"], "bucket": f.bucket,
                         "metric": METRIC_NAMES[f.metric], "ffn_dim": float(d), "rank": rank, "low": rank,
                         "high": rank, "kind": "fit"})
    return pd.DataFrame(rows)


def beta_interval_data(betas: pd.DataFrame, seeds: pd.DataFrame, groups: pd.DataFrame,
                       site: str = "post") -> pd.DataFrame:
    """β with its interval per group, bucket and metric: the trained β (OLS 95% interval), the step-0 baseline
    beside it and, where seeds exist, the mean over seeds with the between-seed interval."""
    info = groups.set_index("group")
    sel = betas[(betas["site"] == site) & betas["metric"].isin(FIT_METRICS) & betas["fitted"].astype(bool)
                & betas["group"].isin(info.index)]
    label = info["display"].str.replace(r" seed=\d+$", "", regex=True)  # seeds of one config share a row
    rows = [{"display": label[r.group], "bucket": r.bucket, "metric": METRIC_NAMES[r.metric],
             "series": "trained" if r.phase == "trained" else "step 0", "beta": r.beta, "low": r.ci95_low,
             "high": r.ci95_high, "seed": int(info.loc[r.group, "seed"])} for r in sel.itertuples()]
    if seeds is not None and not seeds.empty:
        s = seeds[(seeds["site"] == site) & (seeds["phase"] == "trained") & seeds["metric"].isin(FIT_METRICS)]
        seed_label = dict(zip(groups["seed_group"], label.reindex(groups["group"]).values))
        for r in s.itertuples():
            rows.append({"display": seed_label.get(r.seed_group, r.group_label), "bucket": r.bucket,
                         "metric": METRIC_NAMES[r.metric], "series": f"seed mean (n={r.n_seeds})",
                         "beta": r.beta_mean, "low": r.seed_ci95_low, "high": r.seed_ci95_high, "seed": -1})
    return pd.DataFrame(rows)


def delta_data(betas: pd.DataFrame, groups: pd.DataFrame, site: str = "post") -> pd.DataFrame:
    """Δ₁,₂ = β_soft − β_hard per group and bucket, trained and step 0."""
    info = groups.set_index("group")
    sel = betas[(betas["site"] == site) & (betas["metric"] == "soft_rank") & betas["group"].isin(info.index)
                & np.isfinite(betas["delta_soft_hard"])]
    return pd.DataFrame([{"display": info.loc[r.group, "display"], "bucket": r.bucket,
                          "phase": "trained" if r.phase == "trained" else "step 0", "delta": r.delta_soft_hard}
                         for r in sel.itertuples()], columns=["display", "bucket", "phase", "delta"])



def _base_or_steps(varied: object) -> bool:
    """A group of the base architecture (nothing varied, or only the number of steps): the curves over training."""
    parsed = json.loads(varied) if isinstance(varied, str) and varied else {}
    return set(parsed) <= {"train.steps"}


def beta_training_data(steps_seeds: pd.DataFrame, site: str = "post") -> pd.DataFrame:
    """β against training tokens per optimizer (base architecture, and step-count arms): the mean over seeds with
    the between-seed 95% interval (low/high; NaN with one seed) at every kept step > 0 (kind 'trained'), and the
    step-0 β, the untrained network's, as a baseline (kind 'step 0')."""
    if steps_seeds.empty:
        return pd.DataFrame()
    sel = steps_seeds[(steps_seeds["site"] == site) & steps_seeds["metric"].isin(FIT_METRICS)
                      & steps_seeds["varied"].map(_base_or_steps)]
    return pd.DataFrame([{"display": r.config, "bucket": r.bucket, "metric": METRIC_NAMES[r.metric],
                          "tokens": float(r.tokens), "step": int(r.step), "beta": r.beta_mean,
                          "low": r.seed_ci95_low, "high": r.seed_ci95_high, "n_seeds": int(r.n_seeds),
                          "kind": "step 0" if r.step == 0 else "trained"} for r in sel.itertuples()],
                        columns=["display", "bucket", "metric", "tokens", "step", "beta", "low", "high", "n_seeds",
                                 "kind"])


def gap_training_data(gaps_steps: pd.DataFrame, site: str = "post") -> pd.DataFrame:
    """β(optimizer) − β(reference) against training tokens, base architecture only, steps > 0, with the across-seed
    95% interval (NaN with fewer than 2 seeds a side)."""
    if gaps_steps.empty:
        return pd.DataFrame()
    sel = gaps_steps[(gaps_steps["site"] == site) & gaps_steps["metric"].isin(FIT_METRICS)
                     & (gaps_steps["setting"].fillna("") == "") & (gaps_steps["step"] > 0)]
    has_band = "diff_adj_low" in sel.columns  # the band simultaneous over the kept steps (fit/claims.py)
    return pd.DataFrame([{"comparison": r.comparison, "bucket": r.bucket, "metric": METRIC_NAMES[r.metric],
                          "tokens": float(r.tokens), "step": int(r.step), "diff": r.diff, "low": r.diff_ci95_low,
                          "high": r.diff_ci95_high, "n_seeds": int(min(r.n_seeds, r.n_seeds_ref)),
                          "band_low": r.diff_adj_low if has_band else math.nan,
                          "band_high": r.diff_adj_high if has_band else math.nan}
                         for r in sel.itertuples()],
                        columns=["comparison", "bucket", "metric", "tokens", "step", "diff", "low", "high",
                                 "n_seeds", "band_low", "band_high"])


def beta_training_seed_points(steps: pd.DataFrame, site: str = "post") -> pd.DataFrame:
    """Each seed's own β at every kept step > 0 (betas_steps.csv), base architecture and step-count arms: the points
    drawn beside the seed mean and band of the β-over-training figure (display = the seed group's config)."""
    if steps.empty:
        return pd.DataFrame(columns=["display", "bucket", "metric", "tokens", "step", "seed", "beta"])
    sel = steps[(steps["site"] == site) & steps["metric"].isin(FIT_METRICS) & steps["fitted"].astype(bool)
                & (steps["step"] > 0) & steps["varied"].map(_base_or_steps)]
    return pd.DataFrame({"display": sel["config"], "bucket": sel["bucket"], "metric": sel["metric"].map(METRIC_NAMES),
                         "tokens": sel["tokens"].astype(float), "step": sel["step"].astype(int),
                         "seed": sel["seed"].astype(int), "beta": sel["beta"].astype(float)})


def layer_beta_data(per_layer: pd.DataFrame, runs: pd.DataFrame, site: str = "post") -> pd.DataFrame:
    """Trained β fitted on each layer separately (betas_per_layer.csv), averaged over the seeds of a configuration:
    one cell per configuration, layer, bucket and metric (n_seeds: how many seeds the cell averages)."""
    if per_layer.empty or runs.empty:
        return pd.DataFrame(columns=["display", "layer", "bucket", "metric", "beta", "n_seeds"])
    config = runs.drop_duplicates("group").set_index("group")["config"]
    sel = per_layer[(per_layer["phase"] == "trained") & (per_layer["site"] == site)
                    & per_layer["metric"].isin(FIT_METRICS) & per_layer["fitted"].astype(bool)]
    sel = sel.assign(display=sel["group"].map(config), metric=sel["metric"].map(METRIC_NAMES))
    out = sel.groupby(["display", "layer", "bucket", "metric"])["beta"].agg(["mean", "count"]).reset_index()
    return out.rename(columns={"mean": "beta", "count": "n_seeds"})


def loss_curve_data(curves: pd.DataFrame) -> pd.DataFrame:
    """Training loss against tokens per configuration and width: the mean over seeds (loss) and the lowest and
    highest seed (low, high; equal with one seed) at every kept step every seed logged."""
    if curves.empty:
        return pd.DataFrame(columns=["display", "width_mult", "step", "tokens", "loss", "low", "high", "n_seeds"])
    finite = curves[np.isfinite(curves["loss"])]
    out = finite.groupby(["config", "width_mult", "step", "tokens"])["loss"].agg(
        ["mean", "min", "max", "count"]).reset_index()
    return out.rename(columns={"config": "display", "mean": "loss", "min": "low", "max": "high", "count": "n_seeds"})


OVER_TRAINING_FAMILY = "over training"  # fit/claims.py OVER_TRAINING: families of one curve over the kept steps


def claims_forest_data(claims: pd.DataFrame) -> pd.DataFrame:
    """results/claims.csv as the forest plot draws it: one row per claim and interval kind (raw: lo–hi; adjusted
    for its family: lo_adj–hi_adj, where the family has one), the primary endpoint flagged. Claims over training
    (one per kept step) are left to the Δβ-over-training figure, which draws their simultaneous band."""
    if claims.empty:
        return pd.DataFrame(columns=["claim", "family", "estimate", "interval", "low", "high", "primary", "verdict"])
    rows = []
    for c in claims[~claims["family"].astype(str).str.startswith(OVER_TRAINING_FAMILY)].itertuples():
        for kind, lo, hi in (("unadjusted", c.lo, c.hi), ("family-adjusted", c.lo_adj, c.hi_adj)):
            if not (pd.notna(lo) and pd.notna(hi)) or not pd.notna(c.estimate):
                continue
            rows.append({"claim": c.claim, "family": c.family, "estimate": float(c.estimate), "interval": kind,
                         "low": float(lo), "high": float(hi), "primary": c.family == "primary",
                         "verdict": c.verdict})
    return pd.DataFrame(rows, columns=["claim", "family", "estimate", "interval", "low", "high", "primary",
                                       "verdict"])
