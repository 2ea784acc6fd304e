"""Claims rest on computed tests (core/specscale/fit/claims.py): the primary endpoint declared in the spec, Holm
families, the TAIL − GLOBAL and trained − step-0 contrasts, comparisons on the widths both sides share, and readings
whose every number is a row of results/claims.csv."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from specscale.fit.claims import PRIMARY, STEP0, TRAINED, Primary
from specscale.stats.intervals import CLAIM_COLUMNS
from specscale.stats.multiplicity import holm_adjust
from specscale.study.spec import PRIMARY_BUCKETS, PRIMARY_METRICS, PrimarySpec, SpecError, load_study
from tolerances import rounding_tol

F64 = np.float64
NUMBER = re.compile(r"[+−]?\d+\.\d+")


# --- fit.primary in the spec -----------------------------------------------------------------------------------------

def test_primary_vocabulary_is_the_pipelines() -> None:
    """spec.py may not import tokens/ or measure/ (docs/architecture.md), so it lists the names; they stay equal."""
    from specscale.measure.registry import FIT_METRICS
    from specscale.tokens.sets import ALL_SETS

    assert PRIMARY_BUCKETS == tuple(ALL_SETS) and PRIMARY_METRICS == tuple(FIT_METRICS)


def test_primary_default_and_an_integer_step(tmp_path: Path) -> None:
    from helpers import make_project

    study = load_study(make_project(tmp_path / "a", "preset: tiny\n"))
    assert dict(study.fit.primary) == {"comparison": "muon - adamw", "bucket": "TAIL", "metric": "hard_rank",
                                       "step": "final"}
    assert Primary.from_spec(study.fit.primary) == Primary("muon", "adamw", "TAIL", "hard_rank", None)
    study = load_study(make_project(tmp_path / "b", "preset: tiny\nfit: {primary: {step: 800, bucket: GLOBAL}}\n"))
    assert Primary.from_spec(study.fit.primary).step == 800 and study.fit.primary.bucket == "GLOBAL"


@pytest.mark.parametrize("primary, key, words", [
    ({"comparison": "muon - lamb"}, "fit.primary.comparison", "lamb"),
    ({"comparison": "muon"}, "fit.primary.comparison", "'<optimizer> - <optimizer>'"),
    ({"comparison": "muon - muon"}, "fit.primary.comparison", "itself"),
    ({"comparison": "normuon - adamw"}, "fit.primary.comparison", "normuon not in sweep.optimizers"),
    ({"bucket": "TAILS"}, "fit.primary.bucket", "'TAILS' is not one of HEAD, MID, TAIL, GLOBAL"),
    ({"metric": "renyi_2.0"}, "fit.primary.metric", "is not one of soft_rank, hard_rank"),
    ({"step": "last"}, "fit.primary.step", "neither 'final'"),
])
def test_a_bad_primary_fails_naming_its_key(tmp_path: Path, primary: dict, key: str, words: str) -> None:
    from helpers import make_project

    params = make_project(tmp_path, "preset: smoke\n" + "fit: " + json.dumps({"primary": primary}) + "\n")
    with pytest.raises(SpecError) as info:
        load_study(params)
    assert f"key '{key}'" in str(info.value) and words in str(info.value)


# --- Same widths on both sides ---------------------------------------------------------------------------------------

def _width_study() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Base AdamW and Muon on k ∈ {1, 2, 4, 8} with the k = 8 rank 3× off their power law (β 0.5 and 0.9 on
    {1, 2, 4}); a heads ablation of each and a 2×-steps AdamW on {1, 2, 4} only (β 0.55, 0.95, 0.6). (runs, ranks)"""
    from test_compare import make_runs

    spec = {"A": {"opt": "adamw", "widths": [1, 2, 4, 8]}, "M": {"opt": "muon", "widths": [1, 2, 4, 8]},
            "A6": {"opt": "adamw", "varied": {"model.n_heads": 6}},
            "M6": {"opt": "muon", "varied": {"model.n_heads": 6}},
            "L": {"opt": "adamw", "varied": {"train.steps": 200}}}
    beta = {"A": 0.5, "M": 0.9, "A6": 0.55, "M6": 0.95, "L": 0.6}
    runs = make_runs(spec)
    ranks = [{"run": r.run, "phase": "trained", "bucket": "TAIL", "site": "post", "metric": m,
              "median": (3.0 if r.width_mult == 8 else 1.0) * float(r.ffn_dim) ** beta[r.group]}
             for r in runs.itertuples() for m in PRIMARY_METRICS]
    return runs, pd.DataFrame(ranks)


def test_ablation_and_base_are_compared_on_the_widths_they_share() -> None:
    """Base {1, 2, 4, 8} against ablation {1, 2, 4}: both sides (and the optimizer gain) on {1, 2, 4}, from the fit
    stage's refit (betas_shared.csv); the base's own β over all four widths is another number."""
    from specscale.compare import comparisons as cmp
    from specscale.fit.laws import fit_points
    from specscale.fit.shared_widths import shared_width_fits

    runs, ranks = _width_study()
    keys = ["phase", "bucket", "site", "metric"]
    points = ranks.join(runs.set_index("run")[["group", "ffn_dim"]], on="run").sort_values("ffn_dim")
    betas = fit_points(points, ["group", *keys], value_col="median")
    shared = shared_width_fits(ranks, runs, keys, PRIMARY_METRICS)
    assert set(shared["group"]) == {"A", "M"} and set(shared["widths"]) == {"1,2,4"}
    groups = cmp.group_table(runs)
    assert dict(zip(groups["group"], groups["widths"]))["A"] == "1,2,4,8"
    tol = rounding_tol(F64, n_ops=40, magnitude=10.0)
    own = betas.set_index(["group", "metric"])["beta"]
    assert abs(own[("A", "hard_rank")] - 0.5) > 0.05  # the k = 8 point moves the base's own fit
    arch = cmp.compare_arch_vs_optimizer(betas, groups, "adamw", shared=shared).table.set_index(
        ["optimizer", "metric"])
    for (opt, metric), r in arch.iterrows():
        assert r["widths"] == "1,2,4" and r["status"] == "exceeds"
        assert abs(r["beta_base"] - {"adamw": 0.5, "muon": 0.9}[opt]) <= tol
        assert abs(r["arch_shift"] - 0.05) <= tol and abs(r["optimizer_gain"] - 0.4) <= tol
    _, matched = cmp.matched_loss(runs, betas, groups, shared)
    for r in matched.itertuples():
        assert r.widths == "1,2,4" and abs(r.beta_base - 0.5) <= tol and abs(r.diff_long_minus_base - 0.1) <= tol
    # without the refits the comparison is missing, never made on different widths
    missing = cmp.compare_arch_vs_optimizer(betas, groups, "adamw").table
    assert (missing["status"] == "missing").all() and missing["reason"].str.contains("no refit").all()


# --- Claims on the synthetic study of test_report.py (2 seeds, every family) -----------------------------------------

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    import test_report as tr

    return tr.make_results(tmp_path_factory.mktemp("claims"))


def test_claims_table_families_and_primary(synthetic: Path) -> None:
    claims = pd.read_csv(synthetic / "claims.csv")
    assert list(claims.columns) == CLAIM_COLUMNS and claims["claim"].is_unique
    assert set(claims["verdict"]) <= {"resolved", "not resolved", "not tested"}
    primary = claims[claims["family"] == PRIMARY]
    assert len(primary) == 1 and claims.index[claims["family"] == PRIMARY][0] == 0
    (p,) = primary.itertuples()
    assert p.claim == "muon − adamw: TAIL β_hard post, trained" and (p.lo_adj, p.hi_adj) == (p.lo, p.hi)
    assert p.n == "2 vs 2 seeds" and p.widths == "1,2,4" and "not adjusted" in p.method
    # the one-seed heads arm states its differences as not tested, with no interval
    heads = claims[claims["claim"].str.contains("n_heads=4")]
    assert len(heads) and (heads["verdict"] == "not tested").all() and heads["lo"].isna().all()
    assert claims["family"].str.startswith("over training: ").any()


def test_holm_verdicts_follow_the_adjusted_p_values(synthetic: Path) -> None:
    claims = pd.read_csv(synthetic / "claims.csv")
    gaps = pd.read_csv(synthetic / "beta_gaps.csv").dropna(subset=["claim"]).set_index("claim")
    for family in (TRAINED, "TAIL − GLOBAL"):
        rows = claims[(claims["family"] == family) & (claims["verdict"] != "not tested")]
        adjusted = holm_adjust(gaps.loc[rows["claim"], "p"].to_numpy())
        assert list(adjusted < 0.05) == list(rows["verdict"] == "resolved"), family
        assert rows["method"].str.contains(f"Holm over the family's {len(rows)} tests").all()


def test_contrasts_are_computed_from_the_seeds(synthetic: Path) -> None:
    """TAIL − GLOBAL of a comparison is the TAIL gap minus the GLOBAL gap; trained − step 0 is scipy's paired t on the
    per-seed β of betas.csv."""
    claims = pd.read_csv(synthetic / "claims.csv").set_index("claim")
    tol = rounding_tol(F64, n_ops=40, magnitude=2.0)
    tail, glob = (claims.loc[f"muon − adamw: {b} β_hard post, trained", "estimate"] for b in ("TAIL", "GLOBAL"))
    assert abs(claims.loc["muon − adamw: TAIL − GLOBAL β_hard post, trained", "estimate"] - (tail - glob)) <= tol
    betas = pd.read_csv(synthetic / "betas.csv")
    sel = betas[(betas["group_label"] == "adamw") & (betas["bucket"] == "TAIL") & (betas["site"] == "post")
                & (betas["metric"] == "hard_rank")]
    by_phase = {ph: sel[sel["phase"] == ph].sort_values("seed")["beta"].to_numpy() for ph in ("trained", "step0")}
    ref = stats.ttest_rel(by_phase["trained"], by_phase["step0"]).confidence_interval(0.95)
    row = claims.loc["adamw: trained − step 0, TAIL β_hard post"]
    assert row["family"] == STEP0 and row["n"] == "2 seeds, paired"
    assert abs(row["lo"] - ref.low) <= tol and abs(row["hi"] - ref.high) <= tol


def _formats(values: pd.Series) -> set[str]:
    """Every way a reading may print a claims value: signed or plain, 2 or 3 decimals."""
    from specscale.report.readings import primitives as rd

    out = set()
    for v in values.dropna():
        out |= {rd.signed(v, d) for d in (2, 3)} | {rd.plain(v, d) for d in (2, 3)}
    return out


def claim_numbers_missing(lines: list[str], claims: pd.DataFrame) -> list[str]:
    """Numbers printed in `lines` that are no estimate or interval end of results/claims.csv."""
    known = _formats(pd.concat([claims[c] for c in ("estimate", "lo", "hi", "lo_adj", "hi_adj")]))
    return [f"{n!r} in {line!r}" for line in lines for n in NUMBER.findall(line) if n not in known]


def reading_lines(results: Path) -> tuple[list[str], list[str]]:
    """(the report's readings that state differences, the β-across-seeds reading) on a results directory."""
    from specscale.report import seeds as rs
    from specscale.report import tables as rt
    from specscale.report.readings import fits as rf

    gaps, steps = pd.read_csv(results / "beta_gaps.csv"), pd.read_csv(results / "beta_gaps_steps.csv")
    lines = rs.gap_readings(gaps) + rs.training_readings(pd.read_csv(results / "betas_steps_seeds.csv"), steps)[1:]
    seeds = rf.seeds_reading(rt.seeds_summary(pd.read_csv(results / "betas_seeds.csv")))
    return lines, [seeds.text] if seeds else []


def check_readings_against_claims(results: Path) -> None:
    """Every number a difference reading prints is in claims.csv, and every verdict it prints is its claim's; the
    β-across-seeds reading's trained − step-0 counts are claims.csv's."""
    claims = pd.read_csv(results / "claims.csv")
    lines, seeds = reading_lines(results)
    assert lines and claim_numbers_missing(lines, claims) == []
    assert not any("first resolved" in line for line in lines)
    step0 = claims[(claims["family"] == STEP0)]
    if len(step0) and seeds:
        resolved = int((step0["verdict"] == "resolved").sum())
        assert f"resolved in {resolved} of {len(step0)} cells" in seeds[0]


def test_report_readings_state_only_numbers_of_claims(synthetic: Path) -> None:
    check_readings_against_claims(synthetic)
    lines, _ = reading_lines(synthetic)
    primary = next(line for line in lines if line.startswith("Primary endpoint (fit.primary): "))
    assert primary.endswith(": resolved") and "Holm" not in primary
    assert any("TAIL gap − GLOBAL gap" in line and "TAIL gap is" in line for line in lines)
    assert any("simultaneous band" in line and "excludes 0 at steps" in line for line in lines)
    bad = claim_numbers_missing(["muon − adamw, TAIL β_hard: +0.99 [+0.01, +0.02]"], pd.read_csv(
        synthetic / "claims.csv"))
    assert len(bad) == 3  # the check does fail on numbers that are not claims


def test_a_primary_against_another_optimizer_or_absent(synthetic: Path) -> None:
    """A primary whose reference is not fit.reference_optimizer is computed for itself; one the study lacks is a
    not-tested row that says why."""
    from specscale.fit.claims import claim_tables

    betas, runs = pd.read_csv(synthetic / "betas.csv"), pd.read_csv(synthetic / "runs.csv")
    steps = pd.read_csv(synthetic / "betas_steps.csv")
    primary = Primary.from_spec(PrimarySpec(comparison="muon - normuon", bucket="MID", step="40"))
    tables = claim_tables(betas, steps, runs, "adamw", "welch", primary, "post")
    (row,) = tables.claims[tables.claims["family"] == PRIMARY].itertuples()
    assert row.claim == "muon − normuon: MID β_hard post, step 40" and math.isfinite(row.lo)
    assert (tables.gaps_steps["family"] == PRIMARY).sum() == 1
    absent = claim_tables(betas, steps, runs, "adamw", "welch",
                          Primary.from_spec(PrimarySpec(comparison="dion_1_2 - adamw")), "post")
    (row,) = absent.claims[absent.claims["family"] == PRIMARY].itertuples()
    assert row.verdict == "not tested" and row.method.startswith("not in this study")
