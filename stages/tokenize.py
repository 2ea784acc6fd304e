"""tokenize stage (single run): corpus → BPE → train.bin / val.bin, or for `.bin` shards a manifest that reads them in
place (specscale.tokens.tokenize)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from specscale.store.runs import RunStore
from specscale.tokens.tokenize import build_token_shards


def run_one(spec: dict[str, Any], work: Path, store: RunStore) -> dict[str, Any]:
    meta = build_token_shards(spec["data"], store.project_root, work)
    return {"device": "cpu", **{k: meta[k] for k in ("vocab_size", "train_tokens", "val_tokens")}}
