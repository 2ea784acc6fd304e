"""The study report: report/index.html (self-contained: the Vega bundle is inlined once, so it renders with no
network), report/figures/<name>.png (vl-convert) and .vl.json, and report/summary.md with the tables.

It reads only results/*.csv and results/compare/* (the compare stage's files), so a report can be rebuilt from a
pulled results directory without the runs. A figure or table whose family is not in the study is replaced by a line
saying so.
"""

from __future__ import annotations

import functools
import html
import json
import re
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd

from specscale import plots
from specscale.compare import COUNTED_BUCKETS
from specscale.report_data import beta_interval_data, delta_data, rank_width_data

FIGURES = {
    "rank_width": "Effective rank vs FFN width (log–log, post site, trained)",
    "beta": "Spectral scaling exponent β with 95% intervals and step-0 baseline",
    "delta": "Δ₁,₂ = β_soft − β_hard by bucket",
    "perplexity": "Validation perplexity vs width",
    "eigen_decay": "Eigenvalue decay at the widest width (post site, GLOBAL)",
    "beta_training": "β over training (post site)",
    "renyi_rank": "Rényi rank R_α vs α, pre and post ReLU²",
    "renyi_rho": "Reinjection ρ_α = R_α(post) / R_α(pre) vs α",
    "arch_vs_optimizer": "Optimizer gain vs architecture shift",
    "postln": "Partial PostLN: validation perplexity (× = diverged)",
    "paper": "Our β vs the published β",
}
MISSING = {
    "rank_width": "no fitted base-architecture group", "beta": "no fitted β",
    "delta": "no Δ₁,₂ (needs soft and hard β)", "perplexity": "no group with two or more widths",
    "eigen_decay": "no spectra.zarr of a base-architecture run", "beta_training": "no per-step β (needs ≥ 3 widths)",
    "renyi_rank": "no Rényi ranks at both sites", "renyi_rho": "no Rényi ranks at both sites",
    "arch_vs_optimizer": "no architectural ablation with a width sweep in this study",
    "postln": "no PostLN ablation in this study", "paper": "no cell of ours matches a published β",
}
# Choices this report (and the compare stage) make where the paper is silent; the pipeline's own come from README.
REPORT_CHOICES = [
    f"Optimizer vs architecture: counted over buckets {', '.join(COUNTED_BUCKETS)} × soft/hard (the paper's 30 = "
    "5 optimizers × 3 buckets × 2 metrics); GLOBAL cells are listed but not counted. A tie counts as not exceeding; "
    "a cell not fitted or absent is missing and excluded from n.",
    "The base of an ablation is the group with the same optimizer, the same optimizer overrides (e.g. lr) and seed, and no "
    "varied field; the optimizer gain is computed per seed within the base architecture.",
    "Curves (rank vs width, eigenvalue decay, Rényi) show the lowest seed; the β figure shows every seed and, with "
    "≥ 2 seeds, the between-seed interval.",
    "Eigenvalue decay: p_i = λ_i/Σλ per layer, median over layers, at the last kept step and at step 0.",
    "Rank-vs-width band: ±1 SD of the layer medians (floored at a tenth of the median on the log axis).",
    "Matched loss: the long-schedule group is also set beside the base optimizer whose geometric-mean perplexity "
    "over common widths is closest.",
    "Paper side by side: several seeds are averaged; the published PostLN width is unpublished, so PostLN rows join "
    "at every width we trained.",
]
CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1350px;color:#222}
h1{margin-bottom:0}h2{border-bottom:1px solid #ccc;margin-top:2em}table{border-collapse:collapse;font-size:13px;
margin:.6em 0}td,th{border:1px solid #ddd;padding:3px 7px;text-align:left}th{background:#f3f3f3}
.missing{color:#a33;font-style:italic}.note{background:#fff8e0;padding:6px 10px;border-left:4px solid #e0b000}
figure{margin:1em 0}figcaption{font-size:13px;color:#555}"""


@functools.lru_cache(maxsize=1)
def js_bundle() -> str:
    """Vega, Vega-Lite and vega-embed in one script, matching altair's Vega-Lite version (no CDN)."""
    import vl_convert as vlc

    return vlc.javascript_bundle(vl_version=vl_version())


def vl_version() -> str:
    major, minor = alt.SCHEMA_VERSION.lstrip("v").split(".")[:2]
    return f"{major}.{minor}"


def parse_choices(readme: str) -> list[str]:
    """The bullets of README's '## Choices where the paper is silent' section (continuation lines joined)."""
    match = re.search(r"^## Choices where the paper is silent\s*$(.*?)(?=^## |\Z)", readme, re.M | re.S)
    if not match:
        return []
    items: list[str] = []
    for line in match.group(1).splitlines():
        if line.startswith("- "):
            items.append(line[2:].strip())
        elif line.startswith("  ") and items:
            items[-1] += " " + line.strip()
    return items


def read(path: Path, dtype: Any = None) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=dtype)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame()


# Cells that are text ("54.0" or "×"): pandas would read a column without a × as numbers.
TEXT_COLUMNS: dict[str, Any] = {"postln": str, "ppl_by_width": {"cell": str}}


def load_inputs(results: Path) -> dict[str, Any]:
    cmp_dir = results / "compare"
    data: dict[str, Any] = {name: read(results / f"{name}.csv") for name in ("runs", "ranks", "betas", "betas_seeds")}
    for name in ("groups", "arch_vs_optimizer", "matched_loss_ppl", "matched_loss_beta", "beta_over_training",
                 "ppl_by_width", "postln", "renyi", "eigen_decay", "paper_side_by_side"):
        data[name] = read(cmp_dir / f"{name}.csv", TEXT_COLUMNS.get(name))
    arch = cmp_dir / "arch_vs_optimizer.json"
    data["arch_summary"] = json.loads(arch.read_text()) if arch.exists() else {}
    summary = cmp_dir / "summary.json"
    data["compare_summary"] = json.loads(summary.read_text()) if summary.exists() else {}
    return data


def make_figures(d: dict[str, Any]) -> dict[str, Any]:
    g = d["groups"]
    have_fits = not (g.empty or d["betas"].empty)
    t = FIGURES
    return {
        "rank_width": plots.rank_vs_width(rank_width_data(d["ranks"], d["betas"], d["runs"], g), t["rank_width"])
        if have_fits else None,
        "beta": plots.beta_intervals(beta_interval_data(d["betas"], d["betas_seeds"], g), t["beta"])
        if have_fits else None,
        "delta": plots.deltas(delta_data(d["betas"], g), t["delta"]) if have_fits else None,
        "perplexity": plots.perplexity(d["ppl_by_width"], t["perplexity"]),
        "eigen_decay": plots.eigen_decay(d["eigen_decay"], t["eigen_decay"]),
        "beta_training": plots.beta_over_training(d["beta_over_training"], t["beta_training"]),
        "renyi_rank": plots.renyi_ranks(d["renyi"], t["renyi_rank"]),
        "renyi_rho": plots.renyi_rho(d["renyi"], t["renyi_rho"]),
        "arch_vs_optimizer": plots.arch_vs_optimizer(d["arch_vs_optimizer"], t["arch_vs_optimizer"]),
        "postln": plots.postln(d["postln"], t["postln"]),
        "paper": plots.paper_scatter(d["paper_side_by_side"], t["paper"]),
    }


def write_figures(figures: dict[str, Any], out: Path, scale: float = 1.5) -> dict[str, dict]:
    """PNG and Vega-Lite JSON of every figure; returns name → spec (for the HTML)."""
    import vl_convert as vlc

    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    specs = {}
    for name, chart in figures.items():
        if chart is None:
            continue
        spec = chart.to_dict()
        (fig_dir / f"{name}.vl.json").write_text(json.dumps(spec))
        (fig_dir / f"{name}.png").write_bytes(vlc.vegalite_to_png(spec, vl_version=vl_version(), scale=scale))
        specs[name] = spec
    return specs


def build_report(results: Path, out: Path, context: dict[str, Any], choices: list[str] | None = None,
                 png_scale: float = 1.5) -> Path:
    """Write out/index.html, out/summary.md and out/figures/*; returns the index path."""
    from specscale.report_sections import sections

    out.mkdir(parents=True, exist_ok=True)
    data = load_inputs(results)
    specs = write_figures(make_figures(data), out, png_scale)
    parts = sections(data, context, choices or [], REPORT_CHOICES)
    html_body, md_body = [], []
    for part in parts:
        html_body.append(part.html(specs))
        md_body.append(part.markdown(specs))
    title = f"specscale report — preset {context.get('preset', '?')}"
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style><script>{js_bundle()}</script></head><body><h1>{html.escape(title)}</h1>"
            + "".join(html_body) + "</body></html>")
    (out / "index.html").write_text(page, encoding="utf-8")
    (out / "summary.md").write_text(f"# {title}\n\n" + "\n\n".join(md_body) + "\n", encoding="utf-8")
    return out / "index.html"


def embed(name: str, spec: dict) -> str:
    """A figure div and the vegaEmbed call with the spec inline; '</' is escaped so the JSON cannot end the script."""
    payload = json.dumps(spec).replace("</", "<\\/")
    return (f"<div id='fig-{name}'></div><script>vegaEmbed('#fig-{name}', {payload}, "
            "{actions: false, renderer: 'svg'}).catch(e => { document.getElementById('fig-" + name
            + "').textContent = 'figure failed to render: ' + e; });</script>")

