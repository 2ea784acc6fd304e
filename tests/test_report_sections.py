"""The report is built from one list (report_sections.SECTIONS): every entry is complete, the report renders from it
with every family absent (each section and figure then says why), and the report and compare modules import
specscale at module level only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from specscale.compare.compare import COMPARE_TABLES
from specscale.report.report import build_report, load_inputs
from specscale.report.render import section_markdown
from specscale.report.sections import FIGURES, SECTIONS

LIBRARY = Path(__file__).resolve().parents[1] / "core/specscale"
# The modules of the compare and report stages: every file of the two wings.
MODULES = tuple(sorted(str(p.relative_to(LIBRARY)) for wing in ("compare", "report")
                       for p in (LIBRARY / wing).rglob("*.py")))


def test_every_section_entry_is_complete() -> None:
    keys = [s.key for s in SECTIONS]
    assert len(set(keys)) == len(keys), "section keys must be unique"
    for s in SECTIONS:
        assert s.key and s.title.strip(), s
        assert callable(s.body), s.key
        assert s.missing.strip(), f"section {s.key} has no text for missing data"
        for fig in s.figures:
            assert fig.name and fig.title.strip() and callable(fig.build), fig.name
            assert fig.missing.strip(), f"figure {fig.name} has no text for missing data"
    names = [f.name for s in SECTIONS for f in s.figures]
    assert len(set(names)) == len(names) == len(FIGURES), "figure names (file names) must be unique"
    tables = [t.name for t in COMPARE_TABLES]
    assert len(set(tables)) == len(tables), "compare table names (file names) must be unique"


def test_report_renders_every_section_with_nothing_in_the_study(tmp_path: Path) -> None:
    """No results at all: every section and every figure renders its missing-data text, none fails."""
    results = tmp_path / "results"
    (results / "compare").mkdir(parents=True)
    build_report(results, tmp_path / "report", {"preset": "empty"}, choices=[])
    summary = (tmp_path / "report" / "summary.md").read_text()
    html = (tmp_path / "report" / "index.html").read_text()
    for s in SECTIONS:
        assert f"## {s.title}\n" in summary, s.key
        assert s.missing in summary, s.key
        for fig in s.figures:
            assert f"{fig.title}: not available: {fig.missing}" in summary, fig.name
    assert summary.index(SECTIONS[0].title) < summary.index(SECTIONS[-1].title)  # in list order
    assert html.split("<body>", 1)[1].count("<h2>") == len(SECTIONS)  # (the inlined Vega bundle has its own)
    assert not list((tmp_path / "report" / "figures").iterdir())


def test_sections_read_only_tables_that_exist(tmp_path: Path) -> None:
    """Each body reads tables by name: every name must be a results or compare table (a KeyError otherwise)."""
    inputs = load_inputs(tmp_path, {}, [])
    assert set(t.name for t in COMPARE_TABLES) <= set(inputs.tables)
    for s in SECTIONS:
        section_markdown(s, s.body(inputs), {})
        for fig in s.figures:
            assert fig.build(inputs, fig.title) is None, fig.name


def _nested_imports(name: str) -> list[str]:
    """specscale imports inside functions (or other blocks) of core/specscale/<name>, rather than at module level."""
    tree = ast.parse((LIBRARY / name).read_text())
    return [ast.unparse(node) for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
            and "specscale" in ast.unparse(node) and node not in tree.body]


@pytest.mark.parametrize("name", MODULES)
def test_module_imports_specscale_at_module_level(name: str) -> None:
    """What a module needs is visible at its top (an import inside a function can hide a cycle; test_layering.py
    checks there is none and that core never imports the stages)."""
    assert len(MODULES) >= 15
    assert _nested_imports(name) == [], f"core/specscale/{name}"
