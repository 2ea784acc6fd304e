"""Which code made a run: per-file fingerprints and what changed, the `cache.on_code_change` policy (warn reuses and
says so; recompute replaces the old run only once the new one is finished), `--why`, the fit's mixed-code flag,
weights-only checkpoint loading, and no credentials in anything written under runs/.

The policy tests run a fake stage whose code lives in a throwaway package on disk, so that editing one of its files
changes the stage's fingerprint exactly as editing core/specscale/train/train.py changes the train stage's.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
import os
import sys
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from helpers import REPO, make_project, write_tokens_dir
from specscale.store.integrity import contents_digest
from specscale.store.runs import (CODE_FIELD, INPUT_CONTENTS_FIELD, INPUT_RUNS_FIELD, PROVENANCE_FILE, RUN_ID_FIELD,
                                  SUCCESS, VOLATILE_FILES, RunStore, read_json, stable_hash)
from specscale.store.fingerprint import (MOVED_CODE_FILE, NOT_RECORDED, CodeRef, ModuleGraph, _moved_code, as_moved,
                                         code_diff, files_text, fingerprint_id, mixed_files)
from specscale.fit.fit import mixed_groups
from specscale.launch.launcher import Launcher, Task
from specscale.study.spec import LauncherSpec, load_study
from stages.table import STAGES
from stages.runner import fingerprints, plan_study
from specscale.tools.status import print_status, print_why, spec_diff
from specscale.train.train import RESUME_FILE, train_run


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


# --- the fingerprint ----------------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """A tree shaped like ours: core/pkg (the library, with a sub-package) and stages/ (the stage scripts)."""
    root = tmp_path / "src"
    _write(root / "core/pkg/__init__.py", '"""a docstring only: no code"""\n')
    _write(root / "core/pkg/a.py", """\
        from typing import TYPE_CHECKING

        from pkg.b import B

        if TYPE_CHECKING:  # type-only: never runs
            from pkg.c import C
        else:
            from pkg.sub import H  # the else branch runs

        def f():
            from pkg.sub import helper  # lazy: still code
        """)
    _write(root / "core/pkg/b.py", "B = 1\n")
    _write(root / "core/pkg/c.py", "C = 3  # imported by nobody at run time\n")
    _write(root / "core/pkg/sub/__init__.py", "from .helper import H\n")
    _write(root / "core/pkg/sub/helper.py", "H = 2\n")
    _write(root / "stages/__init__.py", "")
    _write(root / "stages/s.py", "import json\nfrom pkg.a import f\n")
    return {"pkg": root / "core/pkg", "stages": root / "stages"}


def test_fingerprint_names_every_file_the_entry_module_runs(tree: dict[str, Path]) -> None:
    graph = ModuleGraph(tree)
    assert graph.root == tree["pkg"].parents[1]
    assert set(graph.files) == {"pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.sub", "pkg.sub.helper", "stages", "stages.s"}
    assert graph.imports["stages.s"] == {"pkg.a"}
    assert graph.imports["pkg.a"] == {"pkg.b", "pkg.sub", "pkg.sub.helper"}  # not pkg.c: type-only
    assert graph.imports["pkg.sub"] == {"pkg.sub.helper"}  # relative import
    # pkg/__init__.py and stages/__init__.py hold no code: not part of any fingerprint
    files = ["core/pkg/a.py", "core/pkg/b.py", "core/pkg/sub/__init__.py", "core/pkg/sub/helper.py", "stages/s.py"]
    root = graph.root
    assert graph.fingerprint("stages.s") == {f: _sha(root / f) for f in files}
    assert CodeRef.of("stages.s", tree).fingerprint() == graph.fingerprint("stages.s")
    with pytest.raises(KeyError, match="pkg.nope"):
        graph.fingerprint("pkg.nope")


def test_a_change_is_named_by_file(tree: dict[str, Path]) -> None:
    ref = CodeRef.of("stages.s", tree)
    before = ref.fingerprint()
    assert code_diff(before, ref.fingerprint()) == []
    (tree["pkg"] / "b.py").write_text("B = 1  # a comment is a change too: bytes are hashed\n")
    (tree["pkg"] / "c.py").write_text("C = 4\n")  # imported only for type checking: not part of the stage's code
    assert code_diff(before, ref.fingerprint()) == ["core/pkg/b.py"]
    (tree["pkg"] / "a.py").write_text("from pkg.b import B\nfrom pkg.c import C\n")  # a new import, lost ones
    assert code_diff(before, ref.fingerprint()) == ["core/pkg/a.py", "core/pkg/b.py", "core/pkg/c.py",
                                                     "core/pkg/sub/__init__.py", "core/pkg/sub/helper.py"]
    assert code_diff(None, before) == [NOT_RECORDED]


def test_a_moved_fingerprint_reads_as_the_code_after_the_move(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose recorded fingerprint is exactly the code before a move is judged against the code right after it
    (no file differs); one byte different anywhere and it is judged as recorded."""
    before = {"core/train.py": "a" * 64, "stages/train.py": "b" * 64}
    after = {"core/specscale/train/train.py": "c" * 64, "stages/train.py": "d" * 64}
    table = tmp_path / "moved_code.json"
    table.write_text(json.dumps({fingerprint_id(before): after}))
    monkeypatch.setattr("specscale.store.fingerprint.MOVED_CODE_FILE", table)
    _moved_code.cache_clear()
    try:
        assert as_moved(before) == after and code_diff(as_moved(before), after) == []
        edited = {**before, "core/train.py": "e" * 64}
        assert as_moved(edited) == edited
        assert code_diff(as_moved(edited), after) == sorted({*edited, *after})
        assert as_moved(None) is None
    finally:
        _moved_code.cache_clear()


def test_the_real_move_table_names_todays_files() -> None:
    """Every fingerprint the move table maps to names files of today's layout, and every fingerprint it maps from
    names files of the layout before it (core/<module>.py): an entry cannot silently hide a change of today's code."""
    table = json.loads(MOVED_CODE_FILE.read_text())
    assert table, "the move of issue 19 is recorded"
    for key, after in table.items():
        assert all((REPO / f).is_file() for f in after), sorted(f for f in after if not (REPO / f).is_file())
        assert all(f.startswith(("core/specscale/", "stages/")) for f in after)


def test_mixed_files() -> None:
    a, b = {"x.py": "1", "y.py": "2"}, {"x.py": "1", "y.py": "3"}
    assert mixed_files([a, a, a]) == [] and mixed_files([None, None]) == [] and mixed_files([]) == []
    assert mixed_files([a, b, a]) == ["y.py"]
    assert mixed_files([a, {"x.py": "1"}]) == ["y.py"]  # a file one run had and another did not
    assert mixed_files([a, None]) == [NOT_RECORDED]
    assert files_text([["b.py", "a.py"], ["a.py"]]) == "a.py, b.py"


def test_the_real_stages_fingerprints() -> None:
    code = fingerprints()
    assert set(code) == {"tokenize", "buckets", "train", "activations", "spectra"}  # aggregate stages own no runs
    train = code["train"]
    assert {"stages/train.py", "core/specscale/train/train.py", "core/specscale/model/gpt.py",
            "core/specscale/optim/muon.py", "core/specscale/store/runs.py"} <= set(train)
    assert "core/specscale/measure/metrics.py" not in train and "stages/spectra.py" not in train
    assert train["core/specscale/train/train.py"] == _sha(REPO / "core/specscale/train/train.py")
    spectra = code["spectra"]
    assert {"core/specscale/measure/metrics.py", "core/specscale/measure/activations.py",
            "stages/spectra.py"} <= set(spectra)
    # a spectrum's code does not depend on how its model was trained (issue 19: ≤ 15 files, no optimizer, no trainer)
    assert len(spectra) <= 15, sorted(spectra)
    assert [f for f in spectra if "/optim/" in f or "/train/" in f] == []
    # the activations stage plans which runs are measurable (study/), which knows the optimizers' defaults only
    assert [f for f in code["activations"] if "/optim/" in f or "/train/" in f] == ["core/specscale/optim/defaults.py"]


def test_an_edit_to_an_optimizer_flags_train_runs_only(tmp_path: Path) -> None:
    """Appending a comment to an optimizer file changes the train stage's fingerprint and no other stage's (so no
    activations, spectra or β made from them is 'made by other code'); the same edit to the probe flags the
    activations and spectra stages and not train."""
    shutil.copytree(REPO / "core/specscale", tmp_path / "core/specscale", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "stages", tmp_path / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    dirs = {"specscale": tmp_path / "core/specscale", "stages": tmp_path / "stages"}

    def stage_prints() -> dict[str, dict[str, str]]:
        return {s.name: ModuleGraph(dirs).fingerprint(s.module) for s in STAGES}

    before = stage_prints()
    with open(tmp_path / "core/specscale/optim/dion.py", "a") as f:
        f.write("# a comment\n")
    after = stage_prints()
    assert {name: code_diff(before[name], after[name]) for name in before if before[name] != after[name]} == {
        "train": ["core/specscale/optim/dion.py"]}
    with open(tmp_path / "core/specscale/measure/activations.py", "a") as f:
        f.write("# a comment\n")
    probe_edit = stage_prints()
    assert sorted(name for name in after if after[name] != probe_edit[name]) == ["activations", "spectra"]


# --- the policy, on a fake stage -------------------------------------------------------------------------------------

STAGE = '''
import json
from pathlib import Path

from fakestage.helper import VALUE


def run_one(spec, work, store):
    calls = Path(spec["calls"])
    with calls.open("a") as fh:
        fh.write(spec["name"] + "\\n")
    if spec["name"] in (calls.parent / "fail").read_text().split():
        raise RuntimeError(f"planned failure of {spec['name']}")
    (work / "out.json").write_text(json.dumps({"name": spec["name"], "call": len(calls.read_text().split())}))
    return {"value": VALUE}
'''


class Echo(list):
    def __call__(self, msg: str) -> None:
        self.append(msg)


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    code = tmp_path / "code"
    _write(code / "fakestage/__init__.py", "")
    _write(code / "fakestage/helper.py", "VALUE = 1\n")
    _write(code / "fakestage/stage.py", STAGE)
    monkeypatch.syspath_prepend(str(code))
    for name in ("fakestage", "fakestage.helper", "fakestage.stage"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    module = importlib.import_module("fakestage.stage")
    (tmp_path / "fail").write_text("")
    tasks = [Task(f"key{n}", f"run {n}", {"name": n, "calls": str(tmp_path / "calls")}) for n in "abc"]
    return {"run_one": module.run_one, "ref": CodeRef.of("fakestage.stage", {"fakestage": code / "fakestage"}),
            "store": RunStore(tmp_path / "proj"), "tasks": tasks, "code": code, "tmp": tmp_path}


def _launch(fake: dict, policy: str = "warn") -> tuple[object, Echo]:
    cfg = OmegaConf.structured(LauncherSpec)
    cfg.cluster = "debug"
    echo = Echo()
    launcher = Launcher("fake", fake["run_one"], fake["store"], cfg, echo=echo, code=fake["ref"], on_code_change=policy)
    return launcher.run(fake["tasks"]), echo


def _calls(fake: dict) -> list[str]:
    path = fake["tmp"] / "calls"
    return path.read_text().split() if path.exists() else []


def test_provenance_records_the_fingerprint_beside_the_commit(fake: dict) -> None:
    report, echo = _launch(fake)
    assert report.computed == ["keya", "keyb", "keyc"] and echo[0] == "[fake] 3 runs: 0 cached, 3 to compute"
    prov = read_json(fake["store"].final_dir("fake", "keya") / PROVENANCE_FILE)
    assert prov[CODE_FIELD] == {"helper.py": _sha(fake["code"] / "fakestage/helper.py"),
                                "stage.py": _sha(fake["code"] / "fakestage/stage.py")}
    assert "git_commit" in prov and len(prov[RUN_ID_FIELD]) == 32 and prov[INPUT_RUNS_FIELD] == {}


def test_warn_reuses_runs_made_by_other_code_and_says_which_files(fake: dict) -> None:
    _launch(fake)
    (fake["code"] / "fakestage/helper.py").write_text("VALUE = 1  # reworded\n")
    report, echo = _launch(fake, "warn")
    assert echo[0] == "[fake] 3 runs: 3 cached (3 made by other code: helper.py), 0 to compute"
    assert report.cached == ["keya", "keyb", "keyc"] and report.computed == [] and _calls(fake) == ["a", "b", "c"]
    assert report.changed == {k: ["helper.py"] for k in ("keya", "keyb", "keyc")}
    assert echo[-1] == "[fake] summary: 0 computed, 3 cached (3 made by other code: specscale status --why), 0 failed"


def test_recompute_replaces_only_once_the_new_run_is_committed(fake: dict) -> None:
    store = fake["store"]
    _launch(fake)
    old_b = (store.final_dir("fake", "keyb") / "out.json").read_text()
    (fake["code"] / "fakestage/helper.py").write_text("VALUE = 2\n")
    new_code = fake["ref"].fingerprint()
    (fake["tmp"] / "fail").write_text("b")  # the recomputation of b fails
    report, echo = _launch(fake, "recompute")
    assert echo[0] == "[fake] 3 runs: 0 cached, 3 to compute (3 made by other code, recomputed: helper.py)"
    assert report.computed == ["keya", "keyc"] and [f[0] for f in report.failed] == ["keyb"]
    assert _calls(fake) == ["a", "b", "c", "a", "b", "c"]
    for key, call in (("keya", 4), ("keyc", 6)):  # the new runs, published
        assert read_json(store.final_dir("fake", key) / PROVENANCE_FILE)[CODE_FIELD] == new_code
        assert json.loads((store.final_dir("fake", key) / "out.json").read_text())["call"] == call
    # the failed recomputation left the old run published, untouched, and nothing aside
    assert store.is_done("fake", "keyb") and (store.final_dir("fake", "keyb") / "out.json").read_text() == old_b
    assert read_json(store.final_dir("fake", "keyb") / PROVENANCE_FILE)[CODE_FIELD] != new_code
    assert not store.replaced_dir("fake", "keyb").exists()

    (fake["tmp"] / "fail").write_text("")
    report, echo = _launch(fake, "recompute")
    assert echo[0] == "[fake] 3 runs: 2 cached, 1 to compute (1 made by other code, recomputed: helper.py)"
    assert report.computed == ["keyb"] and report.failed == [] and _calls(fake)[-1] == "b"
    assert read_json(store.final_dir("fake", "keyb") / PROVENANCE_FILE)[CODE_FIELD] == new_code
    report, echo = _launch(fake, "recompute")
    assert echo[0] == "[fake] 3 runs: 3 cached, 0 to compute" and report.changed == {}


def test_a_replacement_killed_between_its_renames_is_recovered(tmp_path: Path, monkeypatch) -> None:
    store = RunStore(tmp_path)
    (store.begin("s", "k", {"n": 1}) / "out").write_text("old")
    store.commit("s", "k", "cpu", 0.0)
    (store.begin("s", "k", {"n": 1}) / "out").write_text("new")
    real_rename, calls = os.rename, []

    def dies_on_second(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process is killed after moving the old run aside
        real_rename(src, dst)

    monkeypatch.setattr("specscale.store.runs.os.rename", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        store.commit("s", "k", "cpu", 0.0, replace=True)
    monkeypatch.setattr("specscale.store.runs.os.rename", real_rename)
    assert not store.is_done("s", "k")  # missing, never half-finished
    assert (store.replaced_dir("s", "k") / "out").read_text() == "old"
    assert (store.work_dir("s", "k") / SUCCESS).exists()
    assert store.recover("s", "k") and store.is_done("s", "k")
    assert (store.final_dir("s", "k") / "out").read_text() == "new"
    assert not store.replaced_dir("s", "k").exists() and not store.work_dir("s", "k").exists()
    assert not store.recover("s", "k")


def test_a_run_made_from_a_recomputed_input_is_reported(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    (store.begin("train", "t", {"n": 1}) / "w.pt").write_bytes(b"old")
    store.commit("train", "t", "cpu", 0.0)
    store.begin("spectra", "s", {"inputs": {"train": "t"}})
    store.commit("spectra", "s", "cpu", 0.0)
    prov = read_json(store.final_dir("spectra", "s") / PROVENANCE_FILE)
    assert prov[INPUT_RUNS_FIELD] == {"train": read_json(store.final_dir("train", "t") / PROVENANCE_FILE)[RUN_ID_FIELD]}
    assert prov[INPUT_CONTENTS_FIELD] == {"train": contents_digest(store.final_dir("train", "t"), VOLATILE_FILES)}
    assert store.changes("spectra", "s", None) == []
    (store.begin("train", "t", {"n": 1}) / "w.pt").write_bytes(b"new")
    store.commit("train", "t", "cpu", 0.0, replace=True)
    assert store.changes("spectra", "s", None) == ["input train recomputed"]
    assert store.changes("spectra", "s", {"x.py": "1"}) == [NOT_RECORDED, "input train recomputed"]


def test_an_input_recomputed_byte_identical_is_not_a_change(tmp_path: Path) -> None:
    """Two commits of an input with the same files (other run ids, times): the run made from the first is not
    'made from another input'; a file that differs is."""
    store = RunStore(tmp_path)
    (store.begin("tokenize", "t", {"n": 1}) / "tokenizer.json").write_text("{}")
    store.commit("tokenize", "t", "cpu", 0.0)
    store.begin("train", "r", {"inputs": {"tokenize": "t"}})
    store.commit("train", "r", "cpu", 0.0)
    first_id = read_json(store.final_dir("tokenize", "t") / PROVENANCE_FILE)[RUN_ID_FIELD]
    (store.begin("tokenize", "t", {"n": 1}) / "tokenizer.json").write_text("{}")
    store.commit("tokenize", "t", "cpu", 1.0, replace=True)
    assert read_json(store.final_dir("tokenize", "t") / PROVENANCE_FILE)[RUN_ID_FIELD] != first_id
    assert store.changes("train", "r", None) == []
    (store.begin("tokenize", "t", {"n": 1}) / "tokenizer.json").write_text('{"merges": []}')
    store.commit("tokenize", "t", "cpu", 1.0, replace=True)
    assert store.changes("train", "r", None) == ["input tokenize recomputed"]


def test_runs_that_recorded_only_input_run_ids_are_compared_by_run_id(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.begin("tokenize", "t", {"n": 1})
    store.commit("tokenize", "t", "cpu", 0.0)
    store.begin("train", "r", {"inputs": {"tokenize": "t"}})
    prov_path = store.commit("train", "r", "cpu", 0.0) / PROVENANCE_FILE
    old = read_json(prov_path)
    del old[INPUT_CONTENTS_FIELD]  # as made before contents were recorded
    prov_path.write_text(json.dumps(old))
    assert store.changes("train", "r", None) == []
    store.begin("tokenize", "t", {"n": 1})
    store.commit("tokenize", "t", "cpu", 0.0, replace=True)  # same files, another run id
    assert store.changes("train", "r", None) == ["input tokenize recomputed"]


def test_the_cache_section_invalidates_nothing(tmp_path: Path) -> None:
    base = "preset: smoke\nsweep: {optimizers: [adamw], widths: [1, 2], seeds: [0]}\n"
    keys = []
    for policy in ("warn", "recompute"):
        params = make_project(tmp_path / policy, base + f"cache: {{on_code_change: {policy}}}\n")
        plan = plan_study(load_study(params), params)
        assert plan.study.cache.on_code_change == policy
        keys.append({s: sorted(plan.keys(s)) for s in plan.run_stages()})
    assert keys[0] == keys[1]
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert [s for s, body in dvc.items() if "cache" in body.get("params", [])] == []


# --- plan/status --why, and the fit's flag, on a planned study with hand-made runs ----------------------------------


def _study(root: Path, extra: str = "") -> tuple:
    params = make_project(root, "preset: smoke\nsweep: {optimizers: [adamw, muon], widths: [1, 2, 3], seeds: [0]}\n"
                          + extra)
    return plan_study(load_study(params), params), RunStore(root)


def _finish(store: RunStore, run, code: dict | None = None) -> None:
    store.begin(run.stage, run.key, run.spec)
    store.commit(run.stage, run.key, "cpu", 0.0, code=code)


def test_why_names_the_nearest_run_and_the_fields(tmp_path: Path, capsys) -> None:
    plan, store = _study(tmp_path)
    first = [r for r in plan.train if r.point.optimizer == "adamw" and r.point.width == 1][0]
    _finish(store, first, {"core/specscale/train/train.py": "1"})
    lr = first.spec["optim"]["hparams"]["lr"]
    plan2, _ = _study(tmp_path / "again", "optim: {adamw: {lr: 0.5}}\n")
    print_why(plan2, store, {"train": {"core/specscale/train/train.py": "1"}}, "warn")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "why (cache.on_code_change: warn):"
    assert out[1] == "[tokenize] 1 to compute"
    assert out[3] == "    never computed: no finished tokenize run"
    adamw2 = [r for r in plan2.train if r.point.optimizer == "adamw" and r.point.width == 2][0]
    i = out.index(f"  {adamw2.label} (key {adamw2.key})")
    # AdamW's per-role lrs are tied to lr (optim/defaults.py), so they move with it
    assert out[i + 1:i + 7] == [f"    nearest finished run {first.key} differs in 5 fields:",
                                "      model.ffn_mult: 1 → 2", *(f"      optim.hparams.{k}: {lr} → 0.5" for k in
                                                                 ("embed_lr", "head_lr", "lr", "other_lr"))]
    muon1 = [r for r in plan2.train if r.point.optimizer == "muon" and r.point.width == 1][0]
    i = out.index(f"  {muon1.label} (key {muon1.key})")
    assert out[i + 1].startswith(f"    nearest finished run {first.key} differs in ")
    assert "      optim.name: \"adamw\" → \"muon\"" in out[i + 2:]
    assert spec_diff({"a": {"b": 1}, "runtime": {"x": 1}}, {"a": {"b": 1, "c": [1]}}) == [("a.c", "(absent)", [1])]

    # a new input run is named by its label
    spectra = {(r.point.optimizer, r.point.width): r for r in plan.spectra}
    trains = {(r.point.optimizer, r.point.width): r for r in plan.train}
    _finish(store, spectra["adamw", 1])
    print_why(plan, store)
    out = capsys.readouterr().out.splitlines()
    i = out.index(f"  {spectra['adamw', 2].label} (key {spectra['adamw', 2].key})")
    assert out[i + 1] == f"    nearest finished run {spectra['adamw', 1].key} differs in 2 fields:"
    assert out[i + 2] == (f"      inputs.train: \"{trains['adamw', 1].key}\" → \"{trains['adamw', 2].key}\" "
                          f"(train adamw k=2 seed=0)")
    assert out[i + 3].startswith("      measure_key: ")


def test_why_and_status_name_runs_made_by_other_code(tmp_path: Path, capsys) -> None:
    plan, store = _study(tmp_path)
    made = {"core/specscale/train/train.py": "old", "core/specscale/model/gpt.py": "same"}
    today = {"core/specscale/train/train.py": "new", "core/specscale/model/gpt.py": "same"}
    for run in plan.train:
        _finish(store, run, made if run.point.width == 3 else today)
    w3 = [r for r in plan.train if r.point.width == 3]
    print_why(plan, store, {"train": today}, "warn")
    out = capsys.readouterr().out.splitlines()
    assert "[train] 0 to compute, 2 cached made by other code" in out
    assert f"  {w3[0].label} (key {w3[0].key}) cached, made by other code: core/specscale/train/train.py" in out
    print_why(plan, store, {"train": today}, "recompute")
    out = capsys.readouterr().out.splitlines()
    i = out.index("[train] 2 to compute")
    assert out[i + 1:i + 3] == [f"  {w3[0].label} (key {w3[0].key})",
                                "    made by other code, recomputed: core/specscale/train/train.py"]
    print_status(plan, store, {"train": today}, "warn")
    out = capsys.readouterr().out.splitlines()
    i = out.index("train: 6 cached")
    assert out[i + 1] == ("  2 cached made by other code (reused: cache.on_code_change is warn): "
                          "core/specscale/train/train.py")
    assert out[i + 2].split() == ["other", "code", *w3[0].label.split(), w3[0].key, "core/specscale/train/train.py"]


def test_fit_flags_a_group_whose_widths_were_made_by_different_code(tmp_path: Path) -> None:
    plan, store = _study(tmp_path)
    code = {"core/specscale/train/train.py": "1", "core/specscale/measure/metrics.py": "1"}
    for train, acts, spectra in zip(plan.train, plan.activations, plan.spectra):
        odd = train.point.optimizer == "muon" and train.point.width == 2
        _finish(store, train, {**code, "core/specscale/train/train.py": "2"} if odd else code)
        _finish(store, acts, code)
        _finish(store, spectra, None if odd else code)
    mixed = mixed_groups(plan, store)
    groups = {r.point.optimizer: stable_hash(r.point.group_spec()) for r in plan.train}
    assert mixed.loc[groups["adamw"]].to_dict() == {"mixed_code": "", "mixed_spec": ""}
    assert mixed.loc[groups["muon"]].to_dict() == {
        "mixed_code": f"train: core/specscale/train/train.py; spectra: {NOT_RECORDED}", "mixed_spec": ""}
    # a run whose recorded spec differs in a hashed field other than the width
    adamw3 = [r for r in plan.train if r.point.optimizer == "adamw" and r.point.width == 3][0]
    spec_path = store.final_dir("train", adamw3.key) / "spec.json"
    spec = read_json(spec_path)
    spec["train"]["steps"] += 1
    spec["runtime"]["threads"] = 7  # not hashed: never flagged
    spec_path.write_text(json.dumps(spec))
    assert mixed_groups(plan, store).loc[groups["adamw"]].to_dict() == {"mixed_code": "", "mixed_spec": "train.steps"}


# --- weights only, no secrets ---------------------------------------------------------------------------------------


def test_every_torch_load_in_the_package_is_weights_only() -> None:
    calls = []
    for path in [*(REPO / "core").rglob("*.py"), *(REPO / "stages").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                calls.append((str(path.relative_to(REPO)), kw.get("weights_only")))
    assert calls and all(flag == "True" for _, flag in calls), calls


@pytest.mark.parametrize("optimizer", ["adamw", "muon", "dion_1_2"])
def test_resume_state_loads_weights_only(tmp_path: Path, optimizer: str, capfd) -> None:
    params = make_project(tmp_path / "p", f"preset: smoke\nmodel: {{d_model: 16, n_layers: 1, n_heads: 2}}\n"
                          f"train: {{steps: 6, batch_size: 4, seq_len: 16, log_every: 2, val_tokens: 256, "
                          f"device: cpu, precision: fp32}}\nsweep: {{optimizers: [{optimizer}], widths: [1]}}\n")
    spec = plan_study(load_study(params), params).train[0].spec
    tokens = write_tokens_dir(tmp_path / "tokens", n_train=4000, n_val=1000)
    (tmp_path / "w").mkdir()
    n_threads = torch.get_num_threads()
    try:
        first = train_run(spec, tmp_path / "w", tokens, threads=1, resume_every=2)
        state = torch.load(tmp_path / "w" / RESUME_FILE, weights_only=True)  # raises on any pickled object
        assert set(state) == {"model", "optimizer", "step", "initial_loss"} and state["step"] == 4
        assert isinstance(state["initial_loss"], float)
        (tmp_path / "w" / "result.json").unlink()
        again = train_run(spec, tmp_path / "w", tokens, threads=1, resume_every=2)  # the real resume path
    finally:
        torch.set_num_threads(n_threads)
    assert "resumed from step 4" in capfd.readouterr().out
    assert again["val_loss"] == first["val_loss"]


SECRETS = {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-secret-value-7731", "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE-id-7731",
           "GITHUB_TOKEN": "ghp-token-value-7731", "HF_TOKEN": "hf-token-value-7731"}


def test_nothing_written_under_runs_holds_a_credential(fake: dict, monkeypatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    _launch(fake)  # in-process
    store = fake["store"]
    cfg = OmegaConf.structured(LauncherSpec)
    cfg.cluster, cfg.poll_seconds, cfg.timeout_min = "local", 0.1, 2
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(fake["code"]), os.environ.get("PYTHONPATH", "")]))
    task = Task("keylocal", "run local", {"name": "d", "calls": str(fake["tmp"] / "calls")})
    report = Launcher("fake", fake["run_one"], store, cfg, echo=Echo(), code=fake["ref"]).run([task])  # submitit
    assert report.computed == ["keylocal"]
    prov = read_json(store.final_dir("fake", "keylocal") / PROVENANCE_FILE)
    assert prov[CODE_FIELD] == fake["ref"].fingerprint()  # fingerprinted by the job itself
    written = [p for p in store.root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".pkl" for p in written) and any(p.name.endswith("_log.out") for p in written)
    leaks = [(str(p.relative_to(store.root)), name) for p in written for name, value in SECRETS.items()
             if value.encode() in p.read_bytes() or name.encode() in p.read_bytes()]
    assert leaks == []
