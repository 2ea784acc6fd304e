"""Document sources for the tokenize stage.

Every source yields ``(doc_id, text)`` pairs in a deterministic order, so that the same inputs always give the same
token stream, the same train/val split and hence the same buckets and probe set. Sizes are counted in bytes of
UTF-8 text (after decoding), which is what the BPE trainer and the shard writer see.

Sources:
- ``stdlib_documents``: the running interpreter's standard library source (always present, no download).
- ``file_documents``: local text files or glob patterns; ``.gz`` and ``.dz`` (dictzip) files are decompressed. One
  document per file, or with ``doc_bytes`` each file split at entry boundaries (``split_entries``), e.g. the English
  dictionary ``GCIDE_PATH`` (Debian package dict-gcide, offline).
- ``hf_documents``: a Hugging Face dataset (optional extra ``specscale[hf]``; needs network or a local cache).
"""

from __future__ import annotations

import glob
import gzip
import os
import re
import sysconfig
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

Document = tuple[str, str]  # (doc_id, text)

HF_INSTALL_HINT = "pip install 'specscale[hf]'"
# An English corpus that installs offline: the GNU Collaborative International Dictionary of English (≈ 40 MB of
# text, 126k entries), a dictzip file from the Debian package dict-gcide.
GCIDE_PATH = "/usr/share/dictd/gcide.dict.dz"
GCIDE_INSTALL_HINT = "apt-get install dict-gcide"
COMPRESSED_SUFFIXES = (".gz", ".dz")  # gzip, and dictzip (gzip with a random-access table in its extra field)

# A document may start only at the beginning of an unindented line that follows a blank line (one holding only spaces
# or tabs): a paragraph of prose, a top-level definition of source code, an entry of a dictd dictionary (its headword
# starts in column 0 after a blank line; senses, quotations and notes are indented).
_ENTRY_START = re.compile(r"\n[ \t]*\n(?=[^ \t\n])")


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def _take_bytes(docs: Iterable[Document], max_bytes: int | None) -> Iterator[Document]:
    """Yield whole documents until at least ``max_bytes`` bytes of text have been yielded.

    The document that crosses the limit is included whole (documents are never cut), so the total is
    ``>= max_bytes`` unless the source runs out first; every document before the last one fits below the limit.
    """
    if max_bytes is not None and max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive or None, got {max_bytes}")
    total = 0
    for doc_id, text in docs:
        if max_bytes is not None and total >= max_bytes:
            return
        yield doc_id, text
        total += _utf8_len(text)


def _stdlib_paths(root: Path) -> list[Path]:
    """All ``*.py`` files under ``root``, sorted by relative POSIX path, without site-packages and caches."""
    excluded = {"site-packages", "dist-packages", "__pycache__"}
    paths = []
    for path in root.rglob("*.py"):
        rel_parts = path.relative_to(root).parts
        if excluded.intersection(rel_parts) or not path.is_file():
            continue
        paths.append(path)
    # Sort by the relative POSIX path string, not by Path objects: the order must not depend on the platform.
    return sorted(paths, key=lambda p: p.relative_to(root).as_posix())


def stdlib_documents(max_bytes: int | None = None, root: str | Path | None = None) -> Iterator[Document]:
    """Source files of the standard library, one document per ``*.py`` file.

    ``root`` defaults to ``sysconfig.get_paths()["stdlib"]`` (the running interpreter); tests pass a small tree.
    Doc ids are the paths relative to ``root`` (POSIX separators). Files are read as UTF-8 with
    ``errors="replace"``: a few test files of the stdlib deliberately hold invalid bytes.
    """
    base = Path(root) if root is not None else Path(sysconfig.get_paths()["stdlib"])
    if not base.is_dir():
        raise FileNotFoundError(f"standard library directory not found: {base}")

    def read_all() -> Iterator[Document]:
        for path in _stdlib_paths(base):
            yield path.relative_to(base).as_posix(), path.read_text(encoding="utf-8", errors="replace")

    return _take_bytes(read_all(), max_bytes)


def _expand_pattern(pattern: str, base_dir: Path) -> list[Path]:
    """Files matched by one pattern: a literal path, or a glob (``**`` recursive), relative to ``base_dir``."""
    full = pattern if os.path.isabs(pattern) else os.path.join(base_dir, pattern)
    # A literal file name may contain glob metacharacters ("[draft].txt"): prefer the literal meaning.
    if os.path.isfile(full):
        return [Path(full)]
    if os.path.isabs(pattern):
        matches = glob.glob(pattern, recursive=True)
    else:
        # Escape base_dir so that metacharacters in the directory name are not interpreted.
        matches = glob.glob(os.path.join(glob.escape(str(base_dir)), pattern), recursive=True)
    return [Path(m) for m in matches if os.path.isfile(m)]


def read_text_file(path: Path) -> str:
    """A file's text as UTF-8 (errors replaced, universal newlines); ``.gz`` and ``.dz`` files decompressed first."""
    if path.suffix not in COMPRESSED_SUFFIXES:
        return path.read_text(encoding="utf-8", errors="replace")
    try:
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as stream:
            return stream.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: a {path.suffix} file must be gzip or dictzip data: {err}") from None


def split_entries(text: str, doc_bytes: int) -> list[str]:
    """``text`` cut into documents of at least ``doc_bytes`` UTF-8 bytes, each ending just before an entry start.

    Entry starts: the first character of an unindented line that follows a blank line (``_ENTRY_START``). Walking
    the text, a document ends at the first entry start at which it holds ``>= doc_bytes`` bytes; the last document
    takes the rest and may be shorter. Nothing is dropped or added: ``"".join(split_entries(t, n)) == t``; text
    without an entry start stays one document, and an empty text gives none. ``doc_bytes=1``: one entry per document.
    """
    if doc_bytes <= 0:
        raise ValueError(f"doc_bytes must be positive, got {doc_bytes}")
    docs: list[str] = []
    start = end = size = 0
    for cut in [m.end() for m in _ENTRY_START.finditer(text)] + [len(text)]:
        size += _utf8_len(text[end:cut])
        end = cut
        if size >= doc_bytes or cut == len(text):
            if cut > start:
                docs.append(text[start:cut])
            start, size = cut, 0
    return docs


def _missing_hint(pattern: str) -> str:
    if "gcide" in pattern or "/dictd/" in pattern:
        return f"; dictd dictionaries come from Debian packages, {GCIDE_PATH} from `{GCIDE_INSTALL_HINT}`"
    return ""


def unmatched_patterns(patterns: Iterable[str], base_dir: str | Path) -> list[tuple[int, str]]:
    """(index, why) of each path or glob that matches no file, relative to ``base_dir`` as ``file_documents`` and the
    ``bin`` shards read them: `specscale validate` names them before anything is read or written."""
    base = Path(base_dir).resolve()
    return [(i, f"no file matches {pattern!r} (relative to {base}){_missing_hint(pattern)}")
            for i, pattern in enumerate(patterns) if not _expand_pattern(pattern, base)]


def file_documents(
    patterns: list[str] | str, base_dir: str | Path = ".", max_bytes: int | None = None, doc_bytes: int = 0
) -> Iterator[Document]:
    """Local text files given as paths or glob patterns (``**`` recurses), read as UTF-8 (errors replaced); files
    ending in ``.gz`` or ``.dz`` are decompressed (``read_text_file``).

    All matches of all patterns are de-duplicated and sorted by path, so the order does not depend on the order of
    the patterns or of the file system. Doc ids are paths relative to ``base_dir`` when the file lies under it,
    else absolute paths. A pattern that matches no file raises ``FileNotFoundError`` naming the pattern (checked
    for every pattern before anything is read).

    ``doc_bytes=0``: one document per file. ``doc_bytes > 0``: each file is cut by ``split_entries(text,
    doc_bytes)``, in order; the k-th piece (from 0) of a file has doc id ``"<file id>#<k>"``. A big single file
    (a dictionary) thus gives many documents for the interleaved train/val split.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise ValueError("file_documents needs at least one path or pattern")
    base = Path(base_dir).resolve()
    found: dict[str, Path] = {}
    for pattern in patterns:
        matches = _expand_pattern(pattern, base)
        if not matches:
            raise FileNotFoundError(f"no file matches {pattern!r} (relative to {base}){_missing_hint(pattern)}")
        for match in matches:
            resolved = match.resolve()
            found[resolved.as_posix()] = resolved

    def doc_id(path: Path) -> str:
        try:
            return path.relative_to(base).as_posix()
        except ValueError:
            return path.as_posix()

    if doc_bytes < 0:
        raise ValueError(f"doc_bytes must be >= 0 (0 = one document per file), got {doc_bytes}")

    def read_all() -> Iterator[Document]:
        for key in sorted(found):
            path = found[key]
            text = read_text_file(path)
            if not doc_bytes:
                yield doc_id(path), text
                continue
            for k, piece in enumerate(split_entries(text, doc_bytes)):
                yield f"{doc_id(path)}#{k}", piece

    return _take_bytes(read_all(), max_bytes)


def hf_documents(
    dataset: str,
    split: str = "train",
    text_field: str = "text",
    max_bytes: int | None = None,
    config: str | None = None,
) -> Iterator[Document]:
    """Documents of a Hugging Face dataset, streamed in the dataset's own order (deterministic for a fixed revision).

    Needs the optional ``datasets`` package; imported lazily so that the rest of specscale works without it.
    Doc ids are ``"{dataset}/{split}/{row index}"``.
    """
    try:
        import datasets  # noqa: PLC0415 (optional dependency, imported only when this source is used)
    except ImportError as err:
        raise ImportError(
            f"the Hugging Face corpus source needs the optional 'datasets' package: {HF_INSTALL_HINT}"
        ) from err

    # Streaming avoids downloading a whole multi-GB dataset when only max_bytes of it are used.
    stream = datasets.load_dataset(dataset, config, split=split, streaming=True)

    def read_all() -> Iterator[Document]:
        for index, row in enumerate(stream):
            if text_field not in row:
                raise KeyError(f"dataset {dataset!r} has no field {text_field!r}; fields: {sorted(row)}")
            yield f"{dataset}/{split}/{index}", str(row[text_field])

    return _take_bytes(read_all(), max_bytes)


def split_documents(docs: Iterable[Document], val_every: int) -> tuple[list[Document], list[Document]]:
    """Interleaved train/val split: the ``val_every``-th, ``2·val_every``-th, ... document goes to val.

    With 0-based positions i in the deterministic order, document i is a validation document iff
    ``(i + 1) % val_every == 0``; all others are training documents, in their original order.
    Why interleave: the last files of the standard library (``xml``, ``zipfile``, ``zoneinfo`` ...) are atypical,
    and taking the tail as validation shifts validation loss by about 0.7 nats.
    """
    if val_every < 2:
        raise ValueError(f"val_every must be >= 2 (every val_every-th document goes to val), got {val_every}")
    train: list[Document] = []
    val: list[Document] = []
    for i, doc in enumerate(docs):
        (val if (i + 1) % val_every == 0 else train).append(doc)
    if not val:
        raise ValueError(
            f"validation split is empty: only {len(train)} documents, fewer than val_every={val_every}"
        )
    return train, val
