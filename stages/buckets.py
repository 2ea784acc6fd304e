"""buckets stage (single run): HEAD/MID/TAIL of every type from the train split's unigram counts, and the fixed
held-out probe set that every activations run measures (specscale.tokens.buckets.build_buckets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from specscale.tokens.buckets import build_buckets
from specscale.store.runs import RunStore


def run_one(spec: dict[str, Any], work: Path, store: RunStore) -> dict[str, Any]:
    stats = build_buckets(store.final_dir("tokenize", spec["inputs"]["tokenize"]), spec, work)
    return {"device": "cpu", "unigram_entropy_nats": stats["unigram_entropy_nats"]}
