"""buckets stage: unigram counts over the train split → HEAD/MID/TAIL by occurrence-mass tertiles, and the fixed
held-out probe set (windows of the val split with ≥ N tokens per bucket) that every activations run measures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from specscale.cache import RunStore


def run_one(spec: dict[str, Any], work: Path, store: RunStore) -> dict[str, Any]:
    from specscale.buckets import BUCKET_NAMES, assign_buckets, bucket_stats, select_probe_set, unigram_counts
    from specscale.shards import open_tokens

    tokens_dir = store.final_dir("tokenize", spec["inputs"]["tokenize"])
    meta = json.loads((tokens_dir / "tokens.json").read_text())
    counts = unigram_counts(open_tokens(tokens_dir / "train.bin"), meta["vocab_size"])
    bucket_of_type = assign_buckets(counts, tuple(spec["edges"]))
    np.save(work / "bucket_of_type.npy", bucket_of_type)
    np.save(work / "unigram_counts.npy", counts)
    probe = select_probe_set(open_tokens(tokens_dir / "val.bin"), bucket_of_type, spec["seq_len"],
                             spec["tokens_per_bucket"], spec["pooled_tokens"], spec["min_bucket_tokens"])
    probe.save(work)
    stats = {"types": bucket_stats(counts, bucket_of_type), "probe": probe.buckets,
             "probe_sequences": int(probe.windows.shape[0]), "pooled_selected": int(probe.pooled_indices.size)}
    p = counts[counts > 0] / counts.sum()
    stats["unigram_entropy_nats"] = float(-(p * np.log(p)).sum())
    (work / "bucket_stats.json").write_text(json.dumps(stats, indent=2))
    for name in BUCKET_NAMES:
        info = stats["types"][name]
        print(f"{name}: {info['types']} types, {info['share']:.1%} of occurrences; probe tokens "
              f"{probe.buckets[name]['selected']}{' (skipped)' if probe.buckets[name]['skipped'] else ''}", flush=True)
    return {"device": "cpu", "unigram_entropy_nats": stats["unigram_entropy_nats"]}
