"""What a whole-file contents digest costs (store/integrity.py), against a bare read of the same file.

    python benchmarks/contents_digest.py [DIR]     # DIR: where to write the 640 MB file (default: a temp dir)

Writes a 640 MB checkpoint (`torch.save` of a float32 tensor, as the training code saves weights), then times, best
of 3 in the same run: a bare streaming read of the file, `integrity.file_digest` (the digest recorded at commit
and checked when a run is read as an input) and, for the choice of algorithm, a BLAKE2b digest of the same bytes.
Each is timed with the file in the page cache (warm: the digest at commit follows the write) and, where the kernel
drops the file's pages on request (posix_fadvise DONTNEED), read from disk (cold: a check of an old run). Each
time is printed as a ratio to the bare read of the same kind, and in MB/s.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from specscale.store.integrity import ALGORITHM, file_digest

SIZE = 640_000_000  # bytes of tensor data: 160 M float32
BLOCK = 1 << 20  # bytes per read of the bare read


def bare_read(path: Path) -> None:
    buf = bytearray(BLOCK)
    with open(path, "rb", buffering=0) as fh:
        while fh.readinto(buf):
            pass


def blake2b_digest(path: Path) -> None:
    h = hashlib.blake2b()
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])


def drop_cache(path: Path) -> bool:
    """Ask the kernel to forget the file's pages (clean after the fsync at write); False where it cannot."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def best_of(fn: Callable[[Path], object], path: Path, cold: bool, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        if cold:
            drop_cache(path)
        else:
            bare_read(path)  # in the page cache before the timed pass
        started = time.perf_counter()
        fn(path)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> int:
    made = len(sys.argv) < 2
    folder = Path(tempfile.mkdtemp(prefix="contents_digest_")) if made else Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "step_000000.pt"
    torch.manual_seed(0)
    started = time.perf_counter()
    torch.save(torch.randn(SIZE // 4), path)
    size = path.stat().st_size
    print(f"wrote {path} ({size / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s; {os.cpu_count()} CPUs")
    try:
        kinds = ["warm", "cold"] if drop_cache(path) else ["warm"]
        for kind in kinds:
            read = best_of(bare_read, path, kind == "cold")
            print(f"{kind:4s} {'bare read':22s} {read:6.2f} s  {size / read / 1e6:6.0f} MB/s  1.00× the read")
            for name, fn in ((f"file_digest ({ALGORITHM})", file_digest), ("blake2b", blake2b_digest)):
                t = best_of(fn, path, kind == "cold")
                print(f"{kind:4s} {name:22s} {t:6.2f} s  {size / t / 1e6:6.0f} MB/s  {t / read:.2f}× the read")
    finally:
        path.unlink()
        if made:
            folder.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
