"""results/claims.csv: every difference the report states, each with the test behind it and the family it is
judged in, so that a claim rests on a computed test and not on one of many intervals read one by one.

Families (the `family` column; α = 0.05 in each, specscale.stats.multiplicity):
  primary                          the one endpoint declared in the spec (fit.primary), 95%, not adjusted
  optimizer differences, trained   every other trained β(optimizer) − β(reference) at the headline site, every arm,
                                   set and metric: Holm over the family
  TAIL − GLOBAL                    (β_TAIL − β_GLOBAL) of an optimizer minus the reference's (specscale.fit.contrasts),
                                   per comparison and metric: Holm over the family
  trained − step 0                 trained β − step-0 β per configuration with ≥ 2 seeds, set and metric (paired over
                                   seeds): Holm over the family
  over training: <curve>           one comparison, set and metric at every kept step > 0 of the base architecture: a
                                   simultaneous 95% band over the curve's steps (Bonferroni over the looks), so no
                                   single step is picked out of many ("first resolved at step N")
A claim is resolved when its adjusted interval (lo_adj, hi_adj) excludes 0, not resolved when it holds 0, not
tested when it has no interval (fewer than 2 seeds a side). The gap tables (beta_gaps*.csv) and betas_seeds.csv carry
the same claim's name and adjusted interval beside their rows, for the report's readings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from specscale.fit.contrasts import CONTRAST, bucket_contrast_betas, bucket_ratio_points, step0_contrasts
from specscale.stats.multiplicity import ALPHA, bonferroni_level, holm_levels
from specscale.fit.seed_stats import optimizer_gaps, seed_values
from specscale.measure.registry import display_name
from specscale.stats.families import holm_method
from specscale.stats.intervals import TESTS, gap_interval, verdict
from specscale.study.spec import FINAL_STEP, PrimarySpec, split_comparison

PRIMARY, TRAINED, BUCKETS, STEP0 = "primary", "optimizer differences, trained", "TAIL − GLOBAL", "trained − step 0"
OVER_TRAINING = "over training"  # the family of one curve: 'over training: <comparison>: <set> β_<metric> <site>'
TRAINED_KEYS = ["phase", "bucket", "site", "metric"]
STEP_KEYS = ["step", "bucket", "site", "metric"]
# what the gap tables carry of their claim (beta_gaps*.csv); betas_seeds.csv gets them prefixed 'step0_'
CARRIED = {"claim": "claim", "family": "family", "lo_adj": "diff_adj_low", "hi_adj": "diff_adj_high",
           "method": "method", "verdict": "verdict"}


@dataclass(frozen=True)
class Primary:
    """fit.primary, parsed: β(optimizer) − β(reference) of the main sweep at a set, metric and step (None: trained)."""

    optimizer: str
    reference: str
    bucket: str
    metric: str
    step: int | None

    @classmethod
    def from_spec(cls, spec: PrimarySpec | object) -> Primary:
        optimizer, reference = split_comparison(spec.comparison)
        step = None if str(spec.step) == FINAL_STEP else int(spec.step)
        return cls(optimizer, reference, str(spec.bucket), str(spec.metric), step)

    @property
    def comparison(self) -> str:
        return f"{self.optimizer} − {self.reference}"

    def rows(self, gaps: pd.DataFrame, site: str) -> pd.Series:
        """Which rows of a gap table (trained, or per step) are this endpoint."""
        column = "phase" if self.step is None else "step"
        if gaps.empty or column not in gaps:
            return pd.Series(False, index=gaps.index)
        when = gaps[column] == ("trained" if self.step is None else self.step)
        return (when & (gaps["comparison"] == self.comparison) & (gaps["setting"].fillna("") == "")
                & (gaps["bucket"] == self.bucket) & (gaps["metric"] == self.metric) & (gaps["site"] == site))


def _set_label(bucket: str) -> str:
    return bucket.replace("-", " − ")


def gap_claim(r: pd.Series) -> str:
    """'muon − adamw: TAIL β_hard post, trained' / '… [n_heads=2] …' / '…, step 800' (a row of beta_gaps.csv or
    beta_gaps_steps.csv)."""
    shown = isinstance(r["setting"], str) and r["setting"] and r["setting"] not in r["comparison"]
    setting = f" [{r['setting']}]" if shown else ""  # an arm's varied values, unless its labels name them
    when = r["phase"] if "phase" in r else f"step {int(r['step'])}"
    return (f"{r['comparison']}{setting}: {_set_label(r['bucket'])} β_{display_name(r['metric'])} {r['site']}, "
            f"{when}")


def step0_claim(r: pd.Series) -> str:
    """'adamw lr=0.024: trained − step 0, TAIL β_hard post'."""
    return f"{r['config']}: trained − step 0, {r['bucket']} β_{display_name(r['metric'])} {r['site']}"


def _n(r: pd.Series) -> str:
    if r["interval"] == "paired":
        return f"{int(r['n_seeds'])} seeds, paired"
    return f"{int(r['n_seeds'])} vs {int(r['n_seeds_ref'])} seeds"


def _pct(level: float) -> str:
    return f"{100 * level:.4g}%"


def judge(rows: pd.DataFrame, how: str) -> pd.DataFrame:
    """One family's rows (beta_gaps columns, with p and seed_betas) → lo_adj, hi_adj, method and verdict.
    how: 'primary' (95%, unadjusted), 'holm' (Holm over the family) or 'band' (Bonferroni over the looks)."""
    p = rows["p"].to_numpy(dtype=np.float64)
    m = int(np.isfinite(p).sum())
    if how == "holm":
        levels = holm_levels(p)
    else:
        level = 1.0 - ALPHA if how == "primary" or not m else bonferroni_level(m)
        levels = np.where(np.isfinite(p), level, math.nan)
    out = []
    for (_, r), level in zip(rows.iterrows(), levels):
        test = TESTS[r["interval"]]
        if not math.isfinite(level):
            lo, hi, method = math.nan, math.nan, f"{test}: no interval (fewer than 2 seeds a side)"
        elif how == "primary":
            lo, hi = r["diff_ci95_low"], r["diff_ci95_high"]
            method = f"{test}, 95%; the declared primary endpoint (fit.primary), not adjusted"
        else:
            g = gap_interval(seed_values(r["seed_betas"]), seed_values(r["seed_betas_ref"]), r["interval"], level)
            lo, hi = g.low, g.high
            method = (holm_method(test, m, level) if how == "holm"
                      else f"{test}, 95%; simultaneous 95% band over the curve's {m} kept steps (Bonferroni: each "
                           f"at {_pct(level)})")
        out.append({"lo_adj": lo, "hi_adj": hi, "method": method, "verdict": verdict(lo, hi)})
    return pd.DataFrame(out, index=rows.index)


@dataclass
class ClaimTables:
    """The gap tables with their claims beside each row, the trained − step-0 contrasts, and results/claims.csv."""

    gaps: pd.DataFrame  # beta_gaps.csv: + TAIL−GLOBAL rows (+ the primary when it is not against the reference)
    gaps_steps: pd.DataFrame  # beta_gaps_steps.csv
    step0: pd.DataFrame  # trained − step 0 per seed group, set and metric (merged into betas_seeds.csv)
    claims: pd.DataFrame  # CLAIM_COLUMNS


def _primary_rows(primary: Primary, betas: pd.DataFrame, steps: pd.DataFrame, runs: pd.DataFrame, kind: str,
                  site: str, points: dict[str, pd.DataFrame | None]) -> pd.DataFrame:
    """The primary endpoint computed against its own reference (when that is not fit.reference_optimizer)."""
    table, keys, col = (betas, TRAINED_KEYS, "median") if primary.step is None else (steps, STEP_KEYS, "value")
    if table.empty:
        return pd.DataFrame()
    sel = table[(table["bucket"] == primary.bucket) & (table["metric"] == primary.metric) & (table["site"] == site)]
    pts = points["trained" if primary.step is None else "steps"]
    gaps = optimizer_gaps(sel, runs, primary.reference, keys, kind, pts, col)
    return gaps[primary.rows(gaps, site)] if not gaps.empty else gaps


def claim_tables(betas: pd.DataFrame, steps: pd.DataFrame, runs: pd.DataFrame, reference: str, kind: str,
                 primary: Primary, site: str, trained_points: pd.DataFrame | None = None,
                 step_points: pd.DataFrame | None = None) -> ClaimTables:
    """Every optimizer difference (trained and per step), the two contrasts and the primary endpoint, each judged in
    its family. betas: betas.csv; steps: betas_steps.csv; *_points: what they were fitted on (for refits on shared
    widths; None: no refit)."""
    points = {"trained": trained_points, "steps": step_points}
    gaps = optimizer_gaps(betas, runs, reference, TRAINED_KEYS, kind, trained_points, "median")
    trained = betas[(betas["phase"] == "trained") & (betas["site"] == site)]
    ratio = None if trained_points is None else bucket_ratio_points(trained_points, "median", *CONTRAST)
    contrast = optimizer_gaps(bucket_contrast_betas(trained, *CONTRAST), runs, reference, TRAINED_KEYS, kind, ratio)
    gaps_steps = optimizer_gaps(steps, runs, reference, STEP_KEYS, kind, step_points, "value") \
        if not steps.empty else pd.DataFrame()
    if primary.reference != reference:
        extra = _primary_rows(primary, betas, steps, runs, kind, site, points)
        if primary.step is None:
            gaps = pd.concat([gaps, extra], ignore_index=True)
        else:
            gaps_steps = pd.concat([gaps_steps, extra], ignore_index=True)
    gaps = pd.concat([gaps, contrast], ignore_index=True)
    step0 = step0_contrasts(betas, runs, site)
    return _judge_all(gaps, gaps_steps, step0, primary, site)


def _candidates(gaps: pd.DataFrame, gaps_steps: pd.DataFrame, step0: pd.DataFrame, primary: Primary,
                site: str) -> pd.DataFrame:
    """Every row that states a claim, named, with its family and how the family is judged; one row per claim."""
    parts = []
    if not gaps.empty:
        sel = gaps[(gaps["phase"] == "trained") & (gaps["site"] == site)]
        fam = np.where(primary.rows(sel, site), PRIMARY,
                       np.where(sel["bucket"].str.contains("-"), BUCKETS, TRAINED))
        parts.append(sel.assign(claim=sel.apply(gap_claim, axis=1), family=fam))
    if not gaps_steps.empty:
        sel = gaps_steps[(gaps_steps["site"] == site) & (gaps_steps["step"] > 0)]
        sel = sel[(sel["setting"].fillna("") == "") | primary.rows(sel, site)]
        curve = (OVER_TRAINING + ": " + sel["comparison"] + ": " + sel["bucket"] + " β_"
                 + sel["metric"].map(display_name) + " " + sel["site"])
        parts.append(sel.assign(claim=sel.apply(gap_claim, axis=1),
                                family=np.where(primary.rows(sel, site), PRIMARY, curve)))
    if not step0.empty:
        parts.append(step0.assign(claim=step0.apply(step0_claim, axis=1), family=STEP0))
    if not parts:
        return pd.DataFrame(columns=["claim", "family"])
    # an arm that repeats another's comparison (same seed groups) states the same claim once
    return pd.concat(parts, ignore_index=True).drop_duplicates("claim").reset_index(drop=True)


def _judge_all(gaps: pd.DataFrame, gaps_steps: pd.DataFrame, step0: pd.DataFrame, primary: Primary,
               site: str) -> ClaimTables:
    cand = _candidates(gaps, gaps_steps, step0, primary, site)
    judged = []
    for family, rows in cand.groupby("family", sort=False):
        how = "primary" if family == PRIMARY else "band" if family.startswith(OVER_TRAINING) else "holm"
        judged.append(rows.join(judge(rows, how)))
    done = pd.concat([*judged, _untested_primary(primary, site, cand)])
    order = {PRIMARY: 0, TRAINED: 1, BUCKETS: 2, STEP0: 3}
    done = done.assign(_o=done["family"].map(lambda f: order.get(f, 4))).sort_values("_o", kind="stable")
    claims = pd.DataFrame({"claim": done["claim"], "family": done["family"], "estimate": done["diff"],
                           "lo": done["diff_ci95_low"], "hi": done["diff_ci95_high"], "lo_adj": done["lo_adj"],
                           "hi_adj": done["hi_adj"], "method": done["method"], "n": done.apply(_n, axis=1),
                           "widths": done["widths"], "verdict": done["verdict"]}).reset_index(drop=True)
    by_claim = done.set_index("claim")[list(CARRIED)[1:]].rename(columns=CARRIED)
    return ClaimTables(_carry(gaps, by_claim), _carry(gaps_steps, by_claim), _carry(step0, by_claim), claims)


def _untested_primary(primary: Primary, site: str, cand: pd.DataFrame) -> pd.DataFrame:
    """The primary endpoint's row when the study has no such difference (an optimizer not trained, one width set,
    a step not kept): named, not tested, and why."""
    if len(cand) and (cand["family"] == PRIMARY).any():
        return pd.DataFrame()
    when = "trained" if primary.step is None else f"step {primary.step}"
    row = {"claim": f"{primary.comparison}: {primary.bucket} β_{display_name(primary.metric)} {site}, {when}",
           "family": PRIMARY, "diff": math.nan, "diff_ci95_low": math.nan, "diff_ci95_high": math.nan,
           "lo_adj": math.nan, "hi_adj": math.nan, "interval": "welch", "n_seeds": 0, "n_seeds_ref": 0,
           "widths": "", "verdict": "not tested",
           "method": "not in this study: no fitted β of both optimizers in the main sweep at this set and step"}
    return pd.DataFrame([row])


def _carry(table: pd.DataFrame, by_claim: pd.DataFrame) -> pd.DataFrame:
    """A gap table with each row's claim (name, family, adjusted interval, method, verdict); '' / NaN where a row
    states no claim (another site, step 0)."""
    if table.empty:
        return table
    name = gap_claim if "comparison" in table else step0_claim
    names = table.apply(name, axis=1)
    out = table.assign(claim=names.where(names.isin(by_claim.index), ""))
    return out.join(by_claim, on="claim")


def seeds_with_step0(seeds: pd.DataFrame, step0: pd.DataFrame) -> pd.DataFrame:
    """betas_seeds.csv with each trained row's trained − step-0 contrast beside it (columns step0_*)."""
    if seeds.empty or step0.empty:
        return seeds
    keys = ["seed_group", "bucket", "site", "metric"]
    cols = {"diff": "step0_diff", "diff_ci95_low": "step0_low", "diff_ci95_high": "step0_high", "p": "step0_p",
            **{v: f"step0_{v}" for v in CARRIED.values()}}
    side = step0.set_index(keys)[list(cols)].rename(columns=cols).assign(phase="trained")
    return seeds.join(side.set_index("phase", append=True), on=[*keys, "phase"])
