"""Every run of every stage, with its key, derived from the resolved study spec in one place.

Stages, `specscale plan`, `status` and `gc` all read this, so they can never disagree about what a run's key is.
Each stage's version comes from the stage table (stages.STAGES) and enters its keys: bumping it when the
stage's code changes what it writes changes its keys and every key downstream.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from specscale.store.runs import RESULT_FILE, RunStore, read_json, run_key
from specscale.study.spec import to_container
from specscale.study.sweep import SPEED_ONLY_TRAIN_FIELDS, RunPoint, drop_key_neutral_defaults, expand_sweep


@dataclass
class PlannedRun:
    stage: str
    key: str
    spec: dict[str, Any]
    label: str
    point: RunPoint | None = None  # the training run this run descends from
    inputs: dict[str, str] = field(default_factory=dict)  # input stage → key


@dataclass
class StudyPlan:
    study: DictConfig
    tokenize: PlannedRun
    buckets: PlannedRun
    train: list[PlannedRun]
    activations: list[PlannedRun]
    spectra: list[PlannedRun]

    @classmethod
    def run_stages(cls) -> tuple[str, ...]:
        """The stages that own run directories (runs/<stage>/<key>/), in pipeline order."""
        return tuple(f.name for f in fields(cls) if f.name != "study")

    def stage_runs(self, stage: str) -> list[PlannedRun]:
        value = getattr(self, stage)
        return value if isinstance(value, list) else [value]

    def keys(self, stage: str) -> set[str]:
        return {run.key for run in self.stage_runs(stage)}


def _planned(versions: Mapping[str, int], stage: str, spec: dict, inputs: dict[str, str], label: str,
             point: RunPoint | None = None, runtime: dict | None = None) -> PlannedRun:
    """`runtime` rides in spec.json for the job to read but is not hashed: it changes speed, not results."""
    key = run_key(stage, versions[stage], spec, inputs)
    full = {**spec, "inputs": inputs, "stage": stage, "runtime": runtime or {}}
    return PlannedRun(stage, key, full, label, point, inputs)


def probe_spec(study: DictConfig) -> dict[str, Any]:
    """Probe fields that change the activations (not what is kept afterwards)."""
    probe = to_container(study.probe)
    spec = {k: probe[k] for k in ("sites", "dtype", "chunk_tokens", "source")}
    if probe["source"] == "train_batch":  # the held-out set's own fields live in the buckets key
        spec.update({k: probe[k] for k in ("rank_share_tokens", "min_bucket_tokens")})
    return spec


def make_plan(study: DictConfig, versions: Mapping[str, int], where: Path | str = "params.yaml") -> StudyPlan:
    """Every run of the study; `versions` maps each stage to its version (the stage table's)."""
    data = drop_key_neutral_defaults({"data": to_container(study.data)})["data"]
    tokenize = _planned(versions, "tokenize", {"data": data}, {}, f"tokenize {data['source']}")
    probe = to_container(study.probe)
    bucket_spec = {
        "seq_len": int(study.train.seq_len),
        "tokens_per_bucket": probe["tokens_per_bucket"],
        "pooled_tokens": probe["pooled_tokens"],
        "min_bucket_tokens": probe["min_bucket_tokens"],
        "edges": probe["bucket_edges"], "rule": probe["bucket_rule"], "vocab_multiple": int(study.model.vocab_multiple),
    }
    buckets = _planned(versions, "buckets", bucket_spec, {"tokenize": tokenize.key}, "buckets")
    runtime = {k: to_container(study.train)[k] for k in SPEED_ONLY_TRAIN_FIELDS}
    probe_runtime = {"batch_size": probe["batch_size"]}
    train, activations, spectra = [], [], []
    for point in expand_sweep(study, where):
        t = _planned(versions, "train", point.spec, {"tokenize": tokenize.key}, point.label, point, runtime=runtime)
        train.append(t)
        # The measurement (which activations, on which probe set) has its own key: the scratch store is named by
        # it, and both the activations run (which adds what to keep) and the spectra run (which adds the α grid)
        # derive from it, so changing what is kept never recomputes a spectrum.
        inputs = {"train": t.key, "buckets": buckets.key}
        measure_key = run_key("measure", versions["activations"], probe_spec(study), inputs)
        activations.append(_planned(versions, "activations", {"probe": probe_spec(study), "measure_key": measure_key,
                                                    "keep_activations": probe["keep_activations"]},
                                    inputs, point.label, point, runtime=probe_runtime))
        spectra.append(_planned(versions, "spectra", {"probe": probe_spec(study), "measure_key": measure_key,
                                            "alphas": [float(a) for a in probe["alphas"]]},
                                inputs, point.label, point, runtime=probe_runtime))
    return StudyPlan(study, tokenize, buckets, train, activations, spectra)


def measurable_runs(plan: StudyPlan, store: RunStore, runs: list[PlannedRun], stage: str) -> set[str]:
    """Keys of `runs` (one per training run, in plan.train order) whose training run finished without diverging;
    diverged runs are results (the paper's ×), never measured."""
    keys = set()
    for train_run, run in zip(plan.train, runs):
        if not store.is_done("train", train_run.key):
            print(f"[{stage}] skip {train_run.label}: training not finished")
            continue
        result = read_json(store.final_dir("train", train_run.key) / RESULT_FILE)
        if result["diverged"]:
            print(f"[{stage}] skip {train_run.label}: diverged ({result['diverged_reason']})")
            continue
        keys.add(run.key)
    return keys
