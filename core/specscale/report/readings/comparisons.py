"""Readings of the perplexity, matched-loss, Rényi, architecture, PostLN and paper tables and figures (see
specscale.report.readings.primitives): one computed line each."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from specscale.report.readings.primitives import (
    NO_INTERVAL,
    RHO_TOL,
    Reading,
    alpha_text,
    as_bool,
    k_of_n,
    listing,
    metric_name,
    n_text,
    num,
    plain,
    plural,
    ratio_range,
    ratio_text,
    seeds_text,
    signed,
    value_range,
    widths_text,
)

# --- Perplexity ---------------------------------------------------------------------------------------------------------

def ppl_table_reading(ppl: pd.DataFrame) -> Reading | None:
    """The perplexity table (compare's ppl_by_width): per width, the base optimizer of lowest perplexity (mean over
    seeds) and the ratio worst/best; and how many runs diverged."""
    if ppl.empty:
        return None
    diverged = as_bool(ppl["diverged"])
    ok = ppl[~diverged & np.isfinite(ppl["val_ppl"].astype(float))]
    base = ok[ok["family"] == "base"] if (ok["family"] == "base").any() else ok
    who = "optim_label" if (ok["family"] == "base").any() else "display"
    cells = []
    for k, part in base.groupby("width_mult"):
        mean = part.groupby(who)["val_ppl"].mean()
        if len(mean):
            cells.append(f"{num(k)}× {mean.idxmin()} {mean.min():.1f}"
                         + (f" (worst/best {ratio_text(mean.max() / mean.min())})" if len(mean) > 1 else ""))
    scope = "base architecture, mean over seeds" if who == "optim_label" else "every group"
    text = f"Lowest perplexity by width ({scope}): {'; '.join(cells) or 'none'}. " \
           f"{k_of_n(int(diverged.sum()), len(ppl))} runs diverged."
    return Reading(n_text(plural(len(ppl), "run"), plural(ppl["display"].nunique(), "group"), seeds_text(ppl["seed"]),
                          widths_text(ppl["width_mult"])), f"one run per cell, {NO_INTERVAL}", text)


def ppl_figure_reading(ppl: pd.DataFrame) -> Reading | None:
    """The perplexity figure (groups with ≥ 2 non-diverged widths): does perplexity fall with width."""
    if ppl.empty:
        return None
    sel = ppl[~as_bool(ppl["diverged"])]
    sel = sel[sel.groupby("display")["width_mult"].transform("nunique") >= 2]
    if sel.empty:
        return None
    ratios = []
    for _, g in sel.groupby("display"):
        ratios.append(g.loc[g["width_mult"].idxmax(), "val_ppl"] / g.loc[g["width_mult"].idxmin(), "val_ppl"])
    ratios = pd.Series(ratios)
    text = (f"Perplexity lower at the widest than at the narrowest width in {k_of_n((ratios < 1).sum(), len(ratios))} "
            f"groups (widest/narrowest {ratio_range(ratios)}).")
    return Reading(n_text(plural(len(sel), "run"), plural(sel["display"].nunique(), "group"),
                          widths_text(sel["width_mult"])), f"one run per point, {NO_INTERVAL}", text)


def eigen_decay_reading(decay: pd.DataFrame) -> Reading | None:
    """The eigenvalue-decay figure: the largest eigenvalue's share p₁, trained and at step 0, per optimizer."""
    if decay.empty:
        return None
    first = decay[decay["mode"] == decay["mode"].min()]
    cells = []
    for display, part in first.groupby("display", sort=True):
        p = part.set_index("phase")["p"]
        cells.append(f"{display} {p.get('trained', math.nan):.3f} / {p.get('step 0', math.nan):.3f}")
    return Reading(n_text(plural(decay["display"].nunique(), "optimizer") + " (lowest seed, widest width)",
                          widths_text(decay["ffn_dim"], "D")), f"median over layers, {NO_INTERVAL}",
                   f"Largest eigenvalue's share p₁, trained / step 0: {'; '.join(cells)}.")


# --- Matched loss -------------------------------------------------------------------------------------------------------

def matched_beta_reading(table: pd.DataFrame) -> Reading | None:
    """The matched-loss β table: long − base and long − closest-perplexity β over the cells of each pair."""
    if table.empty:
        return None
    parts = []
    for pair, part in table.groupby("pair", sort=False):
        d = part["beta_long"] - part["beta_base"]
        text = f"{pair}: long − base β {value_range(d, 3)} over {plural(int(np.isfinite(d).sum()), 'cell')}"
        if "beta_closest ppl" in part and part["beta_closest ppl"].notna().any():
            c = part["beta_long"] - part["beta_closest ppl"]
            text += f"; long − closest-perplexity ({listing(part['closest_ppl'].dropna().unique())}) {value_range(c, 3)}"
        parts.append(text)
    return Reading(n_text(plural(table["pair"].nunique(), "pair"), plural(len(table), "cell")),
                   "OLS β point estimates (their intervals are in the β table)", "; ".join(parts) + ".")


def matched_ppl_reading(ppl: pd.DataFrame) -> Reading | None:
    """The matched-loss perplexity table: long/base and long/closest perplexity, geometric mean over common widths."""
    if ppl.empty:
        return None
    parts = []
    for pair, part in ppl.groupby("pair", sort=False):
        by = part.pivot_table(index="width_mult", columns="role", values="val_ppl", aggfunc="first")
        cells = []
        for role in ("base", "closest ppl"):
            if role in by and "long" in by:
                both = by[["long", role]].dropna()
                both = both[(both > 0).all(axis=1)]
                if len(both):
                    r = float(np.exp(np.mean(np.log(both["long"] / both[role]))))
                    cells.append(f"long/{role.replace(' ppl', '')} {ratio_text(r)} over {plural(len(both), 'width')}")
        parts.append(f"{pair}: " + (", ".join(cells) or "no common width"))
    return Reading(n_text(plural(ppl["pair"].nunique(), "pair"), plural(ppl["display"].nunique(), "group"),
                          widths_text(ppl["width_mult"])), f"one run per cell, {NO_INTERVAL}",
                   "Perplexity ratio (geometric mean): " + "; ".join(parts) + ".")


# --- Rényi ----------------------------------------------------------------------------------------------------------------

def renyi_selection(renyi: pd.DataFrame, bucket: str | None = None) -> pd.DataFrame:
    """What the Rényi table and figures show: base optimizers, lowest seed, widest width of each (one bucket)."""
    if renyi.empty:
        return renyi
    sel = renyi[(renyi["family"] == "base") & (renyi["seed"] == renyi["seed"].min())]
    if bucket is not None:
        sel = sel[sel["bucket"] == bucket]
    return sel[sel["width_mult"] == sel.groupby("display")["width_mult"].transform("max")]


def _renyi_n(sel: pd.DataFrame, buckets: bool) -> str:
    return n_text(plural(sel["display"].nunique(), "optimizer") + " (lowest seed, widest width)",
                  plural(sel["bucket"].nunique(), "bucket") if buckets else "",
                  plural(sel["alpha"].nunique(), "value") + " of α")


def rho_reading(renyi: pd.DataFrame, bucket: str | None = None) -> Reading | None:
    """ρ_α table (one bucket) or figure (every bucket): the α at which ρ_α > 1, per optimizer."""
    sel = renyi_selection(renyi, bucket)
    if sel.empty:
        return None
    cells = []
    for display, part in sel.groupby("display", sort=True):
        above = sorted(part.loc[part["rho"] > 1 + RHO_TOL, "alpha"].unique())
        cells.append(f"{display} {listing(map(alpha_text, above))}")
    alphas = sorted(sel["alpha"].unique())
    top = sel.loc[sel["rho"].idxmax()]
    where = f"{top['display']}, {top['bucket']}, α = {alpha_text(top['alpha'])}" if bucket is None else \
        f"{top['display']}, α = {alpha_text(top['alpha'])}"
    text = (f"α with ρ_α > 1 (of α ∈ {{{', '.join(map(alpha_text, alphas))}}}"
            f"{'' if bucket else ', any bucket'}): {'; '.join(cells)}. Largest ρ_α {top['rho']:.3f} ({where}).")
    return Reading(_renyi_n(sel, bucket is None), f"median over layers, {NO_INTERVAL}", text)


def renyi_rank_reading(renyi: pd.DataFrame) -> Reading | None:
    """The Rényi-rank figure: R_∞ / R_0 (how much of the width the top of the spectrum holds) pre and post."""
    sel = renyi_selection(renyi)
    if sel.empty:
        return None
    lo, hi = sel["alpha"].min(), sel["alpha"].max()
    if lo == hi:
        text = "One α: no decay over α to read."
    else:
        ends = sel[sel["alpha"].isin([lo, hi])].pivot_table(index=["display", "bucket"], columns="alpha",
                                                             values=["pre", "post"])
        parts = [f"{site} {value_range(ends[(site, hi)] / ends[(site, lo)])}" for site in ("pre", "post")]
        text = f"R_{alpha_text(hi)} / R_{alpha_text(lo)}: {'; '.join(parts)} over {plural(len(ends), 'curve')}."
    return Reading(_renyi_n(sel, True), f"median over layers, {NO_INTERVAL}", text)


# --- Optimizer vs architecture -------------------------------------------------------------------------------------------

def arch_counts(table: pd.DataFrame) -> tuple[int, int, pd.DataFrame]:
    """(k, n, the counted non-missing rows) of compare's arch_vs_optimizer table: the compare stage's k of n."""
    counted = table[as_bool(table["counted"])]
    present = counted[counted["status"] != "missing"]
    return int((present["status"] == "exceeds").sum()), len(present), present


def _arch_n(table: pd.DataFrame) -> str:
    return n_text(plural(len(table), "comparison") + f" ({int(as_bool(table['counted']).sum())} counted)",
                  plural(table["optimizer"].nunique(), "optimizer"), seeds_text(table["seed"]),
                  plural(table["ablation"].nunique(), "ablation"))


def arch_reading(table: pd.DataFrame) -> Reading | None:
    """Every comparison (compare's arch_vs_optimizer table): k of n and the smallest margin gain − shift."""
    if table.empty:
        return None
    k, n, present = arch_counts(table)
    text = f"Optimizer gain exceeds the architecture shift in {k_of_n(k, n)} counted cells"
    if len(present):
        margin = present["optimizer_gain"] - present["arch_shift"]
        r = present.loc[margin.idxmin()]
        text += (f"; smallest margin gain − shift {signed(margin.min(), 3)} ({r['ablation']}, {r['optimizer']}, "
                 f"{r['bucket']} {metric_name(r['metric'])})")
    return Reading(_arch_n(table), "β point estimates, " + NO_INTERVAL, text + ".")


def seed_claims_text(claims: pd.DataFrame, family: str, source: str, above: str, below: str) -> str:
    """What the seeds say of one family of the compare stage's claims (arch_claims.csv, matched_claims.csv): how
    many cells resolved in either direction (`above`: estimate > 0), or that none could be tested."""
    rows = claims[claims["family"] == family] if not claims.empty else claims
    if rows.empty:
        return f"Over seeds: no {family} cell ({source} is empty)."
    tested = rows[rows["verdict"] != "not tested"]
    if tested.empty:
        return (f"Over seeds: none of the {plural(len(rows), family + ' cell')} is tested (one seed a side), so the "
                f"numbers above are single-seed point estimates; {source} lists them as not tested.")
    up = int(((tested["verdict"] == "resolved") & (tested["estimate"] > 0)).sum())
    down = int(((tested["verdict"] == "resolved") & (tested["estimate"] < 0)).sum())
    return (f"Over seeds ({family}, paired t, Holm over {plural(len(tested), 'tested cell')}): {above}, resolved, "
            f"in {up}; {below}, resolved, in {down}; {len(tested) - up - down} not resolved; "
            f"{len(rows) - len(tested)} not tested ({source}).")


def arch_figure_reading(table: pd.DataFrame) -> Reading | None:
    """The figure (every non-missing comparison): k of n and the median ratio gain / shift."""
    if table.empty:
        return None
    shown = table[table["status"] != "missing"]
    if shown.empty:
        return None
    k, n, present = arch_counts(table)
    ratio = (present["optimizer_gain"] / present["arch_shift"]).replace([np.inf, -np.inf], np.nan).dropna()
    text = f"Optimizer gain exceeds the architecture shift in {k_of_n(k, n)} counted cells"
    if len(ratio):
        text += f"; median gain / shift {ratio_text(ratio.median(), 1)}"
    return Reading(n_text(plural(len(shown), "comparison"), plural(shown["optimizer"].nunique(), "optimizer"),
                          seeds_text(shown["seed"])), "β point estimates, " + NO_INTERVAL, text + ".")


def exceptions_reading(exceptions: pd.DataFrame, k: int, n: int) -> Reading:
    """The exceptions table: how many, and which (up to three)."""
    if exceptions.empty:
        return Reading(n_text(f"{n - k} of {n} counted cells"), "β point estimates, " + NO_INTERVAL,
                       "No exception.")
    names = [f"{r['ablation']} {r['optimizer']} {r['bucket']} {metric_name(r['metric'])} (gain {plain(r['optimizer_gain'], 3)}"
             f" vs shift {plain(r['arch_shift'], 3)})" for _, r in exceptions.head(3).iterrows()]
    more = f" and {len(exceptions) - 3} more" if len(exceptions) > 3 else ""
    return Reading(n_text(f"{len(exceptions)} of {n} counted cells"), "β point estimates, " + NO_INTERVAL,
                   f"Exceptions: {'; '.join(names)}{more}.")


# --- PostLN -----------------------------------------------------------------------------------------------------------------

def _postln_long(table: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    ids = [c for c in ("optimizer", "width_mult", "seed") if c in table.columns]
    fractions = [c for c in table.columns if c not in ids]
    long = table.melt(id_vars=ids, value_vars=fractions, var_name="fraction", value_name="cell")
    long["cell"] = long["cell"].map(lambda c: "" if c is None or (isinstance(c, float) and math.isnan(c)) else str(c))
    long = long[~long["cell"].isin(["", "nan"])]
    long["ppl"] = pd.to_numeric(long["cell"], errors="coerce")
    long["row"] = long["optimizer"].astype(str) + " k=" + long["width_mult"].astype(str) + (
        (" seed=" + long["seed"].astype(str)) if "seed" in long else "")
    return long, fractions


def _postln_n(table: pd.DataFrame, long: pd.DataFrame) -> str:
    return n_text(plural(len(long), "run"), plural(table["optimizer"].nunique(), "optimizer"),
                  seeds_text(table["seed"]) if "seed" in table else "1 seed", widths_text(table["width_mult"]))


def postln_reading(table: pd.DataFrame) -> Reading | None:
    """The PostLN table: which runs diverged, per fraction."""
    if table.empty:
        return None
    long, fractions = _postln_long(table)
    cells = []
    for f in fractions:
        part = long[long["fraction"] == f]
        div = part[part["cell"] == "×"]
        cells.append(f"{f} {k_of_n(len(div), len(part))}" + (f" ({listing(div['row'])})" if len(div) else ""))
    return Reading(_postln_n(table, long), f"one run per cell, {NO_INTERVAL}", f"Diverged: {'; '.join(cells)}.")


def postln_figure_reading(table: pd.DataFrame) -> Reading | None:
    """The PostLN figure: the lowest perplexity at each fraction."""
    if table.empty:
        return None
    long, fractions = _postln_long(table)
    cells = []
    for f in fractions:
        part = long[(long["fraction"] == f) & long["ppl"].notna()]
        cells.append(f"{f} {part.loc[part['ppl'].idxmin(), 'row']} {part['ppl'].min():.1f}" if len(part)
                     else f"{f} every run diverged")
    return Reading(_postln_n(table, long), f"one run per cell, {NO_INTERVAL}",
                   f"Lowest perplexity by PostLN fraction: {'; '.join(cells)}.")


# --- Paper side by side ---------------------------------------------------------------------------------------------------

def paper_reading(paper: pd.DataFrame) -> Reading | None:
    """The side-by-side table (rows with a cell of ours): median |ours − paper| per kind, and agreement on ×."""
    if paper.empty:
        return None
    diff = paper["diff"].astype(float)
    parts = []
    for kind, part in paper.groupby("kind", sort=False):
        d = diff[part.index]
        d = d[np.isfinite(d)]
        if len(d):
            parts.append(f"{kind} {plain(d.abs().median())} ({plural(len(d), 'cell')})")
    ours_x, paper_x = as_bool(paper["ours_diverged"]), as_bool(paper["paper_diverged"])
    either = ours_x | paper_x
    text = f"Median |ours − paper|: {'; '.join(parts) or 'no cell with both numbers'}."
    if either.any():
        text += f" Divergence (×) agrees in {k_of_n((ours_x & paper_x).sum(), either.sum())} cells where either diverged."
    kinds = paper["kind"].value_counts()
    return Reading(n_text(plural(len(paper), "cell") + f" ({', '.join(f'{k} {v}' for k, v in kinds.items())})"),
                   "point estimates (ours: mean over seeds), " + NO_INTERVAL, text)


def paper_figure_reading(paper: pd.DataFrame) -> Reading | None:
    """The scatter (β cells with both numbers): how often ours is above, and the median |ours − paper|."""
    if paper.empty:
        return None
    sel = paper[(paper["kind"] == "beta") & paper["ours"].notna() & paper["paper"].notna()]
    if sel.empty:
        return None
    d = sel["ours"].astype(float) - sel["paper"].astype(float)
    return Reading(n_text(plural(len(sel), "β cell"), plural(sel["optimizer"].nunique(), "optimizer")),
                   "point estimates (ours: mean over seeds), " + NO_INTERVAL,
                   f"Our β above the published in {k_of_n((d > 0).sum(), len(d))} cells; median |ours − paper| "
                   f"{plain(d.abs().median())}.")
