"""The makespan of a study on N GPUs (tools/makespan.py): both schedules on a hand-worked example, and
`specscale plan --gpus` on a real preset."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import listing, make_project
from specscale.tools.makespan import barrier_schedule, chain_schedule

# (train, activations, spectra) hours of three runs: one long training run and two short ones
RUNS = [(4.0, 0.0, 1.0), (1.0, 0.0, 1.0), (1.0, 0.0, 1.0)]


def test_barrier_waits_for_the_longest_training_run() -> None:
    # 2 GPUs: train 0 on A (0–4); trains 1, 2 on B (0–1, 1–2); spectra start at the barrier (4): A 4–5, B 4–5, 5–6
    s = barrier_schedule(RUNS, 2)
    assert (s.makespan_h, s.first_spectra_start_h, s.busy_h, s.idle_h) == (6.0, 4.0, 9.0, 3.0)


def test_chains_measure_a_run_as_soon_as_it_trained() -> None:
    # B: train 1 (0–1), train 2 (1–2), spectra 1 (2–3), spectra 2 (3–4); A: train 0 (0–4), its spectra (4–5)
    s = chain_schedule(RUNS, 2)
    assert (s.makespan_h, s.first_spectra_start_h, s.busy_h, s.idle_h) == (5.0, 2.0, 9.0, 1.0)


def test_one_gpu_runs_everything_back_to_back() -> None:
    for schedule in (barrier_schedule, chain_schedule):
        s = schedule(RUNS, 1)
        assert s.makespan_h == s.busy_h == 9.0 and s.idle_h == 0.0


@pytest.mark.parametrize("bad, message", [((RUNS, 0), "--gpus must be ≥ 1"),
                                          (([(1.0, 0.0)], 2), "need 3 non-negative durations"),
                                          (([(1.0, -1.0, 0.0)], 2), "need 3 non-negative durations")])
def test_bad_input_is_named(bad, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        chain_schedule(*bad)


def test_plan_prints_makespans_and_writes_nothing(tmp_path: Path) -> None:
    make_project(tmp_path, "preset: tiny\n")  # on a 1 GFLOP/s device, so that hours print above 0.0
    before = listing(tmp_path)
    out = subprocess.run([sys.executable, "-m", "stages.cli", "plan", "--gpus", "1", "4", "--gpu-tflops", "0.001"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "SPECSCALE_ROOT": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("makespan on N GPUs"))
    one, four = lines[header + 2].split(), lines[header + 3].split()
    assert one[0] == "1" and four[0] == "4"
    assert float(one[1]) == float(one[3]) > 0 and float(one[2]) == float(one[4]) == 0.0  # one GPU: never idle
    assert float(four[3]) <= float(four[1])  # chains never later than the barrier here
    assert listing(tmp_path) == before
