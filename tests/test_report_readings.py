"""The report's readings (specscale.report.readings.primitives): on small hand-made tables each reading line is
exactly the expected sentence; and on two synthetic studies with opposite outcomes (trained β above vs below its step-0 β) the report's
sentences say opposite things, so no sentence beside a table is fixed text."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from specscale.report.readings import primitives as rd
from specscale.report.readings import comparisons as rc
from specscale.report.readings import fits as rf

WIDTHS = (1, 2, 4)


def test_claim_reading_states_the_claims_verdict_and_adjusted_interval() -> None:
    """The verdict is the claim's (results/claims.csv), read on the adjusted interval: a raw interval that excludes 0
    beside a Holm interval that holds it reads 'not resolved'."""
    what = "Muon − AdamW, TAIL β_hard"
    assert rd.claim_reading(what, 0.12, 0.02, 0.22, -0.03, 0.27, "3 vs 3 seeds", "not resolved", "Holm") == \
        "Muon − AdamW, TAIL β_hard: +0.12 [+0.02, +0.22], Holm [−0.03, +0.27], 3 vs 3 seeds: not resolved"
    assert rd.claim_reading(what, 0.12, 0.02, 0.22, 0.02, 0.22, "3 vs 3 seeds", "resolved") == \
        "Muon − AdamW, TAIL β_hard: +0.12 [+0.02, +0.22], 3 vs 3 seeds: resolved"  # the primary: no adjustment
    assert rd.claim_reading(what, -0.12, math.nan, math.nan, math.nan, math.nan, "1 vs 1 seeds", math.nan,
                            "Holm") == "Muon − AdamW, TAIL β_hard: −0.12, 1 vs 1 seeds: not tested"


def test_text_helpers() -> None:
    assert rd.n_text(rd.plural(3, "run"), "", rd.seeds_text([0, 1, 1]), rd.widths_text([4, 1, 2, 2.0])) == \
        "n = 3 runs, 2 seeds, widths k ∈ {1, 2, 4}"
    assert rd.widths_text([2, 2]) == "width k = 2" and rd.widths_text([]) == ""
    assert rd.value_range([0.2, -0.05, 0.1]) == "from −0.05 to 0.20" and rd.value_range([0.3]) == "0.30"
    assert rd.ratio_range([0.84, 0.841]) == "×0.84" and rd.ratio_range([0.8, 0.9]) == "×0.80 to ×0.90"
    r = rd.Reading("n = 2 runs", "no interval", "Reads so.")
    assert r.caption("T") == "T — no interval; n = 2 runs"
    assert r.figure_line("F") == "**Figure: F** — no interval; n = 2 runs. Reads so."
    assert r.table_line("T") == "**Table: T** — Reads so."


def _beta_tables(step0: float) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Two groups (adamw, muon; one seed, widths 1, 2, 4), buckets HEAD and TAIL; every step-0 β = step0."""
    trained = {("adamw", "HEAD"): 0.4, ("adamw", "TAIL"): 0.5, ("muon", "HEAD"): 0.7, ("muon", "TAIL"): 0.75}
    rows = []
    for (opt, bucket), hard in trained.items():
        for metric, beta in (("hard_rank", hard), ("soft_rank", hard + 0.1)):
            for phase, b in (("trained", beta), ("step0", step0)):
                rows.append({"group": f"g_{opt}", "phase": phase, "bucket": bucket, "site": "post", "metric": metric,
                             "beta": b, "ci95_low": b - 0.1, "ci95_high": b + 0.1, "r2": 0.99, "n_widths": 3,
                             "fitted": True, "delta_soft_hard": 0.1})
    rows.append({**rows[0], "site": "pre", "beta": 9.0})  # another site: not read
    groups = pd.DataFrame({"group": ["g_adamw", "g_muon"], "display": ["adamw", "muon"], "seed": [0, 0],
                           "n_widths": [3, 3], "family": ["base", "base"]})
    runs = pd.DataFrame({"group": [g for g in groups["group"] for _ in WIDTHS], "width_mult": list(WIDTHS) * 2})
    return pd.DataFrame(rows), groups, runs


def test_beta_table_reading_below_and_above_step0() -> None:
    below = rf.beta_table_reading(*_beta_tables(step0=0.9))
    assert below.text == ("Trained β above its step-0 β in 0 of 8 cells (soft 0 of 4, hard 0 of 4): point estimates, "
                          "not a test (trained − step 0 is tested across seeds, β-across-seeds table). Trained β_hard "
                          "highest / lowest by bucket: HEAD muon 0.70 / adamw 0.40, above step 0 in 0 of 2; TAIL muon "
                          "0.75 / adamw 0.50, above step 0 in 0 of 2.")
    assert below.caption("β") == ("β — trained β with its OLS 95% t-interval over widths; step-0 β and R² without; "
                                  "n = 2 groups, 1 seed, widths k ∈ {1, 2, 4}")
    above = rf.beta_table_reading(*_beta_tables(step0=0.3))
    assert above.text.startswith("Trained β above its step-0 β in 8 of 8 cells (soft 4 of 4, hard 4 of 4): point")
    assert "above step 0 in 2 of 2" in above.text


def test_tii_reading() -> None:
    rows = [("adamw", w, "trained", v) for w, v in zip(WIDTHS, (1.0, 2.0, 3.0))]
    rows += [("adamw", w, "step0", 1.5) for w in WIDTHS]
    rows += [("muon", w, "trained", v) for w, v in ((1, -0.5), (2, -0.4))]
    rows += [("muon", w, "step0", 0.2) for w in (1, 2)]
    ranks = pd.DataFrame(rows, columns=["group_label", "width_mult", "phase", "median"]).assign(metric="tii", seed=0)
    r = rf.tii_reading(pd.concat([ranks, ranks.head(1).assign(metric="hard_rank", median=99.0)]))
    assert r.text == ("Trained TII positive in 3 of 5 cells, negative in 2; from the narrowest to the widest width it "
                      "rises in 2 of 2 series with ≥ 2 widths (falls in 0); closer to 0 than at step 0 in 1 of 5 cells.")
    assert r.n == "n = 2 configurations, 1 seed, widths k ∈ {1, 2, 4}"


def test_perplexity_table_reading() -> None:
    rows = [("adamw", "base", s, k, p) for s, ps in ((0, (60, 50)), (1, (62, 52))) for k, p in zip((1, 2), ps)]
    rows += [("muon", "base", s, k, p) for s, ps in ((0, (40, 45)), (1, (42, 47))) for k, p in zip((1, 2), ps)]
    ppl = pd.DataFrame(rows, columns=["optim_label", "family", "seed", "width_mult", "val_ppl"])
    ppl["display"] = ppl["optim_label"] + " seed=" + ppl["seed"].astype(str)
    extra = pd.DataFrame([{"optim_label": "adamw", "family": "arch", "seed": 0, "width_mult": 1, "val_ppl": 30.0,
                           "display": "adamw n_heads=4 seed=0"},
                          {"optim_label": "muon", "family": "arch", "seed": 0, "width_mult": 2, "val_ppl": 5000.0,
                           "display": "muon postln_fraction=1 seed=0"}])
    ppl = pd.concat([ppl, extra], ignore_index=True)
    ppl["diverged"] = ppl["val_ppl"] > 1000
    r = rc.ppl_table_reading(ppl)
    assert r.text == ("Lowest perplexity by width (base architecture, mean over seeds): 1× muon 41.0 (worst/best "
                      "×1.49); 2× muon 46.0 (worst/best ×1.11). 1 of 10 runs diverged.")
    assert r.n == "n = 10 runs, 6 groups, 2 seeds, widths k ∈ {1, 2}"


def test_rho_reading() -> None:
    rows = [("adamw", 4, a, rho) for a, rho in ((0.0, 1.0), (1.0, 0.9), (math.inf, 0.8))]
    rows += [("muon", 4, a, rho) for a, rho in ((0.0, 1.0), (1.0, 1.2), (math.inf, 1.1))]
    rows += [("muon", 2, 0.0, 5.0)]  # not the widest width: not read
    renyi = pd.DataFrame(rows, columns=["display", "width_mult", "alpha", "rho"]).assign(
        family="base", seed=0, bucket="GLOBAL")
    r = rc.rho_reading(renyi, "GLOBAL")
    assert r.text == "α with ρ_α > 1 (of α ∈ {0, 1, ∞}): adamw none; muon 1, ∞. Largest ρ_α 1.200 (muon, α = 1)."
    assert r.n == "n = 2 optimizers (lowest seed, widest width), 3 values of α"


def _arch_table() -> pd.DataFrame:
    rows = [("HEAD", "hard_rank", 0.1, 0.3, "exceeds", True), ("TAIL", "hard_rank", 0.2, 0.1, "not_exceeding", True),
            ("GLOBAL", "hard_rank", 0.05, 0.3, "exceeds", False), ("HEAD", "soft_rank", math.nan, 0.3, "missing", True)]
    return pd.DataFrame(rows, columns=["bucket", "metric", "arch_shift", "optimizer_gain", "status", "counted"]).assign(
        ablation="n_heads=4", optimizer="adamw", seed=0)


def test_arch_readings() -> None:
    table = _arch_table()
    r = rc.arch_reading(table)
    assert r.text == ("Optimizer gain exceeds the architecture shift in 1 of 2 counted cells; smallest margin gain − "
                      "shift −0.100 (n_heads=4, adamw, TAIL hard).")
    assert r.n == "n = 4 comparisons (3 counted), 1 optimizer, 1 seed, 1 ablation"
    exc = rc.exceptions_reading(table[table["status"] == "not_exceeding"], k=1, n=2)
    assert exc.text == "Exceptions: n_heads=4 adamw TAIL hard (gain 0.100 vs shift 0.200)."
    assert exc.n == "n = 1 of 2 counted cells"
    assert rc.exceptions_reading(pd.DataFrame(), k=2, n=2).text == "No exception."


def test_postln_readings() -> None:
    table = pd.DataFrame({"optimizer": ["adamw lr=0.0001", "muon"], "width_mult": ["2", "2"],
                          "PostLN-50": ["54.0", "45.0"], "Full": ["×", "46.0"]})
    r = rc.postln_reading(table)
    assert r.text == "Diverged: PostLN-50 0 of 2; Full 1 of 2 (adamw lr=0.0001 k=2)."
    assert r.n == "n = 4 runs, 2 optimizers, 1 seed, width k = 2"
    assert rc.postln_figure_reading(table).text == \
        "Lowest perplexity by PostLN fraction: PostLN-50 muon k=2 45.0; Full muon k=2 46.0."


def test_paper_reading() -> None:
    paper = pd.DataFrame({
        "kind": ["beta", "beta", "beta", "val_ppl", "postln_ppl", "postln_ppl"],
        "optimizer": ["adamw", "muon", "lion", "adamw", "adamw", "muon"],
        "paper": [0.5, 0.9, 0.4, 30.0, math.nan, math.nan], "ours": [0.6, 0.6, 0.6, 35.0, math.nan, 45.0],
        "diff": [0.1, -0.3, 0.2, 5.0, math.nan, math.nan],
        "paper_diverged": [False, False, False, False, True, True],
        "ours_diverged": [False, False, False, False, True, False]})
    r = rc.paper_reading(paper)
    assert r.text == ("Median |ours − paper|: beta 0.20 (3 cells); val_ppl 5.00 (1 cell). Divergence (×) agrees in "
                      "1 of 2 cells where either diverged.")
    assert rc.paper_figure_reading(paper).text == "Our β above the published in 2 of 3 cells; median |ours − paper| 0.20."


def test_seeds_reading_names_the_widest_interval() -> None:
    seeds = pd.DataFrame({"group_label": ["adamw", "muon"], "bucket": ["TAIL", "HEAD"],
                          "metric": ["hard_rank", "soft_rank"], "n_seeds": [3, 3], "beta_mean": [0.5, 0.9],
                          "seed_ci95_low": [0.3, 0.88], "seed_ci95_high": [0.7, 0.92]})
    r = rf.seeds_reading(seeds)
    assert r.text == ("Widest between-seed interval: adamw TAIL hard ±0.200 [0.30, 0.70] (3 seeds); narrowest: muon "
                      "HEAD soft ±0.020 [0.88, 0.92] (3 seeds).")
    assert r.interval == "between-seed 95% t-interval" and r.n == "n = 2 configurations, 3 seeds each"


# --- The report on two studies with opposite outcomes -----------------------------------------------------------------

# The reading lines that read the step-0 spectra (flipped below), by section; the others read trained values only.
STEP0_READINGS = {"betas": ("**Figure: Spectral scaling exponent", "**Figure: Δ₁,₂", "**Table: β (post site)"),
                  "tii": ("**Table: TII",)}

def _paragraphs(root: Path, monkeypatch: pytest.MonkeyPatch, step0_decay: float | None) -> dict[str, list[str]]:
    """The synthetic study of test_report.py (step-0 spectra steeper than trained ones when step0_decay is given),
    through the compare stage; every section's paragraphs and table captions by section key."""
    import test_report as tr

    from specscale.compare.compare import write_compare
    from specscale.report.report import load_inputs
    from specscale.report.sections import SECTIONS

    if step0_decay is not None:
        decay = tr._decay
        monkeypatch.setattr(tr, "_decay", lambda arm, site, bucket, step, layer:
                            step0_decay + tr.BUCKETS[bucket] if step == 0 else decay(arm, site, bucket, step, layer))
    results = tr.make_results(root)
    extras = json.loads((results / "extras.json").read_text())
    write_compare(results, root / "runs" / "spectra", "synthetic", "adamw", extras)
    inputs = load_inputs(results, tr.CONTEXT, [])
    out = {}
    for s in SECTIONS:
        body = s.body(inputs)
        out[s.key] = body.paragraphs + [caption for caption, _ in body.tables]
    return out


def test_report_readings_follow_the_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Untrained spectra flatter than trained ones (study a: trained β below step 0) and steeper (study b: above):
    the β section's counts are opposite, and every reading line that reads the step-0 spectra differs."""
    a = _paragraphs(tmp_path / "a", monkeypatch, None)
    b = _paragraphs(tmp_path / "b", monkeypatch, 1.6)

    def line(p: dict[str, list[str]], prefix: str, key: str = "betas") -> str:
        return next(x for x in p[key] if x.startswith(prefix))

    table = "**Table: β (post site)"
    assert "Trained β above its step-0 β in 0 of 72 cells (soft 0 of 36, hard 0 of 36)" in line(a, table)
    assert "Trained β above its step-0 β in 72 of 72 cells (soft 36 of 36, hard 36 of 36)" in line(b, table)
    assert "above it in 72" in line(a, "**Figure: Spectral") and "below it in 72" in line(b, "**Figure: Spectral")
    for key, prefixes in STEP0_READINGS.items():
        for prefix in prefixes:
            assert line(a, prefix, key) != line(b, prefix, key), prefix
    assert not any("already scales" in x for ps in (a, b) for x in ps["betas"])
