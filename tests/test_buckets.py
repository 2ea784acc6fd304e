"""Frequency buckets (docs/science.md §5) and the fixed probe set."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

import specscale.tokens.buckets as buckets_mod
from helpers import make_project, write_tokens_dir
from specscale.tokens.buckets import (
    BUCKET_NAMES,
    PaperCutoffs,
    ProbeSet,
    assign_buckets,
    bucket_stats,
    paper_cutoffs,
    select_probe_set,
    unigram_counts,
    vocab_entries,
)
from specscale.tokens.shards import ConcatTokens
from specscale.study.spec import SpecError, load_study
from stages.runner import plan_study

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


# --- bucket rule: paper (the authors' code, the default) -------------------------------------------------------
# sorted = counts descending, cs = cumsum, total = cs[-1], V = entries;
# head_idx = max(1, min(#(cs <= 0.33·total), V−1)); mid_idx = max(head_idx+1, min(#(cs <= 0.67·total), V−1));
# head_min = sorted[head_idx−1], mid_min = sorted[mid_idx−1]; HEAD count >= head_min, MID mid_min <= count < head_min,
# TAIL count < mid_min (unseen included).


def _paper(counts: list[int], edges: tuple[float, float] = (0.33, 0.67)) -> list[int]:
    return assign_buckets(np.array(counts), edges).tolist()


def test_paper_rule_is_the_default_and_simple_case() -> None:
    # counts 50 20 10 10 5 5 (total 100); cs = 50 70 80 90 95 100.
    # #(cs <= 33) = 0 → head_idx = max(1, 0) = 1 → head_min = 50.
    # #(cs <= 67) = 1 → mid_idx = max(2, 1) = 2 → mid_min = 20.   → H M T T T T
    counts = np.array([50, 20, 10, 10, 5, 5])
    assert assign_buckets(counts).tolist() == [HEAD, MID, TAIL, TAIL, TAIL, TAIL]
    assert paper_cutoffs(counts) == PaperCutoffs(head_idx=1, mid_idx=2, head_min=50, mid_min=20)


def test_paper_rule_straddling_type_goes_to_the_later_bucket_and_ties_stay_together() -> None:
    # counts 30 20 20 15 10 5 (total 100); cs = 30 50 70 85 95 100.
    # #(cs <= 33) = 1 → head_idx 1 → head_min 30: HEAD = {t0}, only 30% of the mass. t1 (cs 30 → 50) straddles
    #   the 33% cut and goes to MID, the later bucket (the mass rule would put it in HEAD, since 30 < 33.3 precede it).
    # #(cs <= 67) = 2 → mid_idx 2 → mid_min = sorted[1] = 20: MID = {20 <= c < 30} = {t1, t2}. t2 straddles the 67%
    #   cut (cs 50 → 70) but has the same count as t1, so it shares MID with it. TAIL = {15, 10, 5}.
    counts = [30, 20, 20, 15, 10, 5]
    assert _paper(counts) == [HEAD, MID, MID, TAIL, TAIL, TAIL]
    assert assign_buckets(np.array(counts), (1 / 3, 2 / 3), rule="mass").tolist() == [HEAD, HEAD, MID, TAIL, TAIL, TAIL]
    # Ranking, not position, decides: permuted counts give permuted buckets.
    assert _paper([10, 20, 5, 30, 15, 20]) == [TAIL, MID, TAIL, HEAD, TAIL, MID]


def test_paper_rule_ties_across_a_cut_share_the_earlier_bucket() -> None:
    # counts 25 25 25 25 (total 100); cs = 25 50 75 100.
    # #(cs <= 33) = 1 → head_idx 1 → head_min 25 → every type has count >= 25: all HEAD.
    # #(cs <= 67) = 2 → mid_idx 2 → mid_min = sorted[1] = 25: MID = {25 <= c < 25} and TAIL = {c < 25} are empty.
    assert _paper([25, 25, 25, 25]) == [HEAD] * 4


def test_paper_rule_cut_is_inclusive() -> None:
    # counts 18 15 14 14 13 13 13 (total 100); cs = 18 33 47 61 74 87 100.
    # #(cs <= 33) = 2 (cs = 33 counts: "<=") → head_idx 2 → head_min = 15: HEAD = {18, 15}.
    #   (With "<" it would be 1 → head_min 18 → HEAD {18} only.)
    # #(cs <= 67) = 4 → mid_idx 4 → mid_min = sorted[3] = 14: MID = {14, 14}; TAIL = {13, 13, 13}.
    counts = [18, 15, 14, 14, 13, 13, 13]
    assert _paper(counts) == [HEAD, HEAD, MID, MID, TAIL, TAIL, TAIL]
    assert paper_cutoffs(np.array(counts)) == PaperCutoffs(head_idx=2, mid_idx=4, head_min=15, mid_min=14)


def test_paper_rule_unseen_types_are_tail() -> None:
    # counts 0 60 0 30 10 (V = 5, two unseen; total 100); sorted 60 30 10 0 0; cs = 60 90 100 100 100.
    # #(cs <= 33) = 0 → head_idx 1 → head_min 60;  #(cs <= 67) = 1 → mid_idx = max(2, 1) = 2 → mid_min 30.
    # t1 HEAD, t3 MID, t4 (10) and the unseen t0, t2 TAIL: nothing is left out of the buckets.
    counts = np.array([0, 60, 0, 30, 10])
    assert assign_buckets(counts).tolist() == [TAIL, HEAD, TAIL, MID, TAIL]
    stats = bucket_stats(counts, assign_buckets(counts))
    assert stats["unseen_types"] == 2 and stats["unbucketed_types"] == 0
    assert stats["TAIL"] == {"types": 3, "occurrences": 10, "share": 10 / 100}


def test_paper_rule_vocabulary_of_three() -> None:
    # counts 1 1 98: sorted 98 1 1; cs = 98 99 100. #(cs <= 33) = 0 → head_idx 1 → head_min 98.
    # #(cs <= 67) = 0 → mid_idx = max(2, min(0, V−1 = 2)) = 2 → mid_min = sorted[1] = 1: MID = {1, 1}; TAIL empty.
    assert _paper([1, 1, 98]) == [MID, MID, HEAD]
    # counts 40 30 30: cs = 40 70 100. head_idx 1 → head_min 40; #(cs <= 67) = 1 → mid_idx 2 → mid_min 30:
    # both 30s are MID (equal counts), TAIL is empty.
    assert _paper([40, 30, 30]) == [HEAD, MID, MID]
    # A single seen type: counts 0 5 0; sorted 5 0 0; cs = 5 5 5. head_idx 1 → head_min 5; mid_idx 2 → mid_min =
    # sorted[1] = 0, so the unseen types satisfy 0 <= c < 5 and are MID: the authors' code does the same.
    assert _paper([0, 5, 0]) == [MID, HEAD, MID]


def test_paper_rule_edges_are_parameters() -> None:
    # counts 30 20 20 15 10 5, cs = 30 50 70 85 95 100, edges (0.5, 0.9):
    # #(cs <= 50) = 2 → head_idx 2 → head_min 20 → HEAD {30, 20, 20};
    # #(cs <= 90) = 4 → mid_idx 4 → mid_min = sorted[3] = 15 → MID {15}; TAIL {10, 5}.
    assert _paper([30, 20, 20, 15, 10, 5], edges=(0.5, 0.9)) == [HEAD, HEAD, HEAD, MID, TAIL, TAIL]


def test_paper_rule_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 2 vocabulary entries"):
        assign_buckets(np.array([5]))
    with pytest.raises(ValueError, match="bucket rule"):
        assign_buckets(np.array([5, 1]), rule="tertile")


# --- bucket rule: mass (specscale's earlier rule, probe.bucket_rule: mass) --------------------------------------
# Rank types by count desc (ties: lower id first); before(t) = mass ranked strictly ahead of t / total.
# HEAD if before < e1, MID if e1 <= before < e2, TAIL otherwise; zero count -> -1.
THIRDS = (1 / 3, 2 / 3)


def _mass(counts: list[int], edges: tuple[float, float] = THIRDS) -> list[int]:
    return assign_buckets(np.array(counts), edges, rule="mass").tolist()


def test_mass_rule_brief_example_by_hand() -> None:
    # counts 50 20 10 10 5 5 (total 100); before = 0, 50, 70, 80, 90, 95
    # -> 0: HEAD (0 < 33.3); 1: MID (33.3 <= 50 < 66.7); 2..5: TAIL (>= 66.7).
    assert _mass([50, 20, 10, 10, 5, 5]) == [HEAD, MID, TAIL, TAIL, TAIL, TAIL]


def test_mass_rule_exact_edges_ties_and_zero_count() -> None:
    # total 90, so the edges are exactly 30 and 60 occurrences.
    # ranking: t3 (30), t0 (15), t1 (15), t4 (15), t5 (15) [ties by id], t2 (0)
    # before:  0        30       45       60       75
    # t0 has exactly 1/3 ahead of it -> MID (not HEAD); t4 has exactly 2/3 ahead -> TAIL (not MID).
    assert _mass([15, 15, 0, 30, 15, 15]) == [MID, MID, UNSEEN, HEAD, TAIL, TAIL]


def test_mass_rule_straddling_type_stays_on_the_frequent_side() -> None:
    # t0 holds 40% of the mass: it straddles the 1/3 edge and is HEAD (HEAD covers 40%, not 33%).
    # t1 has 40% ahead -> MID; t2 has 70% ahead -> TAIL.
    assert _mass([40, 30, 30]) == [HEAD, MID, TAIL]
    # Ranking, not position, decides: the same counts permuted give the permuted buckets.
    assert _mass([30, 40, 30]) == [MID, HEAD, TAIL]
    # Custom edges: before = 0, 40, 70 against (0.5, 0.9) -> HEAD, HEAD, MID.
    assert _mass([40, 30, 30], edges=(0.5, 0.9)) == [HEAD, HEAD, MID]


def test_assign_buckets_rejects_bad_input() -> None:
    for rule in ("paper", "mass"):
        with pytest.raises(ValueError):
            assign_buckets(np.array([0, 0]), rule=rule)
        with pytest.raises(ValueError):
            assign_buckets(np.array([1.0, 2.0]), rule=rule)
        with pytest.raises(ValueError):
            assign_buckets(np.array([1, 2]), edges=(0.7, 0.3), rule=rule)
        with pytest.raises(ValueError):
            assign_buckets(np.array([1, -2]), rule=rule)


def test_bucket_stats() -> None:
    counts = np.array([15, 15, 0, 30, 15, 15])
    stats = bucket_stats(counts, assign_buckets(counts, THIRDS, rule="mass"))
    assert stats == {
        "total_occurrences": 90,
        "unseen_types": 1,
        "unbucketed_types": 1,
        "HEAD": {"types": 1, "occurrences": 30, "share": 30 / 90},
        "MID": {"types": 2, "occurrences": 30, "share": 30 / 90},
        "TAIL": {"types": 2, "occurrences": 30, "share": 30 / 90},
    }
    json.dumps(stats)  # serialisable for dvc metrics
    # Paper rule on the same counts: sorted 30 15 15 15 15 0, cs = 30 45 60 75 90 90; 0.33·90 = 29.7 → 0 → head_idx 1,
    # head_min 30; 0.67·90 = 60.3 → 3 → mid_idx 3 → mid_min 15. HEAD {30}; MID the four 15s; TAIL the unseen type.
    stats = bucket_stats(counts, assign_buckets(counts))
    assert stats["MID"] == {"types": 4, "occurrences": 60, "share": 60 / 90}
    assert stats["TAIL"] == {"types": 1, "occurrences": 0, "share": 0.0}
    assert stats["unseen_types"] == 1 and stats["unbucketed_types"] == 0


@pytest.mark.parametrize("rule", ["paper", "mass"])
def test_zipf_buckets_are_contiguous_runs_of_the_ranking(rule: str) -> None:
    counts = (1e6 / np.arange(1, 5001) ** 1.1).astype(np.int64)
    b = assign_buckets(counts, (0.33, 0.67), rule=rule)
    stats = bucket_stats(counts, b)
    # Sorted by count, buckets are contiguous and ordered HEAD < MID < TAIL, and HEAD has the fewest types.
    assert np.all(np.diff(b) >= 0)
    assert stats["HEAD"]["types"] < stats["MID"]["types"] < stats["TAIL"]["types"]
    head = np.flatnonzero(b == HEAD)
    if rule == "mass":  # HEAD is the shortest prefix covering >= 0.33: without its last type it covers less
        assert counts[head].sum() >= 0.33 * counts.sum() > counts[head[:-1]].sum()
    else:  # HEAD is the longest prefix covering <= 0.33 (here no tie crosses the cut): one more type covers more
        assert counts[head].sum() <= 0.33 * counts.sum() < counts[: head.size + 1].sum()


def test_vocab_entries_pad_to_the_embedding_rows() -> None:
    # The authors counted over all 50,304 GPT-2 embedding rows (50,257 types + 47 never-seen padding ids).
    assert vocab_entries(50257, {"vocab_multiple": 64}) == 50304
    assert vocab_entries(2048, {"vocab_multiple": 64}) == 2048
    assert vocab_entries(5, {"vocab_multiple": 1}) == 5


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
    # Saved twice, two seconds apart: the same bytes (np.savez would stamp each write's time into the zip).
    first = (tmp_path / "probe" / "probe_set.npz").read_bytes()
    time.sleep(2.1)  # zip timestamps have a resolution of 2 s
    probe.save(tmp_path / "again")
    assert (tmp_path / "again" / "probe_set.npz").read_bytes() == first
    # A tampered array is detected.
    with np.load(tmp_path / "probe" / "probe_set.npz") as data:
        arrays = dict(data)
    arrays["windows"] = arrays["windows"][::-1].copy()
    np.savez(tmp_path / "probe" / "probe_set.npz", **arrays)
    with pytest.raises(ValueError, match="fingerprint"):
        ProbeSet.load(tmp_path / "probe")


def test_paper_rule_probe_set_puts_unseen_types_in_tail() -> None:
    # Train counts of types 0..5: 50 25 20 5 0 0 → sorted 50 25 20 5 0 0, cs = 50 75 95 100 100 100;
    # #(cs <= 33) = 0 → head_min 50; #(cs <= 67) = 1 → mid_idx 2 → mid_min 25. HEAD {0}, MID {1}, TAIL {2, 3, 4, 5}:
    # the never-seen types 4 and 5 are TAIL, so their val positions are TAIL probe positions.
    bucket_of_type = assign_buckets(np.array([50, 25, 20, 5, 0, 0])).astype(np.int8)
    assert bucket_of_type.tolist() == [HEAD, MID, TAIL, TAIL, TAIL, TAIL]
    val = np.array([0, 4, 1, 5, 2, 0, 3, 4] * 20, dtype=np.uint16)  # 160 tokens, 20 windows of 8
    probe = select_probe_set(val, bucket_of_type, SEQ, tokens_per_bucket=50, pooled_tokens=64, min_bucket_tokens=1)
    flat = probe.windows.reshape(-1)
    tail = probe.bucket_indices["TAIL"]
    assert probe.buckets["TAIL"]["available"] == 100  # types 4, 5, 2, 3, 4 in each window of 8: 5 × 20
    assert tail.size == 50 and set(flat[tail].tolist()) == {2, 3, 4, 5}
    assert np.array_equal(tail, np.flatnonzero(np.isin(flat, [2, 3, 4, 5]))[:50])


def test_build_buckets_pads_counts_and_records_the_rule(tmp_path: Path) -> None:
    tokens = write_tokens_dir(tmp_path / "tok", vocab_size=60, n_train=5000, n_val=2000)
    spec = {"seq_len": 16, "tokens_per_bucket": 200, "pooled_tokens": 400, "min_bucket_tokens": 10,
            "edges": [0.33, 0.67], "rule": "paper", "vocab_multiple": 64}
    work = tmp_path / "work"
    work.mkdir()
    stats = buckets_mod.build_buckets(tokens, spec, work)
    counts = np.load(work / "unigram_counts.npy")
    assert counts.shape == (64,) and counts[60:].sum() == 0  # 60 types padded to 64 entries, padding never seen
    assert np.array_equal(np.load(work / "bucket_of_type.npy"), assign_buckets(counts))
    cut = paper_cutoffs(counts)
    assert stats["rule"] == "paper" and stats["edges"] == [0.33, 0.67] and stats["vocab_entries"] == 64
    assert stats["paper_cutoffs"] == {"head_idx": cut.head_idx, "mid_idx": cut.mid_idx, "head_min": cut.head_min,
                                      "mid_min": cut.mid_min}
    assert stats["types"]["unseen_types"] == int((counts == 0).sum()) >= 4
    assert sum(stats["types"][n]["types"] for n in BUCKET_NAMES) == 64  # every entry, unseen included, is bucketed
    assert json.loads((work / "bucket_stats.json").read_text())["rule"] == "paper"


def test_bucket_fields_are_validated_and_enter_the_buckets_key(tmp_path: Path) -> None:
    def buckets(text: str, name: str):
        params = make_project(tmp_path / name, "preset: smoke\n" + text)
        return plan_study(load_study(params), params).buckets

    paper = buckets("", "default")
    assert paper.spec["rule"] == "paper" and paper.spec["edges"] == [0.33, 0.67]
    assert buckets("probe: {bucket_rule: mass}\n", "mass").key != paper.key
    assert buckets("probe: {bucket_edges: [0.3, 0.6]}\n", "edges").key != paper.key
    for i, (text, key) in enumerate((("probe: {bucket_rule: tertile}\n", "probe.bucket_rule"),
                                     ("probe: {bucket_edges: [0.67, 0.33]}\n", "probe.bucket_edges"),
                                     ("probe: {bucket_edges: [0.5]}\n", "probe.bucket_edges"))):
        with pytest.raises(SpecError, match=key):
            buckets(text, f"bad{i}")
