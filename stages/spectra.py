"""spectra stage (fan-out): eigenvalues and effective ranks of every activation array of a measured run
(specscale.measure.spectra). Activations are dumped to scratch from the checkpoints one (step, layer) slice at a time,
measured and deleted, so the dump and the eigendecomposition share one job and peak scratch is one slice."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from specscale.store.runs import RunStore
from specscale.measure.spectra import measure_run
from specscale.model.build import resolve_device

if TYPE_CHECKING:  # a type only: the spectra job's code (its fingerprint) does not include the study plan
    from specscale.study.plan import StudyPlan


def select(plan: StudyPlan, store: RunStore) -> set[str]:
    """Spectra of runs whose activations stage finished (it skips unfinished and diverged training runs)."""
    return {s.key for a, s in zip(plan.activations, plan.spectra) if store.is_done("activations", a.key)}


def run_one(spec: dict[str, Any], work: Path, store: RunStore) -> dict[str, Any]:
    device = resolve_device("auto")
    return {"device": str(device), **measure_run(spec, work, store, device)}
