"""The contrasts behind two kinds of sentence, computed so that a reading states them only with their test:

* "carried by the TAIL bucket alone" compares two optimizer gaps: (β_TAIL − β_GLOBAL) of one optimizer minus the
  same of the reference, with an interval over seeds. One gap resolved and the other not is no evidence that they
  differ (a difference in significance is not a significant difference);
* "β stays at its step-0 value" (or "climbs above it") is trained β − step-0 β of one configuration, per seed (the
  same run at both phases), with a paired interval over seeds.

β_TAIL − β_GLOBAL of a group is the OLS slope of ln(rank_TAIL / rank_GLOBAL) on ln D (OLS is linear in y), so a
refit on shared widths divides the two sets' ranks run by run (`bucket_ratio_points`).
"""

from __future__ import annotations

import pandas as pd

from specscale.fit.seed_stats import seed_json
from specscale.fit.shared_widths import group_widths, widths_label
from specscale.measure.registry import FIT_METRICS
from specscale.stats.intervals import gap_interval

CONTRAST = ("TAIL", "GLOBAL")  # the rare-token set against the pooled one
CONTRAST_BUCKET = "TAIL-GLOBAL"  # the `bucket` of contrast rows in beta_gaps.csv (as TII's 'TAIL-HEAD' in ranks.csv)


def bucket_contrast_betas(betas: pd.DataFrame, first: str = CONTRAST[0], second: str = CONTRAST[1]) -> pd.DataFrame:
    """β_first − β_second per group, phase, site and metric, as β rows of bucket 'first-second' (fitted when both
    are); the other columns are the first set's."""
    keys = ["group", "phase", "site", "metric"]
    one = betas[betas["bucket"] == first].set_index(keys)
    two = betas[betas["bucket"] == second].set_index(keys)[["beta", "fitted"]].add_suffix("_second")
    both = one.join(two, how="inner")
    both["beta"] = both["beta"] - both["beta_second"]
    both["fitted"] = both["fitted"].astype(bool) & both["fitted_second"].astype(bool)
    out = both.drop(columns=["beta_second", "fitted_second"]).reset_index()
    return out.assign(bucket=f"{first}-{second}")


def bucket_ratio_points(points: pd.DataFrame, value_col: str, first: str = CONTRAST[0],
                        second: str = CONTRAST[1]) -> pd.DataFrame:
    """Per run and the other keys: rank_first / rank_second, whose slope over widths is β_first − β_second.
    points: one row per run, bucket and keys, with group, width_mult, ffn_dim and `value_col`."""
    keys = [c for c in points.columns if c not in ("bucket", value_col)]
    one = points[points["bucket"] == first].set_index(keys)[value_col]
    two = points[points["bucket"] == second].set_index(keys)[value_col]
    ratio = (one / two).dropna().rename(value_col).reset_index()
    return ratio.assign(bucket=f"{first}-{second}")


def step0_contrasts(betas: pd.DataFrame, runs: pd.DataFrame, site: str) -> pd.DataFrame:
    """Trained − step-0 β per seed group (≥ 2 seeds with both), bucket and metric at `site`: the paired t-interval
    over seeds (gap_interval, 'paired'). Columns as beta_gaps.csv's (seed_betas: trained, seed_betas_ref: step 0)."""
    fitted = betas[betas["fitted"].astype(bool) & betas["metric"].isin(FIT_METRICS) & (betas["site"] == site)]
    info = runs.drop_duplicates("seed_group").set_index("seed_group")
    widths = group_widths(runs)
    rows = []
    for (seed_group, bucket, metric), part in fitted.groupby(["seed_group", "bucket", "metric"], sort=True):
        trained = part[part["phase"] == "trained"]
        step0 = part[part["phase"] == "step0"]
        mine, ref = dict(zip(trained["seed"], trained["beta"])), dict(zip(step0["seed"], step0["beta"]))
        if len(set(mine) & set(ref)) < 2:
            continue  # one seed: no interval, and betas_seeds.csv has no row to carry it
        g = gap_interval(mine, ref, "paired")
        sets = sorted({widths_label(widths.get(grp, frozenset())) for grp in trained["group"]})
        rows.append({"seed_group": seed_group, "config": info.loc[seed_group, "config"], "bucket": bucket,
                     "site": site, "metric": metric, "beta": g.mean, "beta_ref": g.ref_mean, "diff": g.diff,
                     "diff_ci95_low": g.low, "diff_ci95_high": g.high, "p": g.p, "n_seeds": g.n,
                     "n_seeds_ref": g.n_ref, "interval": "paired", "widths": " / ".join(sets),
                     "seed_betas": seed_json(mine), "seed_betas_ref": seed_json(ref)})
    return pd.DataFrame(rows)
