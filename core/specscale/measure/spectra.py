"""The spectra stage's computation: every (step, layer, site, set) activation array of one run → eigenvalues of its
centred covariance (float64, streamed) and the metrics of each spectrum (docs/science.md §5). The activations are
dumped to scratch one (step, layer) slice at a time and deleted once measured, so peak scratch is one slice.

Outputs of `measure_run` in the run dir:
  spectra.zarr  xarray Dataset: `eigenvalues` (step, layer, site, bucket, mode), `n_tokens` (step, bucket: N, which
                varies by step under probe.source train_batch; 0 where a set was skipped); attrs D, source; every
                chunk carries a CRC32C (checked_encoding)
  ranks.csv     one row per (step, layer, site, bucket): N, D, N/D, the rounding-noise floor, entropy, Rényi ranks,
                soft and hard rank

The activations' resolution sets the noise floor below which eigenvalues leave the support of the Rényi orders
α < 0.5 (`spectra.storage_noise_floor`, docs/science.md §9): the coarser of the storage dtype (the manifest's `dtype`)
and, where the manifest records it, `compute_dtype`, the dtype the probe's forward produced (bf16 under CUDA autocast:
such values stored as fp16 or fp32 still have bf16's spacing).
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from specscale.store.runs import RunStore
from specscale.measure.covariance import accumulate_array, eigenvalues
from specscale.tokens.sets import ALL_SETS
from specscale.measure.activations import PhaseClock, ProbeSource, array_name, ensure_slice, run_layout, scratch_dir
from specscale.measure.metrics import MIN_N_OVER_D, STORAGE_EPS, all_metrics, storage_noise_floor


def checked_encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    """Every array of `ds` (data and coordinates) stored with a CRC32C of each compressed chunk, checked by zarr on
    every read: a damaged chunk fails to load instead of giving other numbers. Zstd level 0 is xarray's default."""
    return {name: {"compressors": [ZstdCodec(level=0), Crc32cCodec()]} for name in ds.variables}


def _dtype_eps(name: str) -> float:
    if name not in STORAGE_EPS:
        raise ValueError(f"activation manifest: dtype {name!r} is not one of {sorted(STORAGE_EPS)}; regenerate the "
                         f"activations (delete the scratch store) with probe.dtype float16 or float32")
    return STORAGE_EPS[name]


def measure_store(acts: zarr.Group, manifest: dict[str, Any], alphas: list[float], device: torch.device,
                  clock: PhaseClock | None = None) -> tuple[xr.Dataset, pd.DataFrame]:
    """Eigenvalues (NaN where a set has < 2 tokens) and one metrics row per spectrum of an activation store.
    `clock` gets the seconds of `covariance` (reading the arrays into the streamed covariance) and `eigh`."""
    clock = clock or PhaseClock()
    steps, sites, sets, D = manifest["steps"], manifest["sites"], list(manifest["sets"]), manifest["D"]
    layers = list(manifest.get("layer_ids", range(manifest["layers"])))  # a slice store names its layers
    resolution = max((str(manifest[k]) for k in ("dtype", "compute_dtype") if k in manifest), key=_dtype_eps)
    eig = np.full((len(steps), len(layers), len(sites), len(sets), D), np.nan)
    rows = []
    t0 = time.time()
    for i, step in enumerate(steps):
        for j, layer in enumerate(layers):
            for k, site in enumerate(sites):
                for b, name in enumerate(sets):
                    arr = acts[array_name(step, layer, site, name)]
                    n = int(arr.attrs["N"])
                    if n < 2:
                        continue
                    with clock.phase("covariance"):
                        acc = accumulate_array(arr, device=device)
                        cov = acc.covariance_tensor() if device.type == "cuda" else acc.covariance()
                    with clock.phase("eigh"):
                        lam = eigenvalues(cov)
                    eig[i, j, k, b] = lam
                    # E[x_j²] per unit, uncentred (rounding noise scales with |x|): (N−1)/N·C_jj + μ_j², shape (D,)
                    var = torch.diagonal(cov).cpu().numpy() if isinstance(cov, torch.Tensor) else np.diag(cov)
                    floor = storage_noise_floor(resolution, var * (n - 1) / n + acc.mean ** 2, n)
                    rows.append({"step": step, "layer": layer, "site": site, "bucket": name, "N": n, "D": D,
                                 "N_over_D": n / D, "noise_floor": floor,
                                 **all_metrics(lam, alphas, noise_floor=floor)})
        print(f"spectra: step {step} layers {layers} done ({time.time() - t0:.0f}s)", flush=True)
    ds = xr.Dataset(
        {"eigenvalues": (("step", "layer", "site", "bucket", "mode"), eig),
         "n_tokens": (("bucket",), np.array([manifest["sets"][s] for s in sets], dtype=np.int64))},
        # Labels as variable-length strings (object dtype): zarr v3 specifies that type, while numpy's fixed-width
        # "<U4" has no v3 specification and makes zarr warn on every write.
        coords={"step": steps, "layer": layers, "site": np.array(sites, dtype=object),
                "bucket": np.array(sets, dtype=object), "mode": np.arange(D)},
        attrs={"D": D, "description": "eigenvalues of the centred covariance, descending, clamped >= 1e-12"},
    )
    return ds, pd.DataFrame(rows)


def _measure_slice(spec: dict[str, Any], store: RunStore, device: torch.device, step: int, layer: int,
                   probes: ProbeSource, alphas: list[float], clock: PhaseClock) -> tuple[xr.Dataset, pd.DataFrame]:
    """Spectra of one (step, layer) slice: dumped to scratch (or reused when a complete one is there), measured,
    deleted. A chunk that fails its checksum is never read as data: the slice is regenerated once."""
    for attempt in (1, 2):
        sl = ensure_slice(spec, store, device, step, layer, probes, clock)
        manifest = json.loads((sl / "manifest.json").read_text())
        try:
            ds, rows = measure_store(zarr.open_group(str(sl / "acts.zarr"), mode="r"), manifest, alphas, device,
                                     clock)
            break
        except Exception as err:  # a corrupt or truncated chunk: never read silently, regenerate once
            if attempt == 2:
                raise
            print(f"spectra: activation slice {sl.name} unreadable ({type(err).__name__}: {err}); regenerating",
                  flush=True)
            shutil.rmtree(sl)
    shutil.rmtree(sl, ignore_errors=True)  # consumed: scratch never holds more than one slice
    return ds, rows


def measure_run(spec: dict[str, Any], work: Path, store: RunStore, device: torch.device) -> dict[str, Any]:
    """Spectra of one run into `work`, one (step, layer) slice at a time (peak scratch: one slice). Returns the
    result fields for provenance."""
    alphas = [float(a) for a in spec["alphas"]]
    layout = run_layout(spec, store)
    steps, layers, sites, D = layout["steps"], list(range(layout["layers"])), layout["sites"], layout["D"]
    probes = ProbeSource(spec, store)
    clock = PhaseClock(device)
    parts: dict[tuple[int, int], xr.Dataset] = {}
    frames = []
    for step in steps:
        for layer in layers:
            parts[(step, layer)], rows = _measure_slice(spec, store, device, step, layer, probes, alphas, clock)
            frames.append(rows)
    # Sets can differ between steps (train_batch: a bucket too rare in one step's batch is skipped there).
    sets = [s for s in ALL_SETS if any(s in p.coords["bucket"].values for p in parts.values())]
    eig = np.full((len(steps), len(layers), len(sites), len(sets), D), np.nan)
    n_tokens = np.zeros((len(steps), len(sets)), dtype=np.int64)
    for (step, layer), part in parts.items():
        i = steps.index(step)
        for name in part.coords["bucket"].values:
            b = sets.index(name)
            eig[i, layer, :, b] = part["eigenvalues"].sel(bucket=name).values[0, 0]
            n_tokens[i, b] = int(part["n_tokens"].sel(bucket=name))
    ds = xr.Dataset(
        {"eigenvalues": (("step", "layer", "site", "bucket", "mode"), eig),
         "n_tokens": (("step", "bucket"), n_tokens)},
        # Labels as variable-length strings (object dtype): zarr v3 specifies that type (see measure_store).
        coords={"step": steps, "layer": layers, "site": np.array(sites, dtype=object),
                "bucket": np.array(sets, dtype=object), "mode": np.arange(D)},
        attrs={"D": D, "source": probes.source,
               "description": "eigenvalues of the centred covariance, descending, clamped >= 1e-12"},
    )
    ranks = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    low = ranks[ranks["N_over_D"] < MIN_N_OVER_D] if len(ranks) else ranks
    if len(low):
        warnings.warn(f"{len(low)} spectra have N < {MIN_N_OVER_D:g}·D (min N/D {low['N_over_D'].min():.2f}): "
                      "hard rank is biased when samples are scarce", stacklevel=1)
        print(f"WARNING: {len(low)} spectra with N/D < {MIN_N_OVER_D:g}", flush=True)
    ds.to_zarr(str(work / "spectra.zarr"), mode="w", consolidated=False, encoding=checked_encoding(ds))
    ranks.to_csv(work / "ranks.csv", index=False)
    shutil.rmtree(scratch_dir(store.project_root, spec["measure_key"]), ignore_errors=True)
    return {"n_spectra": int(len(ranks)),
            "min_N_over_D": float(ranks["N_over_D"].min()) if len(ranks) else math.nan,
            "phase_seconds": clock.as_dict()}  # summed over slices: what `specscale calibrate` extrapolates
