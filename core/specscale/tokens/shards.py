"""Token storage (modded-nanoGPT ``.bin`` shards) and the training / validation window sampler.

``.bin`` format (KellerJordan/modded-nanogpt, FineWeb-10B in GPT-2 tokens), all little-endian:
    header: 256 × int32 = 1024 bytes; header[0] = 20240520 (magic), header[1] = 1 (version),
            header[2] = number of tokens N; the rest is zero.
    body:   N × uint16 tokens.
Our own tokenized corpora use the same format (``write_tokens`` / ``open_tokens``), so one reader serves both.
Shard sets are read in place: ``ConcatTokens`` and ``BlockSplit`` are views over memory maps, never a copy of the
corpus (``shard_manifest`` records which shards a tokenize run indexed).
"""

from __future__ import annotations

import glob
import mmap
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

MAGIC = 20240520
GPT2_VOCAB = 50257  # modded-nanoGPT shards carry GPT-2 BPE ids (the model pads the embedding to 50304)
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
_HEADER_DTYPE = np.dtype("<i4")
_TOKEN_DTYPE = np.dtype("<u2")
_MAX_COUNT = 2**31 - 1  # the count is stored in an int32
_PAGE = mmap.PAGESIZE  # bytes; the unit in which a memory map becomes resident
RESIDENT_BUDGET_BYTES = 256 << 20  # ConcatTokens drops its mappings after touching this many bytes of pages


class ShardFormatError(ValueError):
    """A ``.bin`` file that is not a valid shard; the message names the file and what is wrong."""


def write_bin_shard(path: str | Path, tokens: np.ndarray | Sequence[int]) -> Path:
    """Write ``tokens`` (any integer array, values in [0, 65535]) as a ``.bin`` shard.

    Written to a temporary file and renamed into place, so a crash never leaves a truncated shard under ``path``.
    """
    path = Path(path)
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"refusing to write an empty shard: {path}")
    if arr.size > _MAX_COUNT:
        raise ValueError(f"{arr.size} tokens do not fit one shard (max {_MAX_COUNT}); split them: {path}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"tokens must be integers, got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > np.iinfo(np.uint16).max:
        raise ValueError(
            f"token ids must lie in [0, 65535] for the uint16 .bin format, got [{lo}, {hi}] "
            "(a vocabulary over 65,536 types cannot be stored in this format)"
        )
    header = np.zeros(HEADER_INTS, dtype=_HEADER_DTYPE)
    header[0], header[1], header[2] = MAGIC, VERSION, arr.size
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            f.write(arr.astype(_TOKEN_DTYPE, copy=False).tobytes())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def shard_token_count(path: str | Path) -> int:
    """Validate a ``.bin`` shard's header against its file size and return its token count N.

    Checks the magic number, the version, and that the file is exactly ``1024 + 2·N`` bytes; reads only the header.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"token shard not found: {path}")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ShardFormatError(
            f"{path}: {size} bytes is too small for the {HEADER_BYTES}-byte header (truncated or not a .bin shard)"
        )
    header = np.fromfile(path, dtype=_HEADER_DTYPE, count=HEADER_INTS)
    magic, version, count = int(header[0]), int(header[1]), int(header[2])
    if magic != MAGIC:
        raise ShardFormatError(f"{path}: bad magic number {magic}, expected {MAGIC} (not a modded-nanoGPT .bin shard)")
    if version != VERSION:
        raise ShardFormatError(f"{path}: unsupported version {version}, expected {VERSION}")
    if count <= 0:
        raise ShardFormatError(f"{path}: header gives {count} tokens; a shard must hold at least one")
    expected = HEADER_BYTES + count * _TOKEN_DTYPE.itemsize
    if size != expected:
        what = "truncated" if size < expected else "has trailing bytes"
        raise ShardFormatError(
            f"{path}: file is {what}: header gives {count} tokens, i.e. {expected} bytes, but the file has {size}"
        )
    return count


def read_bin_shard(path: str | Path) -> np.memmap:
    """Memory-map a ``.bin`` shard's tokens, shape ``(N,)``, dtype uint16, read-only (validated by
    ``shard_token_count``). Nothing is read until sliced."""
    count = shard_token_count(path)
    return np.memmap(path, dtype=_TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(count,))


# Our own token files are plain .bin shards: one format, one reader.
write_tokens = write_bin_shard


class ConcatTokens:
    """Several token arrays (e.g. memory-mapped FineWeb shards) seen as one sequence, without copying the whole.

    Supports ``len()`` and contiguous slicing with step 1, which is all that ``TokenWindows``, ``BlockSplit`` and
    ``buckets.unigram_counts`` need: ``tokens[a:b]`` is a view when it lies inside one part (read-only over a memory
    map), else a copy of just those ``b - a`` tokens. Offsets are int64 (FineWeb-10B is ~10^10 tokens, past int32).

    Memory: pages of a memory-mapped file that a process has read count in its RSS until unmapped, so a scan over
    20 GB of shards would show 20 GB resident (reclaimable, but RSS-based job accounting may kill the job). Every
    ``resident_budget`` bytes of pages touched, the parts' mappings are dropped (madvise DONTNEED: the data stay in
    the page cache and are faulted back on the next read), which bounds the resident set by the budget.
    """

    def __init__(self, parts: Sequence[np.ndarray], resident_budget: int = RESIDENT_BUDGET_BYTES):
        if not parts:
            raise ValueError("ConcatTokens needs at least one array")
        self.parts = list(parts)
        self.dtype = np.result_type(*[p.dtype for p in self.parts])
        # starts[i] = global index of parts[i][0]; starts[-1] = total length.
        self.starts = np.zeros(len(self.parts) + 1, dtype=np.int64)
        self.starts[1:] = np.cumsum([len(p) for p in self.parts], dtype=np.int64)
        self.resident_budget = int(resident_budget)
        self.touched_bytes = 0  # page bytes touched since the last release (an upper bound: repeats count again)
        self.releases = 0

    def __len__(self) -> int:
        return int(self.starts[-1])

    def release(self) -> None:
        """Drop this process's mappings of every memory-mapped part (their pages leave its RSS, not the cache)."""
        for part in self.parts:
            mm = getattr(part, "_mmap", None)  # np.memmap's underlying mmap.mmap; None for in-memory arrays
            if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
                mm.madvise(mmap.MADV_DONTNEED)
        self.touched_bytes = 0
        self.releases += 1

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("ConcatTokens supports only slices, e.g. tokens[a:b]")
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise ValueError("ConcatTokens supports only step-1 slices")
        if stop <= start:
            return np.zeros(0, dtype=self.dtype)
        if self.touched_bytes > self.resident_budget:
            self.release()
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        last = int(np.searchsorted(self.starts, stop, side="left")) - 1
        pieces = []
        for i in range(first, last + 1):
            lo, hi = max(start - int(self.starts[i]), 0), min(stop, int(self.starts[i + 1])) - int(self.starts[i])
            pieces.append(self.parts[i][lo:hi])
            item = self.parts[i].dtype.itemsize  # whole pages: what the kernel maps
            self.touched_bytes += (hi * item // _PAGE - lo * item // _PAGE + 1) * _PAGE
        if len(pieces) == 1:
            return np.asarray(pieces[0]).astype(self.dtype, copy=False)
        return np.concatenate(pieces).astype(self.dtype, copy=False)


class BlockSplit:
    """One side of the interleaved block split of a token stream, as a view (nothing is copied).

    The stream is cut into blocks of ``block_tokens``; of every ``period`` consecutive blocks, blocks
    ``[first, first + count)`` belong to this side. Local index i maps to the i-th stream position whose block is
    selected, so the view equals ``stream[mask]`` with ``mask = (arange(L) // block_tokens) % period`` in that range
    — the rule a materialised split would apply — for every stream length L (a last partial block included).
    """

    def __init__(self, tokens: np.ndarray | ConcatTokens, block_tokens: int, period: int, first: int, count: int):
        if block_tokens < 1 or period < 1 or count < 1 or not 0 <= first <= period - count:
            raise ValueError(f"bad block split: block_tokens={block_tokens}, period={period}, first={first}, "
                             f"count={count} (need 0 <= first, first + count <= period)")
        self.tokens = tokens
        self.dtype = tokens.dtype
        self.period_tokens = period * block_tokens  # P: stream tokens per period
        self.offset = first * block_tokens  # where this side's span starts inside a period
        self.span = count * block_tokens  # S: this side's tokens per full period
        full, rem = divmod(len(tokens), self.period_tokens)
        self._len = full * self.span + min(max(rem - self.offset, 0), self.span)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("BlockSplit supports only slices, e.g. tokens[a:b]")
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise ValueError("BlockSplit supports only step-1 slices")
        if stop <= start:
            return np.zeros(0, dtype=self.dtype)
        S, P = self.span, self.period_tokens
        pieces = []
        for g in range(start // S, (stop - 1) // S + 1):  # one contiguous stream range per period touched
            lo, hi = max(start, g * S) - g * S, min(stop, (g + 1) * S) - g * S
            pieces.append(self.tokens[g * P + self.offset + lo : g * P + self.offset + hi])
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def interleaved_split(tokens: np.ndarray | ConcatTokens, block_tokens: int, val_every: int
                      ) -> tuple[BlockSplit, BlockSplit]:
    """(train, val) views: every ``val_every``-th block of ``block_tokens`` is validation, the others training."""
    if val_every < 2:
        raise ValueError(f"val_every must be >= 2, got {val_every}")
    return (BlockSplit(tokens, block_tokens, val_every, 0, val_every - 1),
            BlockSplit(tokens, block_tokens, val_every, val_every - 1, 1))


def open_tokens(path: str | Path | Sequence[str | Path]) -> np.memmap | ConcatTokens:
    """Open token storage: one ``.bin`` file → its memmap; a glob, a directory (all ``*.bin`` inside) or a list of
    files → a ``ConcatTokens`` over the shards in sorted order (a single match still gives a memmap)."""
    if isinstance(path, (str, Path)):
        p = Path(path)
        if p.is_file():
            return read_bin_shard(p)
        if p.is_dir():
            files = sorted(p.glob("*.bin"))
        else:
            files = sorted(Path(m) for m in glob.glob(str(p)))
        if not files:
            raise FileNotFoundError(f"no token shard matches {str(path)!r}")
    else:
        files = [Path(f) for f in path]
        if not files:
            raise ValueError("open_tokens got an empty list of shards")
    if len(files) == 1:
        return read_bin_shard(files[0])
    return ConcatTokens([read_bin_shard(f) for f in files])


class TokenWindows:
    """Contiguous ``(seq_len + 1)``-token windows over a flat token stream; no document masking.

    Window i covers ``tokens[i·T : i·T + T + 1]`` (T = seq_len): inputs x = the first T tokens, targets y = the
    last T. Windows start every T tokens, so consecutive windows share one token (the target of the last position)
    and every token is an input exactly once. Number of windows: ``(len(tokens) - 1) // T``.
    """

    def __init__(self, tokens: np.ndarray | ConcatTokens | BlockSplit, seq_len: int):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.tokens = tokens
        self.seq_len = seq_len
        self.num_windows = (len(tokens) - 1) // seq_len
        if self.num_windows < 1:
            raise ValueError(f"{len(tokens)} tokens are too few for one window of {seq_len}+1 tokens")
        self._perm_epoch = -1
        self._perm = np.zeros(0, dtype=np.int64)
        self._perm_seed: int | None = None

    def __len__(self) -> int:
        return self.num_windows

    def batch(
        self, indices: Sequence[int] | np.ndarray, device: str | torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of the given windows: two int64 tensors of shape (B, T); ``y[:, t] == x[:, t+1]``."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            raise ValueError("batch needs at least one window index")
        if idx.min() < 0 or idx.max() >= self.num_windows:
            raise IndexError(f"window index out of range [0, {self.num_windows}): {idx.min()}..{idx.max()}")
        T = self.seq_len
        rows = np.empty((idx.size, T + 1), dtype=np.int64)
        for r, i in enumerate(idx):
            rows[r] = self.tokens[int(i) * T : int(i) * T + T + 1]
        data = torch.from_numpy(rows)
        if device is not None:
            data = data.to(device)
        return data[:, :-1], data[:, 1:]

    def _epoch_permutation(self, seed: int, epoch: int) -> np.ndarray:
        # One permutation of all windows per epoch, seeded by (seed, epoch) only; cached because consecutive
        # steps almost always fall in the same epoch (at 3B tokens / 512 it has 6M entries, ≈ 0.1 s to draw).
        if self._perm_epoch != epoch or self._perm_seed != seed:
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch])))
            self._perm = rng.permutation(self.num_windows)
            self._perm_epoch, self._perm_seed = epoch, seed
        return self._perm

    def sample_indices(self, step: int, batch_size: int, seed: int) -> np.ndarray:
        """Window indices of training step ``step``: a pure function of (seed, step, batch_size, num_windows).

        The stream of samples is an endless sequence of epochs, each a fresh permutation of all windows seeded by
        (seed, epoch); step s takes samples ``[s·B, (s+1)·B)`` of that stream. So every window is seen once per
        epoch, and a run resumed at step s sees exactly the batches of an uninterrupted run. Shape (B,), int64.
        """
        if step < 0 or batch_size < 1:
            raise ValueError(f"need step >= 0 and batch_size >= 1, got step={step}, batch_size={batch_size}")
        n = self.num_windows
        positions = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
        out = np.empty(batch_size, dtype=np.int64)
        for epoch in np.unique(positions // n):  # a batch straddles at most a few epochs
            mask = positions // n == epoch
            out[mask] = self._epoch_permutation(seed, int(epoch))[positions[mask] % n]
        return out

    def sequential(
        self, batch_size: int, max_tokens: int | None = None, device: str | torch.device | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Validation batches over windows 0, 1, 2, ... in order (the first ``max_tokens`` input tokens).

        Uses ``min(num_windows, max_tokens // T)`` windows; the last batch may be smaller than ``batch_size``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = self.num_windows if max_tokens is None else min(self.num_windows, max_tokens // self.seq_len)
        if n < 1:
            raise ValueError(f"max_tokens={max_tokens} is less than one window of {self.seq_len} tokens")
        for start in range(0, n, batch_size):
            yield self.batch(np.arange(start, min(start + batch_size, n)), device=device)
