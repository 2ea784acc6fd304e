"""The stage table: every pipeline stage once, with its kind, version and entry point. The `specscale` command,
the study plan (versions enter run keys) and the launcher (which receives the entry point) all read it; dvc.yaml
lists the same stages in the same order (tests/test_layering.py checks it, and that each stage's code deps are
complete).

Kinds:
  single     one run per study (tokenize, buckets), run in the calling process
  fan_out    one run per training run, submitted through the launcher (train, activations, spectra)
  aggregate  reads every run, writes results/ or report/ (fit, compare, report)
Bump a stage's version when its code changes what it writes: its keys, and every key downstream, change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stages import activations, buckets, compare, fit, report, spectra, tokenize, train


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str  # single | fan_out | aggregate
    version: int
    entry: Callable[..., Any]  # single/fan_out: run_one(spec, work, store) -> dict; aggregate: main(plan, store) -> int
    select: Callable[..., set[str]] | None = None  # fan_out: (plan, store) → keys whose inputs are ready, or None: all
    module: str = ""  # the stage script (for the dvc.yaml deps check)
    # aggregate: the stages whose finished runs it reads as data, verified in full first (launch/inputs.py); fan-out
    # and single stages read their spec's `inputs` instead
    reads: tuple[str, ...] = ()


STAGES: tuple[Stage, ...] = (
    Stage("tokenize", "single", 1, tokenize.run_one, module=tokenize.__name__),
    Stage("buckets", "single", 1, buckets.run_one, module=buckets.__name__),
    Stage("train", "fan_out", 1, train.run_one, module=train.__name__),
    Stage("activations", "fan_out", 2, activations.run_one, activations.select, module=activations.__name__),
    Stage("spectra", "fan_out", 3, spectra.run_one, spectra.select, module=spectra.__name__),
    # fit also reads the training runs' result.json and logs: small files, digested whole by the train stage's check
    Stage("fit", "aggregate", 1, fit.main, module=fit.__name__, reads=("spectra",)),
    Stage("compare", "aggregate", 1, compare.main, module=compare.__name__, reads=("spectra",)),
    Stage("report", "aggregate", 1, report.main, module=report.__name__),
)
BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
# Run keys hash the version of the stage that made them (aggregate stages own no runs; their version is informative).
# spectra 2: ranks.csv gains `noise_floor`; orders α < 0.5 cut storage-rounding noise (docs/science.md §9).
# activations 2 / spectra 3: probe.source (train_batch: each step's training batch); spectra dumps and measures one
# (step, layer) slice at a time; n_tokens is (step, bucket); the activations run holds only what it keeps.
VERSIONS: dict[str, int] = {s.name: s.version for s in STAGES}
