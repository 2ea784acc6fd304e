"""Document sources, the interleaved split, the byte-level BPE tokenizer, and `.bin` corpora indexed in place."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import pre_tokenizers

from specscale.tokens.corpus import file_documents, hf_documents, split_documents, stdlib_documents
from specscale.tokens.tokenize import VAL_BLOCK_TOKENS, build_token_shards
from specscale.tokens.manifest import ShardChangedError, fingerprint, open_splits
from specscale.tokens.shards import GPT2_VOCAB, ConcatTokens, ShardFormatError, write_bin_shard
from specscale.tokens.tokenizer import (
    EOT_ID,
    EOT_TOKEN,
    encode_documents,
    load_tokenizer,
    save_tokenizer,
    token_dtype,
    train_bpe,
)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# --- stdlib source -----------------------------------------------------------------------------------------------


def test_stdlib_tree_order_exclusions_and_byte_limit(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    _write(root / "b.py", "b" * 10)
    _write(root / "a.py", "a" * 10)
    _write(root / "pkg" / "z.py", "z" * 10)
    _write(root / "pkg" / "__init__.py", "i" * 10)
    _write(root / "site-packages" / "foo.py", "should not appear")
    _write(root / "pkg" / "__pycache__" / "x.py", "should not appear")
    _write(root / "notes.txt", "not python")
    (root / "bad.py").write_bytes(b"x = '\xff'\n")  # invalid UTF-8 is replaced, not an error

    docs = list(stdlib_documents(root=root))
    assert [d for d, _ in docs] == ["a.py", "b.py", "bad.py", "pkg/__init__.py", "pkg/z.py"]
    assert dict(docs)["bad.py"] == "x = '\ufffd'\n"

    # Stops once max_bytes are collected; the crossing document is kept whole.
    assert [d for d, _ in stdlib_documents(max_bytes=10, root=root)] == ["a.py"]
    assert [d for d, _ in stdlib_documents(max_bytes=11, root=root)] == ["a.py", "b.py"]
    with pytest.raises(ValueError):
        list(stdlib_documents(max_bytes=0, root=root))


def test_real_stdlib_slice_is_deterministic() -> None:
    first = list(stdlib_documents(max_bytes=200_000))
    second = list(stdlib_documents(max_bytes=200_000))
    assert first == second
    ids = [d for d, _ in first]
    assert ids == sorted(ids) and ids[0] == "__future__.py"
    sizes = [len(t.encode()) for _, t in first]
    assert sum(sizes) >= 200_000 > sum(sizes[:-1])
    assert not any("site-packages" in d or "__pycache__" in d for d in ids)


# --- local files ------------------------------------------------------------------------------------------------


def test_file_documents_globs_sorted_and_deduplicated(tmp_path: Path) -> None:
    _write(tmp_path / "data" / "b.txt", "bee")
    _write(tmp_path / "data" / "sub" / "a.txt", "ay")
    _write(tmp_path / "data" / "c.md", "sea")
    _write(tmp_path / "x[1].txt", "literal brackets")

    docs = list(file_documents(["data/**/*.txt", "data/b.txt", "x[1].txt"], base_dir=tmp_path))
    assert docs == [("data/b.txt", "bee"), ("data/sub/a.txt", "ay"), ("x[1].txt", "literal brackets")]
    # Absolute patterns work too and give the same documents.
    abs_docs = list(file_documents([str(tmp_path / "data" / "*.md")], base_dir=tmp_path))
    assert abs_docs == [("data/c.md", "sea")]


def test_file_documents_missing_pattern_names_it(tmp_path: Path) -> None:
    _write(tmp_path / "a.txt", "a")
    with pytest.raises(FileNotFoundError, match=r"nothing/\*\.txt"):
        list(file_documents(["a.txt", "nothing/*.txt"], base_dir=tmp_path))


def test_hf_documents_without_datasets_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'specscale\[hf\]'"):
        list(hf_documents("HuggingFaceFW/fineweb", "train", "text", max_bytes=1000))


# --- interleaved split ------------------------------------------------------------------------------------------


def test_split_documents_interleaves() -> None:
    docs = [(f"d{i}", f"text {i}") for i in range(10)]
    train, val = split_documents(iter(docs), val_every=3)
    assert [d for d, _ in val] == ["d2", "d5", "d8"]
    assert [d for d, _ in train] == ["d0", "d1", "d3", "d4", "d6", "d7", "d9"]
    assert split_documents(docs, 3) == (train, val)  # deterministic, generator or list


def test_split_documents_rejects_bad_input() -> None:
    docs = [(f"d{i}", "t") for i in range(3)]
    with pytest.raises(ValueError, match="val_every"):
        split_documents(docs, 1)
    with pytest.raises(ValueError, match="empty"):
        split_documents(docs, 4)


# --- BPE ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stdlib_slice() -> list[tuple[str, str]]:
    return list(stdlib_documents(max_bytes=300_000))


@pytest.fixture(scope="module")
def bpe(stdlib_slice: list[tuple[str, str]]):
    return train_bpe((t for _, t in stdlib_slice), vocab_size=1024)


def test_bpe_trains_offline_with_fixed_eot(bpe) -> None:
    assert bpe.get_vocab_size() == 1024
    assert bpe.token_to_id(EOT_TOKEN) == EOT_ID == 0
    # All 256 byte symbols are in the vocabulary, so any text is encodable.
    assert all(bpe.token_to_id(ch) is not None for ch in pre_tokenizers.ByteLevel.alphabet())


def test_bpe_is_deterministic(stdlib_slice, bpe) -> None:
    again = train_bpe([t for _, t in stdlib_slice], vocab_size=1024)
    assert again.to_str() == bpe.to_str()


def test_bpe_round_trip(bpe, stdlib_slice) -> None:
    text = stdlib_slice[3][1]
    assert bpe.decode(bpe.encode(text).ids) == text
    odd = "déjà vu → 数据\t\n  x = '\ufffd'  \x00\x7f 🙂"  # non-ASCII, control bytes, replacement char
    assert bpe.decode(bpe.encode(odd).ids) == odd
    assert len(bpe.encode(text).ids) < len(text.encode()) / 2  # merges actually compress code


def test_encode_documents_layout(bpe) -> None:
    docs = [("a", "def f(x):\n    return x\n"), ("b", "print('<|endoftext|>')\n"), ("c", "")]
    tokens = encode_documents(bpe, docs)
    assert tokens.dtype == np.uint16
    # Every document is preceded by EOT; the literal "<|endoftext|>" in doc b stays ordinary text.
    assert np.flatnonzero(tokens == EOT_ID).tolist()[0] == 0
    assert int((tokens == EOT_ID).sum()) == 3
    pieces = np.split(tokens, np.flatnonzero(tokens == EOT_ID))[1:]
    assert [bpe.decode(p[1:].tolist()) for p in pieces] == [t for _, t in docs]
    # Plain strings are accepted too and give the same stream.
    assert np.array_equal(encode_documents(bpe, [t for _, t in docs]), tokens)


def test_tokenizer_save_load(bpe, tmp_path: Path) -> None:
    path = save_tokenizer(bpe, tmp_path / "tok" / "tokenizer.json")
    loaded = load_tokenizer(path)
    assert loaded.to_str() == bpe.to_str()
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "missing.json")


def test_token_dtype_and_vocab_floor() -> None:
    assert token_dtype(50304) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32
    with pytest.raises(ValueError):
        train_bpe(["abc"], vocab_size=100)


# --- modded-nanoGPT .bin shards: read in place through a manifest -------------------------------------------------


def _shards(root: Path, sizes: tuple[int, ...], prefix: str = "train", seed: int = 0) -> np.ndarray:
    """Write shards of random GPT-2 ids under root/data; returns their concatenation (the reference stream)."""
    rng = np.random.default_rng(seed)
    parts = [rng.integers(0, GPT2_VOCAB, n).astype(np.uint16) for n in sizes]
    for i, part in enumerate(parts):
        write_bin_shard(root / "data" / f"{prefix}_{i:06d}.bin", part)
    return np.concatenate(parts)


def _bin_data(val_paths: list[str] | None = None, val_every: int = 10) -> dict:
    return {"source": "bin", "paths": ["data/train_*.bin"], "val_paths": val_paths or [], "val_every": val_every}


def test_bin_tokenize_indexes_shards_in_place(tmp_path: Path) -> None:
    train_ref = _shards(tmp_path, (5000, 1, 7000))
    val_ref = _shards(tmp_path, (3000,), prefix="val", seed=1)
    work = tmp_path / "work"
    work.mkdir()
    meta = build_token_shards(_bin_data(["data/val_*.bin"]), tmp_path, work)
    assert sorted(p.name for p in work.iterdir()) == ["shards.json", "tokens.json"]  # no token copied
    assert (meta["vocab_size"], meta["train_tokens"], meta["val_tokens"]) == (GPT2_VOCAB, 12001, 3000)
    manifest = json.loads((work / "shards.json").read_text())
    assert [r["path"] for r in manifest["train"]] == [str((tmp_path / "data" / f"train_{i:06d}.bin").resolve())
                                                      for i in range(3)]
    assert [(r["bytes"], r["tokens"]) for r in manifest["train"]] == [(1024 + 10000, 5000), (1026, 1), (15024, 7000)]
    assert manifest["train"][0]["fingerprint"] == fingerprint(manifest["train"][0]["path"])
    assert manifest["val_split"] == {"kind": "files"}
    # The manifest survives the run directory being moved into place (the cache renames work → final).
    final = tmp_path / "runs" / "tokenize" / "key"
    final.parent.mkdir(parents=True)
    work.rename(final)
    train, val = open_splits(final)
    assert isinstance(train, ConcatTokens) and isinstance(val, ConcatTokens)
    assert all(isinstance(p, np.memmap) for p in train.parts)
    assert np.array_equal(train[:], train_ref) and np.array_equal(val[:], val_ref)


def test_bin_tokenize_without_val_paths_splits_blocks_as_before(tmp_path: Path) -> None:
    # 150,000 tokens, val_every 2: block 1 (65,536 tokens) is val; blocks 0 and the partial block 2 are train.
    ref = _shards(tmp_path, (50_000, 60_000, 40_000))
    work = tmp_path / "work"
    work.mkdir()
    meta = build_token_shards(_bin_data(val_every=2), tmp_path, work)
    is_val = (np.arange(ref.size) // VAL_BLOCK_TOKENS) % 2 == 1  # the rule tokenize applied when it copied tokens
    train, val = open_splits(work)
    assert (meta["train_tokens"], meta["val_tokens"]) == (int((~is_val).sum()), VAL_BLOCK_TOKENS)
    assert np.array_equal(train[:], ref[~is_val]) and np.array_equal(val[:], ref[is_val])
    assert json.loads((work / "shards.json").read_text())["val_split"] == {
        "kind": "blocks", "block_tokens": VAL_BLOCK_TOKENS, "val_every": 2}
    # Too few tokens for one val block: a clear error, no manifest.
    with pytest.raises(ValueError, match=r"data.paths: 150,000 tokens are too few.*one block of 65,536 tokens in "
                                         r"every 4 \(150,000 train, 0 val\).*data.val_paths"):
        build_token_shards(_bin_data(val_every=4), tmp_path, tmp_path)
    assert not (tmp_path / "shards.json").exists() and not (tmp_path / "tokens.json").exists()


@pytest.mark.parametrize("damage", ["magic", "short"])
def test_bin_tokenize_rejects_a_bad_shard_naming_it(tmp_path: Path, damage: str) -> None:
    _shards(tmp_path, (100, 100, 100))
    bad = tmp_path / "data" / "train_000001.bin"
    raw = bytearray(bad.read_bytes())
    if damage == "magic":
        raw[:4] = np.array([123], dtype="<i4").tobytes()
        what = "bad magic number 123"
    else:
        del raw[-2:]
        what = "truncated: header gives 100 tokens"
    bad.write_bytes(bytes(raw))
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(ShardFormatError, match=rf"data\.paths: .*train_000001\.bin: .*{what}.*Replace the file"):
        build_token_shards(_bin_data(["data/train_000000.bin"]), tmp_path, work)
    assert list(work.iterdir()) == []  # nothing that looks finished


def test_bin_tokenize_rejects_overlapping_globs(tmp_path: Path) -> None:
    _shards(tmp_path, (100, 100))
    with pytest.raises(ValueError, match=r"data.paths and data.val_paths both match .*train_000001\.bin"):
        build_token_shards(_bin_data(["data/*_000001.bin"]), tmp_path, tmp_path)


@pytest.mark.parametrize("change", ["content", "truncated", "header", "missing"])
def test_shard_changed_after_tokenize_is_an_error_naming_it(tmp_path: Path, change: str) -> None:
    _shards(tmp_path, (4000, 4000))
    _shards(tmp_path, (4000,), prefix="val", seed=1)
    build_token_shards(_bin_data(["data/val_*.bin"]), tmp_path, tmp_path)
    open_splits(tmp_path)  # unchanged: opens
    shard = tmp_path / "data" / "train_000000.bin"
    raw = bytearray(shard.read_bytes())
    if change == "content":  # same size, same header, other tokens: only the fingerprint sees it
        raw[2000:2002] = bytes([raw[2000] ^ 1, raw[2001]])
        shard.write_bytes(bytes(raw))
        what = "content fingerprint .* differs"
    elif change == "truncated":
        shard.write_bytes(bytes(raw[:-10]))
        what = "truncated.*it was valid at tokenize"
    elif change == "header":  # a shard re-written shorter, consistently: size and count both differ
        write_bin_shard(shard, np.arange(10))
        what = "changed after tokenize: 1044 bytes / 10 tokens now, 9024 bytes / 4,000 tokens then"
    else:
        shard.unlink()
        what = "missing"
    with pytest.raises(ShardChangedError, match=rf"train_000000\.bin.*{what}.*delete {re.escape(str(tmp_path))}"):
        open_splits(tmp_path)


def test_trainer_reads_windows_from_the_mapped_shards(tmp_path: Path) -> None:
    from helpers import make_project
    from specscale.study.spec import load_study
    from stages.runner import plan_study
    from specscale.train.train import Trainer

    ref = _shards(tmp_path, (3000, 5000))
    val_ref = _shards(tmp_path, (2000,), prefix="val", seed=1)
    build_token_shards(_bin_data(["data/val_*.bin"]), tmp_path, tmp_path)
    params = make_project(tmp_path / "project", (
        "preset: smoke\nmodel: {d_model: 16, n_layers: 1, n_heads: 2}\n"
        "train: {device: cpu, steps: 2, batch_size: 4, seq_len: 32, val_tokens: 256, precision: fp32}\n"
        "sweep: {optimizers: [adamw], widths: [1], seeds: [0]}\n"))
    spec = plan_study(load_study(params), params).train[0].spec
    trainer = Trainer(spec, tmp_path, torch.device("cpu"))
    windows = trainer.train_windows
    assert isinstance(windows.tokens, ConcatTokens) and all(isinstance(p, np.memmap) for p in windows.tokens.parts)
    idx = windows.sample_indices(step=1, batch_size=4, seed=0)
    x, y = windows.batch(idx)
    assert x.tolist() == [ref[i * 32 : i * 32 + 32].tolist() for i in idx]
    assert y.tolist() == [ref[i * 32 + 1 : i * 32 + 33].tolist() for i in idx]
    assert trainer.val_windows.num_windows == (len(val_ref) - 1) // 32


MEMORY_CHILD = r"""
import json, resource, sys
from pathlib import Path

import numpy as np

from specscale.tokens.tokenize import build_token_shards
from specscale.tokens.manifest import open_splits
from specscale.tokens.shards import TokenWindows, read_bin_shard

root = Path(sys.argv[1])
status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
# Heap, anonymous and private mappings may grow 256 MiB from here; memory maps of the shards (shared, read-only)
# do not count. The shards hold 3.6 GB of tokens, so anything that materialises the corpus fails.
resource.setrlimit(resource.RLIMIT_DATA, (int(status["VmData"].split()[0]) * 1024 + (256 << 20), -1))
meta = build_token_shards({"source": "bin", "paths": ["shards/*.bin"], "val_paths": [], "val_every": 10}, root, root)
train, val = open_splits(root)
n0 = len(read_bin_shard(root / "shards" / "s0.bin"))
windows = TokenWindows(train, 1024)
x, _ = windows.batch(windows.sample_indices(step=5, batch_size=64, seed=0))
val_sum = sum(int(x.sum()) for x, _ in TokenWindows(val, 1024).sequential(64, max_tokens=1 << 20))
out = {"train_tokens": meta["train_tokens"], "val_tokens": meta["val_tokens"], "batch": list(x.shape),
       "boundary": train.tokens[n0 - 3 : n0 + 3].tolist(), "val_sum": val_sum}  # the stream under the split
try:  # the control: what tokenize used to do, so the limit demonstrably bites
    np.concatenate([read_bin_shard(f) for f in sorted((root / "shards").glob("*.bin"))])
    out["concat"] = "ok"
except MemoryError:
    out["concat"] = "MemoryError"
print(json.dumps(out))
"""


def test_bin_corpus_is_never_materialised(tmp_path: Path) -> None:
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc (Linux)")
    n = 600_000_000  # tokens per shard: 3 sparse shards of 1.2 GB that take no disk
    for i in range(3):
        path = tmp_path / "shards" / f"s{i}.bin"
        write_bin_shard(path, np.array([1, 2, 3], dtype=np.uint16))  # a valid header, then grow it
        header = np.zeros(256, dtype="<i4")
        header[:3] = (20240520, 1, n)
        with open(path, "r+b") as f:
            f.write(header.tobytes())
            f.truncate(1024 + 2 * n)
            f.seek(1024 + 2 * n - 4)
            f.write(np.array([7, 8], dtype="<u2").tobytes())  # the last two tokens of every shard
    result = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(tmp_path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    blocks = 3 * n // VAL_BLOCK_TOKENS  # 27,465 whole blocks and a partial one (train); every 10th is val
    assert out["val_tokens"] == (blocks // 10) * VAL_BLOCK_TOKENS and out["train_tokens"] == 3 * n - out["val_tokens"]
    assert out["batch"] == [64, 1024] and out["concat"] == "MemoryError"
    assert out["val_sum"] >= 0
    assert out["boundary"] == [0, 7, 8, 1, 2, 3]  # s0's last tokens, then s1's first, read across the boundary
