"""What `specscale plan` and `specscale status` print: what the study will compute, what it costs, and where each run
stands (cached, queued, running, failed, partial). The runs and their keys themselves come from plan.py."""

from __future__ import annotations

from collections import Counter
from typing import Any

from specscale.cache import RunStore, read_json
from specscale.model import flops_per_token
from specscale.launch import _Attached
from specscale.plan import PlannedRun, StudyPlan
from specscale.shards import GPT2_VOCAB
from specscale.train import kept_checkpoints, model_shape



def _vocab(spec: dict[str, Any]) -> int:
    return GPT2_VOCAB if spec["data"]["source"] == "bin" else spec["data"]["vocab_size"]


def run_costs(plan: StudyPlan, run: PlannedRun) -> dict[str, float]:
    """FLOPs of training and bytes each fan-out stage writes for one training run."""
    spec, probe = run.spec, plan.study.probe
    shape = model_shape(spec, _vocab(spec))
    t = spec["train"]
    tokens = t["steps"] * t["batch_size"] * t["seq_len"]
    n_params = (shape.vocab_size * shape.d_model * 2
                + shape.n_layers * (4 * shape.d_model**2 + 2 * shape.d_model * shape.ffn_dim))
    n_ckpt = len(kept_checkpoints(t["steps"], t["log_every"], t["keep_checkpoints"], t["keep_all_checkpoints"]))
    sets_tokens = 3 * probe.tokens_per_bucket + probe.pooled_tokens
    act_dtype = 2 if probe.dtype == "float16" else 4
    per_ckpt_sites = shape.n_layers * len(probe.sites)
    return {
        "tokens": tokens,
        "flops": flops_per_token(shape, t["seq_len"]) * tokens,
        "ckpt_bytes": n_ckpt * n_params * 4,
        "activation_bytes": n_ckpt * per_ckpt_sites * sets_tokens * shape.ffn_dim * act_dtype,
        "spectra_bytes": n_ckpt * per_ckpt_sites * 4 * shape.ffn_dim * 8,
        "n_params": n_params,
    }


def _count(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def print_plan(plan: StudyPlan, store: RunStore, gpu_tflops: float = 989.0, mfu: float = 0.4) -> None:
    study = plan.study
    print(f"preset {study.preset}: {len(plan.train)} training runs "
          f"({sum('main' in r.point.arms for r in plan.train)} in the main sweep)")
    header = f"{'arm':<22} {'run':<34} {'params':>8} {'tokens':>9} {'PFLOP':>9} {'GPU-h':>7} {'train':>7}"
    print(header)
    print("-" * len(header))
    totals: Counter = Counter()
    for run in plan.train:
        cost = run_costs(plan, run)
        gpu_h = cost["flops"] / (gpu_tflops * 1e12 * mfu) / 3600
        totals.update({k: v for k, v in cost.items() if k != "n_params"})
        totals["gpu_h"] += gpu_h
        state = "cached" if store.is_done("train", run.key) else "to run"
        print(f"{','.join(run.point.arms):<22} {run.label:<34} {cost['n_params'] / 1e6:>7.1f}M "
              f"{_count(cost['tokens']):>9} {cost['flops'] / 1e15:>9.1f} {gpu_h:>7.1f} {state:>7}")
    print("-" * len(header))
    print(f"total: {totals['flops'] / 1e15:,.0f} PFLOP, ≈ {totals['gpu_h']:,.0f} GPU-hours "
          f"at {gpu_tflops:g} TFLOP/s × {mfu:.0%} MFU")
    keep = study.probe.keep_activations
    print("bytes written by stage:")
    print(f"  train        checkpoints (weights only)  {_bytes(totals['ckpt_bytes'])}")
    print(f"  activations  zarr, transient             {_bytes(totals['activation_bytes'])} "
          f"(kept afterwards: {keep}; peak on one node is one run's share)")
    print(f"  spectra      eigenvalues (float64)       {_bytes(totals['spectra_bytes'])}")
    for stage in plan.run_stages():
        runs = plan.stage_runs(stage)
        done = sum(store.is_done(stage, r.key) for r in runs)
        print(f"  {stage:<12} {done}/{len(runs)} cached")


def run_state(store: RunStore, stage: str, key: str, records: dict[str, Any]) -> tuple[str, str]:
    """(state, detail): cached | queued/running (job id, log) | failed (log) | partial (resumable) | missing."""
    if store.is_done(stage, key):
        return "cached", ""
    record = records.get(key)
    if record:
        job = _Attached(record)
        phase = job.phase()  # a SLURM job waiting for resources (or requeued after preemption) is `queued`
        if phase != "ended":
            return phase, f"job {job.job_id} log {job.stderr}"
        return "failed", str(job.stderr)
    work = store.work_dir(stage, key)
    if (work / "error.log").exists():
        return "failed", str(work / "error.log")
    if work.exists():
        return "partial", str(work)
    return "missing", ""


def print_status(plan: StudyPlan, store: RunStore) -> None:
    for stage in plan.run_stages():
        jobs = store.root / ".jobs" / f"{stage}.json"
        records = read_json(jobs) if jobs.exists() else {}
        runs = plan.stage_runs(stage)
        states = [(r, *run_state(store, stage, r.key, records)) for r in runs]
        counts = Counter(s for _, s, _ in states)
        print(f"{stage}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        for run, state, detail in states:
            if state != "cached":
                print(f"  {state:<8} {run.label:<34} {run.key} {detail}")

