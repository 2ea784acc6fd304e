"""The manifest of a ``.bin`` corpus read in place, and the one function that opens a tokenize run's token splits.

A tokenize run of ``data.source: bin`` copies no tokens: it writes ``shards.json``, listing for every train and val
shard its resolved absolute path, size in bytes, token count and a content fingerprint, and how the val split is
made (its own shards, or every ``val_every``-th block of the train stream). ``open_splits`` opens a tokenize run's
(train, val) token streams from that manifest — re-checking every shard first, so a shard that went missing, got
corrupted or changed since tokenize stops the stage with its name — or from our own ``train.bin`` / ``val.bin``.

Fingerprint: SHA-256 over the file size, the first 1 MiB (which holds the 1 KiB header) and the last 1 MiB. Its cost
is constant per shard (2 MiB read), so re-checking FineWeb-10B's 104 shards reads ≈ 200 MiB each time a stage opens
them (well under a second from the page cache), where a full hash would read 20 GB (minutes) at every train run. It
catches a shard re-downloaded with other content, truncated, extended or re-headered; it misses an edit confined to
a shard's middle, which is not how shards change (a download or a re-tokenization rewrites the whole file).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from specscale.tokens.shards import (
    ConcatTokens,
    ShardFormatError,
    interleaved_split,
    open_tokens,
    read_bin_shard,
    shard_token_count,
)

MANIFEST_FILE = "shards.json"
MANIFEST_FORMAT = "specscale .bin shard manifest"
MANIFEST_VERSION = 1
FINGERPRINT_EDGE_BYTES = 1 << 20  # bytes hashed at each end of a shard
FINGERPRINT_METHOD = "sha256(size, first 1 MiB, last 1 MiB)"

TokenSplit = Any  # np.ndarray | np.memmap | ConcatTokens | BlockSplit: len() and step-1 slices


class ShardChangedError(ValueError):
    """A shard listed in a manifest no longer matches what tokenize indexed; the message names it and the fix."""


def fingerprint(path: str | Path) -> str:
    """Hex SHA-256 of the file's size, its first and its last ``FINGERPRINT_EDGE_BYTES`` (see module docstring)."""
    size = os.path.getsize(path)
    h = hashlib.sha256(f"{size}\n".encode())
    with open(path, "rb") as f:
        h.update(f.read(FINGERPRINT_EDGE_BYTES))
        if size > FINGERPRINT_EDGE_BYTES:
            f.seek(max(size - FINGERPRINT_EDGE_BYTES, FINGERPRINT_EDGE_BYTES))  # the tail, never the head twice
            h.update(f.read())
    return h.hexdigest()


def describe_shard(path: str | Path, key: str) -> dict[str, Any]:
    """A validated shard's manifest record: resolved path, bytes, tokens, fingerprint. ``key`` names the spec field
    (e.g. ``data.paths``) that selected it, for the error of a bad shard."""
    resolved = Path(path).resolve()
    try:
        tokens = shard_token_count(resolved)
    except ShardFormatError as e:
        raise ShardFormatError(
            f"{key}: {e}. Replace the file (re-download it, e.g. with modded-nanoGPT's data/cached_fineweb10B.py, "
            f"or re-write it) or change {key} so it no longer matches it"
        ) from e
    return {"path": str(resolved), "bytes": resolved.stat().st_size, "tokens": tokens,
            "fingerprint": fingerprint(resolved)}


def write_manifest(work: Path, train_files: Sequence[str | Path], val_files: Sequence[str | Path],
                   block_tokens: int, val_every: int) -> dict[str, Any]:
    """Validate every shard and write ``work/shards.json``; returns the manifest (with train/val token counts).

    With no ``val_files`` the val split is every ``val_every``-th block of ``block_tokens`` of the train stream.
    """
    train = [describe_shard(f, "data.paths") for f in train_files]
    val = [describe_shard(f, "data.val_paths") for f in val_files]
    if not train:
        raise ValueError("data.paths: no train shard given")
    both = sorted({r["path"] for r in train} & {r["path"] for r in val})
    if both:
        raise ValueError(f"data.paths and data.val_paths both match {both[0]}: a shard belongs to one split; "
                         "narrow one of the globs")
    manifest: dict[str, Any] = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
                                "fingerprint": FINGERPRINT_METHOD, "train": train, "val": val}
    manifest["val_split"] = (
        {"kind": "files"} if val else {"kind": "blocks", "block_tokens": int(block_tokens), "val_every": int(val_every)}
    )
    train_tokens, val_tokens = _splits(manifest, [read_bin_shard(r["path"]) for r in train],
                                       [read_bin_shard(r["path"]) for r in val])
    manifest["train_tokens"], manifest["val_tokens"] = len(train_tokens), len(val_tokens)
    if not len(train_tokens) or not len(val_tokens):
        raise ValueError(
            f"data.paths: {sum(r['tokens'] for r in train):,} tokens are too few for a validation split that holds "
            f"out one block of {block_tokens:,} tokens in every {val_every} ({len(train_tokens):,} train, "
            f"{len(val_tokens):,} val); give validation shards in data.val_paths or more train shards"
        )
    tmp = work / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, work / MANIFEST_FILE)
    return manifest


def _splits(manifest: dict[str, Any], train_parts: list, val_parts: list) -> tuple[TokenSplit, TokenSplit]:
    # ConcatTokens even over one shard: its bounded resident set is what keeps a 10B-token scan's RSS small.
    train = ConcatTokens(train_parts)
    split = manifest["val_split"]
    if split["kind"] == "blocks":
        return interleaved_split(train, split["block_tokens"], split["val_every"])
    return train, ConcatTokens(val_parts)


def _recheck(record: dict[str, Any], tokens_dir: Path) -> None:
    """Raise if the shard differs from its record: cheap (stat, header, 2 MiB fingerprint)."""
    path = Path(record["path"])
    fix = (f"The tokenize run {tokens_dir} indexed the shard as it was. Restore the original file, or delete "
           f"{tokens_dir} and run the tokenize stage again (runs already trained on the old data are not "
           "invalidated by this: delete them too)")
    if not path.is_file():
        raise ShardChangedError(f"{path}: shard listed in {tokens_dir / MANIFEST_FILE} is missing. {fix}")
    try:
        tokens = shard_token_count(path)
    except ShardFormatError as e:
        raise ShardChangedError(f"{e}; it was valid at tokenize. {fix}") from e
    size = path.stat().st_size
    if size != record["bytes"] or tokens != record["tokens"]:
        raise ShardChangedError(f"{path}: shard changed after tokenize: {size} bytes / {tokens:,} tokens now, "
                                f"{record['bytes']} bytes / {record['tokens']:,} tokens then. {fix}")
    if fingerprint(path) != record["fingerprint"]:
        raise ShardChangedError(f"{path}: shard changed after tokenize: its content fingerprint "
                                f"({FINGERPRINT_METHOD}) differs. {fix}")


def read_manifest(tokens_dir: Path) -> dict[str, Any]:
    path = tokens_dir / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("version") != MANIFEST_VERSION:
        raise ValueError(f"{path}: not a version-{MANIFEST_VERSION} shard manifest; re-run the tokenize stage")
    return manifest


def open_splits(tokens_dir: Path) -> tuple[TokenSplit, TokenSplit]:
    """(train, val) token streams of a tokenize run, memory-mapped, never materialised.

    From ``shards.json`` when present (every shard re-checked against its record first), else from the run's own
    ``train.bin`` / ``val.bin``.
    """
    tokens_dir = Path(tokens_dir)
    if not (tokens_dir / MANIFEST_FILE).exists():
        return open_tokens(tokens_dir / "train.bin"), open_tokens(tokens_dir / "val.bin")
    manifest = read_manifest(tokens_dir)
    for record in (*manifest["train"], *manifest["val"]):
        _recheck(record, tokens_dir)
    return _splits(manifest, [read_bin_shard(r["path"]) for r in manifest["train"]],
                   [read_bin_shard(r["path"]) for r in manifest["val"]])
