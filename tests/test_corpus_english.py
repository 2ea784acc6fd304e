"""The offline English corpus: `data.source: files` reads compressed files (.gz, dictzip .dz) and, with
`data.doc_bytes`, cuts a big file (the GCIDE dictionary of the Debian package dict-gcide) into many documents at entry
boundaries. Adding `doc_bytes` moved no run key: its default is left out of every hashed spec."""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from pathlib import Path

import pytest

from helpers import make_project
from specscale.tokens.corpus import (
    GCIDE_INSTALL_HINT,
    GCIDE_PATH,
    file_documents,
    read_text_file,
    split_entries,
    split_documents,
)
from specscale.tokens.tokenize import build_token_shards, documents
from specscale.study.spec import SpecError, load_study
from stages.runner import plan_study

# Three entries as dictd writes them: headword in column 0 after a blank line; senses, quotations and notes indented
# (a blank line before an indented line is inside an entry, not a boundary).
ENTRY_A = "A \\A\\, n.\n   The first letter of the English alphabet.\n   [1913 Webster]\n\n"
ENTRY_AB = ("Ab \\Ab\\, n. [Syriac.]\n   1. The eleventh month of the Jewish year.\n      [1913 Webster]\n\n"
            "            As might affect the earth with cold heat. --Milton.\n      [1913 Webster]\n \t\n\n")
ENTRY_ABB = "Abb \\Abb\\, n.\n   Among weavers, yarn for the warp. --Ash.\n"
DICT = ENTRY_A + ENTRY_AB + ENTRY_ABB


def _entry(i: int) -> str:
    return f"Word{i:03d} \\Word\\, n.\n   Sense number {i} of a made-up word.\n\n"  # 57 or 58 bytes


def _entries(n: int) -> str:
    return "".join(_entry(i) for i in range(n))


def write_dictzip(path: Path, text: str, chunk: int = 64) -> Path:
    """A dictzip-like file: gzip with an FEXTRA 'RA' subfield (dictzip's chunk table) and a deflate stream flushed
    (Z_FULL_FLUSH) every `chunk` bytes, as dictzip writes it. gzip readers skip the extra field."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = text.encode("utf-8")
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    body, sizes = b"", []
    for i in range(0, len(raw), chunk):
        part = deflate.compress(raw[i:i + chunk]) + deflate.flush(zlib.Z_FULL_FLUSH)
        body += part
        sizes.append(len(part))
    body += deflate.flush()
    table = struct.pack("<HHH", 1, chunk, len(sizes)) + b"".join(struct.pack("<H", s) for s in sizes)
    extra = b"RA" + struct.pack("<H", len(table)) + table
    header = b"\x1f\x8b\x08\x04" + struct.pack("<I", 0) + b"\x02\x03" + struct.pack("<H", len(extra)) + extra
    path.write_bytes(header + body + struct.pack("<II", zlib.crc32(raw), len(raw) & 0xFFFFFFFF))
    return path


# --- reading compressed files ---------------------------------------------------------------------------------------


def test_gz_and_dictzip_files_are_decompressed(tmp_path: Path) -> None:
    text = DICT + "caf\u00e9 \u2014 na\u00efve\n"
    (tmp_path / "d.txt.gz").write_bytes(gzip.compress(text.encode("utf-8")))
    write_dictzip(tmp_path / "d.dict.dz", text, chunk=16)
    assert read_text_file(tmp_path / "d.txt.gz") == text
    assert read_text_file(tmp_path / "d.dict.dz") == text
    docs = list(file_documents(["*.gz", "*.dz"], tmp_path))
    assert docs == [("d.dict.dz", text), ("d.txt.gz", text)]  # one document per file without doc_bytes


def test_compressed_reading_matches_plain_reading(tmp_path: Path) -> None:
    """Same text as a plain file gives: universal newlines, invalid UTF-8 replaced."""
    raw = b"line one\r\nline two \x92 quoted\r\n"
    (tmp_path / "p.txt").write_bytes(raw)
    (tmp_path / "p.gz").write_bytes(gzip.compress(raw))
    expected = "line one\nline two \ufffd quoted\n"
    assert read_text_file(tmp_path / "p.gz") == read_text_file(tmp_path / "p.txt") == expected


def test_a_bad_compressed_file_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "bad.gz").write_text("not gzip at all")
    with pytest.raises(ValueError, match="bad.gz"):
        list(file_documents(["bad.gz"], tmp_path))


# --- the splitting rule ---------------------------------------------------------------------------------------------


def test_split_entries_exact_documents() -> None:
    assert split_entries(DICT, 1) == [ENTRY_A, ENTRY_AB, ENTRY_ABB]  # one entry per document
    # A document ends at the first entry start at which it holds >= doc_bytes bytes.
    assert split_entries(DICT, len(ENTRY_A)) == [ENTRY_A, ENTRY_AB, ENTRY_ABB]
    assert split_entries(DICT, len(ENTRY_A) + 1) == [ENTRY_A + ENTRY_AB, ENTRY_ABB]
    assert split_entries(DICT, len(ENTRY_A + ENTRY_AB)) == [ENTRY_A + ENTRY_AB, ENTRY_ABB]
    assert split_entries(DICT, len(ENTRY_A + ENTRY_AB) + 1) == [DICT]  # the rest, shorter than doc_bytes
    # Sizes are UTF-8 bytes, not characters: "\u00e9\n\n" is 3 characters, 4 bytes.
    assert split_entries("\u00e9\n\nb\n", 4) == ["\u00e9\n\n", "b\n"]
    assert split_entries("\u00e9\n\nb\n", 5) == ["\u00e9\n\nb\n"]
    # Prose: paragraphs; an indented line after a blank line continues the paragraph; no boundary, one document.
    assert split_entries("One.\n\nTwo.\n\n  still two.\n\n\nThree.", 1) == ["One.\n\n", "Two.\n\n  still two.\n\n\n",
                                                                           "Three."]
    assert split_entries("no blank line at all\nX\n", 1) == ["no blank line at all\nX\n"]
    assert split_entries("", 1) == []
    with pytest.raises(ValueError):
        split_entries(DICT, 0)


def test_split_entries_keeps_every_byte_and_is_deterministic() -> None:
    text = _entries(200) + ENTRY_AB + "\n\n\n  indented tail\n"
    for doc_bytes in (1, 50, 333, 4096, 10**9):
        docs = split_entries(text, doc_bytes)
        assert "".join(docs) == text
        assert docs == split_entries(text, doc_bytes)
        assert all(len(d.encode()) >= doc_bytes for d in docs[:-1])


def test_file_documents_with_doc_bytes(tmp_path: Path) -> None:
    write_dictzip(tmp_path / "dict" / "b.dict.dz", DICT)
    (tmp_path / "dict" / "a.txt").write_text("Para one.\n\nPara two.\n")
    docs = list(file_documents(["dict/*"], tmp_path, doc_bytes=1))
    assert docs == [("dict/a.txt#0", "Para one.\n\n"), ("dict/a.txt#1", "Para two.\n"),
                    ("dict/b.dict.dz#0", ENTRY_A), ("dict/b.dict.dz#1", ENTRY_AB), ("dict/b.dict.dz#2", ENTRY_ABB)]
    assert list(file_documents(["dict/*"], tmp_path, doc_bytes=1)) == docs  # deterministic
    # max_bytes stops after whole documents, as for the other sources
    assert [d for d, _ in file_documents(["dict/*.dz"], tmp_path, max_bytes=len(ENTRY_A) + 1, doc_bytes=1)] == [
        "dict/b.dict.dz#0", "dict/b.dict.dz#1"]
    with pytest.raises(ValueError):
        list(file_documents(["dict/*"], tmp_path, doc_bytes=-1))


def test_plain_files_without_doc_bytes_are_read_as_before(tmp_path: Path) -> None:
    """data.doc_bytes left at 0: one whole document per file and no max_bytes cap, exactly as before it existed."""
    texts = {f"d{i}.txt": f"Document {i}.\n\nSecond paragraph.\n" * 50 for i in range(12)}
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
    data = {"source": "files", "paths": ["*.txt"], "max_bytes": 100, "val_every": 10}  # a run spec has no doc_bytes
    expected = sorted(texts.items())
    assert list(documents(data, tmp_path)) == expected
    assert list(documents({**data, "doc_bytes": 0}, tmp_path)) == expected


def test_one_big_file_gives_a_validation_split(tmp_path: Path) -> None:
    text = _entries(100)
    write_dictzip(tmp_path / "big.dict.dz", text)
    whole = list(file_documents(["big.dict.dz"], tmp_path))
    with pytest.raises(ValueError, match="validation split is empty"):
        split_documents(whole, 10)
    docs = list(file_documents(["big.dict.dz"], tmp_path, doc_bytes=100))  # two 57-58-byte entries a document
    assert docs == [(f"big.dict.dz#{k}", _entry(2 * k) + _entry(2 * k + 1)) for k in range(50)]
    train, val = split_documents(docs, 10)
    assert len(train) == 45 and [d for d, _ in val] == [f"big.dict.dz#{k}" for k in (9, 19, 29, 39, 49)]
    assert val[0][1] == _entry(18) + _entry(19)


def test_tokenize_stage_reads_a_dictzip_corpus(tmp_path: Path) -> None:
    write_dictzip(tmp_path / "en.dict.dz", _entries(300))
    data = {"source": "files", "paths": ["en.dict.dz"], "max_bytes": None, "doc_bytes": 200, "val_every": 5,
            "vocab_size": 300}
    meta = build_token_shards(data, tmp_path, tmp_path)
    n_docs = len(split_entries(_entries(300), 200))
    assert meta["documents"] == {"train": n_docs - n_docs // 5, "val": n_docs // 5}
    assert json.loads((tmp_path / "tokens.json").read_text())["val_tokens"] > 0


def test_missing_gcide_names_the_path_and_the_package(tmp_path: Path) -> None:
    missing = str(tmp_path / "usr/share/dictd/gcide.dict.dz")
    with pytest.raises(FileNotFoundError) as err:
        list(file_documents([missing], tmp_path, doc_bytes=1024))
    assert missing in str(err.value) and GCIDE_INSTALL_HINT in str(err.value)
    with pytest.raises(FileNotFoundError) as err:  # other paths: no dictionary hint
        list(file_documents(["notes/*.txt"], tmp_path))
    assert "apt-get" not in str(err.value)


# --- the spec and the run keys --------------------------------------------------------------------------------------


def _plan(tmp_path: Path, text: str):
    params = make_project(tmp_path, text)
    return plan_study(load_study(params), params)


# Keys of the tiny preset computed on the code before data.doc_bytes existed (commit 4681162): adding the field must not
# move them. A deliberate change elsewhere (a stage version, an optimizer default) moves them too: then update them.
TINY_TOKENIZE_KEY = "f01004f310216989"
TINY_FIRST_TRAIN_KEY = "2ef6a3ac3d059988"


def test_doc_bytes_default_leaves_every_key_unchanged(tmp_path: Path) -> None:
    plan = _plan(tmp_path / "a", "preset: tiny\n")
    assert plan.tokenize.key == TINY_TOKENIZE_KEY
    assert plan.train[0].key == TINY_FIRST_TRAIN_KEY
    assert "doc_bytes" not in plan.tokenize.spec["data"] and "doc_bytes" not in plan.train[0].spec["data"]
    explicit = _plan(tmp_path / "b", "preset: tiny\ndata: {doc_bytes: 0}\n")  # written out at its default
    for stage in plan.run_stages():
        assert [r.key for r in explicit.stage_runs(stage)] == [r.key for r in plan.stage_runs(stage)]


def test_doc_bytes_set_changes_the_keys(tmp_path: Path) -> None:
    files = "preset: smoke\ndata: {source: files, paths: [" + GCIDE_PATH + "]}\n"
    base = _plan(tmp_path / "a", files)
    split = _plan(tmp_path / "b", files.replace("]}", "], doc_bytes: 1024}"))
    assert split.tokenize.key != base.tokenize.key and split.train[0].key != base.train[0].key
    assert split.tokenize.spec["data"]["doc_bytes"] == 1024
    # An ablation that varies it back to 0 shares the main sweep's runs.
    arm = _plan(tmp_path / "c", files + "ablations: {whole: {vary: {data.doc_bytes: [0]}}}\n")
    assert {r.key for r in arm.train} == {r.key for r in base.train}


@pytest.mark.parametrize("data", ["{doc_bytes: -1, source: files, paths: [x]}", "{doc_bytes: 1024}"])
def test_doc_bytes_is_validated(tmp_path: Path, data: str) -> None:
    params = make_project(tmp_path, f"preset: smoke\ndata: {data}\n")
    with pytest.raises(SpecError, match="data.doc_bytes"):
        load_study(params)


# --- the real dictionary, where installed ---------------------------------------------------------------------------


@pytest.mark.skipif(not Path(GCIDE_PATH).exists(), reason=f"GCIDE not installed ({GCIDE_INSTALL_HINT})")
def test_gcide_first_documents() -> None:
    docs = list(file_documents([GCIDE_PATH], "/", max_bytes=5000, doc_bytes=1024))
    assert [d for d, _ in docs] == [f"usr/share/dictd/gcide.dict.dz#{k}" for k in range(len(docs))]
    assert len(docs) >= 3 and all(len(t.encode()) >= 1024 for _, t in docs)
    assert "00-database-url" in docs[0][1]
    assert "Collaborative International Dictionary of English" in "".join(t for _, t in docs)
    assert list(file_documents([GCIDE_PATH], "/", max_bytes=5000, doc_bytes=1024)) == docs
