"""The report's tables: summaries built from results/*.csv and results/compare/*.csv for display (rounded text cells,
one row per group and bucket). report_render.py turns them into Markdown and HTML."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from specscale.tokens.sets import ALL_SETS, POOLED
from specscale.compare.comparisons import MIN_WIDTHS
from specscale.measure.registry import FIT_METRICS, display_name


def bucket_sort(df: pd.DataFrame, col: str = "bucket") -> pd.DataFrame:
    """Rows in bucket order (HEAD, MID, TAIL, GLOBAL), anything else last; stable otherwise."""
    order = {b: i for i, b in enumerate(ALL_SETS)}
    return df.sort_values(col, key=lambda s: s.map(lambda b: order.get(b, 9)), kind="stable")


def beta_summary(betas: pd.DataFrame, groups: pd.DataFrame, site: str = "post") -> pd.DataFrame:
    """Per group and bucket: trained β (soft, hard) with the OLS 95% interval, Δ₁,₂, R², and the step-0 β."""
    if betas.empty or groups.empty:
        return pd.DataFrame()
    info = groups[groups["n_widths"] >= MIN_WIDTHS].set_index("group")["display"]  # single-width groups: no β
    sel = betas[(betas["site"] == site) & betas["metric"].isin(FIT_METRICS) & betas["group"].isin(info.index)]
    rows = []
    for (grp, bucket), part in sel.groupby(["group", "bucket"]):
        row: dict[str, Any] = {"group": info[grp], "bucket": bucket}
        for metric in FIT_METRICS:
            short = display_name(metric)
            for phase, tag in (("trained", ""), ("step0", " step 0")):
                r = part[(part["metric"] == metric) & (part["phase"] == phase)]
                ok = len(r) and bool(r["fitted"].iloc[0])
                beta = f"{r['beta'].iloc[0]:.3f}" if ok else "—"
                if phase == "trained" and ok:
                    beta += f" [{r['ci95_low'].iloc[0]:.2f}, {r['ci95_high'].iloc[0]:.2f}]"
                    row[f"R² {short}"] = float(r["r2"].iloc[0])
                row[f"β {short}{tag}"] = beta
        soft = part[(part["metric"] == "soft_rank") & (part["phase"] == "trained")]
        row["Δ₁,₂"] = float(soft["delta_soft_hard"].iloc[0]) if len(soft) else math.nan
        row["n widths"] = int(part["n_widths"].max())
        rows.append(row)
    labels = [display_name(m) for m in FIT_METRICS]  # a metric given a β in the registry gets its columns here
    cols = ["group", "bucket", *(f"β {s}" for s in labels), "Δ₁,₂", *(f"β {s} step 0" for s in labels),
            *(f"R² {s}" for s in labels), "n widths"]
    table = pd.DataFrame(rows)
    return bucket_sort(table.reindex(columns=cols)).sort_values("group", kind="stable").reset_index(drop=True)


# betas_seeds.csv's trained − step-0 contrast (specscale.fit.claims): estimate, 95% interval, Holm-adjusted, verdict
STEP0_COLUMNS = ["step0_diff", "step0_low", "step0_high", "step0_diff_adj_low", "step0_diff_adj_high",
                 "step0_verdict"]


def seeds_summary(seeds: pd.DataFrame, site: str = "post") -> pd.DataFrame:
    """Trained β across seeds per configuration, bucket and metric at one site: mean, SD, between-seed interval and,
    where the fit stage computed it, trained − step 0 with its interval, Holm-adjusted interval and verdict."""
    if seeds.empty:
        return pd.DataFrame()
    sel = seeds[(seeds["site"] == site) & (seeds["phase"] == "trained")]
    cols = ["group_label", "bucket", "metric", "n_seeds", "beta_mean", "beta_sd", "seed_ci95_low", "seed_ci95_high"]
    cols += [c for c in STEP0_COLUMNS if c in sel]
    return bucket_sort(sel[cols]).sort_values(["group_label", "metric"], kind="stable").reset_index(drop=True)


def renyi_summary(renyi: pd.DataFrame, bucket: str = POOLED) -> pd.DataFrame:
    """ρ_α per base optimizer at its widest width (lowest seed): rows optimizer, columns α."""
    if renyi.empty:
        return pd.DataFrame()
    sel = renyi[(renyi["family"] == "base") & (renyi["seed"] == renyi["seed"].min()) & (renyi["bucket"] == bucket)]
    sel = sel[sel["width_mult"] == sel.groupby("display")["width_mult"].transform("max")]
    if sel.empty:
        return pd.DataFrame()
    wide = sel.pivot_table(index=["display", "width_mult"], columns="alpha", values="rho").reset_index()
    wide.columns = [("ρ α=∞" if isinstance(c, float) and math.isinf(c) else
                     f"ρ α={c:g}" if isinstance(c, float) else c) for c in wide.columns]
    return wide


def paper_summary(paper: pd.DataFrame) -> pd.DataFrame:
    """The side-by-side table, cells as text: published, ours (× = diverged, — = absent), difference."""
    if paper.empty:
        return pd.DataFrame()

    def show(v: float, div: bool) -> str:
        return "×" if div else ("—" if not np.isfinite(v) else f"{v:.3g}" if abs(v) >= 10 else f"{v:.2f}")

    out = pd.DataFrame({
        "kind": paper["kind"], "optimizer": paper["optimizer"].fillna(""), "setting": paper["setting"].fillna(""),
        "bucket": paper["bucket"].fillna(""), "metric": paper["metric"],
        "k": paper["width_mult"].map(lambda w: "" if not np.isfinite(w) else f"{w:g}"),
        "paper": [show(v, d) for v, d in zip(paper["paper"], paper["paper_diverged"])],
        "ours": [show(v, d) for v, d in zip(paper["ours"], paper["ours_diverged"])],
        "ours − paper": paper["diff"].map(lambda v: "" if not np.isfinite(v) else f"{v:+.2f}"),
    })
    return out


def tii_summary(ranks: pd.DataFrame) -> pd.DataFrame:
    """Tail Integrity Index (the fit stage's `tii` rows): rows group (and seed, with several) × phase, columns width
    multiplier, cells rounded to 2 decimals."""
    if ranks.empty or "metric" not in ranks:
        return pd.DataFrame()
    sel = ranks[ranks["metric"] == "tii"]
    if sel.empty:
        return pd.DataFrame()
    index = ["group_label"] + (["seed"] if sel["seed"].nunique() > 1 else []) + ["phase"]
    wide = sel.pivot_table(index=index, columns="width_mult", values="median").round(2)
    wide.columns = [f"{c}×" for c in wide.columns]
    wide = wide.reset_index()
    wide = wide.assign(_trained_first=wide["phase"] != "trained").sort_values(["group_label", "_trained_first"],
                                                                               kind="stable")
    return wide.drop(columns="_trained_first").rename(columns={"group_label": "group"}).reset_index(drop=True)


def tokens_per_bucket(ranks: pd.DataFrame) -> pd.DataFrame:
    """N per bucket (the probe set is identical across runs, so min = max unless a run differs) and D range."""
    if ranks.empty:
        return pd.DataFrame()
    ranks = ranks[ranks["bucket"].isin(ALL_SETS) & ranks["site"].isin(["pre", "post"])]  # measured rows, not TII or ρ
    g = ranks.groupby("bucket").agg(N_min=("N", "min"), N_max=("N", "max"), D_min=("D", "min"), D_max=("D", "max"),
                                    min_N_over_D=("N_over_D", "min")).reset_index()
    return bucket_sort(g).reset_index(drop=True)


def matched_loss_ppl_wide(ppl: pd.DataFrame) -> pd.DataFrame:
    """Matched-loss perplexity: rows pair × role × group, columns width multiplier."""
    if ppl.empty:
        return pd.DataFrame()
    wide = ppl.pivot_table(index=["pair", "role", "display", "steps"], columns="width_mult",
                           values="val_ppl").round(2).reset_index()
    wide.columns = [f"{c}×" if isinstance(c, (int, float)) else c for c in wide.columns]
    return wide
