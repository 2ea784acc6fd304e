"""The content-hash run store: stable keys, atomic begin/commit, provenance, leftovers."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from specscale.store.integrity import CONTENTS_FILE, damaged_files, file_digest, set_aside_if_damaged
from specscale.store.runs import (
    KEY_LENGTH,
    PROVENANCE_FILE,
    SPEC_FILE,
    SUCCESS,
    RunStore,
    read_json,
    run_key,
    stable_hash,
    write_json,
)

SPEC = {"model": {"d_model": 32, "n_heads": 2}, "optim": {"name": "adamw", "hparams": {"lr": 0.003}}, "seed": 0}


# --- hashing -------------------------------------------------------------------------------------------------------


def test_stable_hash_is_order_independent_for_dicts() -> None:
    a = {"b": 1, "a": {"y": [1, 2], "x": 0.5}}
    b = {"a": {"x": 0.5, "y": [1, 2]}, "b": 1}
    assert stable_hash(a) == stable_hash(b)
    assert len(stable_hash(a)) == KEY_LENGTH == 16
    int(stable_hash(a), 16)  # hex


def test_stable_hash_sees_values_list_order_and_types() -> None:
    base = stable_hash({"a": [1, 2]})
    assert stable_hash({"a": [2, 1]}) != base  # lists are ordered
    assert stable_hash({"a": [1, 3]}) != base
    assert stable_hash({"a": [1, 2], "b": None}) != base
    assert stable_hash({"x": 1}) != stable_hash({"x": "1"})


def test_stable_hash_is_a_fixed_function() -> None:
    """Keys name directories on disk: the hash must not drift between Python processes or versions."""
    import hashlib

    expected = hashlib.sha256(b'{"a":1,"b":[1,2.5,"x"]}').hexdigest()[:16]
    assert stable_hash({"b": [1, 2.5, "x"], "a": 1}) == expected
    assert stable_hash({"v": float("inf")}) == hashlib.sha256(b'{"v":Infinity}').hexdigest()[:16]


def test_run_key_depends_on_stage_version_spec_and_inputs() -> None:
    k = run_key("train", 1, SPEC, {"tokenize": "aaaa"})
    assert k == run_key("train", 1, json.loads(json.dumps(SPEC)), {"tokenize": "aaaa"})
    assert k != run_key("activations", 1, SPEC, {"tokenize": "aaaa"})
    assert k != run_key("train", 2, SPEC, {"tokenize": "aaaa"})
    assert k != run_key("train", 1, {**SPEC, "seed": 1}, {"tokenize": "aaaa"})
    assert k != run_key("train", 1, SPEC, {"tokenize": "bbbb"})


def test_write_json_is_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    write_json(path, {"b": 1, "a": 2})
    write_json(path, {"c": 3})
    assert read_json(path) == {"c": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


# --- the store -----------------------------------------------------------------------------------------------------


def test_layout(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    assert store.root == tmp_path.resolve() / "runs"
    assert store.final_dir("train", "k") == tmp_path.resolve() / "runs" / "train" / "k"
    assert store.work_dir("train", "k") == tmp_path.resolve() / "runs" / ".work" / "train" / "k"
    assert not store.root.exists()  # constructing a store writes nothing
    assert store.finished_keys("train") == set()


def test_begin_commit_is_atomic(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    work = store.begin("train", "k1", SPEC)
    assert work == store.work_dir("train", "k1") and work.is_dir()
    assert read_json(work / SPEC_FILE) == SPEC
    (work / "weights.pt").write_bytes(b"w")
    (work / "resume.pt").write_bytes(b"r")
    (work / "scratch").mkdir()
    (work / "scratch" / "a").write_text("a")
    # Before commit: nothing published.
    assert not store.is_done("train", "k1")
    assert not store.final_dir("train", "k1").exists()
    assert store.finished_keys("train") == set()

    final = store.commit("train", "k1", device="cpu", wall_time_s=1.23456, extra={"val_loss": 2.5},
                         drop=["resume.pt", "scratch", "absent.txt"])
    assert final == store.final_dir("train", "k1")
    assert not work.exists()  # renamed, not copied
    assert store.is_done("train", "k1")
    assert sorted(p.name for p in final.iterdir()) == sorted([SUCCESS, CONTENTS_FILE, SPEC_FILE, PROVENANCE_FILE, "weights.pt"])
    assert read_json(final / SPEC_FILE) == SPEC == store.load_spec("train", "k1")
    assert (final / "weights.pt").read_bytes() == b"w"
    prov = read_json(final / PROVENANCE_FILE)
    for field in ("git_commit", "git_dirty", "packages", "device", "wall_time_s", "python", "host", "finished_at"):
        assert field in prov, field
    assert prov["device"] == "cpu" and prov["wall_time_s"] == 1.235 and prov["val_loss"] == 2.5
    assert {"torch", "specscale", "submitit"} <= set(prov["packages"])
    assert prov["packages"]["torch"] is not None
    assert store.finished_keys("train") == {"k1"}


def test_provenance_records_git_state(tmp_path: Path) -> None:
    if subprocess.run(["git", "--version"], capture_output=True).returncode != 0:
        pytest.skip("no git")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    import os

    env = {**os.environ, **env}
    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True, text=True, env=env)
    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("commit", "-q", "-m", "c")
    head = git("rev-parse", "HEAD").stdout.strip()
    store = RunStore(tmp_path)
    store.begin("train", "clean", SPEC)
    prov = read_json(store.commit("train", "clean", "cpu", 0.1) / PROVENANCE_FILE)
    assert prov["git_commit"] == head and prov["git_dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")  # a tracked file edited: dirty
    store.begin("train", "dirty", SPEC)
    prov = read_json(store.commit("train", "dirty", "cpu", 0.1) / PROVENANCE_FILE)
    assert prov["git_commit"] == head and prov["git_dirty"] is True


def test_provenance_outside_git(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "nogit")
    store.begin("s", "k", {})
    prov = read_json(store.commit("s", "k", "cpu", 0.0) / PROVENANCE_FILE)
    if prov["git_commit"] is not None:  # tmp_path lies inside some repository: nothing to check
        pytest.skip("tmp dir is inside a git work tree")
    assert prov["git_dirty"] is None


def test_leftover_final_dir_without_success_is_never_done_and_replaced(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    leftover = store.final_dir("train", "k2")
    leftover.mkdir(parents=True)
    (leftover / SPEC_FILE).write_text("{}")
    (leftover / "half.pt").write_bytes(b"half")
    assert not store.is_done("train", "k2")
    assert store.finished_keys("train") == set()
    work = store.begin("train", "k2", SPEC)
    (work / "full.pt").write_bytes(b"full")
    final = store.commit("train", "k2", "cpu", 1.0)
    assert store.is_done("train", "k2")
    assert sorted(p.name for p in final.iterdir()) == sorted([SUCCESS, CONTENTS_FILE, SPEC_FILE, PROVENANCE_FILE, "full.pt"])
    assert read_json(final / SPEC_FILE) == SPEC


def test_commit_never_overwrites_a_finished_run(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    (store.begin("train", "k", SPEC) / "out").write_text("first")
    store.commit("train", "k", "cpu", 1.0)
    (store.begin("train", "k", SPEC) / "out").write_text("second")
    store.commit("train", "k", "cpu", 1.0)
    assert (store.final_dir("train", "k") / "out").read_text() == "first"
    assert not store.work_dir("train", "k").exists()


def test_begin_reuses_work_for_resume_and_clears_foreign_state(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    work = store.begin("train", "k", SPEC)
    (work / "resume.pt").write_bytes(b"state")
    assert store.begin("train", "k", SPEC) == work
    assert (work / "resume.pt").read_bytes() == b"state"  # same spec: partial state kept for resume
    store.begin("train", "k", {**SPEC, "seed": 9})
    assert not (work / "resume.pt").exists()  # another spec under the same key: start clean
    assert read_json(work / SPEC_FILE)["seed"] == 9


def test_begin_treats_tuples_and_lists_alike(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    work = store.begin("train", "k", {"betas": (0.9, 0.95)})
    (work / "resume.pt").write_bytes(b"state")
    store.begin("train", "k", {"betas": (0.9, 0.95)})
    assert (work / "resume.pt").exists()


def test_finished_keys(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    for key in ("a", "b", "c"):
        store.begin("train", key, {"k": key})
    store.commit("train", "a", "cpu", 0.0)
    store.commit("train", "c", "cpu", 0.0)
    (store.stage_dir("train") / "stray").mkdir()  # an unfinished leftover
    (store.stage_dir("train") / "file.txt").write_text("not a run")
    assert store.finished_keys("train") == {"a", "c"}
    assert store.finished_keys("spectra") == set()
    assert store.is_done("train", "a") and not store.is_done("train", "b") and not store.is_done("train", "stray")


# --- what a finished run holds (integrity.py) --------------------------------------------------------------------
def _committed(tmp_path: Path, files: dict[str, bytes]) -> RunStore:
    store = RunStore(tmp_path)
    work = store.begin("train", "k1", SPEC)
    for name, data in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(data)
    store.commit("train", "k1", device="cpu", wall_time_s=1.0)
    return store


def test_an_intact_run_has_no_damaged_files_and_stays(tmp_path: Path) -> None:
    store = _committed(tmp_path, {"ckpt/a.pt": b"x" * 10, "big.bin": bytes(range(256)) * 20_000})
    final = store.final_dir("train", "k1")
    assert damaged_files(final) == []
    assert set_aside_if_damaged(store.root, "train", "k1") is None and store.is_done("train", "k1")


@pytest.mark.parametrize("damage", ["truncate", "flip head", "flip tail", "remove", "edit spec"])
def test_a_damaged_file_is_named_and_the_run_set_aside_not_deleted(tmp_path: Path, damage: str) -> None:
    big = bytes(range(256)) * 20_000  # 5 MB: digested by size and its first and last MiB
    store = _committed(tmp_path, {"big.bin": big})
    final = store.final_dir("train", "k1")
    target = final / ("spec.json" if damage == "edit spec" else "big.bin")
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        target.write_bytes(bytes(data[:-1]))
    elif damage.startswith("flip"):
        data[3 if damage == "flip head" else -3] ^= 0x01
        target.write_bytes(bytes(data))
    elif damage == "remove":
        target.unlink()
    else:
        target.write_text(target.read_text().replace('"lr": 0.003', '"lr": 0.03'))
    assert damaged_files(final) == [target.name]
    warning = set_aside_if_damaged(store.root, "train", "k1")
    assert f"runs/train/k1/{target.name}" in warning and "computed again" in warning
    assert not final.exists() and not store.is_done("train", "k1")
    aside = list((store.root / ".quarantine" / "train").iterdir())
    assert len(aside) == 1 and aside[0].name.startswith("k1-") and (aside[0] / CONTENTS_FILE).exists()


def test_digest_reads_only_the_ends_of_a_large_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"a" * (3 << 20))
    before = file_digest(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] = ord("b")  # the middle of a large file is left to its format's own checks (documented)
    path.write_bytes(bytes(data))
    assert file_digest(path) == before and before.startswith(f"{3 << 20}:")


def test_runs_committed_before_the_contents_record_are_trusted(tmp_path: Path) -> None:
    store = _committed(tmp_path, {"w.pt": b"w"})
    (store.final_dir("train", "k1") / CONTENTS_FILE).unlink()
    assert damaged_files(store.final_dir("train", "k1")) == []
