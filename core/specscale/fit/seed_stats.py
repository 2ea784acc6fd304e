"""Seeds and training time: β at every kept checkpoint step, means over seeds with their intervals, and the
difference between each optimizer and the reference optimizer with an across-seed interval (docs/science.md §6.4).

Tables (written by the fit stage, results/):
  betas_steps.csv        per group × step × bucket × site × metric: β over widths of the layer medians at that step
  betas_steps_seeds.csv  the same per seed group (groups equal but for the seed): mean β and a t-interval over seeds
  beta_gaps.csv          per arm × optimizer × phase × bucket × site × metric: β(optimizer) − β(reference), the
                         mean over seeds of each side, a 95% interval over seeds (fit.gap_interval) and its p-value,
                         each seed's β (seed_betas, seed_betas_ref) and the widths both sides were fitted on
  beta_gaps_steps.csv    the same at every kept step

Both sides of a difference are fitted on the widths they share (specscale.fit.shared_widths): when a group of either
side lacks a width the others have, every group of the comparison is refitted without it.

A seed group's "context" is the arm that asked for it and the arm's varied values: two optimizers are compared only
inside one context (an arm with its own lrs is compared within itself, never against the main sweep's runs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd
from specscale.fit.laws import fit_points, seed_mean_interval
from specscale.fit.shared_widths import MIN_SHARED, Widths, common_widths, group_widths, refit, widths_label
from specscale.measure.registry import FIT_METRICS
from specscale.stats.intervals import gap_interval

STEP_KEYS = ["group", "step", "bucket", "site", "metric"]  # one β per combination in betas_steps.csv
PASSTHROUGH = ("config", "varied", "arms", "tokens_per_step")  # labels shared by a seed group's groups


def layer_medians_per_step(long: pd.DataFrame) -> pd.DataFrame:
    """Per run, step, bucket, site and metric (soft and hard rank): the median over layers of that step's rank.
    long: one row per (run, step, layer, site, bucket, metric) with `value` (fit_study.long_ranks)."""
    sel = long[long["metric"].isin(FIT_METRICS)]
    return sel.groupby(["run", "step", "bucket", "site", "metric"])["value"].median().reset_index()


def step_points(long: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The points of the per-step fits: layer_medians_per_step with each run's group, ffn_dim and width_mult."""
    info = runs.set_index("run")
    per_step = layer_medians_per_step(long).join(info[["group", "ffn_dim", "width_mult"]], on="run")
    return per_step.sort_values("ffn_dim", kind="stable")  # same OLS summation order every time


def rank_points(ranks: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The points of the trained and step-0 fits (ranks.csv's per-run medians of the metrics with a β), with each
    run's group, ffn_dim and width_mult: what a comparison refits on shared widths."""
    info = runs.drop_duplicates("run").set_index("run")[["group", "ffn_dim", "width_mult"]]
    sel = ranks[ranks["metric"].isin(FIT_METRICS)][["run", "phase", "bucket", "site", "metric", "median"]]
    return sel.join(info, on="run").sort_values("ffn_dim", kind="stable")


def betas_per_step(long: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """β (OLS of ln rank on ln D over widths) at every kept step of every group, from the layer medians of that step.
    A step enters a group's fit only with the widths that logged it; n_widths says how many. Columns: STEP_KEYS, β and
    its OLS interval, r2, n_widths, fitted, tokens (step × tokens per optimizer step) and the group's labels."""
    if long.empty or runs.empty:
        return pd.DataFrame()
    per_step = step_points(long, runs)
    betas = fit_points(per_step, STEP_KEYS, width_col="ffn_dim", value_col="value")
    labels = runs.drop_duplicates("group").set_index("group")[
        ["group_label", "config", "optimizer", "seed", "seed_group", "arms", "varied", "steps", "tokens_per_step"]]
    betas = betas.join(labels, on="group")
    betas["tokens"] = betas["step"] * betas["tokens_per_step"]
    return betas.drop(columns=["intercept", "se", "reason"])


def seed_means(betas: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean β over the seeds of each seed group with a t-interval (n − 1 dof), per `keys` (which include
    seed_group); fitted soft and hard β only. Groups with one seed get the mean and no interval (n_seeds = 1)."""
    fitted = betas[betas["fitted"].astype(bool) & betas["metric"].isin(FIT_METRICS)]
    rows = []
    for key, part in fitted.groupby(keys, sort=True):
        s = seed_mean_interval(part["beta"].to_numpy())
        rows.append({**dict(zip(keys, key if isinstance(key, tuple) else (key,))),
                     "group_label": str(part["group_label"].iloc[0]), "optimizer": part["optimizer"].iloc[0],
                     **{col: part[col].iloc[0] for col in PASSTHROUGH if col in part},
                     "n_seeds": s.n, "beta_mean": s.mean, "beta_sd": s.sd, "seed_ci95_low": s.ci_low,
                     "seed_ci95_high": s.ci_high})
    return pd.DataFrame(rows)


def seed_values(text: str) -> dict[int, float]:
    """A `seed_betas` cell ('{"0": 1.02, "1": 0.95}') back as seed → β."""
    return {int(k): float(v) for k, v in json.loads(text).items()}


def seed_json(values: dict[int, float]) -> str:
    """seed → β as the text of a `seed_betas` cell (seed_values reads it back)."""
    return json.dumps({str(int(k)): float(v) for k, v in sorted(values.items())})


def contexts(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (arm, setting, optimizer, seed group): the seed groups each arm compares. setting: the arm's
    varied values as JSON ('{}' for none)."""
    rows = []
    for r in runs.drop_duplicates("group").itertuples():
        for arm in str(r.arms).split(","):
            rows.append({"arm": arm, "setting": r.varied, "optimizer": r.optimizer, "seed_group": r.seed_group,
                         "config": getattr(r, "config", r.optimizer)})
    return pd.DataFrame(rows, columns=["arm", "setting", "optimizer", "seed_group", "config"]).drop_duplicates()


def _fitted(betas: pd.DataFrame) -> pd.DataFrame:
    return betas[betas["fitted"].astype(bool) & betas["metric"].isin(FIT_METRICS)]


@dataclass(frozen=True)
class SharedFits:
    """What a comparison refits on its shared widths: the groups' own widths, the per-run points (None: no refit)
    and their value column, and each group's seed and seed group."""

    widths: dict[str, Widths]
    points: pd.DataFrame | None
    value_col: str
    seeds: pd.DataFrame  # index group: seed, seed_group

    def tables(self, tables: dict[str, pd.DataFrame], seed_groups: tuple[str, str], keys: list[str]
               ) -> tuple[list[pd.DataFrame], str]:
        """Both seed groups' fitted β on the widths all their groups share, and those widths as text. Unchanged
        where every group has exactly the shared widths; [] when fewer than MIN_SHARED are shared; without points,
        the fits as they are and each side's width sets ('1,2,4/1,2,4,8 vs 1,2,4,8')."""
        members = [list(self.seeds.index[self.seeds["seed_group"] == sg]) for sg in seed_groups]
        shared = common_widths([g for m in members for g in m], self.widths)
        own = [tables[sg] for sg in seed_groups]
        if all(self.widths.get(g) == shared for m in members for g in m):
            return own, widths_label(shared)
        if self.points is None:
            sides = ["/".join(sorted({widths_label(self.widths.get(g, frozenset())) for g in m})) for m in members]
            return own, " vs ".join(sides)  # '1,2,4/1,2,4,8 vs 1,2,4,8': a seed of the first side lacks k = 8
        if len(shared) < MIN_SHARED:
            return [], widths_label(shared)
        fits = refit(self.points, [g for m in members for g in m], shared, keys, self.value_col)
        fits = _fitted(fits.join(self.seeds, on="group"))
        return [fits[fits["seed_group"] == sg] for sg in seed_groups], widths_label(shared)


def optimizer_gaps(betas: pd.DataFrame, runs: pd.DataFrame, reference: str, keys: list[str],
                   kind: str = "welch", points: pd.DataFrame | None = None, value_col: str = "median") -> pd.DataFrame:
    """Per arm and setting that trained `reference`, per other optimizer of that arm and per `keys` (e.g. phase,
    bucket, site, metric; or step, bucket, site, metric): β(optimizer) − β(reference) over seeds (`gap_interval`).
    betas: one row per group and keys, with seed_group and seed (fitted soft and hard β are used). points: the
    per-run values the β were fitted on (group, width_mult, ffn_dim, keys, `value_col`), for refitting both sides on
    the widths they share (SharedFits)."""
    by_seed_group = {sg: part for sg, part in _fitted(betas).groupby("seed_group")}
    shared = SharedFits(group_widths(runs), points, value_col,
                        runs.drop_duplicates("group").set_index("group")[["seed", "seed_group"]])
    rows = []
    for (arm, setting), ctx in contexts(runs).groupby(["arm", "setting"], sort=True):
        refs = ctx[ctx["optimizer"] == reference]
        if refs.empty or refs["seed_group"].iloc[0] not in by_seed_group:
            continue
        ref_group, ref_config = refs["seed_group"].iloc[0], refs["config"].iloc[0]
        # optimizers of one context share batch and sequence length (else they would differ in the setting)
        ref_any = by_seed_group[ref_group]
        extra = {"tokens_per_step": int(ref_any["tokens_per_step"].iloc[0])} if "tokens_per_step" in ref_any else {}
        for other in ctx[ctx["optimizer"] != reference].itertuples():
            if other.seed_group not in by_seed_group:
                continue
            sides, widths = shared.tables(by_seed_group, (other.seed_group, ref_group), keys)
            if not sides:
                continue
            table, ref_table = sides
            ref_cells = {k: dict(zip(p["seed"], p["beta"])) for k, p in ref_table.groupby(keys)}
            for key, part in table.groupby(keys):
                ref = ref_cells.get(key)
                if ref is None:
                    continue
                mine = dict(zip(part["seed"], part["beta"]))
                g = gap_interval(mine, ref, kind)
                key = key if isinstance(key, tuple) else (key,)
                rows.append({"arm": arm, "setting": _setting_label(setting), "optimizer": other.optimizer,
                             "reference": reference, "comparison": f"{other.config} − {ref_config}",
                             **dict(zip(keys, key)), "beta": g.mean, "beta_ref": g.ref_mean,
                             "diff": g.diff, "diff_ci95_low": g.low, "diff_ci95_high": g.high, "p": g.p,
                             "n_seeds": g.n, "n_seeds_ref": g.n_ref, "interval": kind, "widths": widths,
                             "seed_betas": seed_json(mine), "seed_betas_ref": seed_json(ref), **extra})
    return pd.DataFrame(rows)


def _setting_label(varied_json: str) -> str:
    """'{"model.n_heads": 2}' → 'n_heads=2'; '{}' → ''."""
    varied = json.loads(varied_json) if isinstance(varied_json, str) and varied_json else {}
    return " ".join(f"{k.split('.')[-1]}={v}" for k, v in sorted(varied.items()))
