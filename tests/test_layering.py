"""The code's structure, checked: core (package `specscale`) never imports the stage scripts, no module imports
itself through a cycle, dvc.yaml lists the stages of the stage table with every code file each one imports, and
every document the code cites exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

from specscale.stages.table import STAGES

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"specscale": REPO / "core", "specscale.optim": REPO / "core/optim", "specscale.stages": REPO / "stages"}


def _module_files() -> dict[str, Path]:
    """Module name → file, for every module of the installed package (pyproject's package-dir mapping)."""
    out = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.glob("*.py")):
            out[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return out


MODULES = _module_files()


def _imports(name: str) -> set[str]:
    """specscale modules that `name` imports anywhere in its file (module level or inside functions)."""
    path = MODULES[name]
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        found |= {t for t in targets if t in MODULES and t != name}
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def _closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in GRAPH[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


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
    for path in [*MODULES.values(), *REPO.glob("tests/*.py"), *REPO.glob("benchmarks/*.py"), *REPO.glob("specs/*"),
                 REPO / "README.md", *REPO.glob("docs/**/*.md")]:
        # citations of reference documents (output files such as report/summary.md are not citations)
        cited |= {(str(path.relative_to(REPO)), m) for m in re.findall(DOC_CITATION, path.read_text())}
    missing = sorted((where, doc) for where, doc in cited if not (REPO / doc).exists())
    assert missing == [], f"cited documents that do not exist (file, citation): {missing}"
