"""The code's structure, checked: core (package `specscale`) never imports the stage scripts, no module imports
itself through a cycle, dvc.yaml lists the stages of the stage table with every code file each one imports, and
every document the code cites exists."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from specscale.fingerprint import ModuleGraph, package_dirs
from specscale.stages.table import STAGES

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"specscale": REPO / "core", "specscale.optim": REPO / "core/optim", "specscale.stages": REPO / "stages"}
# the source tree's import graph, built by the same code that fingerprints the code a run depends on
SOURCE = ModuleGraph(PACKAGE_DIRS)
MODULES = SOURCE.files  # module name → file
GRAPH = SOURCE.imports  # module name → the specscale modules it imports anywhere in its file
_closure = SOURCE.closure


def test_fingerprints_read_this_source_tree() -> None:
    """The runner fingerprints the installed package (editable install): the same folders the checks here read."""
    assert package_dirs(REPO / "stages") == {k: v.resolve() for k, v in PACKAGE_DIRS.items()}


def test_core_never_imports_the_stage_scripts() -> None:
    offenders = {name: sorted(d for d in deps if d.startswith("specscale.stages"))
                 for name, deps in GRAPH.items() if not name.startswith("specscale.stages")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_import_cycles() -> None:
    cycles = sorted(name for name in MODULES if name in _closure(name))
    assert cycles == [], f"modules that import themselves through others: {cycles}"


def test_no_module_loads_code_by_name() -> None:
    """The launcher and the CLI receive entry points from the stage table, never `importlib` by string."""
    assert [n for n, p in MODULES.items() if "import_module(" in p.read_text()] == []


def test_dvc_yaml_lists_the_stage_table_with_complete_code_deps() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(stages) == [s.name for s in STAGES], "dvc.yaml and stages/table.py must list the same stages in order"
    for stage in STAGES:
        deps = [str(d) for d in stages[stage.name]["deps"]]
        # an empty package __init__ is no code: `from specscale import x` needs x, not the package file
        needed = {m for m in {stage.module} | _closure(stage.module) if MODULES[m].stat().st_size}
        missing = []
        for module in sorted(needed):
            rel = MODULES[module].relative_to(REPO)
            if not any(rel == Path(d) or Path(d) in rel.parents for d in deps):
                missing.append(str(rel))
        assert missing == [], f"dvc.yaml stage '{stage.name}' lacks code deps it imports: {missing}"
        assert stages[stage.name]["cmd"] == f"specscale stage {stage.name}"


DOC_CITATION = r"[\w./-]*\b(?:science|optimizers|pitfalls|design|architecture|findings/[\w-]+)\.md\b"


def test_documents_the_code_cites_exist() -> None:
    cited = set()
    for path in [*MODULES.values(), *REPO.glob("tests/*.py"), *REPO.glob("benchmarks/*.py"), *REPO.glob("specs/**/*.yaml"),
                 REPO / "README.md", *REPO.glob("docs/**/*.md")]:
        # citations of reference documents (output files such as report/summary.md are not citations)
        cited |= {(str(path.relative_to(REPO)), m) for m in re.findall(DOC_CITATION, path.read_text())}
    missing = sorted((where, doc) for where, doc in cited if not (REPO / doc).exists())
    assert missing == [], f"cited documents that do not exist (file, citation): {missing}"
