"""The content-hash run store: stable keys, atomic begin/commit, provenance, leftovers."""

from __future__ import annotations

import hashlib
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


@pytest.mark.parametrize("damage", ["truncate", "flip head", "flip middle", "flip tail", "remove", "edit spec"])
def test_a_damaged_file_is_named_and_the_run_set_aside_not_deleted(tmp_path: Path, damage: str) -> None:
    big = bytes(range(256)) * 20_000  # 5 MB: above SMALL, so the quick check compares its size only
    store = _committed(tmp_path, {"big.bin": big})
    final = store.final_dir("train", "k1")
    target = final / ("spec.json" if damage == "edit spec" else "big.bin")
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        target.write_bytes(bytes(data[:-1]))
    elif damage.startswith("flip"):
        data[{"head": 3, "middle": len(data) // 2, "tail": -3}[damage.split()[1]]] ^= 0x01
        target.write_bytes(bytes(data))
    elif damage == "remove":
        target.unlink()
    else:
        target.write_text(target.read_text().replace('"lr": 0.003', '"lr": 0.03'))
    full = damage.startswith("flip")  # same size: only the full check, when the run is read as an input, reads it
    assert damaged_files(final) == ([] if full else [target.name])
    assert damaged_files(final, full=True) == [target.name]
    warning = set_aside_if_damaged(store.root, "train", "k1", full=full)
    assert f"runs/train/k1/{target.name}" in warning and "computed again" in warning
    assert not final.exists() and not store.is_done("train", "k1")
    aside = list((store.root / ".quarantine" / "train").iterdir())
    assert len(aside) == 1 and aside[0].name.startswith("k1-") and (aside[0] / CONTENTS_FILE).exists()


def test_a_digest_names_its_algorithm_and_covers_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"a" * (3 << 20))
    before = file_digest(path)
    assert before == f"sha256:{3 << 20}:{hashlib.sha256(path.read_bytes()).hexdigest()}"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] = ord("b")
    path.write_bytes(bytes(data))
    assert file_digest(path) != before


def test_a_record_made_before_whole_file_digests_is_still_checked(tmp_path: Path) -> None:
    """Old records ('<size>:<sha256 of the first and last MiB>') are checked as they were made: their ends, not
    their middle (nothing else was recorded)."""
    store = _committed(tmp_path, {"big.bin": b"a" * (3 << 20)})
    final = store.final_dir("train", "k1")
    record = json.loads((final / CONTENTS_FILE).read_text())
    h = hashlib.sha256(b"a" * (2 << 20)).hexdigest()  # first MiB + last MiB of a uniform file
    record["big.bin"] = f"{3 << 20}:{h}"
    (final / CONTENTS_FILE).write_text(json.dumps(record))
    assert damaged_files(final, full=True) == []
    data = bytearray((final / "big.bin").read_bytes())
    data[-3] = ord("b")
    (final / "big.bin").write_bytes(bytes(data))
    assert damaged_files(final) == ["big.bin"]


def test_a_mid_file_flip_in_a_checkpoint_is_found_by_the_full_check(tmp_path: Path) -> None:
    """A checkpoint saved by the training code (3.7 MB): a byte flipped in its middle still loads with
    torch.load(weights_only=True), one weight changed, so the whole-file digest is what catches it."""
    import torch

    from specscale.model.build import build_model, checkpoint_path
    from specscale.train.train import _save_atomic

    spec = {"seed": 0, "model": {"d_model": 128, "n_layers": 2, "n_heads": 2, "ffn_mult": 4, "pos_encoding": "rope",
                                 "rope_base": 10000.0, "postln_fraction": 0.0, "vocab_multiple": 64},
            "train": {"seq_len": 64}}
    weights = build_model(spec, 2048, torch.device("cpu")).state_dict()
    store = RunStore(tmp_path)
    work = store.begin("train", "t", spec)
    (work / "ckpt").mkdir()
    _save_atomic(weights, checkpoint_path(work, 10))
    store.commit("train", "t", "cpu", 1.0)
    ckpt = checkpoint_path(store.final_dir("train", "t"), 10)
    assert ckpt.stat().st_size > 2 << 20
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0x01
    ckpt.write_bytes(bytes(data))
    loaded = torch.load(ckpt, weights_only=True)  # the zip's CRCs are not checked on load
    assert sum(not torch.equal(weights[k], loaded[k]) for k in weights) == 1
    assert damaged_files(store.final_dir("train", "t"), full=True) == ["ckpt/step_000010.pt"]
    warning = set_aside_if_damaged(store.root, "train", "t", full=True)
    assert "runs/train/t/ckpt/step_000010.pt" in warning and not store.is_done("train", "t")


def test_a_flipped_spectrum_chunk_fails_its_crc_and_the_contents_check(tmp_path: Path) -> None:
    """spectra.zarr as the spectra stage writes it (checked_encoding), 2.6 MB of eigenvalues that zarr stores in
    chunks of ~0.3 MB: a byte flipped in the middle of a chunk fails zarr's CRC32C on read, and both checks name the
    chunk (chunks this small are digested whole by the quick check too)."""
    import numpy as np
    import xarray as xr

    from specscale.measure.spectra import checked_encoding

    rng = np.random.default_rng(0)
    ds = xr.Dataset({"eigenvalues": (("step", "layer", "site", "bucket", "mode"), rng.random((2, 4, 2, 4, 5000)))},
                    coords={"site": np.array(["pre", "post"], dtype=object)})
    store = RunStore(tmp_path)
    work = store.begin("spectra", "s", {})
    ds.to_zarr(str(work / "spectra.zarr"), mode="w", consolidated=False, encoding=checked_encoding(ds))
    store.commit("spectra", "s", "cpu", 1.0)
    final = store.final_dir("spectra", "s")
    chunks = sorted(p for p in (final / "spectra.zarr/eigenvalues/c").rglob("*") if p.is_file())
    assert sum(p.stat().st_size for p in chunks) > 2 << 20  # random float64: zstd cannot shrink it
    chunk = chunks[len(chunks) // 2]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        xr.open_zarr(str(final / "spectra.zarr"), consolidated=False)["eigenvalues"].values
    rel = str(chunk.relative_to(final))
    assert damaged_files(final) == damaged_files(final, full=True) == [rel]


def test_a_run_without_a_contents_record_is_not_trusted(tmp_path: Path) -> None:
    store = _committed(tmp_path, {"w.pt": b"w"})
    (store.final_dir("train", "k1") / CONTENTS_FILE).unlink()
    assert damaged_files(store.final_dir("train", "k1")) == [CONTENTS_FILE]
    warning = set_aside_if_damaged(store.root, "train", "k1")
    assert "runs/train/k1 has no contents record" in warning and "computed again" in warning
    assert not store.is_done("train", "k1") and list((store.root / ".quarantine" / "train").iterdir())


def test_an_edited_contents_record_is_not_trusted(tmp_path: Path) -> None:
    store = _committed(tmp_path, {"w.pt": b"w"})
    (store.final_dir("train", "k1") / CONTENTS_FILE).write_text('{"w.pt": "sha256:1:nothex", "spec.json": "x"}')
    assert damaged_files(store.final_dir("train", "k1")) == ["w.pt", "spec.json"]


def test_commit_fsyncs_the_run_before_publishing_it_and_the_rename_after(tmp_path: Path, monkeypatch) -> None:
    """Every file and directory of the run is flushed (fsync) before the rename that publishes it, and the
    directories the rename changed after it; a commit that loses to a finished run flushes nothing."""
    import os

    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename
    monkeypatch.setattr("specscale.store.runs.os.fsync",
                        lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or real_fsync(fd))
    monkeypatch.setattr("specscale.store.runs.os.rename",
                        lambda src, dst: events.append(("rename", str(src))) or real_rename(src, dst))
    store = RunStore(tmp_path)
    work = store.begin("train", "k", SPEC)
    (work / "ckpt").mkdir()
    (work / "ckpt" / "a.pt").write_bytes(b"a")
    final = store.commit("train", "k", "cpu", 1.0)
    rename = events.index(("rename", str(work)))
    before = {path for kind, path in events[:rename] if kind == "fsync"}
    published = {str(work / p.relative_to(final)) for p in final.rglob("*")} | {str(work)}
    assert before == published  # every file (spec, provenance, contents, _SUCCESS, ckpt/a.pt) and directory
    assert {path for _, path in events[rename + 1:]} == {str(final.parent), str(work.parent)}

    events.clear()
    store.begin("train", "k", SPEC)
    store.commit("train", "k", "cpu", 1.0)  # the finished run in place wins: this work is discarded
    assert events == []

    work = store.begin("train", "k", SPEC)
    store.commit("train", "k", "cpu", 1.0, replace=True)  # a replacement: two renames, then their directories
    kinds = [kind for kind, _ in events]
    assert kinds.index("rename") > kinds.index("fsync") and kinds.count("rename") == 2
    last_rename = len(kinds) - 1 - kinds[::-1].index("rename")
    assert {path for _, path in events[last_rename + 1:]} == {str(final.parent), str(work.parent),
                                                             str(store.replaced_dir("train", "k").parent)}
