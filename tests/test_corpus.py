"""Document sources, the interleaved split, and the byte-level BPE tokenizer."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import pre_tokenizers

from specscale.corpus import file_documents, hf_documents, split_documents, stdlib_documents
from specscale.tokenizer import (
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
