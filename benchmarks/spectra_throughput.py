"""Throughput of the spectra stage: streamed covariance, eigenvalues, and a whole paper-scale run.

Every number is a ratio to a bare baseline measured in the same process on the same matrices:

  (a) covariance accumulation (CovarianceAccumulator over float32 chunks, finalised) vs one bare float64 XᵀX of the
      same (N, D); GFLOP/s counted as 2·N·D² for both, so the ratio is a time ratio. Target ≥ 0.8.
  (b) ``eigenvalues`` vs bare ``numpy.linalg.eigvalsh`` (``torch.linalg.eigvalsh`` with --device cuda). Target ≤ 1.1×.
  (c) one gpt2-160m run's spectra stage: 12 layers × 2 sites × 4 token sets × 5 checkpoints = 480 spectra, each a
      covariance of N = 43k tokens at D = 6144 plus its eigenvalues and metrics, timed once at ``--stage-n``,
      ``--stage-d`` (default the paper's size; smaller sizes are scaled by N·D² for the covariance and D³ for the
      eigenvalues). Reading fp16
      activations from zarr is timed separately on a small array and scaled by bytes.

Candidate and baseline are called in turn (A, B, A, B, ...) and the fastest call of each is kept. On a machine shared
with other jobs, wall time is disturbed; with ``--threads 1`` the process CPU time is also reported, which measures
the work done and is nearly immune to other processes (the ratios to trust there).

    python benchmarks/spectra_throughput.py                      # CPU, ~2-3 minutes on 2 cores
    python benchmarks/spectra_throughput.py --threads 1 --skip-stage
    python benchmarks/spectra_throughput.py --stage-d 3072       # quicker, extrapolated stage
    python benchmarks/spectra_throughput.py --device cuda
"""

from __future__ import annotations

import os
import sys

# BLAS fixes its thread count when it is loaded, so --threads must act before numpy is imported.
if "--threads" in sys.argv:
    _threads = sys.argv[sys.argv.index("--threads") + 1]
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _threads

import argparse  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import zarr  # noqa: E402

from specscale.measure.covariance import (  # noqa: E402
    CovarianceAccumulator,
    covariance_of_array,
    default_chunk_tokens,
    eigenvalues,
)
from specscale.measure.metrics import all_metrics  # noqa: E402

SPECTRA_PER_RUN = 12 * 2 * 4 * 5  # layers × sites (pre, post) × sets (HEAD, MID, TAIL, pooled) × checkpoints


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved_best(
    fns: dict[str, Callable[[], object]], repeats: int, device: str = "cpu"
) -> dict[str, tuple[float, float]]:
    """name → (fastest wall seconds, fastest process-CPU seconds) over ``repeats`` calls made in turn."""
    best = {name: (float("inf"), float("inf")) for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
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


def bench_accumulation(
    n: int, d: int, device: str, repeats: int, chunks: list[int]
) -> dict[str, tuple[float, float]]:
    """Timings of the bare XᵀX (key "bare") and of the accumulator at each chunk length (key = chunk)."""
    x32 = activations(n, d, np.float32)
    if device == "cpu":
        x64: object = x32.astype(np.float64)
        source: object = x32
        acc_device = None
    else:
        x64 = torch.from_numpy(x32).to(device=device, dtype=torch.float64)
        source = torch.from_numpy(x32).to(device)  # resident float32 activations: times the algorithm, not PCIe
        acc_device = device
    # numpy computes XᵀX with dsyrk (half the flops of a general GEMM), as the accumulator does.
    fns: dict[str, Callable[[], object]] = {"bare": lambda: x64.T @ x64}  # type: ignore[attr-defined]
    for chunk in chunks:
        if acc_device is None:
            fns[str(chunk)] = lambda c=chunk: accumulate(source, d, c, None).covariance()
        else:
            fns[str(chunk)] = lambda c=chunk: accumulate(source, d, c, acc_device).covariance_tensor()
    return interleaved_best(fns, repeats, device)


def bench_eigen(d: int, device: str, repeats: int) -> dict[str, tuple[float, float]]:
    """Timings of ``eigenvalues`` ("ours"), bare numpy.linalg.eigvalsh ("numpy", the CPU baseline) and bare
    torch.linalg.eigvalsh ("torch", the backend ``eigenvalues`` uses, and the baseline on a GPU)."""
    x = activations(2 * d, d, np.float32, seed=1)
    cov = np.cov(x.astype(np.float64), rowvar=False)
    if device == "cpu":
        cov_t = torch.from_numpy(cov)
        fns = {
            "ours": lambda: eigenvalues(cov),
            "numpy": lambda: np.linalg.eigvalsh(cov),
            "torch": lambda: torch.linalg.eigvalsh(cov_t),
        }
    else:
        cov_dev = torch.from_numpy(cov).to(device)
        fns = {"ours": lambda: eigenvalues(cov_dev), "torch": lambda: torch.linalg.eigvalsh(cov_dev).cpu()}
    return interleaved_best(fns, repeats, device)


def bench_zarr_read(d: int) -> float:
    """Seconds per byte to read an fp16 zarr activation array (default codec) in 1024-row chunks."""
    x = activations(8192, d, np.float16, seed=2)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "a.zarr")
        arr = zarr.create_array(store=path, shape=x.shape, chunks=(1024, d), dtype="float16")
        arr[:] = x
        arr = zarr.open_array(path, mode="r")
        t_read = interleaved_best({"read": lambda: [arr[i : i + 1024] for i in range(0, 8192, 1024)]}, 2)
    return t_read["read"][0] / x.nbytes


def _rss_bytes(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process from /proc (Linux); NaN elsewhere."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return float(line.split()[1]) * 1024.0
    except OSError:
        pass
    return float("nan")


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0: write 5 to clear_refs); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def bench_stage(n: int, d: int, device: str) -> dict[str, float]:
    """Time one spectrum (covariance of (n, d) fp16 host activations + eigenvalues + metrics) and its memory.

    Memory: peak resident set above the resident set before the spectrum (which already holds the input array,
    so this counts the accumulator, chunks, covariance and eigensolver workspace), plus tracemalloc's peak of
    numpy allocations as a cross-check.
    """
    x = activations(n, d, np.float16, seed=3)
    rss_before = _rss_bytes("VmRSS")
    hwm_ok = _reset_peak_rss()
    tracemalloc.start()
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    if device == "cpu":
        cov: object = covariance_of_array(x)
    else:
        cov = accumulate(x, d, default_chunk_tokens(d), device).covariance_tensor()
    _sync(device)
    t1, c1 = time.perf_counter(), time.process_time()
    eigs = eigenvalues(cov)  # type: ignore[arg-type]
    t2, c2 = time.perf_counter(), time.process_time()
    all_metrics(eigs)
    t3 = time.perf_counter()
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_peak = _rss_bytes("VmHWM") - rss_before if hwm_ok else float("nan")
    return {
        "cov": t1 - t0, "eig": t2 - t1, "metrics": t3 - t2, "cov_cpu": c1 - c0, "eig_cpu": c2 - c1,
        "rss_peak": rss_peak, "traced_peak": float(traced_peak), "input_bytes": float(x.nbytes),
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--n", type=int, default=16384, help="tokens for (a)")
    p.add_argument("--d", type=int, default=2048, help="width for (a) and (b)")
    p.add_argument("--stage-n", type=int, default=43_000)
    p.add_argument("--stage-d", type=int, default=6144, help="width timed for (c); scaled to --paper-d")
    p.add_argument("--paper-d", type=int, default=6144)
    p.add_argument("--paper-n", type=int, default=43_000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-stage", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="BLAS/torch threads (default: the libraries' own)")
    args = p.parse_args()
    dev = args.device
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    where = torch.cuda.get_device_name(0) if dev.startswith("cuda") else (platform.processor() or "cpu")
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    print(f"device {dev} ({where}); BLAS threads {blas}; cpus {os.cpu_count()}; "
          f"load average at start {os.getloadavg()[0]:.1f}")
    cpu_ratios = dev == "cpu" and args.threads == 1  # process time is meaningful only single-threaded

    default_chunk = default_chunk_tokens(args.d)
    chunks = sorted({256, 512, 1024, 2048, default_chunk})
    flops = 2.0 * args.n * args.d**2
    print(f"\n(a) covariance accumulation, N = {args.n}, D = {args.d}, float32 input, fastest of {args.repeats}")
    acc = bench_accumulation(args.n, args.d, dev, args.repeats, chunks)
    bare_w, bare_c = acc["bare"]
    print(f"{'':34} {'wall s':>7} {'GFLOP/s':>8} {'ratio':>6}" + (f" {'cpu s':>7} {'ratio':>6}" if cpu_ratios else ""))
    for key, (w, c) in acc.items():
        label = f"bare float64 XᵀX ({dev})" if key == "bare" else f"accumulator, chunk {key}" + (
            " (default)" if key == str(default_chunk) else "")
        line = f"{label:34} {w:7.3f} {flops / w / 1e9:8.1f} {bare_w / w:6.2f}"
        print(line + (f" {c:7.3f} {bare_c / c:6.2f}" if cpu_ratios else ""))
    ratio_a = bare_w / acc[str(default_chunk)][0]

    print(f"\n(b) eigenvalues of a {args.d}×{args.d} covariance, fastest of {args.repeats}")
    eig = bench_eigen(args.d, dev, args.repeats)
    base = "numpy" if dev == "cpu" else "torch"
    ratio_b = eig["ours"][0] / eig[base][0]
    labels = {"ours": "eigenvalues()", "numpy": "bare numpy.linalg.eigvalsh", "torch": "bare torch.linalg.eigvalsh"}
    for key, label in labels.items():
        if key in eig:
            w, c = eig[key]
            print(f"{label:34} {w:7.3f} s  ratio to {base} {w / eig[base][0]:5.2f}"
                  + (f"   cpu {c:7.3f} s  ratio {c / eig[base][1]:5.2f}" if cpu_ratios else ""))

    summary = [
        ("(a) accumulation / bare XᵀX, wall, default chunk", f"{ratio_a:.2f}", ">= 0.80", ratio_a >= 0.8),
        (f"(b) eigenvalues / bare {base} eigvalsh, wall", f"{ratio_b:.2f}", "<= 1.10", ratio_b <= 1.1),
    ]
    if cpu_ratios:
        ratio_a_cpu = bare_c / acc[str(default_chunk)][1]
        ratio_b_cpu = eig["ours"][1] / eig[base][1]
        summary.append(("(a) accumulation / bare XᵀX, cpu time", f"{ratio_a_cpu:.2f}", ">= 0.80", ratio_a_cpu >= 0.8))
        summary.append(
            (f"(b) eigenvalues / bare {base} eigvalsh, cpu time", f"{ratio_b_cpu:.2f}", "<= 1.10", ratio_b_cpu <= 1.1)
        )

    if not args.skip_stage:
        print(f"\n(c) one spectrum at N = {args.stage_n}, D = {args.stage_d} (fp16 activations in host memory)")
        st = bench_stage(args.stage_n, args.stage_d, dev)
        read_s = bench_zarr_read(min(args.stage_d, 2048)) * args.paper_n * args.paper_d * 2  # fp16 bytes
        cov_scale = (args.paper_n / args.stage_n) * (args.paper_d / args.stage_d) ** 2  # covariance ∝ N·D²
        eig_scale = (args.paper_d / args.stage_d) ** 3
        per_spectrum = st["cov"] * cov_scale + st["eig"] * eig_scale + st["metrics"] + read_s
        per_spectrum_cpu = st["cov_cpu"] * cov_scale + st["eig_cpu"] * eig_scale + read_s
        wall_h = SPECTRA_PER_RUN * per_spectrum / 3600.0
        cpu_h = SPECTRA_PER_RUN * per_spectrum_cpu / 3600.0
        gib = 2.0**30
        print(f"covariance {st['cov']:.2f} s wall ({st['cov_cpu']:.2f} s cpu), eigenvalues {st['eig']:.2f} s wall "
              f"({st['eig_cpu']:.2f} s cpu), metrics {st['metrics'] * 1e3:.1f} ms")
        print(f"memory: peak RSS above the resident input {st['rss_peak'] / gib:.2f} GiB (numpy-traced peak "
              f"{st['traced_peak'] / gib:.2f} GiB); input array {st['input_bytes'] / gib:.2f} GiB, "
              "which a zarr source streams instead")
        same = args.stage_d == args.paper_d and args.stage_n == args.paper_n
        scaled = "" if same else f", scaled from N = {args.stage_n}, D = {args.stage_d}"
        print(f"per spectrum at N = {args.paper_n}, D = {args.paper_d}{scaled}: covariance "
              f"{st['cov'] * cov_scale:.1f} s + eigenvalues {st['eig'] * eig_scale:.1f} s + zarr read {read_s:.2f} s "
              f"= {per_spectrum:.1f} s wall")
        if dev.startswith("cuda"):
            print(f"spectra stage of one gpt2-160m run ({SPECTRA_PER_RUN} spectra): {wall_h:.2f} GPU-hours; "
                  f"40-run sweep {40 * wall_h:.1f} GPU-hours")
            summary.append(("(c) one run's spectra stage, GPU-hours", f"{wall_h:.2f}", "", True))
        else:
            print(f"spectra stage of one gpt2-160m run ({SPECTRA_PER_RUN} spectra): {wall_h:.2f} h wall here, "
                  f"{cpu_h:.2f} CPU-hours (process CPU time); 40-run sweep {40 * cpu_h:.0f} CPU-hours")
            summary.append(("(c) one run's spectra stage, CPU-hours", f"{cpu_h:.2f}", "", True))
            summary.append(("(c) one run's spectra stage, wall hours here", f"{wall_h:.2f}", "", True))
        peak = st["rss_peak"] if st["rss_peak"] == st["rss_peak"] else st["traced_peak"]
        summary.append(("(c) peak memory GiB per spectrum (excl. input)", f"{peak / gib:.2f}", "< 2", peak < 2 * gib))

    print(f"\nsummary (load average at end {os.getloadavg()[0]:.1f})")
    for name, value, target, ok in summary:
        print(f"  {name:50} {value:>6}  {target:>8}  {'ok' if ok else ('MISSED' if target else '')}")


if __name__ == "__main__":
    main()
