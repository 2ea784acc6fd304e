"""Capture FFN activations on the fixed probe set and write them to zarr, split by the bucket of the input token.

Layout of one run's store (`acts.zarr`), one 2-D array per (checkpoint step, layer, site, set):
    step_000500/L03/post/TAIL   shape (N, D), chunked along tokens (chunk_tokens rows), dtype from the spec
with attributes {step, layer, site, bucket, N, D} on every array. Sets are HEAD, MID, TAIL (input-token frequency
buckets, skipped when too rare) and GLOBAL (all tokens pooled; the paper's CSV name). Every chunk carries a CRC32C
checksum, so a truncated or corrupted chunk fails loudly on read instead of being silently used.

Memory: rows are buffered per array until a full chunk is ready, so RAM holds ~ n_arrays × chunk_tokens × D values
plus one probe batch — never a whole array.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec

from specscale.buckets import BUCKET_NAMES, POOLED, ProbeSet
from specscale.model import GPT
from specscale.cache import RunStore
from specscale.train import autocast_context, build_model, checkpoint_path

COMPLETE = "_COMPLETE"


def array_name(step: int, layer: int, site: str, bucket: str) -> str:
    return f"step_{step:06d}/L{layer:02d}/{site}/{bucket}"


def probe_sets(probe: ProbeSet) -> dict[str, np.ndarray]:
    """Set name → ascending flat positions into probe.windows.reshape(-1); skipped buckets left out."""
    sets = {name: np.asarray(probe.bucket_indices[name], dtype=np.int64)
            for name in BUCKET_NAMES if not probe.buckets[name]["skipped"] and len(probe.bucket_indices[name])}
    sets[POOLED] = np.asarray(probe.pooled_indices, dtype=np.int64)
    return sets


class _ChunkedWriter:
    """Buffers rows of one (N, D) zarr array and writes whole chunks (a partial chunk write rewrites the chunk)."""

    def __init__(self, array: zarr.Array, chunk_rows: int) -> None:
        self.array, self.chunk_rows = array, chunk_rows
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.written = 0

    def append(self, rows: np.ndarray) -> None:
        if len(rows):
            self.buffer.append(rows)
            self.buffered += len(rows)
        if self.buffered >= self.chunk_rows:
            self.flush(final=False)

    def flush(self, final: bool) -> None:
        if not self.buffer:
            return
        data = np.concatenate(self.buffer)
        cut = len(data) if final else (len(data) // self.chunk_rows) * self.chunk_rows
        self.array[self.written:self.written + cut] = data[:cut]
        self.written += cut
        rest = data[cut:]
        self.buffer, self.buffered = ([rest] if len(rest) else []), len(rest)


def _capture(model: GPT, sites: list[str]) -> tuple[dict[tuple[int, str], torch.Tensor], list[Any]]:
    captured: dict[tuple[int, str], torch.Tensor] = {}
    hooks = []
    for (layer, site), module in model.ffn_sites().items():
        if site in sites:
            def hook(_m, _inp, out, key=(layer, site)):
                captured[key] = out.detach()
            hooks.append(module.register_forward_hook(hook))
    return captured, hooks


def _batches(probe: ProbeSet, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, probe.windows.shape[0], batch_size):
        yield start, probe.windows[start:start + batch_size]


def dump_activations(train_dir: Path, probe: ProbeSet, probe_cfg: dict[str, Any], out_dir: Path,
                     device: torch.device, steps: list[int] | None = None) -> dict[str, Any]:
    """Write every kept checkpoint's activations to out_dir/acts.zarr, crash-safe (tmp dir, then rename).

    Returns the manifest (also written as out_dir/manifest.json): N per set, D, steps, layers, sites, bytes.
    """
    train_spec = json.loads((train_dir / "spec.json").read_text())
    result = json.loads((train_dir / "result.json").read_text())
    steps = steps if steps is not None else list(result["checkpoints"])
    sites = list(probe_cfg["sites"])
    dtype = np.dtype(probe_cfg["dtype"])
    chunk_rows = int(probe_cfg["chunk_tokens"])
    sets = probe_sets(probe)
    seq_len = probe.windows.shape[1]
    model = build_model(train_spec, result["vocab_size"], device)
    n_layers, ffn_dim = model.shape.n_layers, model.shape.ffn_dim
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    root = zarr.open_group(str(tmp / "acts.zarr"), mode="w")
    started = time.time()
    compute_dtype = None  # dtype of the captured activations (bf16 under CUDA autocast): their true resolution
    for step in steps:
        state = torch.load(checkpoint_path(train_dir, step), map_location=device, weights_only=True)
        model.load_state_dict(state)
        model.eval()
        writers: dict[tuple[int, str, str], _ChunkedWriter] = {}
        for layer in range(n_layers):
            for site in sites:
                for name, idx in sets.items():
                    arr = root.create_array(
                        array_name(step, layer, site, name), shape=(len(idx), ffn_dim), dtype=dtype,
                        chunks=(min(chunk_rows, max(len(idx), 1)), ffn_dim),
                        serializer=BytesCodec(), compressors=[ZstdCodec(level=1), Crc32cCodec()],
                        dimension_names=(f"token_{name}", "unit"),  # lets xarray open a (step, layer, site) group
                        attributes={"step": step, "layer": layer, "site": site, "bucket": name,
                                    "N": int(len(idx)), "D": ffn_dim})
                    writers[(layer, site, name)] = _ChunkedWriter(arr, arr.chunks[0])
        captured, hooks = _capture(model, sites)
        try:
            with torch.no_grad():
                for start, windows in _batches(probe, int(probe_cfg.get("batch_size", 8))):
                    lo, hi = start * seq_len, (start + len(windows)) * seq_len
                    x = torch.as_tensor(windows.astype(np.int64), device=device)
                    with autocast_context(device, train_spec["train"]["precision"]):
                        model(x)
                    for (layer, site), act in captured.items():
                        compute_dtype = compute_dtype or str(act.dtype).replace("torch.", "")
                        flat = act.reshape(-1, act.shape[-1])  # (B·T, D): row r is flat position lo + r
                        for name, idx in sets.items():
                            a, b = np.searchsorted(idx, [lo, hi])
                            if b > a:
                                rows = flat[torch.as_tensor(idx[a:b] - lo, device=flat.device)]
                                writers[(layer, site, name)].append(rows.float().cpu().numpy().astype(dtype))
        finally:
            for h in hooks:
                h.remove()
        for writer in writers.values():
            writer.flush(final=True)
        print(f"activations: step {step} done ({time.time() - started:.0f}s)", flush=True)
    manifest = {
        "steps": steps, "layers": n_layers, "sites": sites, "sets": {k: int(len(v)) for k, v in sets.items()},
        "D": ffn_dim, "dtype": dtype.name, "compute_dtype": compute_dtype or "float32", "chunk_tokens": chunk_rows,
        "bytes": int(sum(len(v) for v in sets.values()) * ffn_dim * dtype.itemsize * len(steps) * n_layers
                     * len(sites)),
        "probe_fingerprint": probe.fingerprint(),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (tmp / COMPLETE).write_text("")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.rename(tmp, out_dir)
    return manifest


def is_complete(store_dir: Path) -> bool:
    return (store_dir / COMPLETE).exists() and (store_dir / "acts.zarr").is_dir()


def scratch_dir(project_root: Path, key: str) -> Path:
    """Where a run's full activations live between the activations and spectra stages.

    $SPECSCALE_SCRATCH (e.g. node-local disk on a cluster) overrides runs/.scratch/ (never a DVC output).
    """
    base = Path(os.environ["SPECSCALE_SCRATCH"]) if os.environ.get("SPECSCALE_SCRATCH") else project_root / "runs" / ".scratch"
    return base / "activations" / key


def ensure_activations(spec: dict[str, Any], store: RunStore, device: torch.device) -> Path:
    """The complete activation store of a measurement (spec: an activations or spectra run's spec.json) in scratch,
    (re)generated from the training run's checkpoints when absent (dropped, or produced on another node)."""
    scratch = scratch_dir(store.project_root, spec["measure_key"])
    if not is_complete(scratch):
        probe = ProbeSet.load(store.final_dir("buckets", spec["inputs"]["buckets"]))
        cfg = {**spec["probe"], **spec["runtime"]}
        dump_activations(store.final_dir("train", spec["inputs"]["train"]), probe, cfg, scratch, device)
    return scratch


def _copy_arrays(src: zarr.Group, dst_path: Path, names: list[str]) -> None:
    """Copy arrays (same chunks, codecs, attributes and dimension names) chunk by chunk into a new store."""
    dst = zarr.open_group(str(dst_path), mode="w")
    for name in names:
        arr = src[name]
        out = dst.create_array(name, shape=arr.shape, dtype=arr.dtype, chunks=arr.chunks,
                               compressors=arr.compressors, serializer=arr.serializer,
                               attributes=dict(arr.attrs), dimension_names=arr.metadata.dimension_names)
        for start in range(0, arr.shape[0], arr.chunks[0]):
            out[start:start + arr.chunks[0]] = arr[start:start + arr.chunks[0]]


def keep_activations(scratch: Path, work: Path, keep: str) -> dict[str, Any]:
    """Copy what `probe.keep_activations` asks for (none | post-last | all) from scratch into the run dir `work`,
    write work/manifest.json, and return the manifest."""
    manifest = json.loads((scratch / "manifest.json").read_text())
    if keep == "all":
        shutil.copytree(scratch / "acts.zarr", work / "acts.zarr")
    elif keep == "post-last" and "post" in manifest["sites"]:
        last = max(manifest["steps"])
        src = zarr.open_group(str(scratch / "acts.zarr"), mode="r")
        names = [array_name(last, layer, "post", name) for layer in range(manifest["layers"]) for name in manifest["sets"]]
        _copy_arrays(src, work / "acts.zarr", names)
    manifest["kept"] = keep
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
