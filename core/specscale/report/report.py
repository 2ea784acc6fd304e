"""The study report: report/index.html (self-contained: the Vega bundle is inlined once, so it renders with no
network), report/figures/<name>.png (vl-convert) and .vl.json, and report/summary.md with the tables.

It reads only results/*.csv and results/compare/* (the compare stage's files), so a report can be rebuilt from a
pulled results directory without the runs. What the report shows is report_sections.SECTIONS, in that order; a
figure or section whose family is not in the study is replaced by a line saying so.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import vl_convert as vlc

from specscale.compare.compare import read_compare_tables, read_csv
from specscale.report.render import page_html, page_markdown, section_html, section_markdown
from specscale.report.sections import SECTIONS, ReportInputs

RESULT_TABLES = ("runs", "ranks", "betas", "betas_per_layer", "betas_seeds", "betas_steps", "betas_steps_seeds",
                 "beta_gaps", "beta_gaps_steps", "val_steps", "train_curves", "claims")  # results/<name>.csv


@functools.lru_cache(maxsize=1)
def js_bundle() -> str:
    """Vega, Vega-Lite and vega-embed in one script, matching altair's Vega-Lite version (no CDN)."""
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


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def load_inputs(results: Path, context: dict[str, Any], choices: list[str]) -> ReportInputs:
    """Every table the sections read (results/*.csv, results/compare/*.csv) and the compare stage's summaries."""
    tables = {name: read_csv(results / f"{name}.csv") for name in RESULT_TABLES}
    tables.update(read_compare_tables(results))
    # every claim the report states, in one table: the fit stage's and the compare stage's (over seeds)
    parts = [t for t in (tables["claims"], tables["arch_claims"], tables["matched_claims"]) if not t.empty]
    tables["claims"] = pd.concat(parts, ignore_index=True) if parts else tables["claims"]
    return ReportInputs(tables, arch=_json(results / "compare" / "arch_vs_optimizer.json"),
                        summary=_json(results / "compare" / "summary.json"), context=context, choices=choices)


def write_figures(inputs: ReportInputs, out: Path, scale: float = 1.5) -> dict[str, dict]:
    """PNG and Vega-Lite JSON of every figure of every section that has data; returns name → spec (for the HTML)."""
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    specs = {}
    for section in SECTIONS:
        for fig in section.figures:
            chart = fig.build(inputs, fig.title)
            if chart is None:
                continue
            spec = chart.to_dict()
            (fig_dir / f"{fig.name}.vl.json").write_text(json.dumps(spec))
            (fig_dir / f"{fig.name}.png").write_bytes(vlc.vegalite_to_png(spec, vl_version=vl_version(), scale=scale))
            specs[fig.name] = spec
    return specs


def build_report(results: Path, out: Path, context: dict[str, Any], choices: list[str] | None = None,
                 png_scale: float = 1.5) -> Path:
    """Write out/index.html, out/summary.md and out/figures/*; returns the index path."""
    out.mkdir(parents=True, exist_ok=True)
    inputs = load_inputs(results, context, list(choices or []))
    specs = write_figures(inputs, out, png_scale)
    bodies = [(section, section.body(inputs)) for section in SECTIONS]
    title = f"specscale report — preset {context.get('preset', '?')}"
    (out / "index.html").write_text(page_html(title, [section_html(s, b, specs) for s, b in bodies], js_bundle()),
                                    encoding="utf-8")
    (out / "summary.md").write_text(page_markdown(title, [section_markdown(s, b, specs) for s, b in bodies]),
                                    encoding="utf-8")
    return out / "index.html"
