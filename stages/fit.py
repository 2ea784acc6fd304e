"""fit stage (aggregate): ranks per run and scaling-law fits rank ∝ D^β per group of runs that differ only in width.

Per run, bucket, site and metric: median over the last K logged checkpoints per layer, then the median over layers
with ±1 SD (ddof 1) of the layer medians (science.md §6). The same at step 0 — the untrained network — is the
baseline of every β. Outputs (results/):
  runs.csv            one row per training run: labels, validation loss/perplexity, diverged
  ranks.csv           per run × phase (trained | step0) × bucket × site × metric: median, sd, n_layers, N, D, N/D
  betas.csv           per group × phase × bucket × site × metric: β, 95% OLS t-interval, R², n, bootstrap interval
  betas_per_layer.csv the same fit on each layer's medians (does the layer median hide disagreement?)
  betas_seeds.csv     across seeds: mean β and a t-interval over seeds (only when the sweep has ≥ 2 seeds)
  betas.json          headline β (post site) for `dvc metrics`; perplexity.json likewise
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from specscale.cache import RunStore, stable_hash
from specscale.fit import aggregate_checkpoints_and_layers, bootstrap_beta, ols_loglog, seed_mean_interval
from specscale.plan import StudyPlan
from specscale.stages.spectra import MIN_N_OVER_D

FIT_METRICS = ("soft_rank", "hard_rank")


def collect_runs(plan: StudyPlan, store: RunStore) -> pd.DataFrame:
    rows = []
    for train, spectra in zip(plan.train, plan.spectra):
        if not store.is_done("train", train.key):
            continue
        result = json.loads((store.final_dir("train", train.key) / "result.json").read_text())
        point = train.point
        no_seed = point.group_spec()
        no_seed.pop("seed")
        rows.append({
            "run": train.key, "spectra_key": spectra.key, "label": point.label, "arms": ",".join(point.arms),
            "group": stable_hash(point.group_spec()), "seed_group": stable_hash(no_seed),
            "group_label": point.group_label, "optimizer": point.optimizer, "width_mult": point.width,
            "ffn_dim": result["ffn_dim"], "seed": point.seed, "steps": train.spec["train"]["steps"],
            "varied": json.dumps(point.varied, sort_keys=True),
            "val_loss": result["val_loss"], "val_ppl": result["val_ppl"], "diverged": result["diverged"],
            "measured": store.is_done("spectra", spectra.key),
        })
    return pd.DataFrame(rows)


def long_ranks(runs: pd.DataFrame, store: RunStore) -> pd.DataFrame:
    parts = []
    for run in runs[runs["measured"]].itertuples():
        df = pd.read_csv(store.final_dir("spectra", run.spectra_key) / "ranks.csv")
        df["run"] = run.run
        parts.append(df)
    if not parts:
        return pd.DataFrame()
    ranks = pd.concat(parts, ignore_index=True)
    metric_cols = [c for c in ranks.columns if c.endswith("_rank") or c.startswith("renyi_") or c == "entropy"]
    return ranks.melt(id_vars=["run", "step", "layer", "site", "bucket", "N", "D", "N_over_D"],
                      value_vars=metric_cols, var_name="metric", value_name="value")


def aggregate(long: pd.DataFrame, last_k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-run medians, per-layer medians) for both phases: trained (last K logged steps > 0) and step0."""
    keys = ("run", "bucket", "site", "metric")
    per_run, per_layer = [], []
    for phase, part, k in (("trained", long[long["step"] > 0], last_k), ("step0", long[long["step"] == 0], 1)):
        if part.empty:
            continue
        agg = aggregate_checkpoints_and_layers(part, last_k=k, group_cols=keys)
        meta = part.groupby(list(keys))[["N", "D", "N_over_D"]].min().reset_index()
        per_run.append(agg.per_run.merge(meta, on=list(keys)).assign(phase=phase))
        per_layer.append(agg.per_layer.assign(phase=phase))
    return pd.concat(per_run, ignore_index=True), pd.concat(per_layer, ignore_index=True)


def fit_groups(ranks: pd.DataFrame, layers: pd.DataFrame, runs: pd.DataFrame, n_boot: int) -> pd.DataFrame:
    info = runs.set_index("run")
    ranks = ranks.join(info[["group"]], on="run")
    layers = layers.join(info[["group", "ffn_dim"]], on="run")
    rows = []
    for (group, phase, bucket, site, metric), part in ranks.groupby(["group", "phase", "bucket", "site", "metric"]):
        if metric not in FIT_METRICS and not metric.startswith("renyi_"):
            continue
        part = part.sort_values("ffn_dim")
        res = ols_loglog(part["ffn_dim"], part["median"])
        row = {"group": group, "phase": phase, "bucket": bucket, "site": site, "metric": metric,
               "beta": res.beta, "ci95_low": res.ci_low, "ci95_high": res.ci_high, "r2": res.r2, "n_widths": res.n,
               "fitted": res.fitted, "reason": res.reason, "intercept": res.intercept, "se": res.se,
               "boot_low": math.nan, "boot_high": math.nan, "min_N_over_D": float(part["N_over_D"].min())}
        if res.fitted and n_boot and metric in FIT_METRICS:
            sel = layers[(layers["group"] == group) & (layers["phase"] == phase) & (layers["bucket"] == bucket)
                         & (layers["site"] == site) & (layers["metric"] == metric)]
            per_width = [g["value"].to_numpy() for _, g in sel.sort_values("ffn_dim").groupby("ffn_dim")]
            widths = sorted(sel["ffn_dim"].unique())
            boot = bootstrap_beta(widths, per_width, n_boot=n_boot)
            row["boot_low"], row["boot_high"] = boot.ci_low, boot.ci_high
        rows.append(row)
    betas = pd.DataFrame(rows)
    labels = runs.drop_duplicates("group").set_index("group")[["group_label", "optimizer", "seed", "seed_group",
                                                                "varied", "arms"]]
    return betas.join(labels, on="group")


def fit_per_layer(layers: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    info = runs.set_index("run")
    layers = layers[layers["metric"].isin(FIT_METRICS)].join(info[["group", "ffn_dim", "group_label"]], on="run")
    rows = []
    for key, part in layers.groupby(["group", "group_label", "phase", "bucket", "site", "metric", "layer"]):
        res = ols_loglog(part["ffn_dim"], part["value"])
        rows.append({**dict(zip(["group", "group_label", "phase", "bucket", "site", "metric", "layer"], key)),
                     "beta": res.beta, "ci95_low": res.ci_low, "ci95_high": res.ci_high, "r2": res.r2,
                     "fitted": res.fitted})
    return pd.DataFrame(rows)


def fit_seeds(betas: pd.DataFrame) -> pd.DataFrame:
    rows = []
    fitted = betas[betas["fitted"] & betas["metric"].isin(FIT_METRICS)]
    for key, part in fitted.groupby(["seed_group", "phase", "bucket", "site", "metric"]):
        if part["seed"].nunique() < 2:
            continue
        s = seed_mean_interval(part["beta"].to_numpy())
        rows.append({**dict(zip(["seed_group", "phase", "bucket", "site", "metric"], key)),
                     "group_label": part["group_label"].iloc[0].split(" seed=")[0], "n_seeds": s.n,
                     "beta_mean": s.mean, "seed_ci95_low": s.ci_low, "seed_ci95_high": s.ci_high, "beta_sd": s.sd})
    return pd.DataFrame(rows)


def add_delta(betas: pd.DataFrame) -> pd.DataFrame:
    """Δ₁,₂ = β_soft − β_hard per group, phase, bucket and site, as a column on every row."""
    wide = betas[betas["metric"].isin(FIT_METRICS)].pivot_table(
        index=["group", "phase", "bucket", "site"], columns="metric", values="beta", aggfunc="first")
    delta = (wide.get("soft_rank") - wide.get("hard_rank")).rename("delta_soft_hard")
    return betas.join(delta, on=["group", "phase", "bucket", "site"])


def headline_json(betas: pd.DataFrame, site: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sel = betas[(betas["site"] == site) & betas["metric"].isin(FIT_METRICS)]
    for row in sel.itertuples():
        cell = out.setdefault(row.group_label, {}).setdefault(row.phase, {}).setdefault(row.bucket, {})
        name = "beta_soft" if row.metric == "soft_rank" else "beta_hard"
        cell[name] = None if not row.fitted else round(float(row.beta), 4)
        if row.metric == "soft_rank" and row.fitted and not math.isnan(row.delta_soft_hard):
            cell["delta"] = round(float(row.delta_soft_hard), 4)
    return out


def main(plan: StudyPlan, store: RunStore) -> int:
    out = store.project_root / "results"
    out.mkdir(exist_ok=True)
    fit_cfg = plan.study.fit
    runs = collect_runs(plan, store)
    if runs.empty:
        print("[fit] no finished training runs")
        return 1
    runs.to_csv(out / "runs.csv", index=False)
    ppl = {r.label: {"val_ppl": None if r.diverged else round(float(r.val_ppl), 3), "diverged": bool(r.diverged)}
           for r in runs.itertuples()}
    (out / "perplexity.json").write_text(json.dumps(ppl, indent=2, sort_keys=True))
    long = long_ranks(runs, store)
    if long.empty:
        print("[fit] no measured runs yet")
        return 1
    low = long[(long["N_over_D"] < MIN_N_OVER_D)]
    if len(low):
        print(f"[fit] WARNING: {low.groupby(['run', 'step', 'layer', 'site', 'bucket']).ngroups} spectra have "
              f"N < {MIN_N_OVER_D:g}·D (min N/D {low['N_over_D'].min():.2f}); hard rank is biased there")
    ranks, layers = aggregate(long, int(fit_cfg.last_k))
    ranks = ranks.join(runs.set_index("run")[["label", "group_label", "optimizer", "width_mult", "ffn_dim", "seed"]],
                       on="run")
    ranks.to_csv(out / "ranks.csv", index=False)
    betas = add_delta(fit_groups(ranks, layers, runs, int(fit_cfg.bootstrap)))
    betas.to_csv(out / "betas.csv", index=False)
    fit_per_layer(layers, runs).to_csv(out / "betas_per_layer.csv", index=False)
    seeds = fit_seeds(betas)
    seeds.to_csv(out / "betas_seeds.csv", index=False)
    (out / "betas.json").write_text(json.dumps(headline_json(betas, fit_cfg.headline_site), indent=2, sort_keys=True))
    _print_table(betas, fit_cfg.headline_site)
    return 0


def _print_table(betas: pd.DataFrame, site: str) -> None:
    sel = betas[(betas["site"] == site) & betas["metric"].isin(FIT_METRICS)]
    print(f"[fit] β ({site} site): trained / step 0; OLS 95% interval; '—' = not fitted (< 3 widths)")
    for (label, bucket), part in sel.groupby(["group_label", "bucket"]):
        cells = []
        for metric in FIT_METRICS:
            vals = {}
            for phase in ("trained", "step0"):
                r = part[(part["metric"] == metric) & (part["phase"] == phase)]
                vals[phase] = (f"{r['beta'].iloc[0]:.2f}" if len(r) and r["fitted"].iloc[0] else "—")
            r = part[(part["metric"] == metric) & (part["phase"] == "trained")]
            ci = (f" [{r['ci95_low'].iloc[0]:.2f}, {r['ci95_high'].iloc[0]:.2f}]"
                  if len(r) and r["fitted"].iloc[0] else "")
            cells.append(f"{metric.split('_')[0]} {vals['trained']}{ci} / {vals['step0']}")
        print(f"  {label:<28} {bucket:<7} " + "   ".join(cells))

