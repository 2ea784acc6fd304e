"""Every interval a findings document or README's summary of the default study states is a claim of the study it
reports: docs/findings/<name>.md states `estimate [lo, hi]` only as a row of docs/findings/<name>-claims.csv (the
claims files of that study's run, committed beside it), with the unadjusted or the family-adjusted interval.
A document whose study predates results/claims.csv has no such file and must say so at its top."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
FINDINGS = REPO / "docs" / "findings"
# '+0.146 [+0.025, +0.267]' or '−0.27 [−0.47, −0.07]': an estimate and its interval (ASCII or Unicode minus)
INTERVAL = re.compile(r"([+\-−]?\d+\.\d+) \[([+\-−]?\d+\.\d+), ([+\-−]?\d+\.\d+)\]")
PREDATES = "predate"  # what a document without a claims file says at its top (its study ran before claims.csv)


def _num(text: str) -> float:
    return float(text.replace("−", "-"))


def _decimals(text: str) -> int:
    return len(text.split(".")[1])


def intervals_missing(text: str, claims: pd.DataFrame) -> list[str]:
    """Each `estimate [lo, hi]` of `text` that no claim row gives (rounded to the decimals printed)."""
    missing = []
    for est, lo, hi in INTERVAL.findall(text):
        d = _decimals(est)
        found = False
        for low, high in (("lo", "hi"), ("lo_adj", "hi_adj")):
            ok = ((claims["estimate"].round(d) == round(_num(est), d)) & (claims[low].round(d) == round(_num(lo), d))
                  & (claims[high].round(d) == round(_num(hi), d)))
            found |= bool(ok.any())
        if not found:
            missing.append(f"{est} [{lo}, {hi}]")
    return missing


@pytest.mark.parametrize("doc", sorted(FINDINGS.glob("*.md")), ids=lambda p: p.name)
def test_a_findings_document_states_only_intervals_of_its_claims(doc: Path) -> None:
    claims_file = FINDINGS / f"{doc.stem}-claims.csv"
    text = doc.read_text()
    if not claims_file.exists():
        head = text[:1500].lower()
        assert PREDATES in head, f"{doc.name} has no {claims_file.name}: its top must say its numbers predate claims"
        return
    claims = pd.read_csv(claims_file)
    assert INTERVAL.findall(text), f"{doc.name} states no interval"
    assert intervals_missing(text, claims) == []


def test_readme_states_the_default_studys_intervals_from_its_claims() -> None:
    """README's paragraph on what the default study shows quotes docs/findings/default-claims.csv."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("**What the default study shows"):]
    section = section[:section.index("\n\n")]
    claims = pd.read_csv(FINDINGS / "default-claims.csv")
    assert INTERVAL.findall(section) and intervals_missing(section, claims) == []


def test_the_check_fails_on_an_interval_that_is_no_claim() -> None:
    claims = pd.DataFrame({"estimate": [0.146], "lo": [0.025], "hi": [0.267], "lo_adj": [0.01], "hi_adj": [0.3]})
    assert intervals_missing("gap +0.146 [+0.025, +0.267] and +0.15 [+0.01, +0.30]", claims) == []
    assert intervals_missing("gap +0.15 [+0.03, +0.28]", claims) == ["+0.15 [+0.03, +0.28]"]
