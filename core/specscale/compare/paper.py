"""The paper's published numbers (docs/science.md §8, in data/paper_published.csv) and ours beside them: the
compare stage writes the side-by-side table (results/compare/paper_side_by_side.csv), the report shows it.

Both sides are keyed by (kind, optimizer, setting, bucket, metric, width): `setting` is the canonical text of what
an ablation arm varied plus its own optimizer overrides (compare.setting_of), e.g. '' for the main sweep,
'steps=12000', 'postln_fraction=0.25 lr=0.0001', so the join needs no hand-written mapping. The published PostLN
width is unpublished: those rows join on everything but the width.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from specscale.compare.comparisons import DIVERGED_PPL, ArchComparison, headline, is_diverged, with_groups

DATA_DIR = Path(__file__).resolve().parents[1] / "data"  # specscale/data: package data (pyproject)
PAPER_FILE = DATA_DIR / "paper_published.csv"
PAPER_PRESETS = ("gpt2-160m", "gpt2-350m")
KEYS = ["kind", "optimizer", "setting", "bucket", "metric"]


def load_published(path: Path = PAPER_FILE) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"setting": str, "bucket": str, "optimizer": str, "diverged": str})
    for col in ("setting", "bucket", "optimizer"):
        df[col] = df[col].fillna("")
    df["diverged"] = df["diverged"].fillna("").str.lower().eq("true")
    return df


def our_cells(betas: pd.DataFrame, runs: pd.DataFrame, groups: pd.DataFrame, arch: ArchComparison | None = None,
              threshold: float = DIVERGED_PPL) -> pd.DataFrame:
    """Our cells in the published file's shape. Several seeds: the mean over seeds (diverged if any seed is, by the
    study's perplexity threshold)."""
    cols = ["optimizer", "setting", "varied_d"]
    rows: list[dict] = []
    sel = with_groups(headline(betas), groups, cols)
    for r in sel.itertuples():
        fitted = bool(r.fitted) and np.isfinite(r.beta)
        base = {"optimizer": r.optimizer, "setting": r.setting, "bucket": r.bucket, "width_mult": math.nan}
        rows.append({**base, "kind": "beta", "metric": r.metric, "ours": r.beta if fitted else math.nan})
        if r.metric == "soft_rank":
            rows.append({**base, "kind": "delta", "metric": "delta_soft_hard", "ours": r.delta_soft_hard})
        if r.metric == "hard_rank":
            rows.append({**base, "kind": "r2", "metric": "hard_rank", "ours": r.r2 if fitted else math.nan})
    for r in with_groups(runs, groups, cols).itertuples():
        kind = "postln_ppl" if "model.postln_fraction" in r.varied_d else "val_ppl"
        rows.append({"kind": kind, "optimizer": r.optimizer, "setting": r.setting, "bucket": "", "metric": "val_ppl",
                     "width_mult": float(r.width_mult), "ours": r.val_ppl,
                     "ours_diverged": is_diverged(r.val_ppl, r.diverged, threshold)})
    if arch is not None and not arch.table.empty:
        counted = arch.table[arch.table["counted"] & (arch.table["status"] != "missing")]
        for ablation, part in counted.groupby("ablation"):
            for metric, value in (("exceeds_k", (part["status"] == "exceeds").sum()), ("exceeds_n", len(part))):
                rows.append({"kind": "arch_count", "optimizer": "", "setting": ablation, "bucket": "",
                             "metric": metric, "width_mult": math.nan, "ours": float(value)})
    ours = pd.DataFrame(rows, columns=KEYS + ["width_mult", "ours", "ours_diverged"])
    ours["ours_diverged"] = ours["ours_diverged"].fillna(False).astype(bool)
    # Mean over seeds (the keys hold no seed); NaN-safe, diverged if any seed diverged.
    return (ours.groupby(KEYS + ["width_mult"], dropna=False)
            .agg(ours=("ours", "mean"), ours_diverged=("ours_diverged", "any"), n_seeds=("ours", "size"))
            .reset_index())


def side_by_side(published: pd.DataFrame, ours: pd.DataFrame, preset: str) -> tuple[pd.DataFrame, str]:
    """Every published cell (of the paper model matching the preset, else 160M) with ours beside it and the
    difference. Returns (table, note); the note says when presets differ and the numbers are for reference only."""
    model = preset if preset in PAPER_PRESETS else "gpt2-160m"
    pub = published[published["model"] == model].rename(columns={"value": "paper", "diverged": "paper_diverged"})
    with_width = pub[pub["width_mult"].notna()]
    no_width = pub[pub["width_mult"].isna()].drop(columns="width_mult")
    # Published rows without a width (β, Δ, PostLN) match ours at any width: β rows have none, PostLN rows one each.
    ours_any = ours.copy()
    left = no_width.merge(ours_any, on=KEYS, how="left")
    right = with_width.merge(ours, on=KEYS + ["width_mult"], how="left")
    table = pd.concat([left, right], ignore_index=True)
    table["ours_diverged"] = table["ours_diverged"].fillna(False).astype(bool)
    valid = ~table["paper_diverged"] & ~table["ours_diverged"]
    table["diff"] = np.where(valid, table["ours"] - table["paper"], math.nan)
    table["presets_match"] = preset == model
    cols = ["kind", "model", "optimizer", "setting", "bucket", "metric", "width_mult", "paper", "paper_diverged",
            "ours", "ours_diverged", "diff", "presets_match", "source"]
    table = table[cols].sort_values(["kind", "optimizer", "setting", "bucket", "metric", "width_mult"],
                                    kind="stable").reset_index(drop=True)
    if preset == model:
        note = f"preset {preset} is the paper's {model} setup: differences are reproduction gaps"
    else:
        note = (f"presets differ: ours is '{preset}', the paper's numbers are {model}; they are shown for reference "
                f"only and the differences are not reproduction gaps")
    return table, note

