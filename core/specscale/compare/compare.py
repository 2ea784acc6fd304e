"""The compare stage's outputs: every file of results/compare/ and results/compare.json, built from the fit stage's
tables (results/*.csv) and the per-step spectra. The comparisons themselves are in compare.py (pure pandas); this
module reads their inputs, lists the tables (COMPARE_TABLES, one entry each) and writes them.

Outputs (results/compare/, every file always written, empty when its family is not in the sweep):
  groups.csv                one row per group: optimizer (with arm overrides), seed, varied, family, display label
  arch_vs_optimizer.csv     |β_ablated − β_base| vs the optimizer gain, one row per comparison, every β on the widths
                            the ablation and its base share (+ .json: k of n, exceptions, missing, skipped);
                            optimizer_gain.csv: the gains on each base group's own widths
  arch_claims.csv           the same over seeds, in the claims format: architecture shift, optimizer gain and
                            gain − |shift| per cell, each with its interval, Holm over its family, and verdict
  matched_loss_ppl.csv      groups differing only in train.steps: perplexity per width beside the base group
  matched_loss_beta.csv     ... and their β side by side, on the widths they share
  matched_claims.csv        the same over seeds, in the claims format: longer − base and every other optimizer −
                            the longer-trained group, each with its interval, Holm over its family, and verdict
  ppl_by_width.csv          validation perplexity per run (+ ppl_table.csv: group × width, × = diverged)
  postln.csv                partial PostLN: optimizer × fraction, perplexity or ×
  renyi.csv                 pre rank, post rank and ρ_α per run, bucket and α
  eigen_decay.csv           normalised eigenvalue decay, post site, GLOBAL, widest width, last step and step 0
  paper_side_by_side.csv    our cells beside the published ones (docs/science.md §8)
  rank_width.json, beta_intervals.json   data of the `dvc plots` definitions in dvc.yaml
  summary.json              the counts below plus the preset and the paper note (text), for the report
results/compare.json: the headline counts (numbers only), as DVC metrics.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import xarray as xr

from specscale.compare import comparisons as cmp
from specscale.compare.arch_claims import arch_claims
from specscale.compare.matched_claims import matched_claims
from specscale.tokens.sets import POOLED
from specscale.compare.figure_data import beta_interval_data, first_seed, rank_width_data
from specscale.compare.paper import load_published, our_cells, side_by_side


def read_csv(path: Path, dtype: Any = None) -> pd.DataFrame:
    """A results table, or an empty frame when the file is absent or has no columns (nothing of that family)."""
    try:
        return pd.read_csv(path, dtype=dtype)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame()


def eigen_decay(runs: pd.DataFrame, groups: pd.DataFrame, spectra_root: Path, site: str = "post",
                bucket: str = POOLED) -> pd.DataFrame:
    """Per base optimizer (lowest seed) at its widest measured width: median-over-layers decay of p_i = λ_i/Σλ at
    the last step and at step 0."""
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


@dataclass
class CompareInputs:
    """The fit stage's tables and the study's settings; what several tables share is computed once, on first use."""

    results: Path
    spectra_root: Path
    preset: str
    reference: str
    threshold: float
    optim_extra: dict[str, str]

    @cached_property
    def runs(self) -> pd.DataFrame:
        runs = read_csv(self.results / "runs.csv")
        runs["optim_extra"] = [self.optim_extra.get(key, "") for key in runs["run"]]
        return runs

    @cached_property
    def ranks(self) -> pd.DataFrame:
        return read_csv(self.results / "ranks.csv")

    @cached_property
    def betas(self) -> pd.DataFrame:
        return read_csv(self.results / "betas.csv")

    @cached_property
    def seeds(self) -> pd.DataFrame:
        return read_csv(self.results / "betas_seeds.csv")

    @cached_property
    def shared(self) -> pd.DataFrame:
        """β refitted on the widths a group shares with groups of other widths (the fit stage's betas_shared.csv)."""
        return read_csv(self.results / "betas_shared.csv")

    @cached_property
    def groups(self) -> pd.DataFrame:
        return cmp.group_table(self.runs)

    @cached_property
    def arch(self) -> cmp.ArchComparison:
        return cmp.compare_arch_vs_optimizer(self.betas, self.groups, self.reference, shared=self.shared)

    @cached_property
    def matched(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        return cmp.matched_loss(self.runs, self.betas, self.groups, self.shared)

    @cached_property
    def ppl(self) -> pd.DataFrame:
        return cmp.ppl_by_width(self.runs, self.groups, self.threshold)

    @cached_property
    def paper(self) -> tuple[pd.DataFrame, str]:
        """(side-by-side table, note on whether the presets match)."""
        ours = our_cells(self.betas, self.runs, self.groups, self.arch, self.threshold)
        return side_by_side(load_published(), ours, self.preset)


@dataclass(frozen=True)
class CompareTable:
    """One table of results/compare/<name>.csv: how the compare stage builds it, how readers read it back."""

    name: str
    build: Callable[[CompareInputs], pd.DataFrame]
    read_as: Any = None  # pandas dtype for reading: text cells ("54.0" or "×") must not come back as numbers


# Every table the compare stage writes, in one list: a new comparison is one entry here (its builder in compare.py).
COMPARE_TABLES: tuple[CompareTable, ...] = (
    CompareTable("groups", lambda c: c.groups.drop(columns="varied_d")),
    CompareTable("arch_vs_optimizer", lambda c: c.arch.table),
    CompareTable("optimizer_gain", lambda c: c.arch.gains),
    CompareTable("arch_claims", lambda c: arch_claims(c.arch.table, c.reference)),
    CompareTable("matched_claims", lambda c: matched_claims(c.betas, c.groups, c.shared)),
    CompareTable("matched_loss_ppl", lambda c: c.matched[0]),
    CompareTable("matched_loss_beta", lambda c: c.matched[1]),
    CompareTable("ppl_by_width", lambda c: c.ppl, read_as={"cell": str}),
    CompareTable("ppl_table", lambda c: cmp.ppl_wide(c.ppl), read_as=str),
    CompareTable("postln", lambda c: cmp.postln_table(c.runs, c.groups, c.threshold), read_as=str),
    CompareTable("renyi", lambda c: cmp.renyi_table(c.ranks, c.runs, c.groups)),
    CompareTable("eigen_decay", lambda c: eigen_decay(c.runs, c.groups, c.spectra_root)),
    CompareTable("paper_side_by_side", lambda c: c.paper[0]),
)


def read_compare_tables(results: Path) -> dict[str, pd.DataFrame]:
    """Every table of results/compare/ by name (empty frames for absent files), as the report reads them."""
    return {t.name: read_csv(results / "compare" / f"{t.name}.csv", t.read_as) for t in COMPARE_TABLES}


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON records without NaN (DVC and Vega choke on it)."""
    return [{k: v for k, v in row.items() if not (isinstance(v, float) and not math.isfinite(v))}
            for row in df.to_dict("records")]


def write_compare(results: Path, spectra_root: Path, preset: str, reference: str = "adamw",
                  optim_extra: dict[str, str] | None = None, threshold: float = cmp.DIVERGED_PPL) -> dict[str, Any]:
    """Every comparison table into results/compare/; returns the summary (also written as results/compare.json)."""
    out = results / "compare"
    out.mkdir(parents=True, exist_ok=True)
    c = CompareInputs(results, spectra_root, preset, reference, threshold, optim_extra or {})
    for table in COMPARE_TABLES:
        table.build(c).to_csv(out / f"{table.name}.csv", index=False)
    arch = c.arch
    arch_summary = {"sentence": arch.sentence(), "k": arch.k, "n": arch.n, "reference": reference,
                    "counted_buckets": list(cmp.COUNTED_BUCKETS),
                    "exceptions": _records(arch.exceptions), "missing": _records(arch.missing),
                    "skipped": arch.skipped}
    (out / "arch_vs_optimizer.json").write_text(json.dumps(arch_summary, indent=2))
    (out / "rank_width.json").write_text(json.dumps(_records(rank_width_data(c.ranks, c.betas, c.runs, c.groups))))
    beta_plot = beta_interval_data(c.betas, c.seeds, c.groups)
    if not beta_plot.empty:
        beta_plot["series"] = beta_plot["metric"] + " · " + beta_plot["series"]
        beta_plot["row"] = beta_plot["display"] + " · " + beta_plot["bucket"]
    (out / "beta_intervals.json").write_text(json.dumps(_records(beta_plot)))
    # Numbers only in the DVC metrics file (text would make `dvc metrics show` unreadable); the text beside it.
    metrics = {"arch_vs_optimizer": {"k": arch.k, "n": arch.n, "missing": len(arch.missing)},
               "groups": int(len(c.groups)), "runs": int(len(c.runs)),
               "diverged_runs": int(c.ppl["diverged"].sum()) if len(c.ppl) else 0}
    (results / "compare.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    summary = {**metrics, "preset": preset, "paper_note": c.paper[1], "arch_sentence": arch.sentence()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary
