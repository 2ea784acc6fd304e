"""results/claims.csv from a real `dvc repro` on the smoke preset with two seeds (AdamW and Muon, k ∈ {1, 2, 3}):
the fit stage writes it, the primary endpoint is its first row, and every number the report's difference readings
print on this study is one of its rows (test_claims.check_readings_against_claims)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from helpers import make_smoke_project, run, smoke_params
from test_claims import check_readings_against_claims

from specscale.fit.claims import PRIMARY
from specscale.stats.intervals import CLAIM_COLUMNS


pytestmark = pytest.mark.slow  # a second smoke study (12 runs, minutes on 2 cores); test_pipeline checks one seed


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    params = smoke_params(sweep={"optimizers": ["adamw", "muon"], "widths": [1, 2, 3], "seeds": [0, 1]})
    root = make_smoke_project(tmp_path_factory.mktemp("claims-smoke"), params)
    run(["dvc", "repro"], root)
    return root


def test_fit_stage_writes_claims(project: Path) -> None:
    claims = pd.read_csv(project / "results/claims.csv")
    assert list(claims.columns) == CLAIM_COLUMNS and len(claims) and claims["claim"].is_unique
    first = claims.iloc[0]
    assert first["family"] == PRIMARY and first["claim"] == "muon − adamw: TAIL β_hard post, trained"
    assert first["n"] == "2 vs 2 seeds" and first["widths"] == "1,2,3"
    assert set(claims["verdict"]) <= {"resolved", "not resolved", "not tested"}
    gaps = pd.read_csv(project / "results/beta_gaps.csv")
    assert {"claim", "family", "diff_adj_low", "diff_adj_high", "verdict", "widths", "p"} <= set(gaps.columns)
    shared = pd.read_csv(project / "results/betas_shared.csv")
    assert shared.empty  # every group has the same widths: nothing to refit


def test_report_readings_are_claims(project: Path) -> None:
    check_readings_against_claims(project / "results")
    assert (project / "report/index.html").exists()
