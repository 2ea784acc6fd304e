"""The fit stage's derived rows of ranks.csv: the Tail Integrity Index and reinjection ρ_α (docs/science.md §5, §6),
on hand-made per-step tables whose answers are worked out in the comments."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from helpers import make_project
from specscale.compare.comparisons import renyi_table
from specscale.fit.fit import aggregate, long_ranks, metric_columns
from specscale.measure.registry import SPECTRUM_COLUMNS
from specscale.store.runs import RunStore
from specscale.report.tables import tii_summary
from specscale.study.spec import SpecError, load_study

# Hard rank (post site) per (step, layer): (HEAD, TAIL).
#   step 0:  L0 (2, 2)  L1 (2, 3)    TII = mean(0, 1) = 0.5
#   step 10: L0 (5, 9)  L1 (4, 6)    TII = mean(4, 2) = 3
#   step 20: L0 (5, 8)  L1 (4, 5)    TII = mean(3, 1) = 2
#   step 30: L0 (6, 12) L1 (4, 4)    TII = mean(6, 0) = 3
# last_k = 2 → steps 20 and 30: TII = median(2, 3) = 2.5. sd: per-layer median differences over those steps,
# L0 median(3, 6) = 4.5, L1 median(1, 0) = 0.5 → SD (ddof 1) of (4.5, 0.5) = √(2² + 2²) = 2√2.
HARD = {0: [(2, 2), (2, 3)], 10: [(5, 9), (4, 6)], 20: [(5, 8), (4, 5)], 30: [(6, 12), (4, 4)]}
# Rényi rank R_2 (MID bucket) per (step, layer): (pre, post).
#   step 20: L0 (2, 4) ρ 2;   L1 (1, 3) ρ 3
#   step 30: L0 (4, 4) ρ 1;   L1 (2, 8) ρ 4
# layer_median: per-layer medians of ρ: L0 1.5, L1 3.5 → median 2.5, sd √2.
# median_ratio: post L0 median(4, 4) = 4, L1 median(3, 8) = 5.5 → 4.75; pre L0 3, L1 1.5 → 2.25; ρ = 4.75 / 2.25.
RENYI = {20: [(2, 4), (1, 3)], 30: [(4, 4), (2, 8)]}
N = {"HEAD": 100, "MID": 90, "TAIL": 80}


def _long(skip_tail: tuple[int, int] | None = None) -> pd.DataFrame:
    rows = []
    for step, layers in HARD.items():
        for layer, (head, tail) in enumerate(layers):
            for bucket, value in (("HEAD", head), ("TAIL", math.nan if (step, layer) == skip_tail else tail)):
                rows.append(dict(step=step, layer=layer, site="post", bucket=bucket, metric="hard_rank", value=value))
                rows.append(dict(step=step, layer=layer, site="pre", bucket=bucket, metric="hard_rank", value=1.0))
    for step, layers in RENYI.items():
        for layer, (pre, post) in enumerate(layers):
            for site, value in (("pre", pre), ("post", post)):
                rows.append(dict(step=step, layer=layer, site=site, bucket="MID", metric="renyi_2", value=value))
    long = pd.DataFrame(rows).assign(run="r1", D=16)
    long["N"] = long["bucket"].map(N)
    long["N_over_D"] = long["N"] / long["D"]
    return long


def _row(ranks: pd.DataFrame, metric: str, phase: str = "trained") -> pd.Series:
    sel = ranks[(ranks["metric"] == metric) & (ranks["phase"] == phase)]
    assert len(sel) == 1, sel
    return sel.iloc[0]


def test_tii_rows() -> None:
    ranks, layers = aggregate(_long(), last_k=2)
    tii = _row(ranks, "tii")
    assert (tii["bucket"], tii["site"], tii["run"]) == ("TAIL-HEAD", "post", "r1")
    assert tii["median"] == 2.5
    assert tii["sd"] == pytest.approx(2 * math.sqrt(2), rel=1e-15)
    assert (tii["n_layers"], tii["N"], tii["D"], tii["N_over_D"]) == (2, 80, 16, 5.0)  # N: the smaller bucket's
    assert _row(ranks, "tii", "step0")["median"] == 0.5
    assert not (layers["metric"] == "tii").any()  # derived rows are per run only


def test_tii_leaves_out_a_layer_without_both_buckets() -> None:
    # TAIL skipped at step 30, layer 1: TII(30) = mean over layer 0 only = 6, so median(2, 6) = 4.
    ranks, _ = aggregate(_long(skip_tail=(30, 1)), last_k=2)
    assert _row(ranks, "tii")["median"] == 4.0


def test_rho_layer_median_is_the_default(tmp_path: Path) -> None:
    ranks, _ = aggregate(_long(), last_k=2)
    rho = _row(ranks, "rho_2")
    assert (rho["bucket"], rho["site"]) == ("MID", "post/pre")
    assert rho["median"] == 2.5 and rho["sd"] == pytest.approx(math.sqrt(2), rel=1e-15)
    assert (rho["n_layers"], rho["N"]) == (2, 90)
    assert load_study(make_project(tmp_path, "preset: smoke\n")).fit.rho_aggregation == "layer_median"


def test_rho_median_ratio() -> None:
    ranks, _ = aggregate(_long(), last_k=2, rho_aggregation="median_ratio")
    rho = _row(ranks, "rho_2")
    assert rho["median"] == pytest.approx(4.75 / 2.25, rel=1e-15) and math.isnan(rho["sd"])
    assert rho["site"] == "post/pre" and rho["n_layers"] == 2
    with pytest.raises(ValueError, match="rho_aggregation"):
        aggregate(_long(), last_k=2, rho_aggregation="mean")


def test_rho_aggregation_is_validated(tmp_path: Path) -> None:
    params = make_project(tmp_path, "preset: smoke\nfit: {rho_aggregation: mean}\n")
    with pytest.raises(SpecError, match="fit.rho_aggregation"):
        load_study(params)


@pytest.mark.parametrize("how, rho", [("layer_median", 2.5), ("median_ratio", 4.75 / 2.25)])
def test_renyi_table_shows_the_fit_stages_rho(how: str, rho: float) -> None:
    ranks, _ = aggregate(_long(), last_k=2, rho_aggregation=how)
    runs = pd.DataFrame([{"run": "r1", "group": "g", "width_mult": 1, "ffn_dim": 16, "seed": 0}])
    groups = pd.DataFrame([{"group": "g", "display": "muon", "optim_label": "muon", "family": "base"}])
    table = renyi_table(ranks, runs, groups)
    assert len(table) == 1 and table["rho"].iloc[0] == pytest.approx(rho, rel=1e-15)
    assert (table["post"].iloc[0], table["pre"].iloc[0]) == (4.75, 2.25)  # the medians of each site, as before


def test_tii_summary_table() -> None:
    ranks, _ = aggregate(_long(), last_k=2)
    ranks = ranks.assign(group_label="muon", width_mult=2, seed=0)
    table = tii_summary(ranks)
    assert table.to_dict("records") == [{"group": "muon", "phase": "trained", "2×": 2.5},
                                        {"group": "muon", "phase": "step0", "2×": 0.5}]


def test_the_fit_reads_ranks_csv_columns_through_the_metric_registry(tmp_path: Path) -> None:
    row = dict(step=10, layer=0, site="post", bucket="HEAD", N=64, D=16, N_over_D=4.0, noise_floor=1e-9, entropy=1.5,
               renyi_0=16.0, renyi_2=3.0, soft_rank=4.0, hard_rank=3.0)
    assert metric_columns(["run", *row]) == ["entropy", "renyi_0", "renyi_2", "soft_rank", "hard_rank"]
    assert metric_columns(SPECTRUM_COLUMNS) == []
    store = RunStore(tmp_path)
    runs = pd.DataFrame([{"run": "r1", "spectra_key": "s1", "measured": True}])
    store.final_dir("spectra", "s1").mkdir(parents=True)
    pd.DataFrame([row]).to_csv(store.final_dir("spectra", "s1") / "ranks.csv", index=False)
    long = long_ranks(runs, store)
    assert list(long["metric"]) == ["entropy", "renyi_0", "renyi_2", "soft_rank", "hard_rank"]
    assert list(long["value"]) == [1.5, 16.0, 3.0, 4.0, 3.0] and "noise_floor" not in long
    # a metric column the registry does not know fails, naming it, instead of vanishing from every table
    pd.DataFrame([{**row, "stable_rank": 2.0}]).to_csv(store.final_dir("spectra", "s1") / "ranks.csv", index=False)
    with pytest.raises(ValueError, match="stable_rank"):
        long_ranks(runs, store)
    with pytest.raises(ValueError, match="renyi_0.50"):
        metric_columns(["step", "renyi_0.50"])
