"""The tokenize stage's computation: a corpus (embedded stdlib source, text files or a Hugging Face dataset) →
byte-level BPE → train.bin / val.bin shards and tokens.json; or modded-nanoGPT `.bin` shards, already tokenized →
validated and indexed in place (shards.json, see shard_manifest.py; no token is copied) and tokens.json."""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any, Iterator

from specscale.tokens import corpus
from specscale.tokens import tokenizer
from specscale.tokens.manifest import MANIFEST_FILE, write_manifest
from specscale.tokens.shards import GPT2_VOCAB, write_tokens

VAL_BLOCK_TOKENS = 65536  # `.bin` corpora without val shards: every val_every-th block of this many tokens is val


def documents(data: dict[str, Any], root: Path) -> Iterator[tuple[str, str]]:
    """(name, text) documents of a text source, in a fixed order (the split interleaves by position)."""
    if data["source"] == "stdlib":
        return corpus.stdlib_documents(data["max_bytes"])
    if data["source"] == "files":
        doc_bytes = data.get("doc_bytes", 0)  # absent from a run spec when 0 (sweep.KEY_NEUTRAL_FIELDS)
        if doc_bytes:  # files cut into documents at entry boundaries, capped by max_bytes like stdlib and hf
            return corpus.file_documents(list(data["paths"]), root, data["max_bytes"], doc_bytes)
        return corpus.file_documents(list(data["paths"]), root)  # whole files, no cap: as before doc_bytes existed
    return corpus.hf_documents(data["hf_dataset"], data["hf_split"], data["hf_text_field"], data["max_bytes"])


def bin_files(patterns: list[str], root: Path, what: str) -> list[Path]:
    """Every `.bin` shard matching `patterns` (relative to root, `**` allowed), deduplicated, in path order."""
    files = sorted({f for p in patterns for f in glob.glob(str(root / p), recursive=True)})
    if not files:
        raise FileNotFoundError(f"data.{what}: no .bin shard matches {patterns} (relative to {root})")
    return [Path(f) for f in files]


def build_token_shards(data: dict[str, Any], root: Path, work: Path) -> dict[str, Any]:
    """Text sources: write work/train.bin, work/val.bin and work/tokenizer.json. `.bin` shards: write work/shards.json
    (every shard validated here, before any run starts). Both write work/tokens.json; returns its fields."""
    if data["source"] == "bin":  # read in place: validate and index the shards, copy nothing
        val_files = bin_files(data["val_paths"], root, "val_paths") if data["val_paths"] else []
        manifest = write_manifest(work, bin_files(data["paths"], root, "paths"), val_files, VAL_BLOCK_TOKENS,
                                  data["val_every"])
        meta = {"vocab_size": GPT2_VOCAB, "train_tokens": manifest["train_tokens"],
                "val_tokens": manifest["val_tokens"], "documents": None, "source": "bin",
                "shards": {"train": len(manifest["train"]), "val": len(manifest["val"]), "manifest": MANIFEST_FILE}}
        return _finish(meta, work)
    docs = list(documents(data, root))
    train_docs, val_docs = corpus.split_documents(docs, data["val_every"])
    print(f"{len(docs)} documents ({sum(len(t) for _, t in docs) / 1e6:.1f} MB): "
          f"{len(train_docs)} train, {len(val_docs)} val; training BPE ({data['vocab_size']} types)", flush=True)
    tok = tokenizer.train_bpe((text for _, text in train_docs), data["vocab_size"])
    tokenizer.save_tokenizer(tok, work / "tokenizer.json")
    train = tokenizer.encode_documents(tok, train_docs)
    val = tokenizer.encode_documents(tok, val_docs)
    write_tokens(work / "train.bin", train)
    write_tokens(work / "val.bin", val)
    meta = {"vocab_size": int(tok.get_vocab_size()), "train_tokens": int(len(train)), "val_tokens": int(len(val)),
            "documents": {"train": len(train_docs), "val": len(val_docs)}, "source": data["source"]}
    return _finish(meta, work)


def _finish(meta: dict[str, Any], work: Path) -> dict[str, Any]:
    # no time in tokens.json (provenance.json has the run's wall time): a run computed again writes the same bytes,
    # so the runs made from it are not "made from another input" (store/runs.py, RunStore.changes)
    (work / "tokens.json").write_text(json.dumps(meta, indent=2))
    print(f"tokens: {meta['train_tokens']:,} train, {meta['val_tokens']:,} val, vocab {meta['vocab_size']}", flush=True)
    return meta
