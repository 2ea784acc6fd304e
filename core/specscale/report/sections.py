"""The report, section by section: SECTIONS is the one list the report is built from. Each entry says its title, the
figures it shows (each with its title, its builder and the text shown when its data are absent), the builder of its
text and tables, and the text shown when its family is not in the study. report.py renders the list to index.html
and summary.md (through report_render.py), so the two never disagree.

Adding a comparison to the report: one Section entry below and its body builder (and a chart in plots.py if it draws
a new kind of figure); its table comes from results/compare/<name>.csv (compare_outputs.COMPARE_TABLES).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import altair as alt
import pandas as pd
from specscale.report import plots
from specscale.report.readings import primitives as rd
from specscale.report.readings import comparisons as rc
from specscale.report.readings import fits as rf
from specscale.report import seeds as rs
from specscale.report import tables as rt
from specscale.tokens.sets import POOLED
from specscale.compare.comparisons import COUNTED_BUCKETS, DIVERGED_PPL
from specscale.compare.figure_data import (
    beta_interval_data,
    beta_training_data,
    beta_training_seed_points,
    claims_forest_data,
    delta_data,
    gap_training_data,
    layer_beta_data,
    loss_curve_data,
    rank_width_data,
)
from specscale.compare.arch_claims import MARGIN
from specscale.compare.matched_claims import MATCHED
from specscale.stats.intervals import CLAIM_COLUMNS
from specscale.study.plan import StudyPlan
from specscale.study.spec import to_container


@dataclass
class ReportInputs:
    """What a section reads: tables by name (results/*.csv and results/compare/*.csv), the compare stage's JSON
    summaries, the study description from the plan (`study_context`) and the README's choices."""

    tables: dict[str, pd.DataFrame]
    arch: dict[str, Any] = field(default_factory=dict)  # results/compare/arch_vs_optimizer.json
    summary: dict[str, Any] = field(default_factory=dict)  # results/compare/summary.json
    context: dict[str, Any] = field(default_factory=dict)
    choices: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.tables[name]

    @property
    def have_fits(self) -> bool:
        return not (self["groups"].empty or self["betas"].empty)


@dataclass
class Body:
    """A section's text and tables. absent: the section's family is not in the study (its `missing` text is shown
    after the paragraphs)."""

    paragraphs: list[str] = field(default_factory=list)  # inline Markdown (**bold**, `code`) allowed
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)  # (caption, table)
    items: list[str] = field(default_factory=list)  # a bullet list at the end
    absent: bool = False


@dataclass(frozen=True)
class Figure:
    name: str  # file stem: report/figures/<name>.png and .vl.json
    title: str
    build: Callable[[ReportInputs, str], alt.TopLevelMixin | None]  # (inputs, title) → chart, None without data
    missing: str  # shown as "not available: <missing>" when build returns None


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    body: Callable[[ReportInputs], Body]
    missing: str  # shown when the body says its family is absent
    figures: tuple[Figure, ...] = ()


# Choices this report (and the compare stage) make where the paper is silent; the pipeline's own come from README.
REPORT_CHOICES = [
    f"Optimizer vs architecture: counted over buckets {', '.join(COUNTED_BUCKETS)} × soft/hard (the paper's 30 = "
    f"5 optimizers × 3 buckets × 2 metrics); {POOLED} cells are listed but not counted. A tie counts as not "
    "exceeding; a cell not fitted or absent is missing and excluded from n.",
    "The base of an ablation is the group with the same optimizer, the same optimizer overrides (e.g. lr) and seed, "
    "and no varied field; the optimizer gain is computed per seed within the base architecture. Both sides of every "
    "comparison are fitted on the widths they share (the `widths` column says which).",
    "Curves (rank vs width, eigenvalue decay, Rényi) show the lowest seed; the β figure shows every seed and, with "
    "≥ 2 seeds, the between-seed interval.",
    "Eigenvalue decay: p_i = λ_i/Σλ per layer, median over layers, at the last kept step and at step 0.",
    "Rank-vs-width band: ±1 SD of the layer medians (floored at a tenth of the median on the log axis).",
    "Matched loss: the long-schedule group is also set beside the base optimizer whose geometric-mean perplexity "
    "over common widths is closest.",
    "Paper side by side: several seeds are averaged; the published PostLN width is unpublished, so PostLN rows join "
    "at every width we trained.",
]


def study_context(plan: StudyPlan) -> dict[str, Any]:
    """The study description the Study section shows (and the divergence threshold the PostLN caption names)."""
    study = plan.study
    model = to_container(study.model)
    probe = to_container(study.probe)
    return {
        "preset": str(study.preset),
        "reference_optimizer": str(study.fit.reference_optimizer),
        "model": {k: model[k] for k in ("d_model", "n_layers", "n_heads", "pos_encoding", "postln_fraction")},
        "sweep": to_container(study.sweep),
        "ablations": {name: {k: v for k, v in to_container(arm).items() if v not in (None, {}, [])}
                      for name, arm in study.ablations.items()},
        "probe": {k: probe[k] for k in ("tokens_per_bucket", "pooled_tokens", "alphas")},
        "train": {"steps": int(study.train.steps), "last_k": int(study.fit.last_k)},
        "diverged_ppl": float(study.train.diverged_ppl),
    }




def _interval(lo: float, hi: float) -> str:
    return f"[{lo:+.2f}, {hi:+.2f}]" if pd.notna(lo) and pd.notna(hi) else "—"


def claims_table(claims: pd.DataFrame) -> pd.DataFrame:
    """results/claims.csv as the report prints it: the primary endpoint first, then by family; numbers to 2 places
    (the CSV keeps full precision)."""
    c = claims.assign(_p=claims["family"] != "primary").sort_values(["_p", "family", "claim"], kind="stable")
    return pd.DataFrame({
        "claim": c["claim"], "family": c["family"],
        "estimate": [f"{x:+.2f}" if pd.notna(x) else "—" for x in c["estimate"]],
        "95% interval": [_interval(a, b) for a, b in zip(c["lo"], c["hi"])],
        "family-adjusted": [_interval(a, b) for a, b in zip(c["lo_adj"], c["hi_adj"])],
        "method": c["method"], "n": c["n"], "widths": c["widths"], "verdict": c["verdict"]})


def _results(r: ReportInputs) -> Body:
    claims = r["claims"]
    b = Body(absent=claims.empty or not set(CLAIM_COLUMNS) <= set(claims.columns))
    if b.absent:
        return b
    for row in claims[claims["family"] == "primary"].itertuples():
        b.paragraphs.append(f"**Primary endpoint** — {row.claim}: {row.estimate:+.2f} {_interval(row.lo, row.hi)} "
                            f"({row.method}; n {row.n}; widths {row.widths}): **{row.verdict}**.")
    counts = claims["verdict"].value_counts()
    tally = ", ".join(f"{int(counts[v])} {v}" for v in ("resolved", "not resolved", "not tested") if v in counts)
    b.paragraphs.append(
        f"{len(claims)} claims in `results/claims.csv` and `results/compare/*_claims.csv`: {tally}. A claim is "
        "resolved when its adjusted interval excludes 0: the primary endpoint at 95% (not adjusted), a claim over "
        "training inside a band simultaneous over the kept steps (Bonferroni), every other claim at the level Holm's "
        "step-down tests it at within its family (`method` names it). Unadjusted intervals are shown beside.")
    b.tables.append(("Every claim the report states, with its test (results/claims.csv, "
                     "results/compare/arch_claims.csv, results/compare/matched_claims.csv)", claims_table(claims)))
    return b


def _study(r: ReportInputs) -> Body:
    ctx, sweep = r.context, r.context.get("sweep", {})
    b = Body(absent=r["runs"].empty)
    b.paragraphs.append(f"**Preset** `{ctx.get('preset', '?')}`; reference optimizer "
                        f"`{ctx.get('reference_optimizer', 'adamw')}`.")
    for key, name in (("model", "Model"), ("train", "Training")):
        if ctx.get(key):
            b.paragraphs.append(f"**{name}** " + ", ".join(f"{k} {v}" for k, v in ctx[key].items()) + ".")
    if sweep:
        b.paragraphs.append(f"**Sweep** optimizers {', '.join(map(str, sweep.get('optimizers', [])))}; width "
                            f"multipliers k ∈ {sweep.get('widths')}; seeds {sweep.get('seeds')}.")
    if r.summary:
        b.paragraphs.append(f"{r.summary.get('runs', 0)} training runs in {r.summary.get('groups', 0)} groups "
                            f"(runs differing only in width); {r.summary.get('diverged_runs', 0)} diverged.")
    b.items = [f"ablation `{name}`: vary {arm.get('vary', {})}"
               + (f", optimizers {arm['optimizers']}" if arm.get("optimizers") else "")
               + (f", widths {arm['widths']}" if arm.get("widths") else "")
               for name, arm in (ctx.get("ablations") or {}).items()] or ["no ablation arm in this study"]
    if ctx.get("probe"):
        b.paragraphs.append("**Probe** " + ", ".join(f"{k} {v}" for k, v in ctx["probe"].items()) + ".")
    title, tokens = "Token count N per bucket (probe set) and FFN width D", rf.tokens_reading(r["ranks"])
    if tokens:
        b.paragraphs.append(tokens.table_line(title))
    b.tables.append((tokens.caption(title) if tokens else title, rt.tokens_per_bucket(r["ranks"])))
    return b


def _betas(r: ReportInputs) -> Body:
    b = Body(["β is the slope of ln(rank) on ln(D) over the widths of one group (OLS; its interval is the 95% "
              "t-interval of the slope). The step-0 β is the same fit on the untrained network, the baseline a "
              "trained β is read against."], absent=r["betas"].empty)
    if b.absent:
        return b
    if r.have_fits:  # the figures (_fit_figure) are drawn only then
        n_layers = r["ranks"]["n_layers"].dropna() if "n_layers" in r["ranks"] else pd.Series(dtype=float)
        layers = int(n_layers.max()) if len(n_layers) else None
        for name, reading in (
                ("rank_width", rf.rank_width_reading(rank_width_data(r["ranks"], r["betas"], r["runs"], r["groups"]),
                                                     layers)),
                ("beta", rf.step0_interval_reading(beta_interval_data(r["betas"], r["betas_seeds"], r["groups"]),
                                                   r["runs"], r["groups"])),
                ("delta", rf.delta_reading(delta_data(r["betas"], r["groups"])))):
            if reading:
                b.paragraphs.append(reading.figure_line(FIGURES[name].title))
    title = "β (post site): trained β, step-0 β, R²"
    reading = rf.beta_table_reading(r["betas"], r["groups"], r["runs"]) if not r["groups"].empty else None
    seeds = rt.seeds_summary(r["betas_seeds"])
    seed_title, seed_reading = "β across seeds (trained, post site): mean and SD", rf.seeds_reading(seeds)
    if reading:
        b.paragraphs.append(reading.table_line(title))
    if seed_reading:
        b.paragraphs.append(seed_reading.table_line(seed_title))
    elif seeds.empty:
        b.paragraphs.append("No configuration has two or more seeds: no between-seed interval.")
    b.tables.append((reading.caption(title) if reading else title, rt.beta_summary(r["betas"], r["groups"])))
    if not seeds.empty:
        b.tables.append((seed_reading.caption(seed_title) if seed_reading else seed_title, seeds))
    return b


def _seeds_and_training(r: ReportInputs) -> Body:
    gaps = r["beta_gaps"]
    b = Body(absent=gaps.empty and r["betas_steps_seeds"].empty)
    if not gaps.empty:
        ref = str(gaps["reference"].iloc[0])
        b.paragraphs.append(f"Each optimizer's trained β minus the reference optimizer's (`{ref}`), both averaged over "
                            f"seeds, within one arm; interval: {rs.interval_note(gaps)}.")
        b.tables.append(("β(optimizer) − β(reference), trained, post site", rs.gap_table(gaps)))
        b.items = rs.gap_readings(gaps)
    b.paragraphs += rs.training_readings(r["betas_steps_seeds"], r["beta_gaps_steps"])
    caption, val = rs.val_over_training(r["val_steps"])
    if not val.empty:
        b.tables.append((caption, val))
    return b


def _training(r: ReportInputs) -> Body:
    curves = r["train_curves"]
    if curves.empty:
        return Body(absent=True)
    n_runs, n_points = curves["run"].nunique(), curves.groupby("run").size()
    return Body([f"Training loss from each run's log (`log.jsonl`), {n_runs} runs, up to {int(n_points.max())} "
                 "points per run (each the mean loss of a block of consecutive logged steps, "
                 "`results/train_curves.csv`)."])


def _tii(r: ReportInputs) -> Body:
    table = rt.tii_summary(r["ranks"])
    if table.empty:
        return Body(absent=True)
    title, reading = "TII by width multiplier (post site)", rf.tii_reading(r["ranks"])
    b = Body(["Tail Integrity Index, as the authors' code logs it: the mean over layers of hard_post(TAIL) − "
              "hard_post(HEAD), here at each kept step and then the median over the last K logged steps (step 0: "
              "the untrained network). Closer to 0: rare tokens occupy as many directions as frequent ones."])
    if reading:
        b.paragraphs.append(reading.table_line(title))
    b.tables.append((reading.caption(title) if reading else title, table))
    return b


def _perplexity(r: ReportInputs) -> Body:
    ppl = r["ppl_by_width"]
    if ppl.empty:
        return Body(absent=True)
    b = Body()
    for name, reading in (("perplexity", rc.ppl_figure_reading(ppl)),
                          ("eigen_decay", rc.eigen_decay_reading(r["eigen_decay"]))):
        if reading:
            b.paragraphs.append(reading.figure_line(FIGURES[name].title))
    title, reading = "Validation perplexity by width multiplier (× = diverged)", rc.ppl_table_reading(ppl)
    if reading:
        b.paragraphs.append(reading.table_line(title))
    b.tables.append((reading.caption(title) if reading else title, r["ppl_table"]))
    return b


def _matched(r: ReportInputs) -> Body:
    if r["matched_loss_beta"].empty:
        return Body(absent=True)
    b = Body(["Groups that differ only in the number of training steps (their own schedule, not a prefix), beside "
              "their base group and the base optimizer of closest perplexity."])
    title, reading = "Matched loss: β side by side (post site, trained)", rc.matched_beta_reading(
        r["matched_loss_beta"])
    ppl_title, ppl_reading = "Matched loss: validation perplexity by width", rc.matched_ppl_reading(
        r["matched_loss_ppl"])
    b.paragraphs += [x.table_line(t) for x, t in ((reading, title), (ppl_reading, ppl_title)) if x]
    b.paragraphs.append(rc.seed_claims_text(r["matched_claims"], MATCHED, "results/compare/matched_claims.csv",
                                            "another optimizer's β is above the longer-trained group's",
                                            "it is below"))
    b.tables.append((reading.caption(title) if reading else title, rt.bucket_sort(r["matched_loss_beta"])))
    if not r["matched_loss_ppl"].empty:
        b.tables.append((ppl_reading.caption(ppl_title) if ppl_reading else ppl_title,
                         rt.matched_loss_ppl_wide(r["matched_loss_ppl"])))
    return b


def _renyi(r: ReportInputs) -> Body:
    if r["renyi"].empty:
        return Body(absent=True)
    b = Body(["R_α is the Rényi rank of order α of the eigenvalue distribution p_i = λ_i/Σλ; ρ_α = R_α(post) / "
              "R_α(pre) compares the ranks after and before the ReLU²: above 1, the nonlinearity adds directions."])
    for name, reading in (("renyi_rank", rc.renyi_rank_reading(r["renyi"])), ("renyi_rho", rc.rho_reading(r["renyi"]))):
        if reading:
            b.paragraphs.append(reading.figure_line(FIGURES[name].title))
    title, reading = f"ρ_α, {POOLED} bucket, widest width per optimizer", rc.rho_reading(r["renyi"], POOLED)
    if reading:
        b.paragraphs.append(reading.table_line(title))
    b.tables.append((reading.caption(title) if reading else title, rt.renyi_summary(r["renyi"])))
    return b


def _arch(r: ReportInputs) -> Body:
    a, table = r.arch, r["arch_vs_optimizer"]
    b = Body(items=[f"skipped: {x}" for x in a.get("skipped", [])], absent=table.empty)
    if b.absent:
        return b
    b.paragraphs.append(f"**{a.get('sentence', '')}** (reference `{a.get('reference')}`, counted buckets "
                        f"{', '.join(a.get('counted_buckets', []))}).")
    figure = rc.arch_figure_reading(table)
    if figure:
        b.paragraphs.append(figure.figure_line(FIGURES["arch_vs_optimizer"].title))
    exc_title, all_title = "Exceptions: optimizer gain does not exceed the architecture shift", "Every comparison"
    exceptions = pd.DataFrame(a.get("exceptions", []))
    k, n, _ = rc.arch_counts(table)
    exc = rc.exceptions_reading(exceptions, k, n)
    every = rc.arch_reading(table)
    b.paragraphs += [exc.table_line(exc_title)] + ([every.table_line(all_title)] if every else [])
    b.paragraphs.append(rc.seed_claims_text(r["arch_claims"], MARGIN, "results/compare/arch_claims.csv",
                                            "the optimizer gain exceeds the architecture shift",
                                            "the shift exceeds the gain"))
    b.tables.append((exc.caption(exc_title), exceptions))
    if a.get("missing"):
        b.tables.append((f"Missing cells (excluded from n) — {rd.n_text(rd.plural(len(a['missing']), 'cell'))}",
                         pd.DataFrame(a["missing"])))
    b.tables.append((every.caption(all_title) if every else all_title, table))
    return b


def _postln(r: ReportInputs) -> Body:
    if r["postln"].empty:
        return Body(absent=True)
    threshold = r.context.get("diverged_ppl", DIVERGED_PPL)
    title = f"Validation perplexity; × = diverged (flagged, or perplexity > {threshold:g})"
    figure, reading = rc.postln_figure_reading(r["postln"]), rc.postln_reading(r["postln"])
    b = Body()
    if figure:
        b.paragraphs.append(figure.figure_line(FIGURES["postln"].title))
    if reading:
        b.paragraphs.append(reading.table_line(title))
    b.tables.append((reading.caption(title) if reading else title, r["postln"]))
    return b


def _paper(r: ReportInputs) -> Body:
    b = Body()
    if r.summary.get("paper_note"):
        b.paragraphs.append(f"**Note:** {r.summary['paper_note']}.")
    b.paragraphs.append("Published numbers: Jha & Reagen (2026), arXiv:2605.21803, as in "
                        "`core/specscale/data/paper_published.csv`.")
    paper = r["paper_side_by_side"]
    if paper.empty:
        b.absent = True
        return b
    ours = paper[paper["ours"].notna() | paper["ours_diverged"].astype(bool)]
    b.paragraphs.append(f"{len(paper) - len(ours)} of {len(paper)} published cells have no counterpart in this "
                        "study (all are listed in `results/compare/paper_side_by_side.csv`).")
    figure = rc.paper_figure_reading(paper)
    if figure:
        b.paragraphs.append(figure.figure_line(FIGURES["paper"].title))
    title, reading = "Published vs ours (cells present in both)", rc.paper_reading(ours)
    if reading:
        b.paragraphs.append(reading.table_line(title))
    b.tables.append((reading.caption(title) if reading else title, rt.paper_summary(ours)))
    return b


def _choices(r: ReportInputs) -> Body:
    return Body(["The pipeline's choices (README), then those of this report."],
                items=list(r.choices) + list(REPORT_CHOICES), absent=not r.choices)


def _fit_figure(chart: Callable[[pd.DataFrame, str], Any],
                data: Callable[[ReportInputs], pd.DataFrame]) -> Callable[[ReportInputs, str], Any]:
    """A figure of fitted β: None (not available) unless the study has groups and β."""
    return lambda r, title: chart(data(r), title) if r.have_fits else None


SECTIONS: tuple[Section, ...] = (
    Section("results", "Results: the primary endpoint and every claim", _results,
            missing="No claims table (results/claims.csv is missing or empty): no claim is stated.", figures=(
        Figure("claims", "Every claim at the end of training: estimate, 95% interval and adjusted interval (primary "
               "endpoint bold; claims over training: the Δβ-over-training figure)",
               lambda r, t: plots.claims_forest(claims_forest_data(r["claims"]), t),
               missing="no claim with an interval"),
    )),
    Section("study", "Study", _study, missing="No training run in results/runs.csv."),
    Section("betas", "Scaling exponents β", _betas, missing="No fitted β (results/betas.csv is empty).", figures=(
        Figure("rank_width", "Effective rank vs FFN width (log–log, post site, trained)",
               _fit_figure(plots.rank_vs_width,
                           lambda r: rank_width_data(r["ranks"], r["betas"], r["runs"], r["groups"])),
               missing="no fitted base-architecture group"),
        Figure("beta", "Spectral scaling exponent β with 95% intervals and step-0 baseline",
               _fit_figure(plots.beta_intervals,
                           lambda r: beta_interval_data(r["betas"], r["betas_seeds"], r["groups"])),
               missing="no fitted β"),
        Figure("delta", "Δ₁,₂ = β_soft − β_hard by bucket",
               _fit_figure(plots.deltas, lambda r: delta_data(r["betas"], r["groups"])),
               missing="no Δ₁,₂ (needs soft and hard β)"),
        Figure("beta_layers", "β per layer (post site, trained; mean over seeds)",
               lambda r, t: plots.layer_heatmap(layer_beta_data(r["betas_per_layer"], r["runs"]), t),
               missing="no β fitted per layer (results/betas_per_layer.csv)"),
    )),
    Section("seeds", "Optimizer effect across seeds, and over training", _seeds_and_training,
            missing="No optimizer trained beside the reference optimizer in one arm: no optimizer difference.",
            figures=(
        Figure("beta_training", "β over training tokens (post site): mean over seeds, between-seed band, each seed "
               "(points), step-0 β",
               lambda r, t: plots.beta_over_training(beta_training_data(r["betas_steps_seeds"]), t,
                                                     beta_training_seed_points(r["betas_steps"])),
               missing="no β at a kept step after step 0 (needs ≥ 3 widths)"),
        Figure("gap_training", "β(optimizer) − β(reference) over training tokens (post site): across-seed 95% "
               "interval per step (darker) and the band simultaneous over the kept steps (lighter)",
               lambda r, t: plots.gap_over_training(gap_training_data(r["beta_gaps_steps"]), t),
               missing="no optimizer beside the reference optimizer at a kept step"),
    )),
    Section("training", "Training curves", _training,
            missing="No training log (results/train_curves.csv is empty).", figures=(
        Figure("loss_curves", "Training loss over tokens: mean over seeds, band from the lowest to the highest seed",
               lambda r, t: plots.loss_curves(loss_curve_data(r["train_curves"]), t),
               missing="no training log"),
    )),
    Section("tii", "Tail Integrity Index", _tii, missing="No TII (needs HEAD and TAIL spectra at the post site)."),
    Section("perplexity", "Perplexity", _perplexity,
            missing="No validation perplexity (results/runs.csv has no run).", figures=(
        Figure("perplexity", "Validation perplexity vs width",
               lambda r, t: plots.perplexity(r["ppl_by_width"], t),
               missing="no group with two or more widths"),
        Figure("eigen_decay", f"Eigenvalue decay at the widest width (post site, {POOLED})",
               lambda r, t: plots.eigen_decay(r["eigen_decay"], t),
               missing="no spectra.zarr of a base-architecture run"),
    )),
    Section("matched_loss", "Matched loss", _matched,
            missing="No group differing from a base group only in `train.steps`: no matched-loss comparison."),
    Section("renyi", "Rényi ranks and reinjection", _renyi,
            missing="No Rényi ranks at both sites (pre and post).", figures=(
        Figure("renyi_rank", "Rényi rank R_α vs α, pre and post ReLU²",
               lambda r, t: plots.renyi_ranks(r["renyi"], t),
               missing="no Rényi ranks at both sites"),
        Figure("renyi_rho", "Reinjection ρ_α = R_α(post) / R_α(pre) vs α",
               lambda r, t: plots.renyi_rho(r["renyi"], t),
               missing="no Rényi ranks at both sites"),
    )),
    Section("arch_vs_optimizer", "Optimizer vs architecture", _arch,
            missing="No architectural ablation with a width sweep in this study: nothing to compare.", figures=(
        Figure("arch_vs_optimizer", "Optimizer gain vs architecture shift",
               lambda r, t: plots.arch_vs_optimizer(r["arch_vs_optimizer"], t),
               missing="no architectural ablation with a width sweep in this study"),
    )),
    Section("postln", "Partial PostLN", _postln,
            missing="No PostLN ablation (`model.postln_fraction`) in this study.", figures=(
        Figure("postln", "Partial PostLN: validation perplexity (× = diverged)",
               lambda r, t: plots.postln(r["postln"], t),
               missing="no PostLN ablation in this study"),
    )),
    Section("paper", "Paper side by side", _paper,
            missing="No side-by-side table (results/compare/paper_side_by_side.csv is missing).", figures=(
        Figure("paper", "Our β vs the published β",
               lambda r, t: plots.paper_scatter(r["paper_side_by_side"], t),
               missing="no cell of ours matches a published β"),
    )),
    Section("choices", "Choices where the paper is silent", _choices,
            missing="README.md has no 'Choices where the paper is silent' section: only this report's choices "
                    "are listed."),
)
FIGURES: dict[str, Figure] = {f.name: f for s in SECTIONS for f in s.figures}  # every figure, by file name
