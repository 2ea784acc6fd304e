"""Rendering of the report: a section (report_sections.Section and its Body) to HTML (index.html) and to Markdown
(summary.md) from the same description, tables as Markdown or HTML, figures embedded as inline Vega-Lite specs."""

from __future__ import annotations

import html
import json
import math
import re
from typing import Any

import numpy as np
import pandas as pd

from specscale.report.sections import Body, Section

CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1350px;color:#222}
h1{margin-bottom:0}h2{border-bottom:1px solid #ccc;margin-top:2em}table{border-collapse:collapse;font-size:13px;
margin:.6em 0}td,th{border:1px solid #ddd;padding:3px 7px;text-align:left}th{background:#f3f3f3}
.missing{color:#a33;font-style:italic}.note{background:#fff8e0;padding:6px 10px;border-left:4px solid #e0b000}
figure{margin:1em 0}figcaption{font-size:13px;color:#555}"""


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return "" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def md_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub Markdown table (no tabulate dependency); '|' in cells is escaped."""
    if df.empty:
        return "_(empty)_"
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, digits).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)


def html_table(df: pd.DataFrame, digits: int = 3) -> str:
    if df.empty:
        return "<p class='missing'>(empty)</p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v, digits))}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def inline_md_to_html(text: str) -> str:
    """Escape, then the two Markdown marks the README's choices use: **bold** and `code`."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def embed(name: str, spec: dict) -> str:
    """A figure div and the vegaEmbed call with the spec inline; '</' is escaped so the JSON cannot end the script."""
    payload = json.dumps(spec).replace("</", "<\\/")
    return (f"<div id='fig-{name}'></div><script>vegaEmbed('#fig-{name}', {payload}, "
            "{actions: false, renderer: 'svg'}).catch(e => { document.getElementById('fig-" + name
            + "').textContent = 'figure failed to render: ' + e; });</script>")


def _paragraphs(section: Section, body: Body) -> list[str]:
    return body.paragraphs + ([section.missing] if body.absent else [])


def section_html(section: Section, body: Body, specs: dict[str, dict]) -> str:
    """The section as HTML: heading, paragraphs, figures (inline specs, or why not available), tables, bullets."""
    out = [f"<h2>{html.escape(section.title)}</h2>"]
    out += [f"<p>{inline_md_to_html(p)}</p>" for p in _paragraphs(section, body)]
    for fig in section.figures:
        title = html.escape(fig.title)
        if fig.name in specs:
            out.append(f"<figure><h3>{title}</h3>{embed(fig.name, specs[fig.name])}"
                       f"<figcaption>PNG: <code>figures/{fig.name}.png</code></figcaption></figure>")
        else:
            out.append(f"<h3>{title}</h3><p class='missing'>Not available: {html.escape(fig.missing)}.</p>")
    for caption, df in body.tables:
        out.append(f"<h3>{html.escape(caption)}</h3>{html_table(df)}")
    if body.items:
        out.append("<ul>" + "".join(f"<li>{inline_md_to_html(i)}</li>" for i in body.items) + "</ul>")
    return "\n".join(out)


def section_markdown(section: Section, body: Body, specs: dict[str, dict]) -> str:
    """The same section as Markdown (figures as PNG links)."""
    out = [f"## {section.title}", *_paragraphs(section, body)]
    for fig in section.figures:
        out.append(f"![{fig.title}](figures/{fig.name}.png)" if fig.name in specs
                   else f"_{fig.title}: not available: {fig.missing}._")
    for caption, df in body.tables:
        out += [f"**{caption}**", md_table(df)]
    out += [f"- {i}" for i in body.items]
    return "\n\n".join(out)


def page_html(title: str, sections: list[str], js_bundle: str) -> str:
    """index.html: the sections under one title, with the Vega bundle inlined (no network needed)."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style><script>{js_bundle}</script></head><body><h1>{html.escape(title)}</h1>"
            + "".join(sections) + "</body></html>")


def page_markdown(title: str, sections: list[str]) -> str:
    """summary.md: the sections under one title."""
    return f"# {title}\n\n" + "\n\n".join(sections) + "\n"
