"""Throughput of the spectra stage: streamed covariance, eigenvalues, and a whole paper-scale run.

Every number is a ratio to a bare baseline measured in the same process on the same matrices:

  (a) covariance accumulation (CovarianceAccumulator over float32 chunks, finalised) vs one bare float64 XᵀX of the
      same (N, D); GFLOP/s counted as 2·N·D² for both, so the ratio is a time ratio. Target ≥ 0.8.
  (b) ``eigenvalues`` vs bare ``numpy.linalg.eigvalsh`` (``torch.linalg.eigvalsh`` with --device cuda). Target ≤ 1.1×.
  (c) one gpt2-160m run's spectra stage: 12 layers × 2 sites × 4 token sets × 5 checkpoints = 480 spectra, each a
      covariance of N = 43k tokens at D = 6144 plus its eigenvalues and metrics, timed once at ``--stage-d``
      (default 6144; a smaller D is scaled by N·D² for the covariance and D³ for the eigenvalues). Reading fp16
      activations from zarr is timed separately on a small array and scaled by bytes.

    python benchmarks/spectra_throughput.py                 # CPU, ~2 minutes on 2 cores
    python benchmarks/spectra_throughput.py --stage-d 3072  # quicker, extrapolated stage
    python benchmarks/spectra_throughput.py --device cuda
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
import torch
import zarr

from specscale.covariance import CovarianceAccumulator, covariance_of_array, default_chunk_tokens, eigenvalues
from specscale.spectra import all_metrics

SPECTRA_PER_RUN = 12 * 2 * 4 * 5  # layers × sites (pre, post) × sets (HEAD, MID, TAIL, pooled) × checkpoints


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_time(fn: Callable[[], object], repeats: int, device: str = "cpu") -> float:
    """Fastest of ``repeats`` calls (seconds): the least disturbed by other processes on a shared machine."""
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def activations(n: int, d: int, dtype: type, seed: int = 0) -> np.ndarray:
    """(n, d) test activations with a decaying spectrum, generated block-wise to bound the float32 temporaries."""
    rng = np.random.default_rng(seed)
    scale = (np.arange(1, d + 1, dtype=np.float32) ** -0.5).astype(np.float32)
    out = np.empty((n, d), dtype=dtype)
    for i in range(0, n, 4096):
        block = rng.standard_normal((min(4096, n - i), d), dtype=np.float32)
        out[i : i + block.shape[0]] = block * scale + 1.0
    return out


def accumulate(x: object, d: int, chunk: int, device: str | None) -> CovarianceAccumulator:
    acc = CovarianceAccumulator(d, device=device)
    n = x.shape[0]  # type: ignore[attr-defined]
    for i in range(0, n, chunk):
        acc.update(x[i : i + chunk])  # type: ignore[index]
    return acc


def bench_accumulation(n: int, d: int, device: str, repeats: int, chunks: list[int]) -> list[tuple[str, float, float]]:
    """(label, seconds, GFLOP/s) for the bare XᵀX and for the accumulator at each chunk length."""
    flops = 2.0 * n * d * d
    x32 = activations(n, d, np.float32)
    rows = []
    if device == "cpu":
        x64 = x32.astype(np.float64)
        t_bare = best_time(lambda: x64.T @ x64, repeats)
        del x64
        source: object = x32
        acc_device = None
    else:
        x64_dev = torch.from_numpy(x32).to(device=device, dtype=torch.float64)
        t_bare = best_time(lambda: x64_dev.T @ x64_dev, repeats, device)
        del x64_dev
        source = torch.from_numpy(x32).to(device)  # resident float32 activations: times the algorithm, not PCIe
        acc_device = device
    rows.append((f"bare float64 XᵀX ({device})", t_bare, flops / t_bare / 1e9))
    for chunk in chunks:
        fin = (lambda a: a.covariance_tensor()) if acc_device else (lambda a: a.covariance())
        t = best_time(lambda: fin(accumulate(source, d, chunk, acc_device)), repeats, device)
        rows.append((f"accumulator, chunk {chunk}", t, flops / t / 1e9))
    return rows


def bench_eigen(d: int, device: str, repeats: int) -> tuple[float, float]:
    """(seconds ours, seconds bare) for the eigenvalues of one D×D covariance."""
    x = activations(2 * d, d, np.float32, seed=1)
    cov = np.cov(x.astype(np.float64), rowvar=False)
    if device == "cpu":
        t_ours = best_time(lambda: eigenvalues(cov), repeats)
        t_bare = best_time(lambda: np.linalg.eigvalsh(cov), repeats)
    else:
        cov_dev = torch.from_numpy(cov).to(device)
        t_ours = best_time(lambda: eigenvalues(cov_dev), repeats, device)
        t_bare = best_time(lambda: torch.linalg.eigvalsh(cov_dev).cpu(), repeats, device)
    return t_ours, t_bare


def bench_zarr_read(d: int) -> float:
    """Seconds per byte to read an fp16 zarr activation array (default codec) in 1024-row chunks."""
    x = activations(8192, d, np.float16, seed=2)
    with tempfile.TemporaryDirectory() as tmp:
        arr = zarr.create_array(store=os.path.join(tmp, "a.zarr"), shape=x.shape, chunks=(1024, d), dtype="float16")
        arr[:] = x
        arr = zarr.open_array(os.path.join(tmp, "a.zarr"), mode="r")
        t_read = best_time(lambda: [arr[i : i + 1024] for i in range(0, 8192, 1024)], 2)
    return t_read / x.nbytes


def bench_stage(n: int, d: int, device: str) -> dict[str, float]:
    """Time one spectrum (covariance of (n, d) fp16 host activations + eigenvalues + metrics) and its peak memory."""
    x = activations(n, d, np.float16, seed=3)
    acc_device = None if device == "cpu" else device
    tracemalloc.start()
    tracemalloc.reset_peak()
    _sync(device)
    t0 = time.perf_counter()
    if acc_device is None:
        cov: object = covariance_of_array(x)
    else:
        acc = accumulate(x, d, default_chunk_tokens(d), acc_device)
        cov = acc.covariance_tensor()
    _sync(device)
    t1 = time.perf_counter()
    eigs = eigenvalues(cov)  # type: ignore[arg-type]
    t2 = time.perf_counter()
    all_metrics(eigs)
    t3 = time.perf_counter()
    _, peak = tracemalloc.get_traced_memory()  # host allocations through numpy (accumulator, chunks, LAPACK work)
    tracemalloc.stop()
    return {"cov": t1 - t0, "eig": t2 - t1, "metrics": t3 - t2, "peak_bytes": float(peak), "input_bytes": x.nbytes}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--n", type=int, default=16384, help="tokens for (a)")
    p.add_argument("--d", type=int, default=2048, help="width for (a) and (b)")
    p.add_argument("--stage-n", type=int, default=43_000)
    p.add_argument("--stage-d", type=int, default=6144, help="width timed for (c); scaled to --paper-d")
    p.add_argument("--paper-d", type=int, default=6144)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-stage", action="store_true")
    args = p.parse_args()
    dev = args.device
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    where = torch.cuda.get_device_name(0) if dev.startswith("cuda") else f"{platform.processor() or 'cpu'}"
    print(f"device {dev} ({where}); torch threads {torch.get_num_threads()}; os cpus {os.cpu_count()}")

    default_chunk = default_chunk_tokens(args.d)
    chunks = sorted({256, 1024, default_chunk})
    print(f"\n(a) covariance accumulation, N = {args.n}, D = {args.d}, float32 input, best of {args.repeats}")
    rows = bench_accumulation(args.n, args.d, dev, args.repeats, chunks)
    t_bare = rows[0][1]
    print(f"{'':34} {'seconds':>8} {'GFLOP/s':>8} {'ratio':>6}")
    for label, t, gf in rows:
        print(f"{label:34} {t:8.3f} {gf:8.1f} {t_bare / t:6.2f}")
    ratio_default = t_bare / dict((r[0], r[1]) for r in rows)[f"accumulator, chunk {default_chunk}"]

    print(f"\n(b) eigenvalues of a {args.d}×{args.d} covariance, best of {args.repeats}")
    t_ours, t_bare_eig = bench_eigen(args.d, dev, args.repeats)
    bare_name = "numpy.linalg.eigvalsh" if dev == "cpu" else "torch.linalg.eigvalsh"
    print(f"eigenvalues {t_ours:.3f} s, bare {bare_name} {t_bare_eig:.3f} s, ratio {t_ours / t_bare_eig:.2f}×")

    summary = [
        ("(a) accumulation / bare XᵀX, default chunk", f"{ratio_default:.2f}", ">= 0.80", ratio_default >= 0.8),
        ("(b) eigenvalues / bare eigvalsh", f"{t_ours / t_bare_eig:.2f}", "<= 1.10", t_ours / t_bare_eig <= 1.1),
    ]
    if not args.skip_stage:
        print(f"\n(c) one spectrum at N = {args.stage_n}, D = {args.stage_d} (fp16 activations in host memory)")
        st = bench_stage(args.stage_n, args.stage_d, dev)
        read_s_per_byte = bench_zarr_read(min(args.stage_d, 2048))
        cov_scale = (args.paper_d / args.stage_d) ** 2  # N fixed: covariance ∝ N·D²
        eig_scale = (args.paper_d / args.stage_d) ** 3
        read_s = read_s_per_byte * args.stage_n * args.paper_d * 2
        per_spectrum = st["cov"] * cov_scale + st["eig"] * eig_scale + st["metrics"] + read_s
        wall_h = SPECTRA_PER_RUN * per_spectrum / 3600.0
        cores = torch.cuda.device_count() if dev.startswith("cuda") else (os.cpu_count() or 1)
        print(f"covariance {st['cov']:.2f} s, eigenvalues {st['eig']:.2f} s, metrics {st['metrics'] * 1e3:.1f} ms, "
              f"peak traced host memory {st['peak_bytes'] / 2**30:.2f} GiB "
              f"(+ {st['input_bytes'] / 2**30:.2f} GiB input array)")
        scaled = "" if args.stage_d == args.paper_d else f" (scaled from D = {args.stage_d})"
        print(f"per spectrum at D = {args.paper_d}{scaled}: covariance {st['cov'] * cov_scale:.1f} s + eigenvalues "
              f"{st['eig'] * eig_scale:.1f} s + zarr read {read_s:.2f} s = {per_spectrum:.1f} s")
        unit = "GPU-hours" if dev.startswith("cuda") else f"CPU-hours ({cores}-core machine wall time × {cores})"
        print(f"spectra stage of one gpt2-160m run ({SPECTRA_PER_RUN} spectra): wall {wall_h:.2f} h = "
              f"{wall_h * cores:.2f} {unit}; 40-run sweep: {40 * wall_h * cores:.1f}")
        summary.append(("(c) stage wall hours, one run", f"{wall_h:.2f}", "", True))
        summary.append(("(c) peak traced host GiB, one spectrum", f"{st['peak_bytes'] / 2**30:.2f}", "< 2", st["peak_bytes"] < 2 * 2**30))

    print("\nsummary")
    for name, value, target, ok in summary:
        print(f"  {name:44} {value:>8}  {target:>8}  {'ok' if ok else 'MISSED' if target else ''}")


if __name__ == "__main__":
    main()
