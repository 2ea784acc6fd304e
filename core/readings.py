"""One-line readings of the report's numbers, computed from them: a sentence in the report is built here from the
table it describes, so it can never contradict that table (issue: no fixed text beside a number).

A reading of a difference states the estimate, its interval, the interval's kind and n, and a verdict: "resolved"
when the interval excludes 0, "not resolved" otherwise, "no interval" when it could not be computed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from specscale.buckets import ALL_SETS
from specscale.fit import FIT_METRICS

MINUS = "−"  # U+2212: a minus sign that does not break a line or read as a hyphen


def signed(x: float, digits: int = 2) -> str:
    """+0.12 / −0.05 / '—' for NaN."""
    if x is None or not math.isfinite(x):
        return "—"
    text = f"{abs(x):.{digits}f}"
    return (MINUS if x < 0 and float(text) != 0 else "+") + text


def plain(x: float, digits: int = 2) -> str:
    """0.12 / −0.05 / '—' for NaN (no '+' on positives)."""
    return signed(x, digits).lstrip("+")


def interval(low: float, high: float, digits: int = 2, sign: bool = True) -> str:
    """'[−0.05, +0.29]' (or without '+' when sign is False); '' when either end is missing."""
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return ""
    f = signed if sign else plain
    return f"[{f(low, digits)}, {f(high, digits)}]"


def verdict(low: float, high: float) -> str:
    """'resolved' when [low, high] excludes 0, 'not resolved' when it contains 0, 'no interval' when missing."""
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return "no interval"
    return "resolved" if low > 0 or high < 0 else "not resolved"


def difference_reading(what: str, estimate: float, low: float, high: float, n_text: str, digits: int = 2) -> str:
    """'Muon − AdamW, TAIL β_hard: +0.12 [−0.05, +0.29], 3 seeds: not resolved'."""
    ci = interval(low, high, digits)
    return f"{what}: {signed(estimate, digits)}{' ' + ci if ci else ''}, {n_text}: {verdict(low, high)}"


def plural(n: int, noun: str) -> str:
    """'1 seed', '3 seeds'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def count_text(runs: int | None = None, seeds: int | None = None, widths: Iterable[int] | int | None = None,
               groups: int | None = None) -> str:
    """'n = 40 runs, 2 seeds, widths k ∈ {1, 2, 4, 8}' with whatever counts are given."""
    parts = []
    if runs is not None:
        parts.append(plural(int(runs), "run"))
    if groups is not None:
        parts.append(plural(int(groups), "group"))
    if seeds is not None:
        parts.append(plural(int(seeds), "seed"))
    if widths is not None:
        if isinstance(widths, int):
            parts.append(plural(widths, "width"))
        else:
            ks = sorted({int(w) for w in widths})
            parts.append(f"widths k ∈ {{{', '.join(map(str, ks))}}}")
    return "n = " + ", ".join(parts) if parts else ""


# --- The report's readings -------------------------------------------------------------------------------------------
# Each function below takes the table a report table or figure shows (or the data it is drawn from) and returns a
# Reading: the n it shows, the kind of interval it shows and one computed line. The report's sections call them, so a
# sentence beside a table is always computed from that table. None when there is nothing to read (the table or figure
# is then absent and the report says why).

OLS_INTERVAL = "OLS 95% t-interval over widths"
SEED_INTERVAL = "between-seed 95% t-interval"
NO_INTERVAL = "no interval"
RHO_TOL = 1e-6  # ρ_α within this of 1 is not "above 1" (α = 0 gives exactly 1 when both sites have full rank)


@dataclass(frozen=True)
class Reading:
    """What a table or figure shows (n, interval kind) and its one-line reading, all computed from its data."""

    n: str  # 'n = 9 groups, 2 seeds, widths k ∈ {1, 2, 4}'
    interval: str  # 'OLS 95% t-interval over widths', 'no interval (one run per cell)', ...
    text: str  # the reading

    def caption(self, title: str) -> str:
        """A table's caption: 'title — interval; n'."""
        return f"{title} — {self.interval}; {self.n}"

    def figure_line(self, title: str) -> str:
        """The paragraph that goes with a figure (its title is fixed text): interval, n and the reading."""
        return f"**Figure: {title}** — {self.interval}; {self.n}. {self.text}"

    def table_line(self, title: str) -> str:
        """The paragraph that goes with a table (its caption already says n and the interval): the reading."""
        return f"**Table: {title}** — {self.text}"


def n_text(*parts: str) -> str:
    """'n = 3 optimizers, 2 seeds' from the non-empty parts ('' when none)."""
    parts = tuple(p for p in parts if p)
    return "n = " + ", ".join(parts) if parts else ""


def _num(x: float) -> str:
    return f"{float(x):g}"


def widths_text(widths: Iterable[float], symbol: str = "k") -> str:
    """'widths k ∈ {1, 2, 4}', 'width k = 2' or '' (NaN ignored)."""
    ks = sorted({float(w) for w in widths if w is not None and math.isfinite(float(w))})
    if not ks:
        return ""
    if len(ks) == 1:
        return f"width {symbol} = {_num(ks[0])}"
    return f"widths {symbol} ∈ {{{', '.join(map(_num, ks))}}}"


def seeds_text(seeds: Iterable[Any]) -> str:
    """'1 seed', '2 seeds' (distinct values, NaN ignored)."""
    values = {int(s) for s in seeds if s is not None and not (isinstance(s, float) and math.isnan(s))}
    return plural(len(values), "seed") if values else ""


def k_of_n(k: int, n: int) -> str:
    return f"{int(k)} of {int(n)}"


def value_range(values: Iterable[float], digits: int = 2) -> str:
    """'from 0.06 to 0.28' / '0.12' (one value) / '—' (none finite)."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return "—"
    lo, hi = min(v), max(v)
    return plain(lo, digits) if plain(lo, digits) == plain(hi, digits) else f"from {plain(lo, digits)} to {plain(hi, digits)}"


def ratio_text(x: float, digits: int = 2) -> str:
    """'×1.23'."""
    return "×—" if x is None or not math.isfinite(x) else f"×{x:.{digits}f}"


def ratio_range(values: Iterable[float], digits: int = 2) -> str:
    """'×0.84 to ×0.90' / '×0.84' (one value, or all equal at these digits) / '×—'."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return ratio_text(math.nan)
    lo, hi = ratio_text(min(v), digits), ratio_text(max(v), digits)
    return lo if lo == hi else f"{lo} to {hi}"


def listing(names: Iterable[str], empty: str = "none") -> str:
    names = [str(n) for n in names]
    return ", ".join(names) if names else empty


def _alpha_text(alpha: float) -> str:
    return "∞" if math.isinf(alpha) else _num(alpha)


def _metric(metric: str) -> str:
    return {"soft_rank": "soft", "hard_rank": "hard"}.get(metric, str(metric))


def _bool(s: pd.Series) -> pd.Series:
    """A flag column as booleans (CSV text 'True'/'False' included)."""
    return s.map(lambda v: str(v).strip().lower() in ("true", "1", "yes") if isinstance(v, str) else bool(v))


def _bucket_order(buckets: Iterable[str]) -> list[str]:
    order = {b: i for i, b in enumerate(ALL_SETS)}
    return sorted(set(buckets), key=lambda b: (order.get(b, 9), b))


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
    lowest = [b for b in _bucket_order(per.index) if per.loc[b, "ratio"] == low]
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
    sel = sel[_bool(sel["fitted"]) & np.isfinite(sel["beta"].astype(float))]
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
        by_metric = ", ".join(f"{_metric(m)} {k_of_n(above[pairs['metric'] == m].sum(), (pairs['metric'] == m).sum())}"
                              for m in FIT_METRICS if (pairs["metric"] == m).any())
        parts.append(f"Trained β above its step-0 β in {k_of_n(above.sum(), len(pairs))} cells ({by_metric}).")
    hard = trained[trained["metric"] == "hard_rank"]
    cells = []
    for bucket in _bucket_order(hard["bucket"]):
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
    text = (f"Rank at D = {_num(dims[-1])} over rank at D = {_num(dims[0])}: {'; '.join(parts)} "
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
        return (f"{r['group_label']} {r['bucket']} {_metric(r['metric'])} ±{half[i]:.3f} "
                f"{interval(r['seed_ci95_low'], r['seed_ci95_high'], 2, sign=False)} ({plural(int(r['n_seeds']), 'seed')})")

    return Reading(n, SEED_INTERVAL, f"Widest between-seed interval: {cell(ok.idxmax())}; narrowest: "
                                     f"{cell(ok.idxmin())}.")


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


# --- Perplexity ---------------------------------------------------------------------------------------------------------

def ppl_table_reading(ppl: pd.DataFrame) -> Reading | None:
    """The perplexity table (compare's ppl_by_width): per width, the base optimizer of lowest perplexity (mean over
    seeds) and the ratio worst/best; and how many runs diverged."""
    if ppl.empty:
        return None
    diverged = _bool(ppl["diverged"])
    ok = ppl[~diverged & np.isfinite(ppl["val_ppl"].astype(float))]
    base = ok[ok["family"] == "base"] if (ok["family"] == "base").any() else ok
    who = "optim_label" if (ok["family"] == "base").any() else "display"
    cells = []
    for k, part in base.groupby("width_mult"):
        mean = part.groupby(who)["val_ppl"].mean()
        if len(mean):
            cells.append(f"{_num(k)}× {mean.idxmin()} {mean.min():.1f}"
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
    sel = ppl[~_bool(ppl["diverged"])]
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
        cells.append(f"{display} {listing(map(_alpha_text, above))}")
    alphas = sorted(sel["alpha"].unique())
    top = sel.loc[sel["rho"].idxmax()]
    where = f"{top['display']}, {top['bucket']}, α = {_alpha_text(top['alpha'])}" if bucket is None else \
        f"{top['display']}, α = {_alpha_text(top['alpha'])}"
    text = (f"α with ρ_α > 1 (of α ∈ {{{', '.join(map(_alpha_text, alphas))}}}"
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
        text = f"R_{_alpha_text(hi)} / R_{_alpha_text(lo)}: {'; '.join(parts)} over {plural(len(ends), 'curve')}."
    return Reading(_renyi_n(sel, True), f"median over layers, {NO_INTERVAL}", text)


# --- Optimizer vs architecture -------------------------------------------------------------------------------------------

def arch_counts(table: pd.DataFrame) -> tuple[int, int, pd.DataFrame]:
    """(k, n, the counted non-missing rows) of compare's arch_vs_optimizer table: the compare stage's k of n."""
    counted = table[_bool(table["counted"])]
    present = counted[counted["status"] != "missing"]
    return int((present["status"] == "exceeds").sum()), len(present), present


def _arch_n(table: pd.DataFrame) -> str:
    return n_text(plural(len(table), "comparison") + f" ({int(_bool(table['counted']).sum())} counted)",
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
                 f"{r['bucket']} {_metric(r['metric'])})")
    return Reading(_arch_n(table), "β point estimates, " + NO_INTERVAL, text + ".")


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
    names = [f"{r['ablation']} {r['optimizer']} {r['bucket']} {_metric(r['metric'])} (gain {plain(r['optimizer_gain'], 3)}"
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
    ours_x, paper_x = _bool(paper["ours_diverged"]), _bool(paper["paper_diverged"])
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
