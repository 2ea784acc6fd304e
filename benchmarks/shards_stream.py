"""Peak memory and read throughput of `.bin` corpora read in place, against a bare `np.memmap` over the same files.

Writes synthetic modded-nanoGPT shards (default 10 train shards × 100M tokens = 2 GB, plus one 10M-token val
shard) into a temporary directory, deleted afterwards, then runs in one session, each measurement in its own
subprocess (so peak RSS, VmHWM from /proc/self/status, never mixes):

    tokenize        our tokenize stage's computation on the shards (validate, fingerprint, write shards.json)
    bare_sum        np.memmap of every shard, summed, one file after another (the floor for reading)
    stream_sum      the same sum through open_splits (manifest re-check, ConcatTokens), in the buckets' chunks
    bare_bincount   np.bincount over every shard's memmap, in the buckets' chunks (the floor for the count)
    unigram_count   buckets.unigram_counts through open_splits: what the buckets stage runs
    unigram_blocks  the same with no val shards, so the train split is the every-10th-block view (BlockSplit)

Targets: peak RSS < 1 GB for tokenize and the stream measurements; throughput ≥ 0.8× the bare memmap. Page cache is
warm (the shards were just written; each measurement runs `--repeats` times, interleaved, and the fastest counts).
Throughput is of the reading alone; opening through the manifest (re-checking every shard) is timed apart.

    python benchmarks/shards_stream.py [--shards 10 --tokens-per-shard 100000000 --repeats 5 --dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GPT2_VOCAB = 50257  # ids drawn below this, as in FineWeb shards (specscale.tokens.shards.GPT2_VOCAB)
CHUNK = 1 << 24  # tokens per read: buckets' _COUNT_CHUNK
MEASUREMENTS = ("tokenize", "bare_sum", "stream_sum", "bare_bincount", "unigram_count", "unigram_blocks")


def write_shards(folder: Path, prefix: str, count: int, tokens: int, seed: int) -> None:
    """Shards of uniform random ids, written in 10M-token pieces so this process stays small too."""
    rng = np.random.default_rng(seed)
    header = np.zeros(256, dtype="<i4")
    header[:3] = (20240520, 1, tokens)
    for i in range(count):
        with open(folder / f"{prefix}_{i:06d}.bin", "wb") as f:
            f.write(header.tobytes())
            for lo in range(0, tokens, 10_000_000):
                f.write(rng.integers(0, GPT2_VOCAB, min(10_000_000, tokens - lo), dtype=np.uint16).tobytes())


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(name: str, root: Path) -> dict:
    """One measurement in this (fresh) process: seconds, tokens read, a checksum, RSS before and at peak."""
    train_files = sorted((root / "data").glob("train_*.bin"))
    if name.startswith("bare"):
        before = _status("VmRSS")
        t0, tokens, check = time.perf_counter(), 0, 0
        counts = np.zeros(GPT2_VOCAB, dtype=np.int64)
        for f in train_files:
            mm = np.memmap(f, dtype="<u2", mode="r", offset=1024)
            if name == "bare_sum":
                check += int(mm.sum(dtype=np.int64))
            else:
                for a in range(0, len(mm), CHUNK):
                    counts += np.bincount(mm[a : a + CHUNK], minlength=GPT2_VOCAB)
            tokens += len(mm)
            del mm  # unmapped: its pages leave this process's RSS
        check = check if name == "bare_sum" else int((counts * np.arange(GPT2_VOCAB)).sum())
        return {"seconds": time.perf_counter() - t0, "tokens": tokens, "check": check,
                "rss_before": before, "peak_rss": _status("VmHWM")}

    from specscale.tokens.buckets import unigram_counts
    from specscale.tokens.tokenize import build_token_shards
    from specscale.tokens.manifest import open_splits

    before = _status("VmRSS")
    t0 = time.perf_counter()
    if name == "tokenize":
        indexed = 0
        for out, val in (("tokens", ["data/val_*.bin"]), ("tokens_blocks", [])):  # both manifests
            (root / out).mkdir(exist_ok=True)
            meta = build_token_shards({"source": "bin", "paths": ["data/train_*.bin"], "val_paths": val,
                                       "val_every": 10}, root, root / out)
            indexed += meta["train_tokens"] + meta["val_tokens"]
        return {"seconds": time.perf_counter() - t0, "tokens": indexed, "check": 0, "rss_before": before,
                "peak_rss": _status("VmHWM")}
    train, _ = open_splits(root / ("tokens_blocks" if name == "unigram_blocks" else "tokens"))
    opened = time.perf_counter()  # the manifest re-check (2 MiB hashed a shard) is timed apart from the reading
    if name == "stream_sum":
        check = sum(int(train[a : a + CHUNK].sum(dtype=np.int64)) for a in range(0, len(train), CHUNK))
    else:
        check = int((unigram_counts(train, GPT2_VOCAB) * np.arange(GPT2_VOCAB)).sum())
    return {"seconds": time.perf_counter() - opened, "open_seconds": opened - t0, "tokens": len(train),
            "check": check, "rss_before": before, "peak_rss": _status("VmHWM")}


def run_child(name: str, root: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", name, "--root", str(root)], capture_output=True,
                         text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"measurement {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--tokens-per-shard", type=int, default=100_000_000)
    parser.add_argument("--val-tokens", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=5,
                        help="runs per measurement, fastest kept (a sum takes ≈ 0.5 s: 2 runs gave 0.77×, 5 gave 0.89×)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the temporary shards go")
    parser.add_argument("--measure", choices=MEASUREMENTS, help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, Path(args.root))))
        return

    need = 2 * (args.shards * args.tokens_per_shard + args.val_tokens) + (64 << 20)
    free = shutil.disk_usage(args.dir).free
    if free < 2 * need:
        sys.exit(f"{args.dir}: {free / 2**30:.1f} GiB free, want {2 * need / 2**30:.1f} GiB (2× the shards); "
                 "pass --dir elsewhere or fewer --shards")
    root = Path(tempfile.mkdtemp(prefix="shards_stream_", dir=args.dir))
    try:
        (root / "data").mkdir()
        t0 = time.perf_counter()
        write_shards(root / "data", "train", args.shards, args.tokens_per_shard, seed=0)
        write_shards(root / "data", "val", 1, args.val_tokens, seed=1)
        print(f"wrote {args.shards} × {args.tokens_per_shard:,} train tokens + {args.val_tokens:,} val "
              f"({need / 1e9:.2f} GB) in {time.perf_counter() - t0:.1f} s to {root}", flush=True)
        results: dict[str, list[dict]] = {m: [] for m in MEASUREMENTS}
        results["tokenize"].append(run_child("tokenize", root))
        for _ in range(args.repeats):  # interleaved, so a busy moment of the shared machine hits both sides
            for name in MEASUREMENTS[1:]:
                results[name].append(run_child(name, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    best = {name: min(runs, key=lambda r: r["seconds"]) for name, runs in results.items()}
    print(f"\n{'measurement':<15} {'tokens':>14} {'open s':>6} {'seconds':>8} {'Mtok/s':>8} {'GB/s':>6} "
          f"{'RSS before MB':>13} {'peak RSS MB':>11} {'peak-before MB':>14}")
    for name in MEASUREMENTS:
        r = best[name]
        peak = max(x["peak_rss"] for x in results[name])
        # tokenize reads 2 MiB a shard whatever its size: a rate in tokens/s would mean nothing
        rates = ("-", "-") if name == "tokenize" else (f"{r['tokens'] / r['seconds'] / 1e6:.1f}",
                                                       f"{2 * r['tokens'] / r['seconds'] / 1e9:.2f}")
        opened = f"{r['open_seconds']:.2f}" if "open_seconds" in r else "-"
        print(f"{name:<15} {r['tokens']:>14,} {opened:>6} {r['seconds']:>8.2f} {rates[0]:>8} {rates[1]:>6} "
              f"{r['rss_before'] / 2**20:>13.0f} {peak / 2**20:>11.0f} {(peak - r['rss_before']) / 2**20:>14.0f}")
    assert best["bare_sum"]["check"] == best["stream_sum"]["check"], "stream and bare memmap read different tokens"
    assert best["bare_bincount"]["check"] == best["unigram_count"]["check"], "unigram counts differ from bare"

    def rate(name: str) -> float:
        return best[name]["tokens"] / best[name]["seconds"]

    peak_ours = max(x["peak_rss"] for n in ("tokenize", "stream_sum", "unigram_count", "unigram_blocks")
                    for x in results[n])
    print(f"\n{'PASS' if peak_ours < 2**30 else 'FAIL'}  peak RSS of tokenize and stream reads < 1 GB: "
          f"{peak_ours / 2**30:.2f} GiB")
    pairs = (("stream_sum", "bare_sum"), ("unigram_count", "bare_bincount"), ("unigram_blocks", "bare_bincount"))
    for ours, bare in pairs:
        ratio = rate(ours) / rate(bare)
        print(f"{'PASS' if ratio >= 0.8 else 'FAIL'}  {ours} / {bare} throughput ≥ 0.8: {ratio:.2f} ×")


if __name__ == "__main__":
    main()
