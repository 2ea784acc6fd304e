"""activations stage (fan-out): probe-set FFN activations of every kept checkpoint of a trained run, to zarr.

The full activations go to scratch (runs/.scratch or $SPECSCALE_SCRATCH): they are an intermediate that the spectra
stage consumes and drops. The run directory (the DVC output, pushed to remotes) holds the manifest and only the subset
`probe.keep_activations` asks to keep: none | post-last (post site, last checkpoint) | all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from specscale.cache import RunStore
from specscale.plan import StudyPlan, measurable_runs
from specscale.probe import ensure_activations, keep_activations
from specscale.train import resolve_device


def select(plan: StudyPlan, store: RunStore) -> set[str]:
    """Measure only finished, non-diverged training runs; diverged ones are results (×), not failures."""
    return measurable_runs(plan, store, plan.activations, "activations")


def run_one(spec: dict[str, Any], work: Path, store: RunStore) -> dict[str, Any]:
    device = resolve_device("auto")
    manifest = keep_activations(ensure_activations(spec, store, device), work, spec["keep_activations"])
    print(f"activations: {manifest['bytes'] / 1e6:.1f} MB in scratch, N per set {manifest['sets']}, "
          f"D {manifest['D']}", flush=True)
    return {"device": str(device), "sets": manifest["sets"], "D": manifest["D"]}
