"""The tokenize stage's computation: a corpus (embedded stdlib source, text files, modded-nanoGPT `.bin` shards or a
Hugging Face dataset) → byte-level BPE (unless already tokenized) → train.bin / val.bin shards and tokens.json."""

from __future__ import annotations

import glob
import json
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from specscale import corpus, tokenizer
from specscale.shards import GPT2_VOCAB, read_bin_shard, write_tokens

VAL_BLOCK_TOKENS = 65536  # `.bin` corpora without val shards: every val_every-th block of this many tokens is val


def documents(data: dict[str, Any], root: Path) -> Iterator[tuple[str, str]]:
    """(name, text) documents of a text source, in a fixed order (the split interleaves by position)."""
    if data["source"] == "stdlib":
        return corpus.stdlib_documents(data["max_bytes"])
    if data["source"] == "files":
        return corpus.file_documents(list(data["paths"]), root)
    return corpus.hf_documents(data["hf_dataset"], data["hf_split"], data["hf_text_field"], data["max_bytes"])


def concat_bin(patterns: list[str], root: Path, what: str) -> np.ndarray:
    """Every `.bin` shard matching `patterns` (relative to root), in path order, as one token array."""
    files = sorted({f for p in patterns for f in glob.glob(str(root / p), recursive=True)})
    if not files:
        raise FileNotFoundError(f"data.{what}: no .bin shard matches {patterns} (relative to {root})")
    return np.concatenate([np.asarray(read_bin_shard(f)) for f in files])


def build_token_shards(data: dict[str, Any], root: Path, work: Path) -> dict[str, Any]:
    """Write work/train.bin, work/val.bin (and work/tokenizer.json for text sources); returns tokens.json's fields."""
    started = time.time()
    if data["source"] == "bin":
        train = concat_bin(data["paths"], root, "paths")
        val = concat_bin(data["val_paths"], root, "val_paths") if data["val_paths"] else None
        if val is None:  # no val shards: hold out every val_every-th block, interleaved like documents
            blocks = np.arange(len(train)) // VAL_BLOCK_TOKENS
            is_val = blocks % data["val_every"] == data["val_every"] - 1
            train, val = train[~is_val], train[is_val]
        vocab_size, n_docs = GPT2_VOCAB, None
    else:
        docs = list(documents(data, root))
        train_docs, val_docs = corpus.split_documents(docs, data["val_every"])
        print(f"{len(docs)} documents ({sum(len(t) for _, t in docs) / 1e6:.1f} MB): "
              f"{len(train_docs)} train, {len(val_docs)} val; training BPE ({data['vocab_size']} types)", flush=True)
        tok = tokenizer.train_bpe((text for _, text in train_docs), data["vocab_size"])
        tokenizer.save_tokenizer(tok, work / "tokenizer.json")
        train = tokenizer.encode_documents(tok, train_docs)
        val = tokenizer.encode_documents(tok, val_docs)
        vocab_size, n_docs = tok.get_vocab_size(), {"train": len(train_docs), "val": len(val_docs)}
    write_tokens(work / "train.bin", train)
    write_tokens(work / "val.bin", val)
    meta = {"vocab_size": int(vocab_size), "train_tokens": int(len(train)), "val_tokens": int(len(val)),
            "documents": n_docs, "source": data["source"], "seconds": round(time.time() - started, 1)}
    (work / "tokens.json").write_text(json.dumps(meta, indent=2))
    print(f"tokens: {meta['train_tokens']:,} train, {meta['val_tokens']:,} val, vocab {vocab_size}", flush=True)
    return meta
