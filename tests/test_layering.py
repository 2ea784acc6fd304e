"""The code's structure, checked: the path is the import name, each wing of `specscale` imports only the wings
docs/architecture.md allows (WINGS below is that table), the library never imports the stage scripts, package
__init__ files re-export nothing, no module imports itself through a cycle, dvc.yaml lists the stages of the stage
table with every code file each one imports, and every document the code cites exists."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from specscale.store.fingerprint import ModuleGraph, has_code, package_dirs
from stages.table import STAGES

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"specscale": REPO / "core/specscale", "stages": REPO / "stages"}
# the source tree's import graph, built by the same code that fingerprints the code a run depends on
SOURCE = ModuleGraph(PACKAGE_DIRS)
MODULES = SOURCE.files  # module name → file
GRAPH = SOURCE.imports  # module name → the specscale modules it imports anywhere in its file
_closure = SOURCE.closure


def test_fingerprints_read_this_source_tree() -> None:
    """The runner fingerprints the installed package (editable install): the same folders the checks here read."""
    assert package_dirs(REPO / "stages") == {k: v.resolve() for k, v in PACKAGE_DIRS.items()}


def test_core_never_imports_the_stage_scripts() -> None:
    offenders = {name: sorted(d for d in deps if d.startswith("stages"))
                 for name, deps in GRAPH.items() if not name.startswith("stages")}
    assert {k: v for k, v in offenders.items() if v} == {}


# Which wing of specscale may import which (at run time; `if TYPE_CHECKING:` imports do not count). The same table is
# in docs/architecture.md. measure/ never imports train/ or optim/ (a spectrum does not depend on how its model was
# trained); study/ knows the optimizers only through optim.defaults; compare/ and report/ read the fit stage's tables
# and never the code that made the runs.
WINGS: dict[str, set[str]] = {
    "hints": set(),
    "store": set(),
    "stats": set(),
    "optim": {"hints"},
    "model": set(),
    "tokens": set(),
    "study": {"store", "optim", "hints"},
    "launch": {"store", "study"},
    "train": {"store", "model", "optim", "tokens"},
    "measure": {"store", "model", "tokens"},
    "fit": {"store", "study", "measure", "stats"},
    "compare": {"study", "measure", "tokens", "stats"},
    "report": {"study", "compare", "measure", "tokens", "stats"},
    "tools": {"store", "study", "launch", "model", "tokens"},
}
# the only optim module study/ may import (default hyperparameters, no torch)
STUDY_OPTIM = {"specscale.optim.defaults"}
# compare/ and report/ may take names from these modules of measure/ and tokens/ (the tables' vocabulary: metric and
# set names), nothing else there
RESULTS_VOCABULARY = {"specscale.measure.registry", "specscale.tokens.sets"}


def _wing(module: str) -> str:
    return module.split(".")[1] if module.startswith("specscale.") else module.split(".")[0]


def test_every_module_lives_in_a_wing_and_the_wing_table_is_complete() -> None:
    wings = {p.name for p in (REPO / "core/specscale").iterdir() if (p / "__init__.py").exists()}
    assert wings == set(WINGS)
    loose = sorted(m for m in MODULES if m.count(".") == 1 and m.startswith("specscale.") and _wing(m) not in WINGS)
    assert loose == [], f"modules outside every wing: {loose}"


def test_wings_import_only_what_the_table_allows() -> None:
    offenders = []
    for name, deps in GRAPH.items():
        if not name.startswith("specscale."):
            continue
        for dep in deps:
            a, b = _wing(name), _wing(dep)
            if a == b or dep == "specscale":
                continue
            if b not in WINGS[a]:
                offenders.append(f"{name} → {dep}")
            elif a == "study" and b == "optim" and dep not in STUDY_OPTIM:
                offenders.append(f"{name} → {dep} (study/ may import only {sorted(STUDY_OPTIM)} of optim/)")
            elif a in ("compare", "report") and b in ("measure", "tokens") and dep not in RESULTS_VOCABULARY:
                offenders.append(f"{name} → {dep} (compare/ and report/ read results/, not {dep})")
    assert offenders == [], "imports the wing table (docs/architecture.md) does not allow:\n" + "\n".join(offenders)


def test_the_wing_table_is_the_one_in_the_architecture_doc() -> None:
    doc = (REPO / "docs/architecture.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)/` \| ([^|]*) \|", doc, re.M))
    assert {w: {x.strip(" `/") for x in v.split(",") if x.strip(" `/-—")} for w, v in rows.items()} == WINGS


def test_path_is_the_import_name_and_pyproject_installs_every_package() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"": "core", "stages": "stages"}
    folders = {".".join(p.parent.relative_to(REPO / "core").parts) for p in (REPO / "core").rglob("__init__.py")}
    assert set(config["packages"]) == folders | {"stages"}


def test_package_inits_re_export_nothing() -> None:
    """Every __init__.py holds a docstring and nothing else: a name is imported from the module that defines it, so an
    import names the file that runs (and a fingerprint does not pull in a whole package)."""
    code = [str(p.relative_to(REPO)) for p in (*(REPO / "core").rglob("__init__.py"), REPO / "stages/__init__.py")
            if has_code(p)]
    assert code == []


def test_no_import_cycles() -> None:
    cycles = sorted(name for name in MODULES if name in _closure(name))
    assert cycles == [], f"modules that import themselves through others: {cycles}"


def test_no_module_loads_code_by_name() -> None:
    """The launcher and the CLI receive entry points from the stage table, never `importlib` by string."""
    assert [n for n, p in MODULES.items() if "import_module(" in p.read_text()] == []


PLAN = "specscale.study.plan"  # every stage command plans the study first (stages/runner.py)
# dvc.yaml's first stage checks the whole study (`specscale validate --record ...`); it owns no runs, so it is not in
# the stage table
VALIDATE = "validate"
VALIDATE_MODULE = "stages.validate"


def _code_deps(deps: list[str]) -> set[str]:
    """The code files a dvc.yaml deps list names (a folder stands for the code files under it)."""
    out = set()
    for d in deps:
        path = REPO / d
        if d.startswith(("core/", "stages/")):
            files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
            out |= {str(f.relative_to(REPO)) for f in files if has_code(f)}
    return out


def test_dvc_yaml_lists_the_stage_table_with_exactly_the_code_each_stage_runs() -> None:
    """A stage's code deps in dvc.yaml are its fingerprint's files plus the code that decides which runs exist and
    their keys (study/plan.py and what it imports), no more and no less: DVC reruns a stage command for an edit to
    code it runs or that can change its runs, and for no other edit (a rerun with nothing to compute is cheap)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(stages) == [VALIDATE, *(s.name for s in STAGES)], \
        "dvc.yaml lists the validate stage, then the stages of stages/table.py in the same order"
    for name, module in {VALIDATE: VALIDATE_MODULE, **{s.name: s.module for s in STAGES}}.items():
        needed = {str(p.relative_to(REPO)) for p in {*SOURCE.code_files(module), *SOURCE.code_files(PLAN)}}
        listed = _code_deps([str(d) for d in stages[name]["deps"]])
        assert listed == needed, (f"dvc.yaml stage '{name}': lacks {sorted(needed - listed)}, "
                                  f"lists code it does not run {sorted(listed - needed)}")
    for stage in STAGES:
        assert stages[stage.name]["cmd"] == f"specscale stage {stage.name}"


def test_every_stage_runs_after_the_validate_stage_which_reads_the_whole_params_file() -> None:
    """The validate stage depends on params.yaml as a file (every key, in every section, not chosen params) and on
    the presets; each other stage reaches its output through its deps, so `dvc repro` of any stage checks first.
    Its output is a small uncached file that changes only with the preset (tests/test_validate.py)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    validate = stages[VALIDATE]
    assert {"params.yaml", "specs"} <= set(validate["deps"]) and "params" not in validate
    [[record, options]] = [next(iter(o.items())) for o in validate["outs"]]
    assert options == {"cache": False} and validate["cmd"] == f"specscale validate --record {record}"
    made_by = {next(iter(o)) if isinstance(o, dict) else o: name for name, body in stages.items()
               for o in [*body.get("outs", []), *body.get("metrics", [])]}

    def upstream(name: str) -> set[str]:
        found = set()
        for dep in stages[name]["deps"]:
            maker = made_by.get(str(dep))
            if maker is not None:
                found |= {maker} | upstream(maker)
        return found

    assert {name for name in stages if name != VALIDATE and VALIDATE not in upstream(name)} == set()


DOC_CITATION = r"[\w./-]*\b(?:science|optimizers|pitfalls|design|architecture|findings/[\w-]+)\.md\b"


def test_documents_the_code_cites_exist() -> None:
    cited = set()
    for path in [*MODULES.values(), *REPO.glob("tests/*.py"), *REPO.glob("benchmarks/*.py"), *REPO.glob("specs/**/*.yaml"),
                 REPO / "README.md", *REPO.glob("docs/**/*.md")]:
        # citations of reference documents (output files such as report/summary.md are not citations)
        cited |= {(str(path.relative_to(REPO)), m) for m in re.findall(DOC_CITATION, path.read_text())}
    missing = sorted((where, doc) for where, doc in cited if not (REPO / doc).exists())
    assert missing == [], f"cited documents that do not exist (file, citation): {missing}"
