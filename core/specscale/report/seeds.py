"""The report's view of seeds and training time: the optimizer-minus-reference table (results/beta_gaps.csv) with a
computed reading per comparison, and the readings under the β-over-training figures (results/betas_steps_seeds.csv,
results/beta_gaps_steps.csv). Every sentence is built from the numbers (specscale.report.readings.primitives)."""

from __future__ import annotations

import pandas as pd
from specscale.report.readings import primitives as rd
from specscale.compare.figure_data import METRIC_NAMES

INTERVAL_NAMES = {"welch": "Welch t 95% interval over seeds (the two optimizers' seeds as independent samples)",
                  "paired": "paired t 95% interval over the per-seed differences"}
HEADLINE_BUCKETS = ("TAIL", "GLOBAL")  # the readings name these; the table has every bucket


def _what(r) -> str:  # noqa: ANN001 (a row of beta_gaps)
    return f"{r.comparison}, {r.bucket} β_{METRIC_NAMES.get(r.metric, r.metric)}"


def _seeds(r) -> str:  # noqa: ANN001
    n = int(min(r.n_seeds, r.n_seeds_ref))
    return rd.plural(n, "seed") if r.n_seeds == r.n_seeds_ref else f"{int(r.n_seeds)} vs {int(r.n_seeds_ref)} seeds"


def trained_gaps(gaps: pd.DataFrame, site: str = "post") -> pd.DataFrame:
    """The trained-phase rows of beta_gaps.csv at one site, soft and hard rank."""
    if gaps.empty:
        return gaps
    return gaps[(gaps["phase"] == "trained") & (gaps["site"] == site) & gaps["metric"].isin(METRIC_NAMES)]


def gap_table(gaps: pd.DataFrame, site: str = "post") -> pd.DataFrame:
    """One row per comparison × bucket × metric: each side's mean β, the difference with its interval, n, verdict."""
    sel = trained_gaps(gaps, site)
    if sel.empty:
        return pd.DataFrame()
    order = {b: i for i, b in enumerate(("HEAD", "MID", "TAIL", "GLOBAL"))}
    sel = sel.assign(_base=sel["setting"].fillna("") != "", _b=sel["bucket"].map(order))
    sel = sel.sort_values(["_base", "comparison", "_b", "metric"], kind="stable")
    rows = [{"comparison": r.comparison, "setting": r.setting if isinstance(r.setting, str) else "",
             "bucket": r.bucket, "metric": METRIC_NAMES[r.metric], "β": rd.plain(r.beta, 3),
             "β reference": rd.plain(r.beta_ref, 3), "difference": rd.signed(r.diff, 3),
             "95% interval": rd.interval(r.diff_ci95_low, r.diff_ci95_high, 3) or "—", "seeds": _seeds(r),
             "verdict": rd.verdict(r.diff_ci95_low, r.diff_ci95_high)} for r in sel.itertuples()]
    return pd.DataFrame(rows)


def gap_readings(gaps: pd.DataFrame, site: str = "post") -> list[str]:
    """One line per comparison of the base architecture for the headline buckets' hard and soft β, and a count of
    the resolved cells over the whole table."""
    sel = trained_gaps(gaps, site)
    if sel.empty:
        return []
    head = sel[(sel["setting"].fillna("") == "") & sel["bucket"].isin(HEADLINE_BUCKETS)]
    lines = [rd.difference_reading(_what(r), r.diff, r.diff_ci95_low, r.diff_ci95_high, _seeds(r))
             for r in head.sort_values(["comparison", "bucket", "metric"]).itertuples()]
    verdicts = [rd.verdict(lo, hi) for lo, hi in zip(sel["diff_ci95_low"], sel["diff_ci95_high"])]
    lines.append(f"Resolved (interval excludes 0) in {verdicts.count('resolved')} of {len(verdicts)} cells; "
                 f"{verdicts.count('no interval')} without an interval (fewer than 2 seeds a side).")
    return lines


def interval_note(gaps: pd.DataFrame) -> str:
    kinds = sorted(set(gaps["interval"])) if not gaps.empty else []
    return "; ".join(INTERVAL_NAMES.get(k, k) for k in kinds)


def training_readings(steps_seeds: pd.DataFrame, gaps_steps: pd.DataFrame, site: str = "post") -> list[str]:
    """Under the over-training figures: the kept steps and seeds behind them, and per comparison of the base
    architecture the TAIL hard-rank gap at the last kept step and where it was largest."""
    if steps_seeds.empty:
        return []
    sel = steps_seeds[steps_seeds["site"] == site]
    steps = sorted(int(s) for s in sel["step"].unique())
    lines = [f"n = {len(steps)} kept steps ({steps[0]}–{steps[-1]}), {rd.plural(int(sel['n_seeds'].max()), 'seed')} "
             f"at most per optimizer; band: between-seed 95% t-interval (none with one seed); dashed: step-0 β."]
    if gaps_steps.empty:
        return lines
    g = gaps_steps[(gaps_steps["site"] == site) & (gaps_steps["setting"].fillna("") == "")
                   & (gaps_steps["bucket"] == "TAIL") & (gaps_steps["metric"] == "hard_rank") & (gaps_steps["step"] > 0)]
    for comparison, part in g.groupby("comparison", sort=True):
        last = part.loc[part["step"].idxmax()]
        big = part.loc[part["diff"].abs().idxmax()]
        lines.append(rd.difference_reading(f"{comparison}, TAIL β_hard at step {int(last['step'])}", last["diff"],
                                           last["diff_ci95_low"], last["diff_ci95_high"], _seeds(last))
                     + f"; largest |gap| {rd.signed(big['diff'])} at step {int(big['step'])}")
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
