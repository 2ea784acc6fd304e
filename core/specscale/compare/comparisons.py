"""Comparisons across groups of runs (docs/science.md §7): optimizer vs architecture, matched loss, perplexity by
width, partial PostLN, Rényi reinjection, β over training.

Everything here is pure pandas on the fit stage's tables (results/runs.csv, ranks.csv, betas.csv) plus per-step
ranks, so that it is testable on hand-made tables. A *group* is a set of runs that differ only in width (one
scaling-law fit); the group table (``group_table``) classifies each group by what its ablation arm varied:
  base   no varied field (the main sweep, or an arm that only adds optimizers)
  arch   a ``model.*`` field (heads, positional encoding, PostLN)
  steps  only ``train.steps`` (the matched-loss family)
  other  anything else
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from specscale.compare.widths import WidthBetas, group_widths, widths_text
from specscale.tokens.sets import BUCKET_NAMES
from specscale.measure.registry import FIT_METRICS, RENYI_PREFIX, is_renyi, renyi_order
from specscale.study.labels import fmt_value
from specscale.study.spec import TrainSpec

# The paper counts 30 attention-rank comparisons = 5 optimizers × {HEAD, MID, TAIL} × {soft, hard}: pooled (GLOBAL)
# cells are reported but not counted, so that our k-of-n reads like theirs.
COUNTED_BUCKETS = BUCKET_NAMES
TIE_TOL = 1e-12  # |gain − shift| at or below this is a tie (counts as not exceeding)
# The paper's ×: validation perplexity above this is a diverged run. The study's own value (train.diverged_ppl) is
# passed in by the compare stage; this default is the spec's, not a second copy of it.
DIVERGED_PPL: float = TrainSpec.diverged_ppl
MIN_WIDTHS = 3  # a group with fewer widths is not a scaling-law fit (e.g. the PostLN runs at one width)


def parse_varied(value: Any) -> dict[str, Any]:
    """The `varied` column as a dict (it is JSON text in the CSVs; {} for the main sweep)."""
    if isinstance(value, dict):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return {}
    return json.loads(value)


def setting_of(varied: dict[str, Any], optim_extra: str = "") -> str:
    """Canonical setting text: the varied fields by leaf name, then optimizer overrides of the arm, e.g.
    'postln_fraction=0.25 lr=0.0001'. The published-numbers file uses the same text."""
    parts = [f"{k.split('.')[-1]}={fmt_value(v)}" for k, v in sorted(varied.items())]
    return " ".join(parts + ([optim_extra] if optim_extra else []))


def family_of(varied: dict[str, Any]) -> str:
    if not varied:
        return "base"
    if any(k.startswith("model.") for k in varied):
        return "arch"
    if set(varied) == {"train.steps"}:
        return "steps"
    return "other"


def group_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per group: optimizer, optimizer overrides of its arm (`optim_extra`, from the plan; '' if none), seed,
    varied, family, setting, display label, steps, widths trained (n_widths, max_width) and the widths its β is
    fitted on (`widths`: its measured runs', e.g. '1,2,4')."""
    runs = runs.copy()
    if "optim_extra" not in runs:
        runs["optim_extra"] = ""
    runs["optim_extra"] = runs["optim_extra"].fillna("").astype(str)
    agg = runs.groupby("group", sort=False).agg(
        optimizer=("optimizer", "first"), optim_extra=("optim_extra", "first"), seed=("seed", "first"),
        varied=("varied", "first"), group_label=("group_label", "first"), steps=("steps", "first"),
        seed_group=("seed_group", "first"),
        n_widths=("width_mult", "nunique"), max_width=("width_mult", "max")).reset_index()
    agg["widths"] = agg["group"].map(group_widths(runs)).fillna("")
    agg["varied_d"] = agg["varied"].map(parse_varied)
    agg["family"] = agg["varied_d"].map(family_of)
    agg["optim_label"] = [f"{o} {e}".strip() for o, e in zip(agg["optimizer"], agg["optim_extra"])]
    agg["setting"] = [setting_of(v, e) for v, e in zip(agg["varied_d"], agg["optim_extra"])]
    agg["display"] = [f"{o} {s}".strip() for o, s in zip(agg["optimizer"], agg["setting"])]
    # Seeds share a display label; add the seed only where the study has several.
    if agg["seed"].nunique() > 1:
        agg["display"] = [f"{d} seed={s}" for d, s in zip(agg["display"], agg["seed"])]
    return agg


def base_lookup(groups: pd.DataFrame) -> dict[tuple[str, int], str]:
    """(optimizer label, seed) → group of the base architecture. The optimizer *label* must match, so an arm with
    its own learning rate is never compared against a base trained at another one."""
    base = groups[groups["family"] == "base"]
    return {(r.optim_label, int(r.seed)): r.group for r in base.itertuples()}


def headline(betas: pd.DataFrame, site: str = "post", phase: str = "trained") -> pd.DataFrame:
    return betas[(betas["site"] == site) & (betas["phase"] == phase) & betas["metric"].isin(FIT_METRICS)]


def with_groups(df: pd.DataFrame, groups: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """df joined with the group table's `cols` (the group table wins over any same-named column of df)."""
    return df.drop(columns=[c for c in cols if c in df.columns]).join(groups.set_index("group")[cols], on="group")


@dataclass
class ArchComparison:
    """Optimizer gain vs architecture shift. `table`: one row per comparison; k of n over counted, non-missing
    rows; exceptions: counted rows where the gain does not exceed the shift (ties included); missing: counted rows
    with a β absent or not fitted; skipped: ablation groups that are not width sweeps."""

    table: pd.DataFrame
    gains: pd.DataFrame
    k: int = 0
    n: int = 0
    exceptions: pd.DataFrame = field(default_factory=pd.DataFrame)
    missing: pd.DataFrame = field(default_factory=pd.DataFrame)
    skipped: list[str] = field(default_factory=list)

    def sentence(self) -> str:
        if self.table.empty:
            return "no architectural ablation with a width sweep: nothing to compare"
        return (f"optimizer gain exceeds architecture shift in {self.k} of {self.n} comparisons"
                f" ({len(self.exceptions)} exceptions, {len(self.missing)} missing)")


def optimizer_gain(betas: pd.DataFrame, groups: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Per seed, bucket and metric in the base architecture: max_o β_o − β_reference over the optimizers present."""
    base = groups[groups["family"] == "base"]
    sel = headline(betas)
    sel = with_groups(sel[sel["group"].isin(base["group"])], base, ["optim_label", "seed"])
    rows = []
    for (seed, bucket, metric), part in sel.groupby(["seed", "bucket", "metric"]):
        ok = part[part["fitted"].astype(bool) & np.isfinite(part["beta"])]
        ref = ok[ok["optim_label"] == reference]
        row = {"seed": int(seed), "bucket": bucket, "metric": metric, "n_optimizers": len(ok),
               "beta_reference": math.nan, "gain": math.nan, "best": "", "reason": ""}
        if ref.empty:
            row["reason"] = f"reference optimizer {reference} not fitted"
        else:
            best = ok.loc[ok["beta"].idxmax()]
            row.update(beta_reference=float(ref["beta"].iloc[0]), best=best["optim_label"],
                       gain=float(best["beta"] - ref["beta"].iloc[0]))
        rows.append(row)
    return pd.DataFrame(rows, columns=["seed", "bucket", "metric", "n_optimizers", "beta_reference", "gain", "best",
                                       "reason"])


def _gain_on(lookup: WidthBetas, base: pd.DataFrame, reference: str, seed: int, bucket: str, metric: str,
             widths: frozenset[int]) -> tuple[float, str]:
    """max_o β_o − β_reference over the base groups of one seed, every β on `widths` (optimizer_gain's definition)."""
    betas = {r.optim_label: lookup.beta(r.group, bucket, metric, widths)[0] for r in base[base["seed"] == seed]
             .itertuples()}
    ok = {k: v for k, v in betas.items() if np.isfinite(v)}
    if not ok:
        return math.nan, "no base β to compute it"
    if reference not in ok:
        return math.nan, f"reference optimizer {reference} not fitted"
    return max(ok.values()) - ok[reference], ""


def compare_arch_vs_optimizer(betas: pd.DataFrame, groups: pd.DataFrame, reference: str = "adamw",
                              counted_buckets: tuple[str, ...] = COUNTED_BUCKETS,
                              shared: pd.DataFrame | None = None) -> ArchComparison:
    """For every architectural ablation group, bucket and metric (post site, trained): |β_ablated − β_base| against
    the optimizer gain of the same seed, bucket and metric, every β fitted on the widths the ablation and its base
    share (`widths`; a base's refit on fewer widths comes from `shared`, results/betas_shared.csv)."""
    gains = optimizer_gain(betas, groups, reference)
    sel = headline(betas)
    lookup = WidthBetas(sel, shared, groups)
    buckets = sorted(sel["bucket"].unique(), key=lambda b: (b not in counted_buckets, b))
    bases = base_lookup(groups)
    base_groups = groups[groups["family"] == "base"]
    rows, skipped = [], []
    for g in groups[groups["family"] == "arch"].itertuples():
        if g.n_widths < MIN_WIDTHS:
            skipped.append(f"{g.display}: {g.n_widths} width(s), not a scaling-law fit")
            continue
        base = bases.get((g.optim_label, int(g.seed)))
        widths = lookup.common(g.group, base)
        for bucket in buckets:
            for metric in FIT_METRICS:
                b_abl, why_abl = lookup.beta(g.group, bucket, metric, widths)
                b_base, why_base = lookup.beta(base, bucket, metric, widths) if base else (
                    math.nan, "no base group with the same optimizer settings")
                gain, why_gain = _gain_on(lookup, base_groups, reference, int(g.seed), bucket, metric, widths)
                checks = (("ablated", why_abl, b_abl), ("base", why_base, b_base), ("gain", why_gain, gain))
                reasons = [f"{who}: {why}" for who, why, val in checks if not np.isfinite(val)]
                shift = abs(b_abl - b_base)
                if reasons:
                    status = "missing"
                elif abs(gain - shift) <= TIE_TOL:
                    status = "tie"
                else:
                    status = "exceeds" if gain > shift else "not_exceeding"
                rows.append({"ablation": setting_of(g.varied_d), "optimizer": g.optim_label, "seed": int(g.seed),
                             "bucket": bucket, "metric": metric, "beta_ablated": b_abl, "beta_base": b_base,
                             "arch_shift": shift, "optimizer_gain": gain, "status": status,
                             "counted": bucket in counted_buckets, "widths": widths_text(widths),
                             "reason": "; ".join(reasons)})
    table = pd.DataFrame(rows, columns=["ablation", "optimizer", "seed", "bucket", "metric", "beta_ablated",
                                        "beta_base", "arch_shift", "optimizer_gain", "status", "counted", "widths",
                                        "reason"])
    counted = table[table["counted"].astype(bool)]  # astype: an empty object column would select columns
    present = counted[counted["status"] != "missing"]
    return ArchComparison(table=table, gains=gains, k=int((present["status"] == "exceeds").sum()), n=len(present),
                          exceptions=present[present["status"] != "exceeds"],
                          missing=counted[counted["status"] == "missing"], skipped=skipped)


def is_diverged(ppl: float, diverged: bool, threshold: float = DIVERGED_PPL) -> bool:
    """The paper's ×: flagged diverged, or a perplexity that is not finite or above the threshold."""
    return bool(diverged) or not np.isfinite(ppl) or ppl > threshold


def ppl_cell(ppl: float, diverged: bool, threshold: float = DIVERGED_PPL) -> str:
    return "×" if is_diverged(ppl, diverged, threshold) else f"{ppl:.1f}"


def ppl_by_width(runs: pd.DataFrame, groups: pd.DataFrame, threshold: float = DIVERGED_PPL) -> pd.DataFrame:
    """Validation perplexity per run, labelled by group: long (one row per run)."""
    info = groups.set_index("group")[["display", "optim_label", "family", "setting"]]
    out = runs.join(info, on="group")[["group", "display", "optim_label", "family", "setting", "seed", "steps",
                                       "width_mult", "ffn_dim", "val_ppl", "diverged"]].copy()
    out["diverged"] = [is_diverged(p, d, threshold) for p, d in zip(out["val_ppl"], out["diverged"])]
    out["cell"] = [ppl_cell(p, d, threshold) for p, d in zip(out["val_ppl"], out["diverged"])]
    return out.sort_values(["family", "display", "width_mult"]).reset_index(drop=True)


def ppl_wide(ppl: pd.DataFrame) -> pd.DataFrame:
    """Rows = group display label, columns = width multiplier, cells = perplexity or ×."""
    if ppl.empty:
        return pd.DataFrame()
    wide = ppl.pivot_table(index="display", columns="width_mult", values="cell", aggfunc="first").fillna("")
    wide.columns = [f"{c}×" for c in wide.columns]
    return wide.reset_index()


def postln_column(fraction: float) -> str:
    return "Full" if fraction >= 1.0 else f"PostLN-{fraction * 100:g}"


def postln_table(runs: pd.DataFrame, groups: pd.DataFrame, threshold: float = DIVERGED_PPL) -> pd.DataFrame:
    """Partial PostLN: rows = optimizer label (with the arm's lr) × width (× seed), columns = PostLN fraction,
    cells = validation perplexity or × (diverged)."""
    key = "model.postln_fraction"
    sel = groups[groups["varied_d"].map(lambda v: key in v)]
    if sel.empty:
        return pd.DataFrame()
    info = sel.set_index("group")
    part = runs[runs["group"].isin(info.index)].join(info[["optim_label", "varied_d"]], on="group")
    rows = []
    for r in part.itertuples():
        others = {k: v for k, v in r.varied_d.items() if k != key}
        label = f"{r.optim_label} {setting_of(others)}".strip()
        rows.append({"optimizer": label, "width_mult": r.width_mult, "seed": r.seed,
                     "fraction": float(r.varied_d[key]), "cell": ppl_cell(r.val_ppl, r.diverged, threshold)})
    long = pd.DataFrame(rows).sort_values("fraction")
    index = ["optimizer", "width_mult"] + (["seed"] if long["seed"].nunique() > 1 else [])
    wide = long.pivot_table(index=index, columns="fraction", values="cell", aggfunc="first").fillna("")
    wide.columns = [postln_column(f) for f in wide.columns]
    return wide.reset_index()


def matched_loss(runs: pd.DataFrame, betas: pd.DataFrame, groups: pd.DataFrame,
                 shared: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Groups that differ from a base group only in train.steps: (perplexity per width, β side by side).
    Each is also set beside the other base optimizer whose perplexity is closest (geometric mean over the widths both
    have): equal loss, different β is the paper's point. Every β of a row is fitted on the widths all its groups
    share (`widths`; refits from `shared`, results/betas_shared.csv)."""
    bases = base_lookup(groups)
    info = groups.set_index("group")
    ppl_rows, beta_rows = [], []
    cells = {(r.group, r.bucket, r.metric): r for r in headline(betas).itertuples()}
    lookup = WidthBetas(headline(betas), shared, groups)
    for g in groups[groups["family"] == "steps"].itertuples():
        base = bases.get((g.optim_label, int(g.seed)))
        if base is None:
            continue
        mine = runs[runs["group"] == g.group].set_index("width_mult")
        closest, best = None, math.inf
        for other in groups[(groups["family"] == "base") & (groups["seed"] == g.seed)].itertuples():
            if other.group == base:
                continue
            theirs = runs[runs["group"] == other.group].set_index("width_mult")
            common = mine.index.intersection(theirs.index)
            if len(common):
                gap = abs(np.mean(np.log(mine.loc[common, "val_ppl"])) - np.mean(np.log(theirs.loc[common, "val_ppl"])))
                if np.isfinite(gap) and gap < best:
                    closest, best = other.group, gap
        roles = [("long", g.group), ("base", base)] + ([("closest ppl", closest)] if closest else [])
        for role, grp in roles:
            for r in runs[runs["group"] == grp].itertuples():
                ppl_rows.append({"pair": g.display, "role": role, "display": info.loc[grp, "display"],
                                 "steps": r.steps, "width_mult": r.width_mult, "val_ppl": r.val_ppl,
                                 "diverged": bool(r.diverged)})
        widths = lookup.common(*(grp for _, grp in roles))
        for grp_key, bucket, metric in cells:
            if grp_key != g.group:
                continue
            row = {"pair": g.display, "bucket": bucket, "metric": metric}
            for role, grp in roles:
                row[f"beta_{role}"] = lookup.beta(grp, bucket, metric, widths)[0]
                row[f"r2_{role}"] = lookup.r2(grp, bucket, metric, widths)
            row["closest_ppl"] = info.loc[closest, "display"] if closest else ""
            row["widths"] = widths_text(widths)
            row["diff_long_minus_base"] = row["beta_long"] - row["beta_base"]
            beta_rows.append(row)
    return pd.DataFrame(ppl_rows), pd.DataFrame(beta_rows)


def renyi_table(ranks: pd.DataFrame, runs: pd.DataFrame, groups: pd.DataFrame) -> pd.DataFrame:
    """Pre rank, post rank and reinjection ρ_α = R_α(post)/R_α(pre) per run, bucket and α (trained phase). ρ is the
    fit stage's (rows 'rho_<α>', aggregated as fit.rho_aggregation says); the ratio of the two medians where a
    ranks table has no such rows."""
    trained = ranks[ranks["phase"] == "trained"]
    sel = trained[trained["metric"].map(is_renyi) & trained["site"].isin(["pre", "post"])]
    if sel.empty:
        return pd.DataFrame()
    wide = sel.pivot_table(index=["run", "bucket", "metric"], columns="site", values="median").reset_index()
    if not {"pre", "post"} <= set(wide.columns):
        return pd.DataFrame()
    wide["alpha"] = wide["metric"].map(renyi_order)
    wide["alpha_label"] = [("∞" if math.isinf(a) else fmt_value(a)) for a in wide["alpha"]]
    rho = trained[trained["metric"].str.startswith("rho_")]
    if rho.empty:
        wide["rho"] = wide["post"] / wide["pre"]
    else:
        rho = rho.assign(metric=RENYI_PREFIX + rho["metric"].str.removeprefix("rho_"))
        wide = wide.join(rho.set_index(["run", "bucket", "metric"])["median"].rename("rho"),
                         on=["run", "bucket", "metric"])
    info = groups.set_index("group")[["display", "optim_label", "family"]]
    wide = wide.join(runs.set_index("run")[["group", "width_mult", "ffn_dim", "seed"]], on="run").join(info, on="group")
    return wide.drop(columns="metric").sort_values(["display", "width_mult", "bucket", "alpha"]).reset_index(drop=True)


def decay_curve(eigs: np.ndarray, n_points: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """Median over layers of the normalised descending spectrum p_i = λ_i/Σλ, at ~n_points log-spaced indices
    (a plot of 6144 modes × optimizers is heavy and says nothing more).
    eigs: (layers, modes). Returns (i, p) with 1-based indices i."""
    lam = np.sort(np.maximum(np.asarray(eigs, dtype=np.float64), 1e-12), axis=-1)[..., ::-1]
    p = np.median(lam / lam.sum(axis=-1, keepdims=True), axis=0)
    idx = np.unique(np.round(np.geomspace(1, p.size, num=min(n_points, p.size))).astype(int))
    return idx, p[idx - 1]
