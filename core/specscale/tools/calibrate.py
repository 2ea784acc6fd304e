"""`specscale calibrate`: run every per-run stage of the study for a few steps on this machine, at the preset's real
shapes, in a throwaway project, and extrapolate time, device-hours and bytes of the whole study next to `specscale
plan`'s estimate. It catches what would fail at scale (out of memory, shapes, a missing shard) in minutes.

The measured study is the user's study reduced by OmegaConf overrides (`calibration_study`): one optimizer × one
width (the largest), `train.steps` = N with one logged checkpoint besides step 0, one micro-batch per step, a small
probe N and, optionally, fewer layers. The stages themselves are the pipeline's: the caller (stages/cli.py) passes a
function that runs one stage of the stage table, so this module never imports stages.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from specscale.store.runs import (ERROR_LOG, PROVENANCE_FILE, SCRATCH_DIR, SCRATCH_ENV, TRAIN_LOG_FILE, RunStore,
                                   scratch_root)
from specscale.tokens.tokenize import bin_files
from specscale.model.gpt import ModelShape, flops_per_token, probe_forward_flops
from specscale.study.plan import PlannedRun, StudyPlan
from specscale.tokens.shards import GPT2_VOCAB, write_bin_shard
from specscale.study.spec import SpecError
from specscale.tools.status import (H100_BF16_PEAK_TFLOPS, measured_tokens, n_kept_checkpoints, run_costs,
                                    run_shape)
from specscale.model.build import CHECKPOINT_DIR, kept_checkpoints

STAGES = ("tokenize", "buckets", "train", "activations", "spectra")  # the per-run stages; aggregates take seconds
SYNTHETIC_DIR = "synthetic"  # under the temporary project
SYNTHETIC_SHARD_TOKENS = 1 << 20  # tokens per synthetic shard (2 MB of uint16)
ZIPF_EXPONENT = 1.1  # synthetic token frequencies ∝ rank^-s: HEAD/MID/TAIL buckets all get tokens

RunStage = Callable[[str, StudyPlan, RunStore], int]  # (stage name, plan, store) → exit code


@dataclass
class Measured:
    stage: str
    seconds: float
    rss_bytes: int  # peak resident set of this process during the stage
    gpu_bytes: int | None  # torch.cuda.max_memory_allocated, None without CUDA
    ok: bool
    error: str = ""
    bytes: int = 0  # what the stage wrote: checkpoints (train), scratch + run dir (activations), run dir (spectra)


def calibration_study(study: DictConfig, steps: int, width: int | None, layers: int | None, micro_batch: int | None,
                      probe_tokens: int | None) -> DictConfig:
    """The user's study reduced to one run of `steps` steps at `width` (default: the largest in the sweep)."""
    cfg = study.copy()
    widths = sorted(int(w) for w in study.sweep.widths)
    cfg.sweep.optimizers = [str(study.sweep.optimizers[0])]
    cfg.sweep.widths = [int(width) if width else widths[-1]]
    cfg.sweep.seeds = [int(study.sweep.seeds[0])]
    cfg.ablations = {}
    if layers:
        cfg.model.n_layers = int(layers)
    t = cfg.train
    micro = int(micro_batch or t.micro_batch_size or t.batch_size)
    t.batch_size, t.micro_batch_size = micro, micro  # one micro-batch per step: the per-device memory of a step
    t.steps, t.log_every, t.keep_checkpoints, t.keep_all_checkpoints = steps, steps, 1, False  # checkpoints 0 and N
    t.resume_every = steps + 1
    t.diverged_ppl, t.early_stop_loss_ratio = float("inf"), 0.0  # N steps train nothing: never call it diverged
    t.val_tokens = micro * int(t.seq_len)
    p = cfg.probe
    if p.source == "train_batch":  # the probe is the training batch at the checkpoint: N follows the reduced batch
        batch_tokens = micro * int(t.seq_len)
        p.rank_share_tokens = min(int(p.rank_share_tokens) or batch_tokens, batch_tokens)
        p.min_bucket_tokens = min(int(p.min_bucket_tokens), p.rank_share_tokens // 8)
    elif probe_tokens:
        p.tokens_per_bucket, p.pooled_tokens = probe_tokens, 2 * probe_tokens
        p.min_bucket_tokens = min(int(p.min_bucket_tokens), probe_tokens // 4)
        p.chunk_tokens = min(int(p.chunk_tokens), probe_tokens)
    cfg.launcher.cluster = "debug"  # in-process, one run after another: the measurement owns this machine
    return cfg


def check_shards(study: DictConfig, root: Path) -> dict[str, list[str]]:
    """`bin` data: absolute shard patterns (so the temporary project reads the user's shards); a missing shard
    raises SpecError naming the pattern, the folder and the fix."""
    out: dict[str, list[str]] = {}
    for what in ("paths", "val_paths"):
        patterns = [str(root / p) for p in study.data[what] or []]
        if patterns:
            try:
                bin_files(patterns, root, what)
            except FileNotFoundError as err:
                raise SpecError(f"{err}: put the shards there, fix data.{what} in params.yaml, or run "
                                "`specscale calibrate --synthetic-data` to measure on synthetic shards") from None
        out[what] = patterns
    return out


def write_synthetic_shards(folder: Path, train_tokens: int, val_tokens: int, seed: int = 0) -> dict[str, list[str]]:
    """Zipf-distributed GPT-2-vocabulary `.bin` shards (the real file format and vocabulary, so the shapes are the
    real ones); returns data.paths / data.val_paths patterns."""
    rng = np.random.default_rng(seed)
    probs = 1.0 / np.arange(1, GPT2_VOCAB + 1) ** ZIPF_EXPONENT
    probs /= probs.sum()
    for name, n in (("train", train_tokens), ("val", val_tokens)):
        for i in range(max(1, -(-n // SYNTHETIC_SHARD_TOKENS))):
            size = min(SYNTHETIC_SHARD_TOKENS, n - i * SYNTHETIC_SHARD_TOKENS)
            write_bin_shard(folder / f"{name}_{i:06d}.bin", rng.choice(GPT2_VOCAB, size=size, p=probs))
    return {"paths": [str(folder / "train_*.bin")], "val_paths": [str(folder / "val_*.bin")]}


def _peak_rss() -> int:
    """Peak resident bytes since the last reset (VmHWM); Linux only, else 0."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peaks() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux ≥ 4.0)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _error_of(store: RunStore, stage: str) -> str:
    """The last line of the failed run's error.log (the exception), not the traceback."""
    logs = sorted(store.work_stage_dir(stage).glob(f"*/{ERROR_LOG}"))
    if not logs:
        return f"failed (no {ERROR_LOG}; see the stage log)"
    lines = [ln for ln in logs[-1].read_text().splitlines() if ln.strip()]
    return lines[-1] if lines else "failed"


@contextlib.contextmanager
def _quiet(log: Path) -> Iterator[None]:
    """Stage output (progress lines, a traceback) goes to the log file, not the terminal."""
    with log.open("a") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        yield


def measure_stages(plan: StudyPlan, store: RunStore, run_stage: RunStage, log: Path,
                   echo: Callable[[str], None] = print) -> list[Measured]:
    """Run STAGES in order, each timed with its peak memory; stop at the first failure."""
    out: list[Measured] = []
    for stage in STAGES:
        echo(f"[calibrate] {stage} …")
        _reset_peaks()
        started = time.perf_counter()
        try:
            with _quiet(log):
                code = run_stage(stage, plan, store)
            error = "" if code == 0 else _error_of(store, stage)
            if not error and not all(store.is_done(stage, r.key) for r in plan.stage_runs(stage)):
                error = f"no run finished (skipped?); see {log}"
        except (Exception, SystemExit) as err:  # noqa: BLE001 — a stage's failure is the measurement's result
            error = f"{type(err).__name__}: {err}"
        gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        seconds = time.perf_counter() - started
        out.append(Measured(stage, seconds, _peak_rss(), gpu, not error, error, 0 if error else _wrote(store, plan, stage)))
        if error:
            break
    return out


def _wrote(store: RunStore, plan: StudyPlan, stage: str) -> int:
    if stage not in ("train", "activations", "spectra"):
        return 0
    total = 0
    for run in plan.stage_runs(stage):
        run_dir = store.final_dir(stage, run.key)
        total += _dir_bytes(run_dir / CHECKPOINT_DIR) if stage == "train" else _dir_bytes(run_dir)
    if stage == "activations":  # the dump itself lives in scratch until spectra consumes it
        total += _dir_bytes(scratch_root(store.project_root))
    return total


def step_seconds(store: RunStore, run: PlannedRun) -> float:
    """Seconds per optimizer step from the run's log.jsonl: steps 2..N (step 1 includes start-up and the step-0
    checkpoint), or step 1 alone when N = 1."""
    entries = [json.loads(ln) for ln in (store.final_dir("train", run.key) / TRAIN_LOG_FILE).read_text().splitlines()
               if ln.strip()]
    first, last = entries[0], entries[-1]
    if last["step"] > first["step"]:
        return (last["elapsed_s"] - first["elapsed_s"]) / (last["step"] - first["step"])
    return float(first["elapsed_s"])


def forwarded_tokens(study: DictConfig) -> int:
    """Tokens the probe forwards per checkpoint: the step's batch (train_batch: its sets are subsets of it), or
    the held-out sets (each window forwarded once; an upper bound where sets share windows)."""
    if study.probe.source == "train_batch":
        return int(study.train.batch_size) * int(study.train.seq_len)
    return measured_tokens(study.probe, study.train)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


@dataclass
class Extrapolation:
    seconds: dict[str, float]  # stage → seconds on one device like this one, whole study
    train_flops_per_s: float
    tokens_per_s: float
    mfu: float | None
    plan_gpu_h: float
    plan_bytes: dict[str, float]
    spectra_phases: dict[str, float]  # phase → whole-study seconds (sum: seconds["spectra"])


def extrapolate(full: StudyPlan, small: StudyPlan, store: RunStore, measured: dict[str, Measured],
                gpu_tflops: float | None, plan_mfu: float) -> Extrapolation:
    """Whole-study seconds from the measured run (formulas in `FORMULAS`), and the plan's own estimate."""
    run = small.train[0]
    t = run.spec["train"]
    shape = run_shape(run)
    step_s = step_seconds(store, run)
    tokens_per_s = t["batch_size"] * t["seq_len"] / step_s
    rate = flops_per_token(shape, t["seq_len"]) * tokens_per_s  # training FLOP/s achieved here
    costs = [run_costs(full, r) for r in full.train]
    seconds = {"train": sum(c["flops"] for c in costs) / rate}
    seconds["activations"], phases = _fan_out_seconds(full, small, store, measured, costs)
    seconds["spectra"] = sum(phases.values()) if phases is not None else None
    for stage in ("tokenize", "buckets"):
        if stage in measured:
            seconds[stage] = measured[stage].seconds
    seconds = {stage: s for stage, s in seconds.items() if s is not None}
    peak = H100_BF16_PEAK_TFLOPS if gpu_tflops is None else gpu_tflops
    plan_gpu_h = sum(c["flops"] for c in costs) / (peak * 1e12) / plan_mfu / 3600
    keys = {"train": "ckpt_bytes", "activations": "activation_bytes", "spectra": "spectra_bytes"}
    plan_bytes = {s: sum(c[k] for c in costs) for s, k in keys.items()}
    mfu = rate / (gpu_tflops * 1e12) if gpu_tflops else None
    return Extrapolation(seconds, rate, tokens_per_s, mfu, plan_gpu_h, plan_bytes, phases or {})


def _slice_forward_flops(shape: ModelShape, seq_len: int) -> float:
    """Mean forward FLOPs per probe token over the (checkpoint, layer) slices of a run: the slice of layer l runs
    blocks 0…l (GPT.forward_through), so the mean over L layers is (L + 1)/2 blocks, no head."""
    return sum(probe_forward_flops(shape, seq_len, l) for l in range(shape.n_layers)) / shape.n_layers


def _spectra_phases(store: RunStore, small: StudyPlan) -> dict[str, float]:
    provenance = json.loads((store.final_dir("spectra", small.spectra[0].key) / PROVENANCE_FILE).read_text())
    return dict(provenance.get("phase_seconds", {}))


def _fan_out_seconds(full: StudyPlan, small: StudyPlan, store: RunStore, measured: dict[str, Measured],
                     costs: list[dict[str, float]]) -> tuple[float | None, dict[str, float] | None]:
    """Whole-study seconds of the activations stage, and of the spectra stage by phase. The spectra run records its
    phases (summed over its slices, measure/activations.py: PhaseClock); each scales per (checkpoint, layer) slice
    by its own law from the measured run m to every run r: load × params_r/params_m, forward × forwarded tokens × mean forward
    FLOPs per token of a slice (blocks 0…l for layer l, no head), write × N·D, covariance × N·D², eigh × D³; what
    is left of the stage's time (start-up, metrics, files) is per run. `costs`: run_costs of every run of
    full.train, in order."""
    run = small.train[0]
    shape_m, cost_m = run_shape(run), run_costs(small, run)
    slices_m = n_kept_checkpoints(run) * shape_m.n_layers
    n_ratio = measured_tokens(full.study.probe, full.study.train) / measured_tokens(small.study.probe,
                                                                                 small.study.train)
    fwd_ratio = forwarded_tokens(full.study) / forwarded_tokens(small.study)
    keep_dump = str(full.study.probe.keep_activations) != "none"
    acts = spectra = None
    if "activations" in measured and measured["activations"].ok:  # describes the slices; dumps only what is kept
        acts = measured["activations"].seconds * len(full.train) * (n_ratio if keep_dump else 1.0)
    if "spectra" in measured and measured["spectra"].ok:
        phases = _spectra_phases(store, small)
        per_run_rest = max(measured["spectra"].seconds - sum(phases.values()), 0.0)
        per_slice = {name: t / slices_m for name, t in phases.items()}
        spectra = {name: 0.0 for name in [*per_slice, "rest"]}
        for r, cost_r in zip(full.train, costs):
            shape_r = run_shape(r)
            d = shape_r.ffn_dim / shape_m.ffn_dim
            law = {"load": cost_r["n_params"] / cost_m["n_params"],
                   "forward": fwd_ratio * _slice_forward_flops(shape_r, r.spec["train"]["seq_len"])
                   / _slice_forward_flops(shape_m, run.spec["train"]["seq_len"]),
                   "write": n_ratio * d, "covariance": n_ratio * d ** 2, "eigh": d ** 3}
            for name, t in per_slice.items():
                spectra[name] += n_kept_checkpoints(r) * shape_r.n_layers * t * law.get(name, 1.0)
            spectra["rest"] += per_run_rest
    return acts, spectra


FORMULAS = (
    "train        Σ_runs FLOPs(run) / measured training FLOP/s   (FLOPs = flops_per_token(shape, seq) × steps × batch "
    "× seq, as `plan`)",
    "activations  t × runs   (it describes the slices; × N_probe/N_measured where probe.keep_activations dumps)",
    "spectra      Σ_runs checkpoints × layers × Σ_phases t_phase/(checkpoint·layer) × law + rest × runs; laws: "
    "load × params, forward × probe tokens × slice FLOPs/token (blocks 0…l, no head), write × N·D, covariance × N·D², "
    "eigh × D³",
)


def _fmt_s(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:,.1f} h"


def _fmt_b(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def print_report(full: StudyPlan, small: StudyPlan, measured: list[Measured], ex: Extrapolation | None,
                 store: RunStore, gpu_tflops: float | None, plan_mfu: float, notes: list[str]) -> None:
    run = small.train[0]
    t, m = run.spec["train"], run.spec["model"]
    device = f"cuda ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else \
        f"cpu ({torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f})"
    p = small.study.probe
    print(f"calibrate: preset {full.study.preset} on {device}")
    probe = (f"probe: the step's batch (rank share {p.rank_share_tokens} tokens)" if p.source == "train_batch"
             else f"probe N {p.tokens_per_bucket}/bucket + {p.pooled_tokens} pooled")
    print(f"measured run: {run.label}, {m['n_layers']} layers (preset {full.study.model.n_layers}), micro-batch "
          f"{t['batch_size']} × seq {t['seq_len']}, {t['steps']} steps, {probe}, "
          f"checkpoints {kept_checkpoints(t['steps'], t['log_every'], 1, False)}")
    for note in notes:
        print(f"note: {note}")
    print(f"{'stage':<12} {'time':>10} {'peak RSS':>10} {'peak GPU':>10}  result")
    for r in measured:
        extra = ""
        if r.ok and r.stage == "train" and ex is not None:
            mfu = f"MFU {ex.mfu:.1%} of {gpu_tflops:g} TFLOP/s" if ex.mfu is not None else "MFU n/a (CPU)"
            extra = (f"{step_seconds(store, run):.2f} s/step, {ex.tokens_per_s:,.0f} tok/s, "
                     f"{ex.train_flops_per_s / 1e9:,.1f} GFLOP/s, {mfu}")
        result = ("ok" + (f": {extra}" if extra else "")) if r.ok else f"FAILED: {r.error}"
        print(f"{r.stage:<12} {_fmt_s(r.seconds):>10} {_fmt_b(r.rss_bytes):>10} {_fmt_b(r.gpu_bytes):>10}  {result}")
    if ex is None:
        return
    n_runs = len(full.train)
    print(f"whole study ({n_runs} training runs), extrapolated to one device like this one:")
    for stage in STAGES:
        if stage in ex.seconds:
            phases = ex.spectra_phases.items() if stage == "spectra" else ()
            split = ", ".join(f"{name} {_fmt_s(t)}" for name, t in phases)
            print(f"  {stage:<12} {_fmt_s(ex.seconds[stage]):>12}" + (f"   ({split})" if split else ""))
    total = sum(ex.seconds.values())
    print(f"  {'total':<12} {_fmt_s(total):>12} = {total / 3600:,.1f} device-hours "
          f"(of which measured stages: {', '.join(s for s in STAGES if s in ex.seconds)})")
    tflops = H100_BF16_PEAK_TFLOPS if gpu_tflops is None else gpu_tflops
    print(f"  plan's estimate (train only): {ex.plan_gpu_h:,.1f} GPU-hours at {tflops:g} TFLOP/s × "
          f"{plan_mfu:.0%} MFU; measured here: {ex.seconds['train'] / 3600:,.1f} device-hours of training")
    est_small = run_costs(small, run)
    keys = {"train": "ckpt_bytes", "activations": "activation_bytes", "spectra": "spectra_bytes"}
    print("bytes: measured run (plan's estimate for it) → whole study (plan's total)")
    wrote = {r.stage: r.bytes for r in measured if r.ok}
    for stage, key in keys.items():
        got = wrote.get(stage)
        if got is None:
            continue
        if stage == "train":  # checkpoints depend on the shapes alone: scale the plan's total by measured/estimated
            study = _fmt_b(ex.plan_bytes[stage] * got / est_small[key]) if est_small[key] else "n/a"
        else:  # grow with the probe N (and where the dump happens), which the measurement reduced: the plan's stands
            study = "not extrapolated (reduced N)"
        print(f"  {stage:<12} {_fmt_b(got)} ({_fmt_b(est_small[key])}) → {study} ({_fmt_b(ex.plan_bytes[stage])})")
    print("formulas:")
    for line in FORMULAS:
        print(f"  {line}")


def run_calibration(study: DictConfig, params_path: Path, plan_fn: Callable[[DictConfig, Path], StudyPlan],
                    run_stage: RunStage, *, steps: int = 3, width: int | None = None, layers: int | None = None,
                    micro_batch: int | None = None, probe_tokens: int | None = 1024, synthetic: bool = False,
                    gpu_tflops: float | None = None, plan_mfu: float = 0.4, workdir: Path | None = None) -> int:
    """Measure in `workdir` (a new temporary project by default, removed on success and kept on failure for its
    log); returns 0, or 1 when a stage failed. Raises SpecError for a missing shard before anything runs."""
    import shutil
    import tempfile

    if steps < 1:
        raise SpecError("calibrate --steps: must be ≥ 1")
    root = params_path.resolve().parent
    if gpu_tflops is None and torch.cuda.is_available():
        gpu_tflops = H100_BF16_PEAK_TFLOPS  # `plan`'s default
    full = plan_fn(study, params_path)
    cfg = calibration_study(study, steps, width, layers, micro_batch, probe_tokens)
    bin_data = cfg.data.source == "bin"
    patterns = check_shards(study, root) if bin_data and not synthetic else None  # before anything is written
    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="specscale-calibrate-"))
    tmp.mkdir(parents=True, exist_ok=True)
    notes = []
    if layers and layers != study.model.n_layers:
        notes.append(f"{layers} of {study.model.n_layers} layers measured; time scales by FLOPs (train) and layers "
                     "(activations, spectra)")
    if bin_data:
        if synthetic:
            n = max(2 * SYNTHETIC_SHARD_TOKENS, 2 * steps * int(cfg.train.batch_size) * int(cfg.train.seq_len))
            patterns = write_synthetic_shards(tmp / SYNTHETIC_DIR, n, 2 * SYNTHETIC_SHARD_TOKENS)
            notes.append(f"synthetic Zipf GPT-2-vocabulary shards in {tmp / SYNTHETIC_DIR} (real shapes, not real text)")
        cfg.data.paths, cfg.data.val_paths = patterns["paths"], patterns.get("val_paths", [])
    else:
        if synthetic:
            notes.append("--synthetic-data applies to `bin` data; this preset's text source is tokenized as usual")
        cfg.data.paths = [str(root / p) for p in cfg.data.paths]  # `files` globs, read from the user's project
    try:
        small = plan_fn(cfg, params_path)
    except SpecError:
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    store = RunStore(tmp)
    log = tmp / "calibrate.log"
    old_scratch = os.environ.get(SCRATCH_ENV)
    os.environ[SCRATCH_ENV] = str(store.root / SCRATCH_DIR)
    try:
        measured = measure_stages(small, store, run_stage, log)
        done = {r.stage: r for r in measured}
        ok = all(r.ok for r in measured)
        ex = extrapolate(full, small, store, done, gpu_tflops, plan_mfu) if done.get("train") and done["train"].ok \
            else None
        print_report(full, small, measured, ex, store, gpu_tflops, plan_mfu, notes)
    finally:
        if old_scratch is None:
            os.environ.pop(SCRATCH_ENV, None)
        else:
            os.environ[SCRATCH_ENV] = old_scratch
    if not ok:
        print(f"calibration failed; the stage log is {log} (temporary project kept: {tmp})")
        return 1
    if workdir is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0
