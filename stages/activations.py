"""activations stage (fan-out): probe-set FFN activations of every kept checkpoint of a trained run, to zarr.

The full activations go to scratch (runs/.scratch or $SPECSCALE_SCRATCH): they are an intermediate that the spectra
stage consumes and drops. The run directory (the DVC output, pushed to remotes) holds the manifest and only the subset
`probe.keep_activations` asks to keep: none | post-last (post site, last checkpoint) | all.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import zarr

from specscale.buckets import ProbeSet
from specscale.cache import RunStore
from specscale.plan import StudyPlan
from specscale.probe import dump_activations, is_complete, scratch_dir
from specscale.train import resolve_device


def prepare(plan: StudyPlan, store: RunStore) -> set[str]:
    """Measure only finished, non-diverged training runs; diverged ones are results (×), not failures."""
    keys = set()
    for train_run, act_run in zip(plan.train, plan.activations):
        if not store.is_done("train", train_run.key):
            print(f"[activations] skip {train_run.label}: training not finished")
            continue
        result = json.loads((store.final_dir("train", train_run.key) / "result.json").read_text())
        if result["diverged"]:
            print(f"[activations] skip {train_run.label}: diverged ({result['diverged_reason']})")
            continue
        keys.add(act_run.key)
    return keys


def ensure_activations(spec: dict[str, Any], store: RunStore, device) -> Path:
    """The run's complete activation store in scratch, (re)generating it from the checkpoints when absent."""
    scratch = scratch_dir(store.project_root, spec["measure_key"])
    if not is_complete(scratch):
        probe = ProbeSet.load(store.final_dir("buckets", spec["inputs"]["buckets"]))
        cfg = {**spec["probe"], **spec["runtime"]}
        dump_activations(store.final_dir("train", spec["inputs"]["train"]), probe, cfg, scratch, device)
    return scratch


def _copy_subset(src: zarr.Group, dst_path: Path, names: list[str]) -> None:
    dst = zarr.open_group(str(dst_path), mode="w")
    for name in names:
        arr = src[name]
        out = dst.create_array(name, shape=arr.shape, dtype=arr.dtype, chunks=arr.chunks,
                               compressors=arr.compressors, serializer=arr.serializer,
                               attributes=dict(arr.attrs), dimension_names=arr.metadata.dimension_names)
        for start in range(0, arr.shape[0], arr.chunks[0]):
            out[start:start + arr.chunks[0]] = arr[start:start + arr.chunks[0]]


def run_one(spec: dict[str, Any], work: Path, store: RunStore) -> dict[str, Any]:
    device = resolve_device("auto")
    scratch = ensure_activations(spec, store, device)
    manifest = json.loads((scratch / "manifest.json").read_text())
    keep = spec["keep_activations"]
    if keep == "all":
        shutil.copytree(scratch / "acts.zarr", work / "acts.zarr")
    elif keep == "post-last" and "post" in manifest["sites"]:
        last = max(manifest["steps"])
        src = zarr.open_group(str(scratch / "acts.zarr"), mode="r")
        names = [f"step_{last:06d}/L{layer:02d}/post/{name}"
                 for layer in range(manifest["layers"]) for name in manifest["sets"]]
        _copy_subset(src, work / "acts.zarr", names)
    manifest["kept"] = keep
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(f"activations: {manifest['bytes'] / 1e6:.1f} MB in scratch, N per set {manifest['sets']}, "
          f"D {manifest['D']}", flush=True)
    return {"device": str(device), "sets": manifest["sets"], "D": manifest["D"]}
