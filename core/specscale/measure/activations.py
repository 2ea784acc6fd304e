"""Capture FFN activations of a run's checkpoints on its probe input and write them to zarr, split into sets.

Layout of a store (`acts.zarr`), one 2-D array per (checkpoint step, layer, site, set):
    step_000500/L03/post/TAIL   shape (N, D), chunked along tokens (chunk_tokens rows), dtype from the spec
with attributes {step, layer, site, bucket, N, D} on every array. Sets are HEAD, MID, TAIL (input-token frequency
buckets, skipped when too rare) and GLOBAL (all tokens pooled; the paper's CSV name). Every chunk carries a CRC32C
checksum, so a truncated or corrupted chunk fails loudly on read instead of being silently used.

The probe input (`probe.source`, ProbeSource): the fixed held-out probe set, or each step's training batch.
Scratch stays bounded: the spectra stage dumps one (step, layer) slice at a time (ensure_slice), measures it and
deletes it; the activations stage writes only what `probe.keep_activations` keeps, into its run dir.

Memory: rows are buffered per array until a full chunk is ready, so RAM holds ~ n_arrays × chunk_tokens × D values
plus one probe batch — never a whole array.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec

from specscale.tokens.buckets import ProbeSet, batch_probe_set
from specscale.tokens.sets import BUCKET_NAMES, POOLED
from specscale.model.gpt import GPT
from specscale.store.runs import RESULT_FILE, SPEC_FILE, RunStore, scratch_root
from specscale.tokens.manifest import open_splits
from specscale.tokens.shards import TokenWindows
from specscale.model.build import autocast_context, build_model, checkpoint_path

COMPLETE = "_COMPLETE"


class PhaseClock:
    """Wall seconds per named phase of a measurement, summed over every call: the probe's checkpoint load, forward
    and activation write, and the spectra stage's covariance and eigendecomposition. The spectra run records them in
    its provenance (`phase_seconds`); `specscale calibrate` scales each phase by its own law (tokens, D, D², D³) to
    extrapolate a study. On CUDA a phase ends with a device synchronisation, so its kernels count in the phase that
    launched them, not in whichever later phase first waits for them."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._sync = device is not None and torch.device(device).type == "cuda"

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            if self._sync:
                torch.cuda.synchronize()
            self.seconds[name] += time.perf_counter() - started

    def as_dict(self) -> dict[str, float]:
        """Seconds per phase, rounded to the millisecond (for provenance.json)."""
        return {name: round(seconds, 3) for name, seconds in sorted(self.seconds.items())}


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


def _capture(model: GPT, sites: list[str], layers: list[int]) -> tuple[dict[tuple[int, str], torch.Tensor], list[Any]]:
    captured: dict[tuple[int, str], torch.Tensor] = {}
    hooks = []
    for (layer, site), module in model.ffn_sites().items():
        if site in sites and layer in layers:
            def hook(_m, _inp, out, key=(layer, site)):
                captured[key] = out.detach()
            hooks.append(module.register_forward_hook(hook))
    return captured, hooks


def _batches(probe: ProbeSet, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, probe.windows.shape[0], batch_size):
        yield start, probe.windows[start:start + batch_size]


class ProbeSource:
    """The measurement input of each checkpoint step of one run (spec: an activations or spectra run's spec.json).

    heldout: the buckets stage's fixed val probe set, the same at every step. train_batch: the training batch of step
    s, drawn by the training code's own sampler (TokenWindows.sample_indices: a function of seed and step), split
    into sets by buckets.batch_probe_set. Checkpoint s holds the weights after s updates, which train on batches
    0..s−1; batch s is the one the model meets next — the paper's code logs step s's telemetry during the forward
    passes of batch s, before that step's optimizer update (and runs a forward-only pass on the next batch at the
    last step), so checkpoint s is measured on batch s.
    """

    def __init__(self, spec: dict[str, Any], store: RunStore) -> None:
        self.cfg = spec["probe"]
        self.source = self.cfg.get("source", "heldout")
        buckets_dir = store.final_dir("buckets", spec["inputs"]["buckets"])
        train_dir = store.final_dir("train", spec["inputs"]["train"])
        self.train_spec = json.loads((train_dir / SPEC_FILE).read_text())
        self.fixed: ProbeSet | None = None
        if self.source == "heldout":
            self.fixed = ProbeSet.load(buckets_dir)
            return
        tokens_dir = store.final_dir("tokenize", self.train_spec["inputs"]["tokenize"])
        train_tokens, _ = open_splits(tokens_dir)
        self.windows = TokenWindows(train_tokens, int(self.train_spec["train"]["seq_len"]))
        self.bucket_of_type = np.load(buckets_dir / "bucket_of_type.npy")

    def at(self, step: int) -> ProbeSet:
        if self.fixed is not None:
            return self.fixed
        t = self.train_spec["train"]
        indices = self.windows.sample_indices(step, int(t["batch_size"]), int(self.train_spec["seed"]))
        inputs, _ = self.windows.batch(indices)  # (B, T) int64: exactly what training step `step` consumes
        return batch_probe_set(inputs.numpy(), self.bucket_of_type, int(self.cfg.get("rank_share_tokens", 0)),
                               int(self.cfg.get("min_bucket_tokens", 0)), meta={"step": step})


def _write_store(root: zarr.Group, model: GPT, train_dir: Path, train_spec: dict[str, Any], probes: ProbeSource,
                 probe_cfg: dict[str, Any], steps: list[int], layers: list[int], sites: list[str],
                 device: torch.device, clock: PhaseClock) -> tuple[dict[int, dict[str, int]], str | None]:
    """Dump (steps × layers × sites × sets) into root; returns N per set of each step and the compute dtype.
    `clock` gets the seconds of the phases `load` (checkpoint), `forward` (the probe's batches) and `write` (rows
    out of the captured activations, into zarr)."""
    dtype = np.dtype(probe_cfg["dtype"])
    chunk_rows = int(probe_cfg["chunk_tokens"])
    ffn_dim = model.shape.ffn_dim
    compute_dtype = None  # dtype of the captured activations (bf16 under CUDA autocast): their true resolution
    n_by_step: dict[int, dict[str, int]] = {}
    for step in steps:
        probe = probes.at(step)
        sets = probe_sets(probe)
        n_by_step[step] = {k: int(len(v)) for k, v in sets.items()}
        seq_len = probe.windows.shape[1]
        with clock.phase("load"):
            state = torch.load(checkpoint_path(train_dir, step), map_location=device, weights_only=True)
            model.load_state_dict(state)
            del state  # a second copy of the weights (≈ 0.8 GB at 160M k=8) is not needed past the load
        model.eval()
        writers: dict[tuple[int, str, str], _ChunkedWriter] = {}
        for layer in layers:
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
        captured, hooks = _capture(model, sites, layers)
        try:
            with torch.no_grad():
                for start, windows in _batches(probe, int(probe_cfg.get("batch_size", 8))):
                    lo, hi = start * seq_len, (start + len(windows)) * seq_len
                    x = torch.as_tensor(windows.astype(np.int64), device=device)
                    with clock.phase("forward"), autocast_context(device, train_spec["train"]["precision"]):
                        model.forward_through(x, max(layers))  # the blocks after the last captured one never run
                    with clock.phase("write"):
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
        with clock.phase("write"):
            for writer in writers.values():
                writer.flush(final=True)
    return n_by_step, compute_dtype


def dump_activations(train_dir: Path, probes: ProbeSource, probe_cfg: dict[str, Any], out_dir: Path,
                     device: torch.device, steps: list[int] | None = None, layers: list[int] | None = None,
                     sites: list[str] | None = None, clock: PhaseClock | None = None) -> dict[str, Any]:
    """Write the activations of `steps` (default: every kept checkpoint) × `layers` (default all) × `sites` to
    out_dir/acts.zarr, crash-safe (tmp dir, then rename; out_dir/_COMPLETE marks it finished).

    Returns the manifest (also written as out_dir/manifest.json): N per set (`sets`: of the last step;
    `sets_by_step`: every step's, which differ under train_batch), D, steps, layers, sites, bytes.
    """
    train_spec = json.loads((train_dir / SPEC_FILE).read_text())
    result = json.loads((train_dir / RESULT_FILE).read_text())
    steps = steps if steps is not None else list(result["checkpoints"])
    sites = sites if sites is not None else list(probe_cfg["sites"])
    model = build_model(train_spec, result["vocab_size"], device)
    layers = layers if layers is not None else list(range(model.shape.n_layers))
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    root = zarr.open_group(str(tmp / "acts.zarr"), mode="w")
    n_by_step, compute_dtype = _write_store(root, model, train_dir, train_spec, probes, probe_cfg, steps, layers,
                                            sites, device, clock or PhaseClock())
    manifest = _manifest(probe_cfg, steps, layers, sites, n_by_step, model.shape.ffn_dim, probes)
    manifest["compute_dtype"] = compute_dtype or "float32"
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (tmp / COMPLETE).write_text("")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.rename(tmp, out_dir)
    return manifest


def _manifest(probe_cfg: dict[str, Any], steps: list[int], layers: list[int], sites: list[str],
              n_by_step: dict[int, dict[str, int]], ffn_dim: int, probes: ProbeSource) -> dict[str, Any]:
    dtype = np.dtype(probe_cfg["dtype"])
    per_step = [sum(n.values()) * ffn_dim * dtype.itemsize * len(layers) * len(sites) for n in n_by_step.values()]
    fixed = probes.fixed
    return {
        "steps": steps, "layers": len(layers), "layer_ids": layers, "sites": sites,
        "sets": n_by_step[steps[-1]], "sets_by_step": {str(s): n for s, n in n_by_step.items()},
        "D": ffn_dim, "dtype": dtype.name, "chunk_tokens": int(probe_cfg["chunk_tokens"]),
        "bytes": int(sum(per_step)), "source": probes.source,
        "probe_fingerprint": fixed.fingerprint() if fixed is not None else None,
    }


def run_layout(spec: dict[str, Any], store: RunStore) -> dict[str, Any]:
    """What a measurement covers, without a forward pass: kept steps, layers, sites, D (from the training run)."""
    train_dir = store.final_dir("train", spec["inputs"]["train"])
    train_spec = json.loads((train_dir / SPEC_FILE).read_text())
    result = json.loads((train_dir / RESULT_FILE).read_text())
    return {"steps": list(result["checkpoints"]), "layers": int(train_spec["model"]["n_layers"]),
            "sites": list(spec["probe"]["sites"]), "D": int(result["ffn_dim"])}


def describe_measurement(spec: dict[str, Any], store: RunStore) -> dict[str, Any]:
    """The manifest of a measurement (N per set and step, D, bytes a full dump would take), no forward pass."""
    layout = run_layout(spec, store)
    probes = ProbeSource(spec, store)
    n_by_step = {s: {k: int(len(v)) for k, v in probe_sets(probes.at(s)).items()} for s in layout["steps"]}
    return _manifest({**spec["probe"], **spec["runtime"]}, layout["steps"], list(range(layout["layers"])),
                     layout["sites"], n_by_step, layout["D"], probes)


def is_complete(store_dir: Path) -> bool:
    return (store_dir / COMPLETE).exists() and (store_dir / "acts.zarr").is_dir()


def scratch_dir(project_root: Path, key: str) -> Path:
    """Where a run's activation slices live while the spectra stage measures them (one slice at a time).

    $SPECSCALE_SCRATCH (e.g. node-local disk on a cluster) overrides runs/.scratch/ (never a DVC output).
    """
    return scratch_root(project_root) / "activations" / key


def slice_dir(project_root: Path, key: str, step: int, layer: int) -> Path:
    return scratch_dir(project_root, key) / f"step_{step:06d}_L{layer:02d}"


def ensure_slice(spec: dict[str, Any], store: RunStore, device: torch.device, step: int, layer: int,
                 probes: ProbeSource | None = None, clock: PhaseClock | None = None) -> Path:
    """The complete activation store of one (step, layer) of a measurement — every site and set — in scratch,
    generated from the checkpoint when absent (a complete slice left by an interrupted job is reused). Peak scratch
    is this slice: sites × Σ_sets N × D × itemsize bytes."""
    out = slice_dir(store.project_root, spec["measure_key"], step, layer)
    if not is_complete(out):
        probes = probes or ProbeSource(spec, store)
        cfg = {**spec["probe"], **spec["runtime"]}
        dump_activations(store.final_dir("train", spec["inputs"]["train"]), probes, cfg, out, device,
                         steps=[step], layers=[layer], clock=clock)
    return out


def keep_activations(spec: dict[str, Any], store: RunStore, work: Path, device: torch.device) -> dict[str, Any]:
    """Write what `probe.keep_activations` asks for (none | post-last | all) into the run dir `work`, straight from
    the checkpoints (nothing else goes to scratch: the spectra stage measures slice by slice), plus
    work/manifest.json; returns the manifest."""
    keep = spec["keep_activations"]
    manifest = describe_measurement(spec, store)
    if keep == "all" or (keep == "post-last" and "post" in manifest["sites"]):
        steps, sites = (None, None) if keep == "all" else ([max(manifest["steps"])], ["post"])
        dumped = dump_activations(store.final_dir("train", spec["inputs"]["train"]), ProbeSource(spec, store),
                                  {**spec["probe"], **spec["runtime"]}, work / "kept", device, steps=steps,
                                  sites=sites)
        os.rename(work / "kept" / "acts.zarr", work / "acts.zarr")
        shutil.rmtree(work / "kept")
        manifest["compute_dtype"] = dumped["compute_dtype"]
        manifest["kept_bytes"] = dumped["bytes"]
    manifest["kept"] = keep
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
