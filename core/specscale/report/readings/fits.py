"""Readings of the study, β and rank tables and figures (see specscale.report.readings.primitives): one computed
line each."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
from specscale.tokens.sets import ALL_SETS
from specscale.measure.registry import FIT_METRICS
from specscale.report.readings.primitives import (
    NO_INTERVAL,
    OLS_INTERVAL,
    SEED_INTERVAL,
    Reading,
    as_bool,
    bucket_order,
    interval,
    k_of_n,
    listing,
    metric_name,
    n_text,
    num,
    plain,
    plural,
    ratio_range,
    seeds_text,
    value_range,
    widths_text,
)

# --- Study ------------------------------------------------------------------------------------------------------------

def tokens_reading(ranks: pd.DataFrame) -> Reading | None:
    """The probe set's token counts: smallest N/D and in how many buckets every run saw the same N."""
    if ranks.empty or "N" not in ranks:
        return None
    sel = ranks[ranks["bucket"].isin(ALL_SETS) & ranks["site"].isin(["pre", "post"])]
    if sel.empty:
        return None
    per = sel.groupby("bucket").agg(n_min=("N", "min"), n_max=("N", "max"), ratio=("N_over_D", "min"))
    low = per["ratio"].min()
    lowest = [b for b in bucket_order(per.index) if per.loc[b, "ratio"] == low]
    same = int((per["n_min"] == per["n_max"]).sum())
    text = (f"Smallest N/D {low:.1f} ({listing(lowest)}); N identical across runs in {k_of_n(same, len(per))} "
            "buckets.")
    widths = sel["width_mult"] if "width_mult" in sel else []
    return Reading(n_text(plural(sel["run"].nunique(), "measured run"), widths_text(widths)),
                   "counts, no interval", text)


# --- β ----------------------------------------------------------------------------------------------------------------

def _fitted_betas(betas: pd.DataFrame, groups: pd.DataFrame, site: str, min_widths: int) -> pd.DataFrame:
    info = groups[groups["n_widths"] >= min_widths].set_index("group")
    sel = betas[(betas["site"] == site) & betas["metric"].isin(FIT_METRICS) & betas["group"].isin(info.index)]
    sel = sel[as_bool(sel["fitted"]) & np.isfinite(sel["beta"].astype(float))]
    return sel.assign(display=sel["group"].map(info["display"]), seed=sel["group"].map(info["seed"]))


def _group_widths(runs: pd.DataFrame, groups: Iterable[str]) -> list[float]:
    if runs.empty or "group" not in runs:
        return []
    return runs.loc[runs["group"].isin(set(groups)), "width_mult"].tolist()


def _trained_vs_step0(sel: pd.DataFrame) -> pd.DataFrame:
    """(group, bucket, metric) with both a trained and a step-0 β: columns trained, step0 (+ ci of the trained)."""
    keys = ["group", "bucket", "metric"]
    trained = sel[sel["phase"] == "trained"].set_index(keys)
    step0 = sel[sel["phase"] == "step0"].set_index(keys)["beta"].rename("step0")
    out = trained[["beta", "ci95_low", "ci95_high", "display"]].join(step0, how="inner").reset_index()
    return out.rename(columns={"beta": "trained"})


def beta_table_reading(betas: pd.DataFrame, groups: pd.DataFrame, runs: pd.DataFrame, site: str = "post",
                       min_widths: int = 3) -> Reading | None:
    """The β table: trained β above its step-0 β (all cells, soft, hard) and, per bucket, the groups of highest and
    lowest trained β_hard."""
    if betas.empty or groups.empty:
        return None
    sel = _fitted_betas(betas, groups, site, min_widths)
    pairs = _trained_vs_step0(sel)
    trained = sel[sel["phase"] == "trained"]
    if trained.empty:
        return None
    parts = []
    if len(pairs):
        above = pairs["trained"] > pairs["step0"]
        by_metric = ", ".join(f"{metric_name(m)} {k_of_n(above[pairs['metric'] == m].sum(), (pairs['metric'] == m).sum())}"
                              for m in FIT_METRICS if (pairs["metric"] == m).any())
        parts.append(f"Trained β above its step-0 β in {k_of_n(above.sum(), len(pairs))} cells ({by_metric}): "
                     "point estimates, not a test (trained − step 0 is tested across seeds, β-across-seeds table).")
    hard = trained[trained["metric"] == "hard_rank"]
    cells = []
    for bucket in bucket_order(hard["bucket"]):
        part = hard[hard["bucket"] == bucket]
        hi, lo = part.loc[part["beta"].idxmax()], part.loc[part["beta"].idxmin()]
        p = pairs[(pairs["bucket"] == bucket) & (pairs["metric"] == "hard_rank")]
        cells.append(f"{bucket} {hi['display']} {plain(hi['beta'])} / {lo['display']} {plain(lo['beta'])}"
                     + (f", above step 0 in {k_of_n((p['trained'] > p['step0']).sum(), len(p))}" if len(p) else ""))
    if cells:
        parts.append("Trained β_hard highest / lowest by bucket: " + "; ".join(cells) + ".")
    used = trained["group"].unique()
    return Reading(n_text(plural(len(used), "group"), seeds_text(trained["seed"]),
                          widths_text(_group_widths(runs, used))),
                   f"trained β with its {OLS_INTERVAL}; step-0 β and R² without", " ".join(parts))


def step0_interval_reading(data: pd.DataFrame, runs: pd.DataFrame, groups: pd.DataFrame) -> Reading | None:
    """The β figure (figure_data.beta_interval_data): where the step-0 β lies against the trained OLS interval."""
    if data.empty:
        return None
    keys = ["display", "bucket", "metric", "seed"]
    trained = data[data["series"] == "trained"].set_index(keys)
    step0 = data[data["series"] == "step 0"].set_index(keys)["beta"].rename("step0")
    pairs = trained[["low", "high"]].join(step0, how="inner")
    means = data[data["seed"] < 0]
    interval = OLS_INTERVAL + (f" per seed; seed mean with its {SEED_INTERVAL}" if len(means) else "")
    if pairs.empty:
        text = "No cell has both a trained and a step-0 β."
    else:
        inside = ((pairs["step0"] >= pairs["low"]) & (pairs["step0"] <= pairs["high"])).sum()
        below = (pairs["step0"] < pairs["low"]).sum()
        above = (pairs["step0"] > pairs["high"]).sum()
        text = (f"Step-0 β inside the trained interval in {k_of_n(inside, len(pairs))} cells, below it in {below}, "
                f"above it in {above}.")
    seeds = data.loc[data["seed"] >= 0, "seed"]
    shown = groups.loc[groups["display"].str.replace(r" seed=\d+$", "", regex=True).isin(data["display"]), "group"] \
        if len(groups) else []
    return Reading(n_text(plural(data["display"].nunique(), "configuration"), seeds_text(seeds),
                          widths_text(_group_widths(runs, shown))), interval, text)


def delta_reading(data: pd.DataFrame) -> Reading | None:
    """The Δ₁,₂ figure (figure_data.delta_data): ranges trained and at step 0, and how often trained > step 0."""
    if data.empty:
        return None
    trained = data[data["phase"] == "trained"]
    step0 = data[data["phase"] == "step 0"]
    pairs = trained.set_index(["display", "bucket"])["delta"].rename("t").to_frame().join(
        step0.set_index(["display", "bucket"])["delta"].rename("s"), how="inner")
    text = f"Trained Δ₁,₂ {value_range(trained['delta'])}; step 0 {value_range(step0['delta'])}"
    if len(pairs):
        text += f"; trained above step 0 in {k_of_n((pairs['t'] > pairs['s']).sum(), len(pairs))} group × bucket cells"
    return Reading(n_text(plural(data["display"].nunique(), "group"), plural(data["bucket"].nunique(), "bucket")),
                   "point estimates, " + NO_INTERVAL, text + ".")


def rank_width_reading(data: pd.DataFrame, layers: int | None = None) -> Reading | None:
    """The rank-vs-width figure (figure_data.rank_width_data): how much rank grows from the narrowest to the widest
    width, per metric, over the curves shown."""
    if data.empty:
        return None
    m = data[data["kind"] == "measured"]
    if m.empty:
        return None
    parts = []
    for metric in ("soft", "hard"):
        ratios = []
        for _, c in m[m["metric"] == metric].groupby(["display", "bucket"]):
            if c["ffn_dim"].nunique() >= 2:
                ratios.append(c.loc[c["ffn_dim"].idxmax(), "rank"] / c.loc[c["ffn_dim"].idxmin(), "rank"])
        if ratios:
            parts.append(f"{metric} {ratio_range(ratios)}")
    dims = sorted(m["ffn_dim"].unique())
    text = (f"Rank at D = {num(dims[-1])} over rank at D = {num(dims[0])}: {'; '.join(parts)} "
            f"({plural(m.groupby(['display', 'bucket', 'metric']).ngroups, 'curve')}).") if parts else \
        "One width per curve: no growth to read."
    return Reading(n_text(plural(m["display"].nunique(), "optimizer") + " (lowest seed)", widths_text(dims, "D"),
                          plural(layers, "layer") if layers else ""),
                   "band ±1 SD of the layer medians", text)


def seeds_reading(seeds: pd.DataFrame) -> Reading | None:
    """The β-across-seeds table (report_tables.seeds_summary): the widest and narrowest between-seed interval."""
    if seeds.empty:
        return None
    half = (seeds["seed_ci95_high"] - seeds["seed_ci95_low"]) / 2
    ok = half[np.isfinite(half)]
    ns = sorted({int(n) for n in seeds["n_seeds"]})
    seeds_part = f"{ns[0]} seeds each" if len(ns) == 1 else f"{ns[0]}–{ns[-1]} seeds"
    n = n_text(plural(seeds["group_label"].nunique(), "configuration"), seeds_part)
    if ok.empty:
        return Reading(n, SEED_INTERVAL, "No between-seed interval could be computed.")

    def cell(i: Any) -> str:
        r = seeds.loc[i]
        return (f"{r['group_label']} {r['bucket']} {metric_name(r['metric'])} ±{half[i]:.3f} "
                f"{interval(r['seed_ci95_low'], r['seed_ci95_high'], 2, sign=False)} ({plural(int(r['n_seeds']), 'seed')})")

    return Reading(n, SEED_INTERVAL, f"Widest between-seed interval: {cell(ok.idxmax())}; narrowest: "
                                     f"{cell(ok.idxmin())}." + step0_contrast_text(seeds))


def step0_contrast_text(seeds: pd.DataFrame) -> str:
    """' Trained − step-0 β …: resolved in k of n cells …' from the fit stage's contrast columns (step0_*, one claim
    each in results/claims.csv); '' where the table has none."""
    if "step0_verdict" not in seeds:
        return ""
    v = seeds["step0_verdict"].fillna("not tested")
    resolved = v == "resolved"
    up, down = int((resolved & (seeds["step0_diff"] > 0)).sum()), int((resolved & (seeds["step0_diff"] < 0)).sum())
    held = int((v == "not resolved").sum())
    text = (f" Trained − step-0 β (paired t over seeds, Holm over its family): resolved in {k_of_n(up + down, len(v))} "
            f"cells ({up} above step 0, {down} below)")
    if held:
        text += f"; in {held} the data cannot tell whether β moved from its step-0 value"
    untested = int((v == "not tested").sum())
    return text + (f"; {untested} not tested" if untested else "") + "."


# --- TII ----------------------------------------------------------------------------------------------------------------

def tii_reading(ranks: pd.DataFrame) -> Reading | None:
    """The TII table (the fit stage's `tii` rows): sign of the trained TII, its trend from the narrowest to the widest
    width, and how often the trained TII is closer to 0 than the untrained one."""
    if ranks.empty or "metric" not in ranks:
        return None
    sel = ranks[ranks["metric"] == "tii"]
    if sel.empty:
        return None
    trained = sel[sel["phase"] == "trained"]
    step0 = sel[sel["phase"] != "trained"]
    keys = ["group_label", "seed", "width_mult"]
    t = trained.groupby(keys)["median"].median()
    parts = []
    if len(t):
        pos, neg = int((t > 0).sum()), int((t < 0).sum())
        parts.append(f"trained TII positive in {k_of_n(pos, len(t))} cells" + (f", negative in {neg}" if neg else ""))
        rise = fall = series = 0
        for _, s in t.groupby(level=["group_label", "seed"]):
            s = s.droplevel(["group_label", "seed"]).sort_index()
            if len(s) >= 2:
                series += 1
                rise += int(s.iloc[-1] > s.iloc[0])
                fall += int(s.iloc[-1] < s.iloc[0])
        if series:
            parts.append(f"from the narrowest to the widest width it rises in {k_of_n(rise, series)} series with "
                         f"≥ 2 widths (falls in {fall})")
        s0 = step0.groupby(keys)["median"].median()
        both = t.to_frame("t").join(s0.rename("s"), how="inner")
        if len(both):
            closer = int((both["t"].abs() < both["s"].abs()).sum())
            parts.append(f"closer to 0 than at step 0 in {k_of_n(closer, len(both))} cells")
    text = "; ".join(parts) if parts else "no trained TII"
    text = text[0].upper() + text[1:] + "."
    return Reading(n_text(plural(sel["group_label"].nunique(), "configuration"), seeds_text(sel["seed"]),
                          widths_text(sel["width_mult"])),
                   f"median over the last kept steps of one run, {NO_INTERVAL}", text)
