"""Frequency buckets (HEAD / MID / TAIL) of token types, as in docs/science.md §5.

A position belongs to the bucket of its *input* token. Buckets come from unigram counts over the training tokens:
sort the types by count (descending; ties by type id ascending, so the result is deterministic), cumulate the
occurrence mass, and cut at the mass edges (1/3, 2/3).

Boundary convention (exact, in rational arithmetic): with ``before(t)`` = occurrences of all types ranked ahead
of t, divided by all occurrences,
    HEAD  if before(t) <  1/3
    MID   if 1/3 <= before(t) < 2/3
    TAIL  otherwise,
so the type that straddles an edge stays on the *earlier* (more frequent) side: HEAD is the shortest prefix of
the ranking that covers at least 1/3 of the occurrences, and HEAD+MID the shortest covering at least 2/3.
Types that never occur get bucket -1 and belong to no bucket.

The probe set (``select_probe_set``, written by ``ProbeSet.save``) is the fixed held-out input on which every run's
activations are measured: identical across runs, with the token counts recorded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

BUCKET_NAMES = ("HEAD", "MID", "TAIL")  # frequency buckets, most frequent first
POOLED = "GLOBAL"  # the set that pools every token regardless of bucket
ALL_SETS = (*BUCKET_NAMES, POOLED)  # display and table order of every measured set
UNSEEN = -1
_COUNT_CHUNK = 1 << 24  # tokens per bincount call: bounds memory on huge memory-mapped corpora
_SCAN_CHUNK_WINDOWS = 4096  # probe-set windows classified per step


def unigram_counts(tokens: Any, vocab_size: int) -> np.ndarray:
    """Occurrences of every type id in ``tokens`` (array, memmap or ``shards.ConcatTokens``): (vocab_size,) int64."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, len(tokens), _COUNT_CHUNK):
        chunk = np.asarray(tokens[start : start + _COUNT_CHUNK])
        if chunk.size and int(chunk.max()) >= vocab_size:
            raise ValueError(f"token id {int(chunk.max())} is outside the vocabulary of {vocab_size} types")
        counts += np.bincount(chunk, minlength=vocab_size).astype(np.int64)
    return counts


def _as_fraction(edge: float) -> Fraction:
    # 1/3 as a float is not exactly 1/3; recover the intended small rational so that a type whose preceding mass
    # is exactly one third (e.g. 30 of 90) is classified by the stated rule, not by rounding noise.
    return Fraction(edge).limit_denominator(1_000_000)


def assign_buckets(counts: np.ndarray, edges: tuple[float, float] = (1 / 3, 2 / 3)) -> np.ndarray:
    """Bucket id per type: 0 HEAD, 1 MID, 2 TAIL, -1 never occurs. Shape (vocab_size,), int8. See module docstring."""
    counts = np.asarray(counts)
    if counts.ndim != 1 or not np.issubdtype(counts.dtype, np.integer):
        raise ValueError(f"counts must be a 1-D integer array, got shape {counts.shape}, dtype {counts.dtype}")
    if (counts < 0).any():
        raise ValueError("counts must be non-negative")
    if len(edges) != 2 or not 0 < edges[0] < edges[1] < 1:
        raise ValueError(f"edges must be two increasing fractions in (0, 1), got {edges}")
    counts = counts.astype(np.int64)
    total = int(counts.sum())
    if total == 0:
        raise ValueError("all counts are zero: no occurrences to bucket")
    type_ids = np.arange(counts.size)
    order = np.lexsort((type_ids, -counts))  # primary key: count descending; then id ascending
    sorted_counts = counts[order]
    mass_before = np.cumsum(sorted_counts) - sorted_counts  # occurrences ranked strictly ahead, int64
    sorted_bucket = np.zeros(counts.size, dtype=np.int8)
    for edge in edges:
        f = _as_fraction(edge)
        # before/total >= num/den  <=>  before·den >= num·total, in exact integers (Python ints: no overflow).
        threshold = f.numerator * total
        at_or_past = np.array([int(b) * f.denominator >= threshold for b in mass_before], dtype=bool)
        sorted_bucket += at_or_past.astype(np.int8)
    bucket = np.empty(counts.size, dtype=np.int8)
    bucket[order] = sorted_bucket
    bucket[counts == 0] = UNSEEN
    return bucket


def bucket_stats(counts: np.ndarray, bucket_of_type: np.ndarray) -> dict[str, Any]:
    """Types and occurrence share per bucket (JSON-serialisable)::

    {"total_occurrences": int, "unseen_types": int,
     "HEAD": {"types": int, "occurrences": int, "share": float}, "MID": {...}, "TAIL": {...}}
    """
    counts = np.asarray(counts, dtype=np.int64)
    bucket_of_type = np.asarray(bucket_of_type)
    if counts.shape != bucket_of_type.shape:
        raise ValueError(f"counts {counts.shape} and bucket_of_type {bucket_of_type.shape} differ in shape")
    total = int(counts.sum())
    stats: dict[str, Any] = {
        "total_occurrences": total,
        "unseen_types": int((bucket_of_type == UNSEEN).sum()),
    }
    for k, name in enumerate(BUCKET_NAMES):
        members = bucket_of_type == k
        occ = int(counts[members].sum())
        stats[name] = {"types": int(members.sum()), "occurrences": occ, "share": occ / total if total else 0.0}
    return stats


@dataclass
class ProbeSet:
    """Fixed held-out measurement input.

    windows:        (n_seq, seq_len) input tokens, the first n_seq non-overlapping windows of the val split.
    bucket_indices: bucket name → flat positions into ``windows.reshape(-1)`` (position = seq·seq_len + t), int64,
                    ascending: the first ``selected`` positions whose input token is in that bucket (empty if skipped).
    pooled_indices: the first ``min(pooled_tokens, n_seq·seq_len)`` flat positions, int64.
    buckets:        bucket name → {"requested", "selected", "available", "skipped"}; ``available`` counts the
                    bucket's positions in all complete windows of the val split.
    """

    seq_len: int
    windows: np.ndarray
    bucket_indices: dict[str, np.ndarray]
    pooled_indices: np.ndarray
    buckets: dict[str, dict[str, Any]]
    tokens_per_bucket: int
    pooled_tokens: int
    min_bucket_tokens: int
    meta: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """sha256 of the windows and all index arrays: equal fingerprints ⇒ identical measurement input."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.windows, dtype=np.int64).tobytes())
        for name in BUCKET_NAMES:
            h.update(name.encode())
            h.update(np.ascontiguousarray(self.bucket_indices[name], dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(self.pooled_indices, dtype=np.int64).tobytes())
        return h.hexdigest()

    def save(self, directory: str | Path) -> Path:
        """Write ``probe_set.npz`` (arrays) and ``probe_set.json`` (counts, skips, fingerprint) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {"windows": self.windows, "pooled_indices": self.pooled_indices}
        arrays.update({f"bucket_{name}": self.bucket_indices[name] for name in BUCKET_NAMES})
        np.savez(directory / "probe_set.npz", **arrays)
        info = {
            "seq_len": self.seq_len,
            "n_seq": int(self.windows.shape[0]),
            "tokens_per_bucket": self.tokens_per_bucket,
            "pooled_tokens": self.pooled_tokens,
            "pooled_selected": int(self.pooled_indices.size),
            "min_bucket_tokens": self.min_bucket_tokens,
            "buckets": self.buckets,
            "fingerprint": self.fingerprint(),
            "meta": self.meta,
        }
        (directory / "probe_set.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "ProbeSet":
        """Read a probe set written by ``save``; checks the stored fingerprint against the arrays."""
        directory = Path(directory)
        info = json.loads((directory / "probe_set.json").read_text())
        with np.load(directory / "probe_set.npz") as data:
            probe = cls(
                seq_len=int(info["seq_len"]),
                windows=data["windows"],
                bucket_indices={name: data[f"bucket_{name}"] for name in BUCKET_NAMES},
                pooled_indices=data["pooled_indices"],
                buckets=info["buckets"],
                tokens_per_bucket=int(info["tokens_per_bucket"]),
                pooled_tokens=int(info["pooled_tokens"]),
                min_bucket_tokens=int(info["min_bucket_tokens"]),
                meta=info.get("meta", {}),
            )
        if probe.fingerprint() != info["fingerprint"]:
            raise ValueError(f"{directory}: probe_set.npz does not match the fingerprint in probe_set.json")
        return probe


def _window_buckets(val_tokens: Any, bucket_of_type: np.ndarray, seq_len: int, first: int, last: int) -> np.ndarray:
    """Bucket ids of the input tokens of windows [first, last): shape ((last-first)·seq_len,), int8."""
    chunk = np.asarray(val_tokens[first * seq_len : last * seq_len]).astype(np.int64)
    if chunk.size and int(chunk.max()) >= bucket_of_type.size:
        raise ValueError(f"val token id {int(chunk.max())} is outside the vocabulary of {bucket_of_type.size} types")
    return bucket_of_type[chunk]


def select_probe_set(
    val_tokens: Any,
    bucket_of_type: np.ndarray,
    seq_len: int,
    tokens_per_bucket: int,
    pooled_tokens: int,
    min_bucket_tokens: int = 1000,
) -> ProbeSet:
    """Take the first non-overlapping ``seq_len`` windows of the val split, in order, until every bucket has
    ``tokens_per_bucket`` positions and there are ``pooled_tokens`` positions in all, or the split is exhausted.

    A bucket with fewer than ``min_bucket_tokens`` positions in the whole split is skipped (it does not hold up the
    scan and gets no indices). A bucket with fewer than requested but at least ``min_bucket_tokens`` keeps all it
    has (``selected < requested``). Positions whose token never occurred in training (bucket -1) count only in the
    pooled set. A trailing partial window of the val split is never used.
    """
    if seq_len < 1 or tokens_per_bucket < 1 or pooled_tokens < 1 or min_bucket_tokens < 0:
        raise ValueError("seq_len, tokens_per_bucket and pooled_tokens must be >= 1, min_bucket_tokens >= 0")
    bucket_of_type = np.asarray(bucket_of_type, dtype=np.int8)
    n_windows = len(val_tokens) // seq_len
    if n_windows < 1:
        raise ValueError(f"val split has {len(val_tokens)} tokens, fewer than one window of {seq_len}")

    # Pass 1: how many positions each bucket has in the whole split; fixes the targets and the skips.
    available = np.zeros(len(BUCKET_NAMES), dtype=np.int64)
    for first in range(0, n_windows, _SCAN_CHUNK_WINDOWS):
        b = _window_buckets(val_tokens, bucket_of_type, seq_len, first, min(first + _SCAN_CHUNK_WINDOWS, n_windows))
        available += np.bincount(b[b >= 0], minlength=len(BUCKET_NAMES))[: len(BUCKET_NAMES)]
    skipped = available < min_bucket_tokens
    target = np.where(skipped, 0, np.minimum(tokens_per_bucket, available))
    pooled_target = min(pooled_tokens, n_windows * seq_len)

    # Pass 2: scan windows in order, collecting each bucket's first positions, until every target is met.
    found: list[list[np.ndarray]] = [[] for _ in BUCKET_NAMES]
    have = np.zeros(len(BUCKET_NAMES), dtype=np.int64)
    n_seq = 0
    for first in range(0, n_windows, _SCAN_CHUNK_WINDOWS):
        last = min(first + _SCAN_CHUNK_WINDOWS, n_windows)
        b = _window_buckets(val_tokens, bucket_of_type, seq_len, first, last)
        offset = first * seq_len
        needed_end = 0  # flat position (exclusive) of the last token this chunk must contribute
        for k in range(len(BUCKET_NAMES)):
            missing = int(target[k] - have[k])
            if missing <= 0:
                continue
            pos = np.flatnonzero(b == k)[:missing] + offset
            found[k].append(pos)
            have[k] += pos.size
            if pos.size:
                needed_end = max(needed_end, int(pos[-1]) + 1)
        needed_end = max(needed_end, min(pooled_target, last * seq_len))
        n_seq = max(n_seq, -(-needed_end // seq_len))  # ceil: the window holding the last needed position
        if (have >= target).all() and last * seq_len >= pooled_target:
            break

    windows = np.asarray(val_tokens[: n_seq * seq_len]).reshape(n_seq, seq_len).copy()
    bucket_indices = {
        name: (np.concatenate(found[k]) if found[k] else np.zeros(0, dtype=np.int64)).astype(np.int64)
        for k, name in enumerate(BUCKET_NAMES)
    }
    buckets = {
        name: {
            "requested": int(tokens_per_bucket),
            "selected": int(bucket_indices[name].size),
            "available": int(available[k]),
            "skipped": bool(skipped[k]),
        }
        for k, name in enumerate(BUCKET_NAMES)
    }
    return ProbeSet(
        seq_len=seq_len,
        windows=windows,
        bucket_indices=bucket_indices,
        pooled_indices=np.arange(pooled_target, dtype=np.int64),
        buckets=buckets,
        tokens_per_bucket=tokens_per_bucket,
        pooled_tokens=pooled_tokens,
        min_bucket_tokens=min_bucket_tokens,
    )


def build_buckets(tokens_dir: Path, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    """The buckets stage's computation: unigram counts of tokens_dir/train.bin → bucket of every type, the fixed probe
    set from val.bin, and bucket_stats.json, all into `work`. Returns the stats (types and probe tokens per bucket)."""
    from specscale.shards import open_tokens  # shards imports torch; keep this module light for the report side

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
    return stats
