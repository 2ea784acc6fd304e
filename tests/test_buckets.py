"""Frequency buckets (docs/science.md §5) and the fixed probe set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import specscale.buckets as buckets_mod
from specscale.buckets import (
    BUCKET_NAMES,
    ProbeSet,
    assign_buckets,
    bucket_stats,
    select_probe_set,
    unigram_counts,
)
from specscale.shards import ConcatTokens

HEAD, MID, TAIL, UNSEEN = 0, 1, 2, -1

# --- unigram counts -----------------------------------------------------------------------------------------------


def test_unigram_counts_chunked_and_concat(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = np.array([3, 1, 3, 0, 3, 1, 4], dtype=np.uint16)
    expected = [1, 2, 0, 3, 1, 0]
    assert unigram_counts(tokens, 6).tolist() == expected
    assert unigram_counts(tokens, 6).dtype == np.int64
    monkeypatch.setattr(buckets_mod, "_COUNT_CHUNK", 2)  # several chunks, one crossing the part boundary below
    assert unigram_counts(ConcatTokens([tokens[:3], tokens[3:]]), 6).tolist() == expected
    with pytest.raises(ValueError, match="outside the vocabulary"):
        unigram_counts(tokens, 4)


# --- bucket rule ------------------------------------------------------------------------------------------------
# Rule: rank types by count desc (ties: lower id first); before(t) = mass ranked strictly ahead of t / total.
# HEAD if before < 1/3, MID if 1/3 <= before < 2/3, TAIL otherwise; zero count -> -1.


def test_brief_example_by_hand() -> None:
    # counts 50 20 10 10 5 5 (total 100); before = 0, 50, 70, 80, 90, 95
    # -> 0: HEAD (0 < 33.3); 1: MID (33.3 <= 50 < 66.7); 2..5: TAIL (>= 66.7).
    assert assign_buckets(np.array([50, 20, 10, 10, 5, 5])).tolist() == [HEAD, MID, TAIL, TAIL, TAIL, TAIL]


def test_exact_edges_ties_and_zero_count() -> None:
    # total 90, so the edges are exactly 30 and 60 occurrences.
    # ranking: t3 (30), t0 (15), t1 (15), t4 (15), t5 (15) [ties by id], t2 (0)
    # before:  0        30       45       60       75
    # t0 has exactly 1/3 ahead of it -> MID (not HEAD); t4 has exactly 2/3 ahead -> TAIL (not MID).
    counts = np.array([15, 15, 0, 30, 15, 15])
    assert assign_buckets(counts).tolist() == [MID, MID, UNSEEN, HEAD, TAIL, TAIL]


def test_straddling_type_stays_on_the_frequent_side() -> None:
    # t0 holds 40% of the mass: it straddles the 1/3 edge and is HEAD (HEAD covers 40%, not 33%).
    # t1 has 40% ahead -> MID; t2 has 70% ahead -> TAIL.
    assert assign_buckets(np.array([40, 30, 30])).tolist() == [HEAD, MID, TAIL]
    # Ranking, not position, decides: the same counts permuted give the permuted buckets.
    assert assign_buckets(np.array([30, 40, 30])).tolist() == [MID, HEAD, TAIL]
    # Custom edges: before = 0, 40, 70 against (0.5, 0.9) -> HEAD, HEAD, MID.
    assert assign_buckets(np.array([40, 30, 30]), edges=(0.5, 0.9)).tolist() == [HEAD, HEAD, MID]


def test_assign_buckets_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        assign_buckets(np.array([0, 0]))
    with pytest.raises(ValueError):
        assign_buckets(np.array([1.0, 2.0]))
    with pytest.raises(ValueError):
        assign_buckets(np.array([1, 2]), edges=(0.7, 0.3))


def test_bucket_stats() -> None:
    counts = np.array([15, 15, 0, 30, 15, 15])
    stats = bucket_stats(counts, assign_buckets(counts))
    assert stats == {
        "total_occurrences": 90,
        "unseen_types": 1,
        "HEAD": {"types": 1, "occurrences": 30, "share": 30 / 90},
        "MID": {"types": 2, "occurrences": 30, "share": 30 / 90},
        "TAIL": {"types": 2, "occurrences": 30, "share": 30 / 90},
    }
    json.dumps(stats)  # serialisable for dvc metrics


def test_zipf_buckets_cover_about_a_third_each() -> None:
    counts = (1e6 / np.arange(1, 5001) ** 1.1).astype(np.int64)
    b = assign_buckets(counts)
    stats = bucket_stats(counts, b)
    # Sorted by count, buckets are contiguous and ordered HEAD < MID < TAIL, and HEAD has the fewest types.
    assert np.all(np.diff(b) >= 0)
    assert stats["HEAD"]["types"] < stats["MID"]["types"] < stats["TAIL"]["types"]
    # Prefix property: HEAD alone covers >= 1/3, HEAD without its last type covers < 1/3.
    head = np.flatnonzero(b == HEAD)
    assert counts[head].sum() * 3 >= counts.sum() > counts[head[:-1]].sum() * 3


# --- probe set ----------------------------------------------------------------------------------------------------

BUCKET_OF_TYPE = np.array([HEAD, MID, MID, TAIL, TAIL, UNSEEN], dtype=np.int8)
SEQ = 8


def _val_tokens(n: int = 4000, n_tail: int = 50, seed: int = 0) -> np.ndarray:
    """HEAD (type 0) and MID (types 1, 2) common; TAIL (3, 4) only n_tail times; a few unseen (5)."""
    rng = np.random.default_rng(seed)
    tokens = rng.choice([0, 1, 2, 5], size=n, p=[0.5, 0.25, 0.2, 0.05]).astype(np.uint16)
    tail_pos = rng.choice(n, size=n_tail, replace=False)
    tokens[tail_pos] = rng.choice([3, 4], size=n_tail)
    return tokens


def _check_bucket_indices(probe: ProbeSet, name: str, k: int) -> None:
    flat_buckets = BUCKET_OF_TYPE[probe.windows.reshape(-1)]
    idx = probe.bucket_indices[name]
    assert idx.dtype == np.int64
    assert np.all(flat_buckets[idx] == k)  # every index points at an input token of that bucket
    # ... and they are exactly the first `selected` such positions, in order.
    assert np.array_equal(idx, np.flatnonzero(flat_buckets == k)[: idx.size])


def test_probe_set_counts_indices_and_skip() -> None:
    val = _val_tokens()
    probe = select_probe_set(val, BUCKET_OF_TYPE, SEQ, tokens_per_bucket=300, pooled_tokens=500,
                             min_bucket_tokens=100)
    n_full = len(val) // SEQ
    tail_available = int(np.isin(val[: n_full * SEQ], [3, 4]).sum())

    head_available = int((val[: n_full * SEQ] == 0).sum())
    assert probe.buckets["HEAD"] == {"requested": 300, "selected": 300, "available": head_available, "skipped": False}
    assert probe.buckets["MID"]["selected"] == 300 and not probe.buckets["MID"]["skipped"]
    assert probe.buckets["TAIL"] == {"requested": 300, "selected": 0, "available": tail_available, "skipped": True}
    assert probe.bucket_indices["TAIL"].size == 0
    _check_bucket_indices(probe, "HEAD", HEAD)
    _check_bucket_indices(probe, "MID", MID)

    # Windows are the first n_seq windows of val, and n_seq is the fewest that satisfy every target
    # (the skipped TAIL does not hold up the scan).
    last_window = [probe.bucket_indices[name][-1] // SEQ for name in ("HEAD", "MID")]
    needed = max(max(last_window) + 1, -(-500 // SEQ))
    assert probe.windows.shape == (needed, SEQ)
    assert np.array_equal(probe.windows.reshape(-1), val[: needed * SEQ])
    assert np.array_equal(probe.pooled_indices, np.arange(500))


def test_probe_set_short_bucket_keeps_what_it_has() -> None:
    val = _val_tokens()
    probe = select_probe_set(val, BUCKET_OF_TYPE, SEQ, tokens_per_bucket=300, pooled_tokens=500,
                             min_bucket_tokens=10)
    tail = probe.buckets["TAIL"]
    assert not tail["skipped"] and tail["selected"] == tail["available"] <= 50 and tail["selected"] > 10
    _check_bucket_indices(probe, "TAIL", TAIL)
    # Unseen types (bucket -1) appear in the windows but in no bucket's indices.
    flat = probe.windows.reshape(-1)
    all_idx = np.concatenate([probe.bucket_indices[n] for n in BUCKET_NAMES])
    assert (flat == 5).any() and not (flat[all_idx] == 5).any()


def test_probe_set_split_exhausted_and_pooled_capped() -> None:
    val = _val_tokens(n=403)  # 50 full windows (400 tokens) + 3 leftover tokens that are never used
    probe = select_probe_set(
        val, BUCKET_OF_TYPE, SEQ, tokens_per_bucket=10_000, pooled_tokens=10_000, min_bucket_tokens=1
    )
    assert probe.windows.shape == (50, SEQ)
    assert probe.pooled_indices.size == 400
    for k, name in enumerate(BUCKET_NAMES):
        assert probe.buckets[name]["selected"] == int((BUCKET_OF_TYPE[val[:400]] == k).sum())


def test_probe_set_independent_of_scan_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    val = _val_tokens()
    args = dict(tokens_per_bucket=200, pooled_tokens=700, min_bucket_tokens=10)
    whole = select_probe_set(val, BUCKET_OF_TYPE, SEQ, **args)
    monkeypatch.setattr(buckets_mod, "_SCAN_CHUNK_WINDOWS", 7)
    chunked = select_probe_set(val, BUCKET_OF_TYPE, SEQ, **args)
    assert chunked.fingerprint() == whole.fingerprint()
    assert chunked.buckets == whole.buckets


def test_probe_set_save_load(tmp_path: Path) -> None:
    probe = select_probe_set(_val_tokens(), BUCKET_OF_TYPE, SEQ, tokens_per_bucket=300, pooled_tokens=500,
                             min_bucket_tokens=100)
    probe.save(tmp_path / "probe")
    info = json.loads((tmp_path / "probe" / "probe_set.json").read_text())
    assert info["n_seq"] == probe.windows.shape[0] and info["buckets"]["TAIL"]["skipped"] is True
    assert info["fingerprint"] == probe.fingerprint()
    loaded = ProbeSet.load(tmp_path / "probe")
    assert np.array_equal(loaded.windows, probe.windows)
    for name in BUCKET_NAMES:
        assert np.array_equal(loaded.bucket_indices[name], probe.bucket_indices[name])
    assert loaded.buckets == probe.buckets and loaded.seq_len == SEQ
    # A tampered array is detected.
    with np.load(tmp_path / "probe" / "probe_set.npz") as data:
        arrays = dict(data)
    arrays["windows"] = arrays["windows"][::-1].copy()
    np.savez(tmp_path / "probe" / "probe_set.npz", **arrays)
    with pytest.raises(ValueError, match="fingerprint"):
        ProbeSet.load(tmp_path / "probe")
