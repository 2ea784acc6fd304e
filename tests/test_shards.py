"""``.bin`` shard reader/writer, multi-shard and block-split views, and the TokenWindows sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from specscale.tokens.shards import (
    HEADER_BYTES,
    MAGIC,
    ConcatTokens,
    ShardFormatError,
    TokenWindows,
    interleaved_split,
    open_tokens,
    read_bin_shard,
    write_bin_shard,
    write_tokens,
)


def _raw_shard(path: Path, header_values: tuple[int, int, int], tokens: np.ndarray) -> None:
    """Write a shard by hand, independent of write_bin_shard, so the reader is tested against the format itself."""
    header = np.zeros(256, dtype="<i4")
    header[:3] = header_values
    path.write_bytes(header.tobytes() + tokens.astype("<u2").tobytes())


def test_reader_reads_hand_made_shard(tmp_path: Path) -> None:
    tokens = np.array([0, 1, 65535, 50256, 7], dtype=np.uint16)
    _raw_shard(tmp_path / "s.bin", (MAGIC, 1, 5), tokens)
    out = read_bin_shard(tmp_path / "s.bin")
    assert isinstance(out, np.memmap) and out.dtype == np.uint16
    assert out.tolist() == [0, 1, 65535, 50256, 7]


def test_round_trip_and_header_layout(tmp_path: Path) -> None:
    tokens = np.arange(1000, dtype=np.int64) * 37 % 50304
    path = write_bin_shard(tmp_path / "sub" / "r.bin", tokens)
    assert path.stat().st_size == HEADER_BYTES + 2 * 1000
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[:3].tolist() == [20240520, 1, 1000] and not header[3:].any()
    assert np.array_equal(read_bin_shard(path), tokens)
    assert write_tokens is write_bin_shard  # our own token files are the same format
    assert np.array_equal(open_tokens(path), tokens)
    assert not list((tmp_path / "sub").glob(".*tmp*"))  # no temporary file left behind


def test_bad_magic(tmp_path: Path) -> None:
    _raw_shard(tmp_path / "m.bin", (12345, 1, 3), np.array([1, 2, 3]))
    with pytest.raises(ShardFormatError, match=r"m\.bin.*bad magic number 12345"):
        read_bin_shard(tmp_path / "m.bin")


def test_bad_version(tmp_path: Path) -> None:
    _raw_shard(tmp_path / "v.bin", (MAGIC, 7, 3), np.array([1, 2, 3]))
    with pytest.raises(ShardFormatError, match=r"v\.bin.*unsupported version 7"):
        read_bin_shard(tmp_path / "v.bin")


def test_truncated_body_and_header(tmp_path: Path) -> None:
    _raw_shard(tmp_path / "t.bin", (MAGIC, 1, 10), np.arange(9))  # one token short
    with pytest.raises(ShardFormatError, match=r"t\.bin.*truncated.*10 tokens.*1044 bytes.*1042"):
        read_bin_shard(tmp_path / "t.bin")
    (tmp_path / "h.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ShardFormatError, match=r"h\.bin.*too small"):
        read_bin_shard(tmp_path / "h.bin")
    _raw_shard(tmp_path / "x.bin", (MAGIC, 1, 2), np.arange(3))  # one token too many
    with pytest.raises(ShardFormatError, match="trailing bytes"):
        read_bin_shard(tmp_path / "x.bin")


def test_writer_rejects_ids_beyond_uint16(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="65535"):
        write_bin_shard(tmp_path / "big.bin", np.array([1, 70000]))
    with pytest.raises(ValueError, match="empty"):
        write_bin_shard(tmp_path / "e.bin", np.array([], dtype=np.uint16))
    assert not (tmp_path / "big.bin").exists()


def test_open_tokens_concatenates_shards(tmp_path: Path) -> None:
    a, b, c = np.arange(0, 7), np.arange(100, 103), np.arange(200, 210)
    for name, arr in (("s_000.bin", a), ("s_001.bin", b), ("s_002.bin", c)):
        write_bin_shard(tmp_path / name, arr)
    full = np.concatenate([a, b, c])
    for source in (tmp_path, str(tmp_path / "s_*.bin"), sorted(tmp_path.glob("*.bin"))):
        seq = open_tokens(source)
        assert isinstance(seq, ConcatTokens) and len(seq) == 20
        for lo, hi in ((0, 20), (5, 9), (7, 10), (6, 11), (9, 18), (3, 3), (15, 40)):
            assert np.array_equal(seq[lo:hi], full[lo:hi]), (lo, hi)
    with pytest.raises(FileNotFoundError, match="nomatch"):
        open_tokens(tmp_path / "nomatch_*.bin")


# --- TokenWindows ---------------------------------------------------------------------------------------------


@pytest.fixture()
def windows() -> TokenWindows:
    return TokenWindows(np.arange(1001, dtype=np.uint16), seq_len=10)  # 100 windows


def test_windows_shapes_and_shift(windows: TokenWindows) -> None:
    assert windows.num_windows == len(windows) == 100
    x, y = windows.batch([0, 99, 5])
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (3, 10)
    assert x[0].tolist() == list(range(10)) and y[0].tolist() == list(range(1, 11))
    assert x[1].tolist() == list(range(990, 1000)) and y[1, -1].item() == 1000
    assert torch.equal(x[:, 1:], y[:, :-1])
    with pytest.raises(IndexError):
        windows.batch([100])


def test_sample_indices_deterministic(windows: TokenWindows) -> None:
    a = windows.sample_indices(step=3, batch_size=8, seed=1)
    assert np.array_equal(a, windows.sample_indices(step=3, batch_size=8, seed=1))
    # A fresh sampler (a resumed run) gives the same batch without having seen steps 0..2.
    fresh = TokenWindows(np.arange(1001, dtype=np.uint16), seq_len=10)
    assert np.array_equal(fresh.sample_indices(step=3, batch_size=8, seed=1), a)
    assert not np.array_equal(windows.sample_indices(step=4, batch_size=8, seed=1), a)
    assert not np.array_equal(windows.sample_indices(step=3, batch_size=8, seed=2), a)
    x1, y1 = windows.batch(a)
    x2, y2 = fresh.batch(a)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_sample_indices_cover_each_epoch_once(windows: TokenWindows) -> None:
    # 100 windows, batch 8: steps 0..11 hold samples 0..95 of epoch 0, step 12 straddles epochs 0 and 1.
    first_epoch = np.concatenate([windows.sample_indices(s, 8, seed=0) for s in range(12)])
    assert len(set(first_epoch.tolist())) == 96
    straddle = windows.sample_indices(12, 8, seed=0)
    assert sorted(np.concatenate([first_epoch, straddle[:4]]).tolist()) == list(range(100))
    # The next epoch is a different order of the same windows (fresh permutation per epoch, not a repeat).
    second_epoch = np.concatenate([windows.sample_indices(s, 10, seed=0) for s in range(10, 20)])
    assert sorted(second_epoch.tolist()) == list(range(100))
    assert not np.array_equal(second_epoch, np.concatenate([windows.sample_indices(s, 10, seed=0) for s in range(10)]))
    # Out-of-order requests agree with in-order ones (the permutation cache is keyed correctly).
    assert np.array_equal(windows.sample_indices(2, 8, seed=0), first_epoch[16:24])


def test_sequential_validation_order(windows: TokenWindows) -> None:
    batches = list(windows.sequential(batch_size=4, max_tokens=95))  # 9 windows: 4 + 4 + 1
    assert [x.shape[0] for x, _ in batches] == [4, 4, 1]
    xs = torch.cat([x for x, _ in batches])
    assert xs.reshape(-1).tolist() == list(range(90))
    assert sum(x.shape[0] for x, _ in windows.sequential(batch_size=32)) == 100


def test_windows_over_concatenated_shards(tmp_path: Path) -> None:
    write_bin_shard(tmp_path / "a.bin", np.arange(0, 15))
    write_bin_shard(tmp_path / "b.bin", np.arange(15, 31))
    tw = TokenWindows(open_tokens(tmp_path), seq_len=10)
    assert tw.num_windows == 3
    x, y = tw.batch([1])  # crosses the shard boundary at 15
    assert x[0].tolist() == list(range(10, 20)) and y[0].tolist() == list(range(11, 21))


# --- streams over shards: int64 offsets, bounded resident set, the block split as a view -------------------------


def test_concat_tokens_offsets_past_int32() -> None:
    # Three zero-stride parts of 2^31 + 5 tokens each (no memory behind them): offsets past 2^32 must stay exact.
    n = 2**31 + 5
    parts = [np.broadcast_to(np.uint16(v), (n,)) for v in (1, 2, 3)]
    seq = ConcatTokens(parts)
    assert seq.starts.dtype == np.int64 and len(seq) == 3 * n
    assert seq[n - 2 : n + 3].tolist() == [1, 1, 2, 2, 2]
    assert seq[2 * n - 1 : 2 * n + 1].tolist() == [2, 3]
    assert seq[3 * n - 2 :].tolist() == [3, 3]


def test_concat_tokens_slice_in_one_shard_is_a_view(tmp_path: Path) -> None:
    write_bin_shard(tmp_path / "a.bin", np.arange(0, 100))
    write_bin_shard(tmp_path / "b.bin", np.arange(100, 200))
    seq = open_tokens(tmp_path)
    inside = seq[10:20]
    assert not inside.flags.owndata and not inside.flags.writeable  # read-only view into the memory map
    assert seq[95:105].flags.owndata and seq[95:105].tolist() == list(range(95, 105))  # crossing: a small copy


def _rss_file_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    pytest.skip("no RssFile in /proc/self/status (not Linux)")


def _sparse_shard(path: Path, n_tokens: int) -> None:
    """A valid shard of n_tokens zeros that occupies no disk: header, then a hole up to the full size."""
    _raw_shard(path, (MAGIC, 1, n_tokens), np.zeros(0, dtype=np.uint16))
    with open(path, "r+b") as f:
        f.truncate(HEADER_BYTES + 2 * n_tokens)


def test_concat_tokens_bounds_resident_pages(tmp_path: Path) -> None:
    # A scan of 96 MiB of mapped shards: without release the pages stay in this process's RSS; with a 4 MiB budget
    # the mappings are dropped as it goes. (The control shows the measurement can see the difference.)
    for i in range(3):
        _sparse_shard(tmp_path / f"s{i}.bin", 16 << 20)  # 32 MiB each

    def scan(budget: int) -> tuple[int, ConcatTokens]:
        seq = ConcatTokens([read_bin_shard(f) for f in sorted(tmp_path.glob("*.bin"))], resident_budget=budget)
        before, peak = _rss_file_bytes(), 0
        for a in range(0, len(seq), 1 << 20):
            assert int(seq[a : a + (1 << 20)].sum()) == 0
            peak = max(peak, _rss_file_bytes() - before)
        return peak, seq

    unbounded, _ = scan(1 << 40)
    bounded, seq = scan(4 << 20)
    assert unbounded > 64 << 20
    assert bounded < 16 << 20 and seq.releases >= 20


def _masked_split(stream: np.ndarray, block: int, every: int) -> tuple[np.ndarray, np.ndarray]:
    """The materialised split the view must reproduce (what tokenize used to write)."""
    is_val = (np.arange(len(stream)) // block) % every == every - 1
    return stream[~is_val], stream[is_val]


@pytest.mark.parametrize("length", [1, 6, 7, 29, 30, 31, 35, 36, 60, 61, 97])
@pytest.mark.parametrize("every", [2, 3, 5])
def test_interleaved_split_equals_the_masked_split(length: int, every: int) -> None:
    stream = np.arange(length, dtype=np.int64)
    want_train, want_val = _masked_split(stream, 6, every)
    train, val = interleaved_split(stream, 6, every)
    assert len(train) == len(want_train) and len(val) == len(want_val)
    assert np.array_equal(train[:], want_train) and np.array_equal(val[:], want_val)
    for side, want in ((train, want_train), (val, want_val)):  # every sub-slice, crossing blocks and periods
        for a in range(len(want) + 1):
            for b in range(a, len(want) + 2):
                assert np.array_equal(side[a:b], want[a:b]), (length, every, a, b)


def test_interleaved_split_over_shards_feeds_windows(tmp_path: Path) -> None:
    full = np.arange(3000) % 1000
    for i, lo in enumerate((0, 1100, 2400)):  # shard boundaries fall inside blocks
        write_bin_shard(tmp_path / f"s{i}.bin", full[lo : (1100, 2400, 3000)[i]])
    train, val = interleaved_split(open_tokens(tmp_path), 256, 4)
    want_train, want_val = _masked_split(full, 256, 4)
    tw = TokenWindows(train, seq_len=100)
    assert tw.num_windows == (len(want_train) - 1) // 100
    x, y = tw.batch([2, 7])
    assert x[0].tolist() == want_train[200:300].tolist() and y[1].tolist() == want_train[701:801].tolist()
    assert np.array_equal(val[:], want_val)
    with pytest.raises(ValueError, match="val_every must be >= 2"):
        interleaved_split(full, 256, 1)
