"""Seeds and training time: β at every kept checkpoint step, means over seeds with their intervals, and the
difference between each optimizer and the reference optimizer with an across-seed interval (docs/science.md §6.4).

Tables (written by the fit stage, results/):
  betas_steps.csv        per group × step × bucket × site × metric: β over widths of the layer medians at that step
  betas_steps_seeds.csv  the same per seed group (groups equal but for the seed): mean β and a t-interval over seeds
  beta_gaps.csv          per arm × optimizer × phase × bucket × site × metric: β(optimizer) − β(reference), the
                         mean over seeds of each side, and a 95% interval over seeds (fit.gap_interval)
  beta_gaps_steps.csv    the same at every kept step

A seed group's "context" is the arm that asked for it and the arm's varied values: two optimizers are compared only
inside one context (an arm with its own lrs is compared within itself, never against the main sweep's runs).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from specscale.fit.laws import fit_points, seed_mean_interval
from specscale.measure.registry import FIT_METRICS
from specscale.study.spec import GAP_INTERVALS

STEP_KEYS = ["group", "step", "bucket", "site", "metric"]  # one β per combination in betas_steps.csv
PASSTHROUGH = ("config", "varied", "arms", "tokens_per_step")  # labels shared by a seed group's groups


def layer_medians_per_step(long: pd.DataFrame) -> pd.DataFrame:
    """Per run, step, bucket, site and metric (soft and hard rank): the median over layers of that step's rank.
    long: one row per (run, step, layer, site, bucket, metric) with `value` (fit_study.long_ranks)."""
    sel = long[long["metric"].isin(FIT_METRICS)]
    return sel.groupby(["run", "step", "bucket", "site", "metric"])["value"].median().reset_index()


def betas_per_step(long: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """β (OLS of ln rank on ln D over widths) at every kept step of every group, from the layer medians of that step.
    A step enters a group's fit only with the widths that logged it; n_widths says how many. Columns: STEP_KEYS, β and
    its OLS interval, r2, n_widths, fitted, tokens (step × tokens per optimizer step) and the group's labels."""
    if long.empty or runs.empty:
        return pd.DataFrame()
    info = runs.set_index("run")
    per_step = layer_medians_per_step(long).join(info[["group", "ffn_dim"]], on="run")
    per_step = per_step.sort_values("ffn_dim", kind="stable")  # same OLS summation order every time
    betas = fit_points(per_step, STEP_KEYS, width_col="ffn_dim", value_col="value")
    labels = runs.drop_duplicates("group").set_index("group")[
        ["group_label", "config", "optimizer", "seed", "seed_group", "arms", "varied", "steps", "tokens_per_step"]]
    betas = betas.join(labels, on="group")
    betas["tokens"] = betas["step"] * betas["tokens_per_step"]
    return betas.drop(columns=["intercept", "se", "reason"])


def seed_means(betas: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean β over the seeds of each seed group with a t-interval (n − 1 dof), per `keys` (which include
    seed_group); fitted soft and hard β only. Groups with one seed get the mean and no interval (n_seeds = 1)."""
    fitted = betas[betas["fitted"].astype(bool) & betas["metric"].isin(FIT_METRICS)]
    rows = []
    for key, part in fitted.groupby(keys, sort=True):
        s = seed_mean_interval(part["beta"].to_numpy())
        rows.append({**dict(zip(keys, key if isinstance(key, tuple) else (key,))),
                     "group_label": str(part["group_label"].iloc[0]), "optimizer": part["optimizer"].iloc[0],
                     **{col: part[col].iloc[0] for col in PASSTHROUGH if col in part},
                     "n_seeds": s.n, "beta_mean": s.mean, "beta_sd": s.sd, "seed_ci95_low": s.ci_low,
                     "seed_ci95_high": s.ci_high})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Gap:
    """β(optimizer) − β(reference) over seeds: means, difference, its 95% interval and the ns on each side."""

    mean: float
    ref_mean: float
    diff: float
    low: float
    high: float
    n: int
    n_ref: int


def gap_interval(values: dict[int, float], ref: dict[int, float], kind: str = "welch", level: float = 0.95) -> Gap:
    """values, ref: seed → β. welch: the two seed samples as independent (Welch–Satterthwaite dof); paired: the
    per-seed differences over the seeds both sides have (a t-interval on n − 1 dof). No interval with < 2 seeds."""
    if kind not in GAP_INTERVALS:
        raise ValueError(f"fit.gap_interval {kind!r} is not one of {', '.join(GAP_INTERVALS)}")
    a = np.array([v for v in values.values() if math.isfinite(v)], dtype=np.float64)
    b = np.array([v for v in ref.values() if math.isfinite(v)], dtype=np.float64)
    mean = float(a.mean()) if a.size else math.nan
    ref_mean = float(b.mean()) if b.size else math.nan
    if kind == "paired":
        common = sorted(s for s in set(values) & set(ref) if math.isfinite(values[s]) and math.isfinite(ref[s]))
        s = seed_mean_interval([values[k] - ref[k] for k in common], level)
        return Gap(mean, ref_mean, s.mean if common else mean - ref_mean, s.ci_low, s.ci_high, len(common),
                   len(common))
    diff = mean - ref_mean
    if a.size < 2 or b.size < 2:
        return Gap(mean, ref_mean, diff, math.nan, math.nan, int(a.size), int(b.size))
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0.0:  # every seed gave the same β on both sides
        return Gap(mean, ref_mean, diff, diff, diff, int(a.size), int(b.size))
    dof = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = float(stats.t.ppf(0.5 + level / 2.0, dof)) * se
    return Gap(mean, ref_mean, diff, diff - half, diff + half, int(a.size), int(b.size))


def contexts(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (arm, setting, optimizer, seed group): the seed groups each arm compares. setting: the arm's
    varied values as JSON ('{}' for none)."""
    rows = []
    for r in runs.drop_duplicates("group").itertuples():
        for arm in str(r.arms).split(","):
            rows.append({"arm": arm, "setting": r.varied, "optimizer": r.optimizer, "seed_group": r.seed_group,
                         "config": getattr(r, "config", r.optimizer)})
    return pd.DataFrame(rows, columns=["arm", "setting", "optimizer", "seed_group", "config"]).drop_duplicates()


def optimizer_gaps(betas: pd.DataFrame, runs: pd.DataFrame, reference: str, keys: list[str],
                   kind: str = "welch") -> pd.DataFrame:
    """Per arm and setting that trained `reference`, per other optimizer of that arm and per `keys` (e.g. phase,
    bucket, site, metric; or step, bucket, site, metric): β(optimizer) − β(reference) over seeds (`gap_interval`).
    betas: one row per group and keys, with seed_group and seed (fitted soft and hard β are used)."""
    fitted = betas[betas["fitted"].astype(bool) & betas["metric"].isin(FIT_METRICS)]
    by_seed_group = {sg: part for sg, part in fitted.groupby("seed_group")}
    rows = []
    for (arm, setting), ctx in contexts(runs).groupby(["arm", "setting"], sort=True):
        refs = ctx[ctx["optimizer"] == reference]
        if refs.empty:
            continue
        ref_table, ref_config = by_seed_group.get(refs["seed_group"].iloc[0]), refs["config"].iloc[0]
        if ref_table is None:
            continue
        ref_cells = {k: dict(zip(p["seed"], p["beta"])) for k, p in ref_table.groupby(keys)}
        # optimizers of one context share batch and sequence length (else they would differ in the setting)
        extra = ({"tokens_per_step": int(ref_table["tokens_per_step"].iloc[0])}
                 if "tokens_per_step" in ref_table else {})
        for other in ctx[ctx["optimizer"] != reference].itertuples():
            table = by_seed_group.get(other.seed_group)
            if table is None:
                continue
            for key, part in table.groupby(keys):
                ref = ref_cells.get(key)
                if ref is None:
                    continue
                g = gap_interval(dict(zip(part["seed"], part["beta"])), ref, kind)
                key = key if isinstance(key, tuple) else (key,)
                rows.append({"arm": arm, "setting": _setting_label(setting), "optimizer": other.optimizer,
                             "reference": reference, "comparison": f"{other.config} − {ref_config}",
                             **dict(zip(keys, key)), "beta": g.mean, "beta_ref": g.ref_mean,
                             "diff": g.diff, "diff_ci95_low": g.low, "diff_ci95_high": g.high, "n_seeds": g.n,
                             "n_seeds_ref": g.n_ref, "interval": kind, **extra})
    return pd.DataFrame(rows)


def _setting_label(varied_json: str) -> str:
    """'{"model.n_heads": 2}' → 'n_heads=2'; '{}' → ''."""
    varied = json.loads(varied_json) if isinstance(varied_json, str) and varied_json else {}
    return " ".join(f"{k.split('.')[-1]}={v}" for k, v in sorted(varied.items()))
