"""Frequency buckets (HEAD / MID / TAIL) of token types, as in docs/science.md §5.

A position belongs to the bucket of its *input* token. Buckets come from unigram counts over the training tokens,
one count per vocabulary entry (types never seen included). Two rules (``probe.bucket_rule``), both cutting the
occurrence mass at the edges e₁, e₂ (``probe.bucket_edges``, default 0.33, 0.67):

``paper`` (default) — the authors' code. Sort the counts descending into ``sorted``, cs = cumsum, total = cs[-1],
V = number of vocabulary entries:
    head_idx = max(1, min(#(cs <= e₁·total), V−1));  mid_idx = max(head_idx+1, min(#(cs <= e₂·total), V−1))
    head_min = sorted[head_idx−1];  mid_min = sorted[mid_idx−1]
    HEAD  count >= head_min;  MID  mid_min <= count < head_min;  TAIL  count < mid_min (never-seen types included).
  So equal counts always share a bucket, and the type whose cumulative mass crosses a cut falls into the *later*
  bucket. ``#(cs <= e·total)`` is evaluated exactly (integers against the rational e); the authors compare a float32
  cumsum, which can differ only when a cumulative count lies within float32 rounding (2⁻²⁴ relative) of a cut.
  In the degenerate case of a single seen type, mid_min is 0 and the unseen types land in MID, as in their code.

``mass`` — specscale's earlier rule. Sort the types by count (descending; ties by type id ascending, so the result
  is deterministic); with ``before(t)`` = occurrences of all types ranked ahead of t, divided by all occurrences,
    HEAD  if before(t) <  e₁;  MID  if e₁ <= before(t) < e₂;  TAIL  otherwise,
  exactly, in rational arithmetic. The straddling type stays on the *earlier* (more frequent) side: HEAD is the
  shortest prefix of the ranking covering at least e₁ of the occurrences. Types that never occur get bucket -1 and
  belong to no bucket.

The probe set (``select_probe_set``, written by ``ProbeSet.save``) is the fixed held-out input on which every run's
activations are measured: identical across runs, with the token counts recorded.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from specscale.tokens.sets import BUCKET_NAMES

BUCKET_RULES = ("paper", "mass")  # probe.bucket_rule; see the module docstring
PAPER_EDGES = (0.33, 0.67)  # the authors' mass cuts (docs/science.md §5)
UNSEEN = -1  # bucket id of a type in no bucket (the mass rule's never-seen types)
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
    # 0.33 or 1/3 as a float is not exactly that number; recover the intended small rational so that a cumulative
    # mass exactly on an edge (e.g. 33 of 100, or 30 of 90) is classified by the stated rule, not by rounding noise.
    return Fraction(edge).limit_denominator(1_000_000)


def _check_counts(counts: np.ndarray, edges: tuple[float, float]) -> np.ndarray:
    counts = np.asarray(counts)
    if counts.ndim != 1 or not np.issubdtype(counts.dtype, np.integer):
        raise ValueError(f"counts must be a 1-D integer array, got shape {counts.shape}, dtype {counts.dtype}")
    if (counts < 0).any():
        raise ValueError("counts must be non-negative")
    if len(edges) != 2 or not 0 < edges[0] < edges[1] < 1:
        raise ValueError(f"edges must be two increasing fractions in (0, 1), got {edges}")
    if int(counts.sum()) == 0:
        raise ValueError("all counts are zero: no occurrences to bucket")
    return counts.astype(np.int64)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez with one fixed timestamp on every member: np.savez stamps the time of writing into the zip, so two
    runs that computed the same arrays would differ in bytes, and a buckets run recomputed identical would read as
    another input downstream (store/runs.py, input_contents). np.load reads it as it reads np.savez's."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            member = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(member, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(array), allow_pickle=False)


@dataclass(frozen=True)
class PaperCutoffs:
    """The authors' cut indices (1-based positions in the descending counts) and the minimum counts they imply."""

    head_idx: int
    mid_idx: int
    head_min: int  # HEAD: count >= head_min
    mid_min: int  # MID: mid_min <= count < head_min; TAIL: count < mid_min


def paper_cutoffs(counts: np.ndarray, edges: tuple[float, float] = PAPER_EDGES) -> PaperCutoffs:
    """head_min and mid_min of the paper rule (module docstring) for counts of shape (V,), V >= 2 entries."""
    counts = _check_counts(counts, edges)
    v = counts.size
    if v < 2:
        raise ValueError(f"the paper's bucket rule needs at least 2 vocabulary entries, got {v}")
    sorted_counts = np.sort(counts)[::-1]
    cs = np.cumsum(sorted_counts)  # int64: at most the total occurrences
    total = int(cs[-1])

    def n_within(edge: float) -> int:
        # #(cs <= e·total), exact: cs is an integer, so cs <= (num/den)·total  <=>  cs <= floor(num·total / den).
        f = _as_fraction(edge)
        return int(np.count_nonzero(cs <= (f.numerator * total) // f.denominator))

    head_idx = max(1, min(n_within(edges[0]), v - 1))
    mid_idx = max(head_idx + 1, min(n_within(edges[1]), v - 1))
    return PaperCutoffs(head_idx, mid_idx, int(sorted_counts[head_idx - 1]), int(sorted_counts[mid_idx - 1]))


def _assign_paper(counts: np.ndarray, edges: tuple[float, float]) -> np.ndarray:
    cut = paper_cutoffs(counts, edges)
    bucket = np.full(counts.size, 2, dtype=np.int8)  # TAIL, never-seen types included
    bucket[counts >= cut.mid_min] = 1
    bucket[counts >= cut.head_min] = 0
    return bucket


def _assign_mass(counts: np.ndarray, edges: tuple[float, float]) -> np.ndarray:
    total = int(counts.sum())
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


def assign_buckets(counts: np.ndarray, edges: tuple[float, float] = PAPER_EDGES, rule: str = "paper") -> np.ndarray:
    """Bucket id per type: 0 HEAD, 1 MID, 2 TAIL (-1: in no bucket, mass rule only). counts: (V,) integer
    occurrences of every vocabulary entry; returns (V,) int8. Rules: module docstring."""
    if rule not in BUCKET_RULES:
        raise ValueError(f"bucket rule {rule!r} is not one of {', '.join(BUCKET_RULES)}")
    counts = _check_counts(counts, edges)
    return _assign_paper(counts, edges) if rule == "paper" else _assign_mass(counts, edges)


def bucket_stats(counts: np.ndarray, bucket_of_type: np.ndarray) -> dict[str, Any]:
    """Types and occurrence share per bucket (JSON-serialisable)::

    {"total_occurrences": int, "unseen_types": int, "unbucketed_types": int,
     "HEAD": {"types": int, "occurrences": int, "share": float}, "MID": {...}, "TAIL": {...}}

    unseen_types counts the vocabulary entries with zero count (under the paper rule they are TAIL types and counted
    in TAIL's "types"); unbucketed_types those in no bucket (id -1: the mass rule's unseen types).
    """
    counts = np.asarray(counts, dtype=np.int64)
    bucket_of_type = np.asarray(bucket_of_type)
    if counts.shape != bucket_of_type.shape:
        raise ValueError(f"counts {counts.shape} and bucket_of_type {bucket_of_type.shape} differ in shape")
    total = int(counts.sum())
    stats: dict[str, Any] = {
        "total_occurrences": total,
        "unseen_types": int((counts == 0).sum()),
        "unbucketed_types": int((bucket_of_type == UNSEEN).sum()),
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
        write_npz(directory / "probe_set.npz", arrays)
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
    has (``selected < requested``). Positions whose token is in no bucket (bucket -1: under the mass rule, a type
    never seen in training; the paper rule puts those in TAIL) count only in the pooled set. A trailing partial window
    of the val split is never used.
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


def batch_probe_set(inputs: np.ndarray, bucket_of_type: np.ndarray, rank_share_tokens: int,
                    min_bucket_tokens: int, meta: dict[str, Any] | None = None) -> ProbeSet:
    """The paper's measurement input at one step (``probe.source: train_batch``, docs/science.md §5): that step's
    training batch ``inputs`` of shape (B, T) (input tokens, windows in the order training draws them).

    Bucket sets come from the first ``rank_share_tokens`` positions (rank 0's share of the global batch: its windows
    are the first ones), every position going to the bucket of its input token; a bucket with fewer than
    ``min_bucket_tokens`` positions there is skipped. The pooled set is the whole global batch (B·T positions).
    ``rank_share_tokens`` 0 means the whole batch (one rank)."""
    inputs = np.asarray(inputs)
    n_seq, seq_len = inputs.shape
    share = int(rank_share_tokens) or n_seq * seq_len
    if share % seq_len or not 0 < share <= n_seq * seq_len:
        raise ValueError(f"probe.rank_share_tokens={rank_share_tokens} must be a whole number of train.seq_len="
                         f"{seq_len} windows and at most the batch's {n_seq * seq_len} tokens; set it to the tokens "
                         f"one data-parallel rank sees per step (the paper: 131072 at 160M, 65536 at 350M)")
    bucket_of_type = np.asarray(bucket_of_type)
    flat = inputs.reshape(-1).astype(np.int64)
    if int(flat.max()) >= bucket_of_type.size:
        raise ValueError(f"batch token id {int(flat.max())} is outside the vocabulary of {bucket_of_type.size} types")
    ids = bucket_of_type[flat[:share]]
    indices, buckets = {}, {}
    for k, name in enumerate(BUCKET_NAMES):
        pos = np.flatnonzero(ids == k).astype(np.int64)
        skipped = pos.size < min_bucket_tokens
        indices[name] = np.zeros(0, dtype=np.int64) if skipped else pos
        buckets[name] = {"requested": share, "selected": int(indices[name].size), "available": int(pos.size),
                         "skipped": bool(skipped)}
    return ProbeSet(seq_len=seq_len, windows=inputs, bucket_indices=indices,
                    pooled_indices=np.arange(n_seq * seq_len, dtype=np.int64), buckets=buckets,
                    tokens_per_bucket=share, pooled_tokens=n_seq * seq_len, min_bucket_tokens=int(min_bucket_tokens),
                    meta=meta or {})


def vocab_entries(vocab_size: int, spec: dict[str, Any]) -> int:
    """V, the length of the count vector: the tokenizer's vocabulary padded to the model's embedding rows
    (``vocab_multiple``; GPT-2 50257 → 50304), as the authors counted over all 50,304 entries. The padding ids never
    occur, so they are TAIL types under the paper rule; they change no token's bucket, only V (its clamps) and the
    number of TAIL types."""
    multiple = int(spec["vocab_multiple"])
    return -(-int(vocab_size) // multiple) * multiple


def build_buckets(tokens_dir: Path, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    """The buckets stage's computation: unigram counts of the tokenize run's train split → bucket of every type, the
    fixed probe set from its val split, and bucket_stats.json, all into `work`. Returns the stats (types and probe tokens per bucket)."""
    from specscale.tokens.manifest import open_splits  # shards imports torch; keep this module light for the report

    meta = json.loads((tokens_dir / "tokens.json").read_text())
    train_tokens, val_tokens = open_splits(tokens_dir)  # memory-mapped in place (shards.json re-checked), or *.bin
    counts = unigram_counts(train_tokens, vocab_entries(meta["vocab_size"], spec))
    edges, rule = (float(spec["edges"][0]), float(spec["edges"][1])), str(spec["rule"])
    bucket_of_type = assign_buckets(counts, edges, rule)
    np.save(work / "bucket_of_type.npy", bucket_of_type)
    np.save(work / "unigram_counts.npy", counts)
    probe = select_probe_set(val_tokens, bucket_of_type, spec["seq_len"],
                             spec["tokens_per_bucket"], spec["pooled_tokens"], spec["min_bucket_tokens"])
    probe.save(work)
    stats = {"rule": rule, "edges": list(edges), "vocab_entries": int(counts.size),
             "types": bucket_stats(counts, bucket_of_type), "probe": probe.buckets,
             "probe_sequences": int(probe.windows.shape[0]), "pooled_selected": int(probe.pooled_indices.size)}
    if rule == "paper":
        cut = paper_cutoffs(counts, edges)
        stats["paper_cutoffs"] = {"head_idx": cut.head_idx, "mid_idx": cut.mid_idx, "head_min": cut.head_min,
                                  "mid_min": cut.mid_min}
    p = counts[counts > 0] / counts.sum()
    stats["unigram_entropy_nats"] = float(-(p * np.log(p)).sum())
    (work / "bucket_stats.json").write_text(json.dumps(stats, indent=2))
    for name in BUCKET_NAMES:
        info = stats["types"][name]
        print(f"{name}: {info['types']} types, {info['share']:.1%} of occurrences; probe tokens "
              f"{probe.buckets[name]['selected']}{' (skipped)' if probe.buckets[name]['skipped'] else ''}", flush=True)
    return stats
