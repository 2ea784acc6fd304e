"""compare stage (aggregate): comparisons across groups of runs, from the fit stage's tables and per-step spectra.

Outputs (results/compare/, every file always written, empty when its family is not in the sweep):
  groups.csv                one row per group: optimizer (with arm overrides), seed, varied, family, display label
  arch_vs_optimizer.csv     |β_ablated − β_base| vs the optimizer gain, one row per comparison (+ .json: k of n,
                            exceptions, missing, skipped); optimizer_gain.csv: the gains
  matched_loss_ppl.csv      groups differing only in train.steps: perplexity per width beside the base group
  matched_loss_beta.csv     ... and their β side by side
  beta_over_training.csv    β fitted at every kept checkpoint step
  ppl_by_width.csv          validation perplexity per run (+ ppl_table.csv: group × width, × = diverged)
  postln.csv                partial PostLN: optimizer × fraction, perplexity or ×
  renyi.csv                 pre rank, post rank and ρ_α per run, bucket and α
  eigen_decay.csv           normalised eigenvalue decay, post site, GLOBAL, widest width, last step and step 0
  paper_side_by_side.csv    our cells beside the published ones (science.md §8)
  rank_width.json, beta_intervals.json   data of the `dvc plots` definitions in dvc.yaml
  summary.json              the counts below plus the preset and the paper note (text), for the report
results/compare.json: the headline counts (numbers only), as DVC metrics.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from specscale import compare as cmp
from specscale.cache import RunStore
from specscale.plan import StudyPlan
from specscale.report_data import beta_interval_data, first_seed, rank_width_data
from specscale.report_paper import load_published, our_cells, side_by_side


def format_extra(diff: dict[str, Any]) -> str:
    """An arm's optimizer overrides as text; lr, embed_lr and head_lr all set to one value read 'lr=<v>'."""
    if not diff:
        return ""
    lrs = {k: v for k, v in diff.items() if k.endswith("lr")}
    if lrs and len(set(map(str, lrs.values()))) == 1:
        rest = {k: v for k, v in diff.items() if k not in lrs}
        diff = {"lr": next(iter(lrs.values())), **rest}
    return " ".join(f"{k}={cmp.fmt_value(v)}" for k, v in diff.items())


def optim_extras(plan: StudyPlan) -> dict[str, str]:
    """Training run key → the hyperparameters its arm overrides relative to the study's own (e.g. 'lr=0.0001')."""
    from specscale.sweep import resolve_hparams

    out, defaults = {}, {}
    for run in plan.train:
        name = run.point.optimizer
        if name not in defaults:
            defaults[name] = resolve_hparams(plan.study, name, None, Path("params.yaml"))
        hp = run.spec["optim"]["hparams"]
        out[run.key] = format_extra({k: v for k, v in hp.items() if defaults[name].get(k) != v})
    return out


def read_csv(path: Path) -> pd.DataFrame:
    """A results table, or an empty frame when the file is absent or has no columns (nothing of that family)."""
    try:
        return pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame()


def read_step_ranks(runs: pd.DataFrame, groups: pd.DataFrame, spectra_root: Path) -> pd.DataFrame:
    """Layer medians per step of soft and hard rank, for every measured run of a width-sweep group."""
    sweep = set(groups.loc[groups["n_widths"] >= cmp.MIN_WIDTHS, "group"])
    parts = []
    for r in runs[runs["measured"].astype(bool) & runs["group"].isin(sweep)].itertuples():
        path = spectra_root / r.spectra_key / "ranks.csv"
        if not path.exists():
            continue
        df = pd.read_csv(path).melt(id_vars=["step", "layer", "site", "bucket"], value_vars=list(cmp.FIT_METRICS),
                                    var_name="metric", value_name="value")
        parts.append(df.assign(run=r.run))
    return cmp.layer_medians_per_step(pd.concat(parts, ignore_index=True)) if parts else pd.DataFrame()


def eigen_decay(runs: pd.DataFrame, groups: pd.DataFrame, spectra_root: Path, site: str = "post",
                bucket: str = "GLOBAL") -> pd.DataFrame:
    """Per base optimizer (lowest seed) at its widest measured width: median-over-layers decay of p_i = λ_i/Σλ at
    the last step and at step 0."""
    import xarray as xr

    rows = []
    for g in first_seed(groups[groups["family"] == "base"]).itertuples():
        mine = runs[(runs["group"] == g.group) & runs["measured"].astype(bool)]
        if mine.empty:
            continue
        run = mine.loc[mine["width_mult"].idxmax()]
        path = spectra_root / run["spectra_key"] / "spectra.zarr"
        if not path.exists():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = xr.open_zarr(str(path), consolidated=False)
        if site not in ds["site"].values or bucket not in ds["bucket"].values:
            continue
        eig = ds["eigenvalues"].sel(site=site, bucket=bucket)
        steps = [int(s) for s in ds["step"].values]
        for phase, step in (("trained", max(steps)), ("step 0", min(steps))):
            idx, p = cmp.decay_curve(eig.sel(step=step).transpose("layer", "mode").values)
            rows += [{"display": g.display, "ffn_dim": int(run["ffn_dim"]), "phase": phase, "step": step,
                      "mode": int(i), "p": float(v)} for i, v in zip(idx, p)]
    return pd.DataFrame(rows)


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON records without NaN (DVC and Vega choke on it)."""
    return [{k: v for k, v in row.items() if not (isinstance(v, float) and not math.isfinite(v))}
            for row in df.to_dict("records")]


def write_compare(results: Path, spectra_root: Path, preset: str, reference: str = "adamw",
                  optim_extra: dict[str, str] | None = None, threshold: float = cmp.DIVERGED_PPL) -> dict[str, Any]:
    """Every comparison table into results/compare/; returns the summary (also written as results/compare.json)."""
    out = results / "compare"
    out.mkdir(parents=True, exist_ok=True)
    runs, ranks = read_csv(results / "runs.csv"), read_csv(results / "ranks.csv")
    betas, seeds = read_csv(results / "betas.csv"), read_csv(results / "betas_seeds.csv")
    extras = optim_extra or {}
    runs["optim_extra"] = [extras.get(key, "") for key in runs["run"]]
    groups = cmp.group_table(runs)
    tables: dict[str, pd.DataFrame] = {"groups": groups.drop(columns="varied_d")}
    arch = cmp.compare_arch_vs_optimizer(betas, groups, reference)
    tables["arch_vs_optimizer"], tables["optimizer_gain"] = arch.table, arch.gains
    tables["matched_loss_ppl"], tables["matched_loss_beta"] = cmp.matched_loss(runs, betas, groups)
    tables["beta_over_training"] = cmp.beta_over_training(read_step_ranks(runs, groups, spectra_root), runs, groups)
    ppl = cmp.ppl_by_width(runs, groups, threshold)
    tables["ppl_by_width"], tables["ppl_table"] = ppl, cmp.ppl_wide(ppl)
    tables["postln"] = cmp.postln_table(runs, groups, threshold)
    tables["renyi"] = cmp.renyi_table(ranks, runs, groups)
    tables["eigen_decay"] = eigen_decay(runs, groups, spectra_root)
    paper, paper_note = side_by_side(load_published(), our_cells(betas, runs, groups, arch), preset)
    tables["paper_side_by_side"] = paper
    for name, df in tables.items():
        df.to_csv(out / f"{name}.csv", index=False)
    arch_summary = {"sentence": arch.sentence(), "k": arch.k, "n": arch.n, "reference": reference,
                    "counted_buckets": list(cmp.COUNTED_BUCKETS),
                    "exceptions": _records(arch.exceptions), "missing": _records(arch.missing),
                    "skipped": arch.skipped}
    (out / "arch_vs_optimizer.json").write_text(json.dumps(arch_summary, indent=2))
    (out / "rank_width.json").write_text(json.dumps(_records(rank_width_data(ranks, betas, runs, groups))))
    beta_plot = beta_interval_data(betas, seeds, groups)
    if not beta_plot.empty:
        beta_plot["series"] = beta_plot["metric"] + " · " + beta_plot["series"]
        beta_plot["row"] = beta_plot["display"] + " · " + beta_plot["bucket"]
    (out / "beta_intervals.json").write_text(json.dumps(_records(beta_plot)))
    # Numbers only in the DVC metrics file (text would make `dvc metrics show` unreadable); the text beside it.
    metrics = {"arch_vs_optimizer": {"k": arch.k, "n": arch.n, "missing": len(arch.missing)},
               "groups": int(len(groups)), "runs": int(len(runs)),
               "diverged_runs": int(ppl["diverged"].sum()) if len(ppl) else 0}
    (results / "compare.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    summary = {**metrics, "preset": preset, "paper_note": paper_note, "arch_sentence": arch.sentence()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary


def main(plan: StudyPlan, store: RunStore) -> int:
    results = store.project_root / "results"
    if not (results / "runs.csv").exists() or not (results / "betas.csv").exists():
        print("[compare] results/runs.csv or betas.csv missing: run `dvc repro fit` first")
        return 1
    summary = write_compare(results, store.stage_dir("spectra"), str(plan.study.preset),
                            str(plan.study.fit.reference_optimizer), optim_extras(plan),
                            float(plan.study.train.diverged_ppl))
    print(f"[compare] {summary['groups']} groups, {summary['runs']} runs; architecture vs optimizer: "
          f"{summary['arch_vs_optimizer']['k']} of {summary['arch_vs_optimizer']['n']} "
          f"({summary['arch_vs_optimizer']['missing']} missing)")
    print(f"[compare] paper: {summary['paper_note']}")
    return 0
