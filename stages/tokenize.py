"""tokenize stage: corpus → byte-level BPE (unless pre-tokenized) → train.bin / val.bin token shards."""

from __future__ import annotations

import glob
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from specscale.cache import RunStore

GPT2_VOCAB = 50257  # modded-nanoGPT shards carry GPT-2 BPE ids


def _documents(data: dict[str, Any], root: Path):
    from specscale import corpus

    if data["source"] == "stdlib":
        return corpus.stdlib_documents(data["max_bytes"])
    if data["source"] == "files":
        return corpus.file_documents(list(data["paths"]), root)
    return corpus.hf_documents(data["hf_dataset"], data["hf_split"], data["hf_text_field"], data["max_bytes"])


def _concat_bin(patterns: list[str], root: Path, what: str) -> np.ndarray:
    from specscale.shards import read_bin_shard

    files = sorted({f for p in patterns for f in glob.glob(str(root / p), recursive=True)})
    if not files:
        raise FileNotFoundError(f"data.{what}: no .bin shard matches {patterns} (relative to {root})")
    return np.concatenate([np.asarray(read_bin_shard(f)) for f in files])


def run_one(spec: dict[str, Any], work: Path, store: RunStore) -> dict[str, Any]:
    from specscale import corpus, tokenizer
    from specscale.shards import write_tokens

    data = spec["data"]
    started = time.time()
    if data["source"] == "bin":
        train = _concat_bin(data["paths"], store.project_root, "paths")
        val = _concat_bin(data["val_paths"], store.project_root, "val_paths") if data["val_paths"] else None
        if val is None:  # no val shards: hold out every val_every-th 64k-token block, interleaved like documents
            block = 65536
            blocks = np.arange(len(train)) // block
            is_val = blocks % data["val_every"] == data["val_every"] - 1
            train, val = train[~is_val], train[is_val]
        vocab_size, n_docs = GPT2_VOCAB, None
    else:
        docs = list(_documents(data, store.project_root))
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
    return {"device": "cpu", **{k: meta[k] for k in ("vocab_size", "train_tokens", "val_tokens")}}
