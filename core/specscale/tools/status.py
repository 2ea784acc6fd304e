"""What `specscale plan` and `specscale status` print: what the study will compute, what it costs, where each run
stands (cached, queued, running, failed, partial), which cached runs were made by other code, and (`--why`) why each
run to compute is new. The runs and their keys themselves come from plan.py."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from typing import Any

from specscale.store.runs import ERROR_LOG, RunStore, read_json
from specscale.store.fingerprint import files_text
from specscale.model.gpt import ModelShape, flops_per_token
from specscale.launch.launcher import AttachedJob
from specscale.study.plan import PlannedRun, StudyPlan
from specscale.tokens.shards import GPT2_VOCAB
from specscale.model.build import kept_checkpoints, model_shape

Code = Mapping[str, Mapping[str, str]]  # stage → today's code fingerprint {file: sha256} (stages/runner.py)
ABSENT = "(absent)"
H100_BF16_PEAK_TFLOPS = 989.0  # dense bf16 peak of one H100 SXM: `plan`'s GPU-hours and `calibrate`'s MFU


def _vocab(spec: dict[str, Any]) -> int:
    return GPT2_VOCAB if spec["data"]["source"] == "bin" else spec["data"]["vocab_size"]


def run_shape(run: PlannedRun) -> ModelShape:
    """The model shape a training run trains (vocabulary padded as the trainer pads it)."""
    return model_shape(run.spec, _vocab(run.spec))


def n_kept_checkpoints(run: PlannedRun) -> int:
    """How many checkpoints a training run keeps (step 0 and the last K logged, or every logged step)."""
    t = run.spec["train"]
    return len(kept_checkpoints(t["steps"], t["log_every"], t["keep_checkpoints"], t["keep_all_checkpoints"]))


def run_costs(plan: StudyPlan, run: PlannedRun) -> dict[str, float]:
    """FLOPs of training and bytes each fan-out stage writes for one training run."""
    spec, probe = run.spec, plan.study.probe
    shape = run_shape(run)
    t = spec["train"]
    tokens = t["steps"] * t["batch_size"] * t["seq_len"]
    n_params = (shape.vocab_size * shape.d_model * 2
                + shape.n_layers * (4 * shape.d_model**2 + 2 * shape.d_model * shape.ffn_dim))
    n_ckpt = n_kept_checkpoints(run)
    sets_tokens = measured_tokens(probe, t)
    act_dtype = 2 if probe.dtype == "float16" else 4
    per_ckpt_sites = shape.n_layers * len(probe.sites)
    return {
        # one (step, layer) slice with all its sites and sets: the most the spectra stage holds in scratch at once
        "slice_bytes": len(probe.sites) * sets_tokens * shape.ffn_dim * act_dtype,
        "tokens": tokens,
        "flops": flops_per_token(shape, t["seq_len"]) * tokens,
        "ckpt_bytes": n_ckpt * n_params * 4,
        "activation_bytes": n_ckpt * per_ckpt_sites * sets_tokens * shape.ffn_dim * act_dtype,
        "spectra_bytes": n_ckpt * per_ckpt_sites * 4 * shape.ffn_dim * 8,
        "n_params": n_params,
    }


def measured_tokens(probe: Any, train: Mapping[str, Any]) -> int:
    """Tokens of all measured sets of one step (an upper bound: a skipped bucket measures none). heldout: three
    buckets of tokens_per_bucket plus the pooled set; train_batch: rank 0's share split into buckets plus the whole
    batch pooled (core/specscale/tokens/buckets.py batch_probe_set)."""
    if probe.source == "train_batch":
        batch = int(train["batch_size"]) * int(train["seq_len"])
        return (int(probe.rank_share_tokens) or batch) + batch
    return 3 * int(probe.tokens_per_bucket) + int(probe.pooled_tokens)


def _count(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def changed_runs(plan: StudyPlan, store: RunStore, code: Code | None) -> dict[str, dict[str, list[str]]]:
    """{stage: {key: what differs}} for the finished runs of the plan made by other code than today's, or from an
    input recomputed since (RunStore.changes); empty without `code`."""
    if code is None:
        return {}
    out: dict[str, dict[str, list[str]]] = {}
    for stage in plan.run_stages():
        for run in plan.stage_runs(stage):
            if store.is_done(stage, run.key) and (diff := store.changes(stage, run.key, code.get(stage))):
                out.setdefault(stage, {})[run.key] = diff
    return out


def print_plan(plan: StudyPlan, store: RunStore, gpu_tflops: float = H100_BF16_PEAK_TFLOPS, mfu: float = 0.4,
               code: Code | None = None) -> None:
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
        totals.update({k: v for k, v in cost.items() if k not in ("n_params", "slice_bytes")})
        totals["peak_scratch"] = max(totals["peak_scratch"], cost["slice_bytes"])
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
    parallel = int(study.launcher.max_parallel)
    print(f"  activations  zarr, transient             {_bytes(totals['activation_bytes'])} "
          f"(kept afterwards: {keep}; streamed one (step, layer) slice at a time)")
    print(f"  scratch      peak per run                {_bytes(totals['peak_scratch'])} "
          f"(one slice: sites × sets × D, probe.source {study.probe.source}); per node with max_parallel "
          f"{parallel}: {_bytes(totals['peak_scratch'] * parallel)}")
    print(f"  spectra      eigenvalues (float64)       {_bytes(totals['spectra_bytes'])}")
    changed = changed_runs(plan, store, code)
    for stage in plan.run_stages():
        runs = plan.stage_runs(stage)
        done = sum(store.is_done(stage, r.key) for r in runs)
        other = f" ({len(changed[stage])} made by other code)" if stage in changed else ""
        print(f"  {stage:<12} {done}/{len(runs)} cached{other}")


def run_state(store: RunStore, stage: str, key: str, records: dict[str, Any]) -> tuple[str, str]:
    """(state, detail): cached | queued/running (job id, log) | failed (log) | partial (resumable) | missing."""
    if store.is_done(stage, key):
        return "cached", ""
    record = records.get(key)
    if record:
        job = AttachedJob(record)
        phase = job.phase()  # a SLURM job waiting for resources (or requeued after preemption) is `queued`
        if phase != "ended":
            return phase, f"job {job.job_id} log {job.stderr}"
        return "failed", str(job.stderr)
    work = store.work_dir(stage, key)
    if (work / ERROR_LOG).exists():
        return "failed", str(work / ERROR_LOG)
    if work.exists():
        return "partial", str(work)
    return "missing", ""


def print_status(plan: StudyPlan, store: RunStore, code: Code | None = None, on_code_change: str = "warn") -> None:
    """Each stage's counts by state, every run not cached, and every cached run made by other code (with `code`)."""
    changed = changed_runs(plan, store, code)
    for stage in plan.run_stages():
        jobs = store.jobs_path(stage)
        records = read_json(jobs) if jobs.exists() else {}
        runs = plan.stage_runs(stage)
        states = [(r, *run_state(store, stage, r.key, records)) for r in runs]
        counts = Counter(s for _, s, _ in states)
        print(f"{stage}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        for run, state, detail in states:
            if state != "cached":
                print(f"  {state:<8} {run.label:<34} {run.key} {detail}")
        if stage in changed:
            fate = "recomputed at the next launch" if on_code_change == "recompute" else "reused"
            print(f"  {len(changed[stage])} cached made by other code ({fate}: cache.on_code_change is "
                  f"{on_code_change}): {files_text(changed[stage].values())}")
            for run in runs:
                if run.key in changed[stage]:
                    print(f"  {'other code':<10} {run.label:<34} {run.key} {', '.join(changed[stage][run.key])}")


# --- why does this run compute? -------------------------------------------------------------------------------------


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{'model.d_model': 64, ...}: mappings are walked, anything else (lists too) is one value."""
    if not isinstance(obj, Mapping):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _hashed(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a run's spec.json that enter its key, flattened (`runtime` is never hashed); JSON-normalised so
    a planned spec (tuples, inf) compares equal to its written copy."""
    return flatten(json.loads(json.dumps({k: v for k, v in spec.items() if k != "runtime"}, default=str)))


def spec_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted path, old value, new value) for every hashed field that differs; ABSENT where a side lacks it."""
    a, b = _hashed(old), _hashed(new)
    return [(k, a.get(k, ABSENT), b.get(k, ABSENT)) for k in sorted(set(a) | set(b))
            if a.get(k, ABSENT) != b.get(k, ABSENT)]


def nearest_run(candidates: Mapping[str, Mapping[str, Any]], spec: Mapping[str, Any]
                ) -> tuple[str, list[tuple[str, Any, Any]]] | None:
    """The finished run (key → its spec.json) that differs from `spec` in the fewest hashed fields, with those
    fields; ties go to the smaller key. None without candidates."""
    best = None
    for key in sorted(candidates):
        diff = spec_diff(candidates[key], spec)
        if best is None or len(diff) < len(best[1]):
            best = (key, diff)
    return best


def _value(v: Any) -> str:
    return v if v == ABSENT else json.dumps(v, default=str)


def why_lines(stage: str, run: PlannedRun, candidates: Mapping[str, Mapping[str, Any]],
              labels: Mapping[str, str] | None = None) -> list[str]:
    """Why `run` computes: its nearest finished run of the stage and each spec field that differs, or 'never
    computed'. `labels` (run key → label) names a new input run: 'inputs.train: "a…" → "b…" (adamw k=4 seed=0)'."""
    near = nearest_run(candidates, run.spec)
    if near is None:
        return [f"never computed: no finished {stage} run"]
    key, diff = near
    if not diff:
        return [f"nearest finished run {key} has the same spec: the key differs by the stage version "
                f"(stages/table.py) or by how keys are made"]
    lines = [f"nearest finished run {key} differs in {len(diff)} field{'s' if len(diff) > 1 else ''}:"]
    labels = labels or {}
    return lines + [f"  {path}: {_value(old)} → {_value(new)}" + (f" ({labels[new]})" if isinstance(new, str) and new in labels else "")
                    for path, old, new in diff]


def print_why(plan: StudyPlan, store: RunStore, code: Code | None = None, on_code_change: str = "warn") -> None:
    """For each run the next launch computes: why (why_lines); for each cached run made by other code: the files."""
    changed = changed_runs(plan, store, code)
    labels = {r.key: r.label if r.label.startswith(s) else f"{s} {r.label}"
              for s in plan.run_stages() for r in plan.stage_runs(s)}
    print(f"why (cache.on_code_change: {on_code_change}):")
    for stage in plan.run_stages():
        other = changed.get(stage, {})
        todo = [r for r in plan.stage_runs(stage) if not store.is_done(stage, r.key)
                or (on_code_change == "recompute" and r.key in other)]
        reused = [r for r in plan.stage_runs(stage) if r.key in other and on_code_change != "recompute"]
        print(f"[{stage}] {len(todo)} to compute" + (f", {len(reused)} cached made by other code" if reused else ""))
        if todo:
            candidates = {k: store.load_spec(stage, k) for k in store.finished_keys(stage)}
        for run in todo:
            print(f"  {run.label} (key {run.key})")
            reasons = ([f"made by other code, recomputed: {', '.join(other[run.key])}"] if run.key in other
                       else why_lines(stage, run, candidates, labels))
            print("\n".join(f"    {line}" for line in reasons))
        for run in reused:
            print(f"  {run.label} (key {run.key}) cached, made by other code: {', '.join(other[run.key])}")

