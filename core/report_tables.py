"""The report's tables: built from the results once, rendered both as Markdown (summary.md) and HTML (index.html)."""

from __future__ import annotations

import html
import math
import re
from typing import Any

import numpy as np
import pandas as pd

from specscale.compare import FIT_METRICS, MIN_WIDTHS

BUCKETS = ("HEAD", "MID", "TAIL", "GLOBAL")


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


def bucket_sort(df: pd.DataFrame, col: str = "bucket") -> pd.DataFrame:
    order = {b: i for i, b in enumerate(BUCKETS)}
    return df.sort_values(col, key=lambda s: s.map(lambda b: order.get(b, 9)), kind="stable")


def beta_summary(betas: pd.DataFrame, groups: pd.DataFrame, site: str = "post") -> pd.DataFrame:
    """Per group and bucket: trained β (soft, hard) with the OLS 95% interval, Δ₁,₂, R², and the step-0 β."""
    if betas.empty or groups.empty:
        return pd.DataFrame()
    info = groups[groups["n_widths"] >= MIN_WIDTHS].set_index("group")["display"]  # single-width groups: no β
    sel = betas[(betas["site"] == site) & betas["metric"].isin(FIT_METRICS) & betas["group"].isin(info.index)]
    rows = []
    for (grp, bucket), part in sel.groupby(["group", "bucket"]):
        row: dict[str, Any] = {"group": info[grp], "bucket": bucket}
        for metric in FIT_METRICS:
            short = metric.split("_")[0]
            for phase, tag in (("trained", ""), ("step0", " step 0")):
                r = part[(part["metric"] == metric) & (part["phase"] == phase)]
                ok = len(r) and bool(r["fitted"].iloc[0])
                beta = f"{r['beta'].iloc[0]:.3f}" if ok else "—"
                if phase == "trained" and ok:
                    beta += f" [{r['ci95_low'].iloc[0]:.2f}, {r['ci95_high'].iloc[0]:.2f}]"
                    row[f"R² {short}"] = float(r["r2"].iloc[0])
                row[f"β {short}{tag}"] = beta
        soft = part[(part["metric"] == "soft_rank") & (part["phase"] == "trained")]
        row["Δ₁,₂"] = float(soft["delta_soft_hard"].iloc[0]) if len(soft) else math.nan
        row["n widths"] = int(part["n_widths"].max())
        rows.append(row)
    cols = ["group", "bucket", "β soft", "β hard", "Δ₁,₂", "β soft step 0", "β hard step 0", "R² soft",
            "R² hard", "n widths"]
    table = pd.DataFrame(rows)
    return bucket_sort(table.reindex(columns=cols)).sort_values("group", kind="stable").reset_index(drop=True)


def seeds_summary(seeds: pd.DataFrame, site: str = "post") -> pd.DataFrame:
    if seeds.empty:
        return pd.DataFrame()
    sel = seeds[(seeds["site"] == site) & (seeds["phase"] == "trained")]
    cols = ["group_label", "bucket", "metric", "n_seeds", "beta_mean", "beta_sd", "seed_ci95_low", "seed_ci95_high"]
    return bucket_sort(sel[cols]).sort_values(["group_label", "metric"], kind="stable").reset_index(drop=True)


def renyi_summary(renyi: pd.DataFrame, bucket: str = "GLOBAL") -> pd.DataFrame:
    """ρ_α per base optimizer at its widest width (lowest seed): rows optimizer, columns α."""
    if renyi.empty:
        return pd.DataFrame()
    sel = renyi[(renyi["family"] == "base") & (renyi["seed"] == renyi["seed"].min()) & (renyi["bucket"] == bucket)]
    sel = sel[sel["width_mult"] == sel.groupby("display")["width_mult"].transform("max")]
    if sel.empty:
        return pd.DataFrame()
    wide = sel.pivot_table(index=["display", "width_mult"], columns="alpha", values="rho").reset_index()
    wide.columns = [("ρ α=∞" if isinstance(c, float) and math.isinf(c) else
                     f"ρ α={c:g}" if isinstance(c, float) else c) for c in wide.columns]
    return wide


def paper_summary(paper: pd.DataFrame) -> pd.DataFrame:
    """The side-by-side table, cells as text: published, ours (× = diverged, — = absent), difference."""
    if paper.empty:
        return pd.DataFrame()

    def show(v: float, div: bool) -> str:
        return "×" if div else ("—" if not np.isfinite(v) else f"{v:.3g}" if abs(v) >= 10 else f"{v:.2f}")

    out = pd.DataFrame({
        "kind": paper["kind"], "optimizer": paper["optimizer"].fillna(""), "setting": paper["setting"].fillna(""),
        "bucket": paper["bucket"].fillna(""), "metric": paper["metric"],
        "k": paper["width_mult"].map(lambda w: "" if not np.isfinite(w) else f"{w:g}"),
        "paper": [show(v, d) for v, d in zip(paper["paper"], paper["paper_diverged"])],
        "ours": [show(v, d) for v, d in zip(paper["ours"], paper["ours_diverged"])],
        "ours − paper": paper["diff"].map(lambda v: "" if not np.isfinite(v) else f"{v:+.2f}"),
    })
    return out
