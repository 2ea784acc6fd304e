"""The report's sections: text, figures and tables, each rendered to HTML (index.html) and Markdown (summary.md)
from one description, so the two never disagree. A section whose family is absent says so instead of failing."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from specscale import report_tables as rt
from specscale.compare import ppl_wide
from specscale.report_data import tokens_per_bucket


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)  # inline Markdown (**bold**, `code`) allowed
    figures: list[str] = field(default_factory=list)  # names in report.FIGURES
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    items: list[str] = field(default_factory=list)  # a bullet list at the end

    def html(self, specs: dict[str, dict]) -> str:
        from specscale.report import FIGURES, MISSING, embed

        out = [f"<h2>{html.escape(self.title)}</h2>"]
        out += [f"<p>{rt.inline_md_to_html(p)}</p>" for p in self.paragraphs]
        for name in self.figures:
            title = html.escape(FIGURES[name])
            if name in specs:
                out.append(f"<figure><h3>{title}</h3>{embed(name, specs[name])}"
                           f"<figcaption>PNG: <code>figures/{name}.png</code></figcaption></figure>")
            else:
                out.append(f"<h3>{title}</h3><p class='missing'>Not available: {html.escape(MISSING[name])}.</p>")
        for caption, df in self.tables:
            out.append(f"<h3>{html.escape(caption)}</h3>{rt.html_table(df)}")
        if self.items:
            out.append("<ul>" + "".join(f"<li>{rt.inline_md_to_html(i)}</li>" for i in self.items) + "</ul>")
        return "\n".join(out)

    def markdown(self, specs: dict[str, dict]) -> str:
        from specscale.report import FIGURES, MISSING

        out = [f"## {self.title}", *self.paragraphs]
        for name in self.figures:
            out.append(f"![{FIGURES[name]}](figures/{name}.png)" if name in specs
                       else f"_{FIGURES[name]}: not available: {MISSING[name]}._")
        for caption, df in self.tables:
            out += [f"**{caption}**", rt.md_table(df)]
        out += [f"- {i}" for i in self.items]
        return "\n\n".join(out)


def _study(d: dict[str, Any], ctx: dict[str, Any]) -> Section:
    sweep = ctx.get("sweep", {})
    s = Section("Study")
    s.paragraphs.append(f"**Preset** `{ctx.get('preset', '?')}`; reference optimizer "
                        f"`{ctx.get('reference_optimizer', 'adamw')}`.")
    for key, name in (("model", "Model"), ("train", "Training")):
        if ctx.get(key):
            s.paragraphs.append(f"**{name}** " + ", ".join(f"{k} {v}" for k, v in ctx[key].items()) + ".")
    if sweep:
        s.paragraphs.append(f"**Sweep** optimizers {', '.join(map(str, sweep.get('optimizers', [])))}; width "
                            f"multipliers k ∈ {sweep.get('widths')}; seeds {sweep.get('seeds')}.")
    summary = d.get("compare_summary", {})
    if summary:
        s.paragraphs.append(f"{summary.get('runs', 0)} training runs in {summary.get('groups', 0)} groups "
                            f"(runs differing only in width); {summary.get('diverged_runs', 0)} diverged.")
    s.items = [f"ablation `{name}`: vary {arm.get('vary', {})}"
               + (f", optimizers {arm['optimizers']}" if arm.get("optimizers") else "")
               + (f", widths {arm['widths']}" if arm.get("widths") else "")
               for name, arm in (ctx.get("ablations") or {}).items()] or ["no ablation arm in this study"]
    tokens = tokens_per_bucket(d["ranks"])
    if ctx.get("probe"):
        s.paragraphs.append("**Probe** " + ", ".join(f"{k} {v}" for k, v in ctx["probe"].items()) + ".")
    s.tables.append(("Token count N per bucket (probe set) and FFN width D", tokens))
    return s


def _betas(d: dict[str, Any]) -> Section:
    s = Section("Scaling exponents β", figures=["rank_width", "beta", "delta"])
    s.paragraphs.append("β is the slope of ln(rank) on ln(D) over widths (OLS, 95% t-interval). Read a trained β "
                        "against its step-0 baseline: at small scale the untrained network already scales.")
    s.tables.append(("β (post site): trained with 95% interval, step-0 baseline, R²",
                     rt.beta_summary(d["betas"], d["groups"])))
    seeds = rt.seeds_summary(d["betas_seeds"])
    if seeds.empty:
        s.paragraphs.append("One seed per configuration: no between-seed interval.")
    else:
        s.tables.append(("β across seeds (trained, post site)", seeds))
    return s


def _perplexity(d: dict[str, Any]) -> Section:
    s = Section("Perplexity", figures=["perplexity", "eigen_decay"])
    s.tables.append(("Validation perplexity by width multiplier (× = diverged)", ppl_wide(d["ppl_by_width"])))
    return s


def _matched(d: dict[str, Any]) -> Section:
    s = Section("Matched loss and β over training", figures=["beta_training"])
    ml = d["matched_loss_beta"]
    if ml.empty:
        s.paragraphs.append("No group differing from a base group only in `train.steps`: no matched-loss comparison.")
    else:
        s.paragraphs.append("Groups that differ only in the number of training steps (their own schedule, not a "
                            "prefix), beside their base group and the base optimizer of closest perplexity.")
        s.tables.append(("Matched loss: β side by side (post site, trained)", rt.bucket_sort(ml)))
        ppl = d["matched_loss_ppl"]
        if not ppl.empty:
            wide = ppl.pivot_table(index=["pair", "role", "display", "steps"], columns="width_mult",
                                   values="val_ppl").round(2).reset_index()
            wide.columns = [f"{c}×" if isinstance(c, (int, float)) else c for c in wide.columns]
            s.tables.append(("Matched loss: validation perplexity by width", wide))
    return s


def _renyi(d: dict[str, Any]) -> Section:
    s = Section("Rényi ranks and reinjection", figures=["renyi_rank", "renyi_rho"])
    s.tables.append(("ρ_α, GLOBAL bucket, widest width per optimizer", rt.renyi_summary(d["renyi"])))
    return s


def _arch(d: dict[str, Any]) -> Section:
    s = Section("Optimizer vs architecture", figures=["arch_vs_optimizer"])
    a, table = d["arch_summary"], d["arch_vs_optimizer"]
    if table.empty:
        s.paragraphs.append("No architectural ablation with a width sweep in this study: nothing to compare.")
    else:
        s.paragraphs.append(f"**{a.get('sentence', '')}** (reference `{a.get('reference')}`, counted buckets "
                            f"{', '.join(a.get('counted_buckets', []))}).")
        s.tables.append(("Exceptions: optimizer gain does not exceed the architecture shift",
                         pd.DataFrame(a.get("exceptions", []))))
        if a.get("missing"):
            s.tables.append(("Missing cells (excluded from n)", pd.DataFrame(a["missing"])))
        s.tables.append(("Every comparison", table))
    s.items = [f"skipped: {x}" for x in a.get("skipped", [])]
    return s


def _postln(d: dict[str, Any]) -> Section:
    s = Section("Partial PostLN", figures=["postln"])
    if d["postln"].empty:
        s.paragraphs.append("No PostLN ablation (`model.postln_fraction`) in this study.")
    else:
        s.tables.append(("Validation perplexity; × = diverged (flagged, or perplexity > 1000)", d["postln"]))
    return s


def _paper(d: dict[str, Any]) -> Section:
    s = Section("Paper side by side", figures=["paper"])
    note = d.get("compare_summary", {}).get("paper_note")
    if note:
        s.paragraphs.append(f"**Note:** {note}.")
    s.paragraphs.append("Published numbers: Jha & Reagen (2026), arXiv:2605.21803, as in "
                        "`core/data/paper_published.csv`.")
    paper = d["paper_side_by_side"]
    if paper.empty:
        s.paragraphs.append("No side-by-side table (results/compare/paper_side_by_side.csv is missing).")
        return s
    ours = paper[paper["ours"].notna() | paper["ours_diverged"].astype(bool)]
    s.paragraphs.append(f"{len(paper) - len(ours)} of {len(paper)} published cells have no counterpart in this "
                        "study (all are listed in `results/compare/paper_side_by_side.csv`).")
    s.tables.append(("Published vs ours (cells present in both)", rt.paper_summary(ours)))
    return s


def sections(d: dict[str, Any], ctx: dict[str, Any], choices: list[str], report_choices: list[str]) -> list[Section]:
    out = [_study(d, ctx), _betas(d), _perplexity(d), _matched(d), _renyi(d), _arch(d), _postln(d), _paper(d)]
    out.append(Section("Choices where the paper is silent",
                       paragraphs=["The pipeline's choices (README), then those of this report."],
                       items=list(choices) + list(report_choices)))
    return out
