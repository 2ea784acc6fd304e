"""How long a study takes on N GPUs, with a barrier between stages and with per-run chains (`specscale plan --gpus`).

Each training run r brings three jobs: train_r, then activations_r, then spectra_r (each needs the one before it).
Their durations come from FLOPs at the plan's throughput (peak TFLOP/s × MFU, as `plan`'s GPU-hours):
  train        flops_per_token(shape, seq) × steps × batch × seq            (tools/status.py run_costs)
  activations  no GPU work of its own here (the spectra stage runs the probe's forward slice by slice): 0
  spectra      per kept checkpoint and layer: the probe forward through blocks 0…l of every measured token
               (probe_forward_flops), and per site and set a covariance (2·N·D² FLOPs) and an eigendecomposition
               (EIGH_FLOPS_PER_D3 · D³)
The spectra figure is a floor: eigh and the fp64 covariance do not reach the bf16 matmul rate. `specscale calibrate`
measures every stage at the preset's real shapes; this module only compares two schedules on the same durations.

Two schedules, each a greedy list schedule (a free GPU takes the next job; no GPU runs two jobs):
  barrier  every train job (in plan order), then every activations job once the last train job ended, then every
           spectra job once the last activations job ended: what one `dvc repro` does with fan-out stages today.
  chains   a run's activations job is ready when its train job ends, its spectra job when its activations job ends;
           a free GPU takes the next train job while any is left (the train array is submitted first), then the
           ready job of the furthest stage (spectra, then activations, each oldest first), else waits for the next
           job to become ready. (Measuring before training is all started can delay a long training run and lengthen
           the study: on the tiny preset at 4 GPUs, spectra-first took 5.9 h where the barrier took 5.7 h.)
Idle GPU-hours: N × makespan − Σ job hours (GPUs waiting at a barrier or at the end of the study).
The last column orders the training runs longest first (chains as above), the classic remedy for a tail of unequal
jobs; the launchers submit in plan order today.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from specscale.model.gpt import probe_forward_flops
from specscale.study.plan import StudyPlan
from specscale.tools.status import measured_tokens, n_kept_checkpoints, run_costs, run_shape

CHAIN = ("train", "activations", "spectra")  # the per-run stages, in order
EIGH_FLOPS_PER_D3 = 9.0  # symmetric eigendecomposition with eigenvectors (tridiagonal reduction + divide and conquer)


@dataclass(frozen=True)
class Schedule:
    gpus: int
    makespan_h: float  # from the first job's start to the last job's end
    busy_h: float  # Σ job hours
    first_spectra_start_h: float  # when the first spectra job starts (barrier: after every train job)

    @property
    def idle_h(self) -> float:
        return self.gpus * self.makespan_h - self.busy_h


def _check(durations: Sequence[Sequence[float]], gpus: int) -> None:
    if gpus < 1:
        raise ValueError(f"--gpus must be ≥ 1, got {gpus}")
    for i, run in enumerate(durations):
        if len(run) != len(CHAIN) or min(run) < 0:
            raise ValueError(f"run {i}: need {len(CHAIN)} non-negative durations ({', '.join(CHAIN)}), got {run}")


def barrier_schedule(durations: Sequence[Sequence[float]], gpus: int) -> Schedule:
    """durations[r] = (train_h, activations_h, spectra_h) of run r, in plan order."""
    _check(durations, gpus)
    start, first_spectra = 0.0, 0.0
    for stage in range(len(CHAIN)):
        if stage == len(CHAIN) - 1:
            first_spectra = start
        free = [start] * gpus  # a heap of the times each GPU becomes free
        end = start
        for run in durations:
            t = heapq.heappop(free)
            heapq.heappush(free, t + run[stage])
            end = max(end, t + run[stage])
        start = end
    return Schedule(gpus, start, sum(map(sum, durations)), first_spectra)


def chain_schedule(durations: Sequence[Sequence[float]], gpus: int) -> Schedule:
    """The same jobs as barrier_schedule, each run's stages chained (see the module docstring)."""
    _check(durations, gpus)
    free = [0.0] * gpus
    ready: list[tuple[int, float, int]] = []  # (−stage, ready time, run): the furthest stage first, then oldest
    next_train, end, first_spectra = 0, 0.0, None
    remaining = len(durations) * len(CHAIN)
    while remaining:
        t = heapq.heappop(free)
        runnable = [job for job in ready if job[1] <= t]
        if next_train < len(durations):
            job = (0, t, next_train)
            next_train += 1
        elif runnable:
            job = min(runnable)
        else:  # nothing to start now: this GPU waits for the next job to become ready
            job = min(ready, key=lambda j: (j[1], j[0]))
            t = job[1]
        if job in ready:
            ready.remove(job)
        stage, run = -job[0], job[2]
        if stage == len(CHAIN) - 1 and first_spectra is None:
            first_spectra = t
        done = t + durations[run][stage]
        if stage + 1 < len(CHAIN):
            ready.append((-(stage + 1), done, run))
        heapq.heappush(free, done)
        end = max(end, done)
        remaining -= 1
    return Schedule(gpus, end, sum(map(sum, durations)), first_spectra or 0.0)


def spectra_flops(plan: StudyPlan, run_index: int) -> float:
    """FLOPs of one run's spectra job (module docstring): per kept checkpoint and layer l, the probe forward through
    blocks 0…l of every measured token, and per site and set a covariance and an eigendecomposition."""
    run = plan.train[run_index]
    t, probe = run.spec["train"], plan.study.probe
    shape = run_shape(run)
    n_ckpt = n_kept_checkpoints(run)
    tokens = measured_tokens(probe, t)  # all sets of one step, summed
    n_sets, d = 4, shape.ffn_dim  # HEAD, MID, TAIL and the pooled set
    per_layer = [tokens * probe_forward_flops(shape, t["seq_len"], layer)
                 + len(probe.sites) * (2.0 * tokens * d * d + n_sets * EIGH_FLOPS_PER_D3 * d ** 3)
                 for layer in range(shape.n_layers)]
    return n_ckpt * sum(per_layer)


def run_durations(plan: StudyPlan, gpu_tflops: float, mfu: float) -> list[tuple[float, float, float]]:
    """(train, activations, spectra) hours of every training run of the plan, in plan order (module docstring)."""
    rate = gpu_tflops * 1e12 * mfu * 3600  # FLOPs per GPU-hour
    return [(run_costs(plan, run)["flops"] / rate, 0.0, spectra_flops(plan, i) / rate)
            for i, run in enumerate(plan.train)]


def print_makespans(plan: StudyPlan, gpus: Sequence[int], gpu_tflops: float, mfu: float) -> None:
    """The study's makespan on each GPU count, with stage barriers and with per-run chains."""
    durations = run_durations(plan, gpu_tflops, mfu)
    train_h, spectra_h = sum(d[0] for d in durations), sum(d[2] for d in durations)
    print(f"makespan on N GPUs ({len(durations)} runs: train {train_h:,.1f} GPU-h, spectra ≥ {spectra_h:,.1f} GPU-h "
          f"at {gpu_tflops:g} TFLOP/s × {mfu:.0%} MFU; greedy list schedules, tools/makespan.py)")
    longest_first = sorted(durations, key=lambda d: -d[0])
    print(f"{'GPUs':>6} {'barrier h':>10} {'idle GPU-h':>11} {'chains h':>9} {'idle GPU-h':>11} {'saved':>6} "
          f"{'first spectra':>22} {'chains, longest first h':>24}")
    for n in gpus:
        barrier, chains = barrier_schedule(durations, n), chain_schedule(durations, n)
        saved = 1 - chains.makespan_h / barrier.makespan_h if barrier.makespan_h else 0.0
        first = f"{barrier.first_spectra_start_h:,.1f} h → {chains.first_spectra_start_h:,.1f} h"
        print(f"{n:>6} {barrier.makespan_h:>10,.1f} {barrier.idle_h:>11,.1f} {chains.makespan_h:>9,.1f} "
              f"{chains.idle_h:>11,.1f} {saved:>6.1%} {first:>22} "
              f"{chain_schedule(longest_first, n).makespan_h:>24,.1f}")
