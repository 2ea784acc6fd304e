"""The report's view of seeds and training time: the optimizer-minus-reference table (results/beta_gaps.csv) with a
computed reading per comparison, and the readings under the β-over-training figures (results/betas_steps_seeds.csv,
results/beta_gaps_steps.csv). Every sentence is built from the numbers (specscale.report.readings.primitives)."""

from __future__ import annotations

import math

import pandas as pd
from specscale.report.readings import primitives as rd
from specscale.compare.figure_data import METRIC_NAMES

INTERVAL_NAMES = {"welch": "Welch t 95% interval over seeds (the two optimizers' seeds as independent samples)",
                  "paired": "paired t 95% interval over the per-seed differences"}
HEADLINE_BUCKETS = ("TAIL", "GLOBAL")  # the readings name these; the table has every bucket


CONTRAST_BUCKET = "TAIL-GLOBAL"  # the fit stage's contrast rows of beta_gaps.csv: the TAIL gap minus the GLOBAL gap
ADJUSTED = {"holm": "Holm", "band": "simultaneous band"}


def _metric(r) -> str:  # noqa: ANN001 (a row of beta_gaps)
    return f"β_{METRIC_NAMES.get(r.metric, r.metric)}"


def _what(r) -> str:  # noqa: ANN001
    bucket = "TAIL gap − GLOBAL gap" if r.bucket == CONTRAST_BUCKET else r.bucket
    return f"{r.comparison}, {bucket} {_metric(r)}"


def _seeds(r) -> str:  # noqa: ANN001
    n = int(min(r.n_seeds, r.n_seeds_ref))
    return rd.plural(n, "seed") if r.n_seeds == r.n_seeds_ref else f"{int(r.n_seeds)} vs {int(r.n_seeds_ref)} seeds"


def _claim(r, what: str, adjusted: str = ADJUSTED["holm"], digits: int = 2) -> str:  # noqa: ANN001
    """A gap row read with its claim (the fit stage's claim columns: adjusted interval and verdict)."""
    adjusted = "" if getattr(r, "family", "") == "primary" else adjusted  # the primary endpoint is not adjusted
    widths = getattr(r, "widths", "")
    n = _seeds(r) + (f", widths k ∈ {{{widths.replace(',', ', ')}}}" if isinstance(widths, str) and widths else "")
    return rd.claim_reading(what, r.diff, r.diff_ci95_low, r.diff_ci95_high, getattr(r, "diff_adj_low", math.nan),
                            getattr(r, "diff_adj_high", math.nan), n, getattr(r, "verdict", ""), adjusted, digits)


def trained_gaps(gaps: pd.DataFrame, site: str = "post") -> pd.DataFrame:
    """The trained-phase rows of beta_gaps.csv at one site, soft and hard rank (the TAIL − GLOBAL contrasts too)."""
    if gaps.empty:
        return gaps
    return gaps[(gaps["phase"] == "trained") & (gaps["site"] == site) & gaps["metric"].isin(METRIC_NAMES)]


def no_setting(setting: pd.Series) -> pd.Series:
    """Rows of the base architecture: an empty `setting` (read back from CSV as NaN when every row has none)."""
    return setting.isna() | (setting.astype(object) == "")


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def gap_table(gaps: pd.DataFrame, site: str = "post") -> pd.DataFrame:
    """One row per comparison × bucket × metric: each side's mean β, the difference with its interval and its
    family-adjusted interval, n, widths, and the claim's verdict (results/claims.csv)."""
    sel = trained_gaps(gaps, site)
    if sel.empty:
        return pd.DataFrame()
    order = {b: i for i, b in enumerate(("HEAD", "MID", "TAIL", "GLOBAL", CONTRAST_BUCKET))}
    sel = sel.assign(_base=~no_setting(sel["setting"]), _b=sel["bucket"].map(order))
    sel = sel.sort_values(["_base", "comparison", "_b", "metric"], kind="stable")
    rows = [{"comparison": r.comparison, "setting": _text(r.setting),
             "bucket": "TAIL − GLOBAL" if r.bucket == CONTRAST_BUCKET else r.bucket,
             "metric": METRIC_NAMES[r.metric], "β": rd.plain(r.beta, 3), "β reference": rd.plain(r.beta_ref, 3),
             "difference": rd.signed(r.diff, 3),
             "95% interval": rd.interval(r.diff_ci95_low, r.diff_ci95_high, 3) or "—",
             "family-adjusted": rd.interval(getattr(r, "diff_adj_low", math.nan),
                                            getattr(r, "diff_adj_high", math.nan), 3) or "—",
             "seeds": _seeds(r), "widths": _text(getattr(r, "widths", "")),
             "verdict": _text(getattr(r, "verdict", "")) or "not tested"} for r in sel.itertuples()]
    return pd.DataFrame(rows)


def _contrast_meaning(r) -> str:  # noqa: ANN001
    """What a TAIL − GLOBAL verdict lets the report say about 'carried by the TAIL bucket'."""
    if getattr(r, "verdict", "") == "resolved":
        return f" (the TAIL gap is {'larger' if r.diff > 0 else 'smaller'} than the GLOBAL gap)"
    return " (the data cannot tell whether the gap differs between TAIL and GLOBAL, so not whether TAIL carries it)"


def gap_readings(gaps: pd.DataFrame, site: str = "post") -> list[str]:
    """The primary endpoint first, then one line per comparison of the base architecture for the headline buckets'
    hard and soft β and their TAIL − GLOBAL contrasts, and a count of the verdicts over the whole table. Every
    verdict is the claim's (results/claims.csv: Holm over its family, the primary unadjusted)."""
    sel = trained_gaps(gaps, site)
    if sel.empty:
        return []
    lines = []
    if "family" in sel:
        lines += [f"Primary endpoint (fit.primary): {_claim(r, _what(r), adjusted='')}"
                  for r in sel[sel["family"] == "primary"].itertuples()]
        sel_rest = sel[sel["family"] != "primary"]
    else:
        sel_rest = sel
    head = sel_rest[no_setting(sel_rest["setting"])
                    & sel_rest["bucket"].isin((*HEADLINE_BUCKETS, CONTRAST_BUCKET))]
    for r in head.sort_values(["comparison", "bucket", "metric"]).itertuples():
        contrast = r.bucket == CONTRAST_BUCKET  # a difference of two gaps is small: 3 decimals
        lines.append(_claim(r, _what(r), digits=3 if contrast else 2) + (_contrast_meaning(r) if contrast else ""))
    verdicts = [_text(v) or "not tested" for v in sel.get("verdict", pd.Series("", index=sel.index))]
    lines.append(f"Resolved (family-adjusted interval excludes 0) in {verdicts.count('resolved')} of {len(verdicts)} "
                 f"cells; {verdicts.count('not tested')} not tested (fewer than 2 seeds a side).")
    return lines


def interval_note(gaps: pd.DataFrame) -> str:
    kinds = sorted(set(gaps["interval"])) if not gaps.empty else []
    families = ("; family-adjusted: Holm over the trained differences, and over the TAIL − GLOBAL contrasts "
                "(the primary endpoint unadjusted)") if "family" in gaps else ""
    return "; ".join(INTERVAL_NAMES.get(k, k) for k in kinds) + families


def _step_spans(steps: list[int], kept: list[int]) -> str:
    """'800–1000, 1400' from the steps in `steps`, as runs of consecutive kept steps."""
    spans, start, prev = [], None, None
    for s in kept:
        if s in steps:
            start, prev = (s if start is None else start), s
        elif start is not None:
            spans.append((start, prev))
            start = None
    if start is not None:
        spans.append((start, prev))
    return ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in spans) or "none"


def training_readings(steps_seeds: pd.DataFrame, gaps_steps: pd.DataFrame, site: str = "post") -> list[str]:
    """Under the over-training figures: the kept steps and seeds behind them, and per comparison of the base
    architecture the TAIL hard-rank gap at the last kept step with its simultaneous band over the kept steps, the
    steps where the band excludes 0, and where the gap was largest."""
    if steps_seeds.empty:
        return []
    sel = steps_seeds[steps_seeds["site"] == site]
    steps = sorted(int(s) for s in sel["step"].unique())
    lines = [f"n = {len(steps)} kept steps ({steps[0]}–{steps[-1]}), {rd.plural(int(sel['n_seeds'].max()), 'seed')} "
             f"at most per optimizer; band: between-seed 95% t-interval (none with one seed); dashed: step-0 β."]
    if gaps_steps.empty:
        return lines
    g = gaps_steps[(gaps_steps["site"] == site) & no_setting(gaps_steps["setting"])
                   & (gaps_steps["bucket"] == "TAIL") & (gaps_steps["metric"] == "hard_rank") & (gaps_steps["step"] > 0)]
    for comparison, part in g.groupby("comparison", sort=True):
        last = next(part.loc[[part["step"].idxmax()]].itertuples())  # a row, not a Series (Series.diff is a method)
        big = part.loc[part["diff"].abs().idxmax()]
        kept = sorted(int(s) for s in part["step"])
        resolved = [int(s) for s, v in zip(part["step"], part.get("verdict", [])) if v == "resolved"]
        lines.append(_claim(last, f"{comparison}, TAIL β_hard at step {int(last.step)}", ADJUSTED["band"])
                     + f"; the simultaneous band (Bonferroni over the {len(kept)} kept steps) excludes 0 at steps "
                       f"{_step_spans(resolved, kept)} ({len(resolved)} of {len(kept)}); largest |gap| "
                       f"{rd.signed(big['diff'])} at step {int(big['step'])}")
    return lines


def val_over_training(val_steps: pd.DataFrame, max_columns: int = 7) -> tuple[str, pd.DataFrame]:
    """(caption, table): validation perplexity at kept steps (at most `max_columns`, evenly spaced, last included),
    mean over seeds, one row per configuration and width; '' and an empty table without per-checkpoint validation."""
    if val_steps.empty:
        return "", pd.DataFrame()
    steps = sorted(int(s) for s in val_steps["step"].unique())
    pick = sorted({steps[round(i * (len(steps) - 1) / (max_columns - 1))] for i in range(max_columns)}
                  if len(steps) > max_columns else set(steps))
    sel = val_steps[val_steps["step"].isin(pick)]
    table = sel.groupby(["config", "width_mult", "step"])["val_ppl"].mean().unstack("step")
    table.columns = [f"step {c}" for c in table.columns]
    seeds = int(sel.groupby(["config", "width_mult", "step"])["seed"].nunique().max())
    caption = (f"Validation perplexity at kept steps, mean over seeds (no interval); n = {rd.plural(seeds, 'seed')} at "
               f"most per cell, {len(pick)} of {len(steps)} kept steps shown")
    return caption, table.round(2).reset_index().rename(columns={"width_mult": "k"})
