"""activations stage (fan-out): probe-set FFN activations of every kept checkpoint of a trained run, to zarr.

Nothing goes to scratch here: the spectra stage dumps and measures one (step, layer) slice at a time. The run
directory (the DVC output, pushed to remotes) holds the manifest (N per set and step, D) and only the activations
`probe.keep_activations` asks to keep: none | post-last (post site, last checkpoint) | all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from specscale.store.runs import RunStore
from specscale.study.plan import StudyPlan, measurable_runs
from specscale.measure.activations import keep_activations
from specscale.model.build import resolve_device


def select(plan: StudyPlan, store: RunStore) -> set[str]:
    """Measure only finished, non-diverged training runs; diverged ones are results (×), not failures."""
    return measurable_runs(plan, store, plan.activations, "activations")


def run_one(spec: dict[str, Any], work: Path, store: RunStore) -> dict[str, Any]:
    device = resolve_device("auto")
    manifest = keep_activations(spec, store, work, device)
    print(f"activations: kept {manifest['kept']} ({manifest.get('kept_bytes', 0) / 1e6:.1f} MB), N per set "
          f"{manifest['sets']} (last step), D {manifest['D']}", flush=True)
    return {"device": str(device), "sets": manifest["sets"], "D": manifest["D"]}
