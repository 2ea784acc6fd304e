"""Training-loss curves of every finished training run, for the report's loss figure (results/train_curves.csv).

A training run logs its training loss every `train.log_every` steps to log.jsonl (one JSON object per line: step,
loss, lr_factor, tokens_per_s, elapsed_s). A paper-scale study has ~10⁴ logged steps per run and ~10² runs, more
than a figure can show, so each run's log is cut into at most `max_points` consecutive blocks of equal length and
each block is reduced to its mean loss at its last step: the mean keeps the curve's level (a subsample of a noisy
per-batch loss would not), and a run with fewer logged steps than `max_points` is kept as logged.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from specscale.store.runs import TRAIN_LOG_FILE, RunStore, complete_log_records

CURVE_COLUMNS = ["run", "config", "optimizer", "width_mult", "seed", "step", "tokens", "loss"]
MAX_POINTS = 200  # per run: enough to see a curve's shape in a 520-pixel-wide panel


def block_means(steps: np.ndarray, losses: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """(last step of each block, mean loss of each block): at most max_points blocks of consecutive entries.
    steps, losses: (n,) in logged order. A non-finite loss (a diverged run) stays non-finite in its block."""
    n = len(steps)
    if n <= max_points:
        return steps, losses
    edges = np.linspace(0, n, max_points + 1).round().astype(int)
    last = np.array([steps[e - 1] for e in edges[1:]])
    means = np.array([losses[a:b].mean() for a, b in zip(edges[:-1], edges[1:])])
    return last, means


def train_curves(runs: pd.DataFrame, store: RunStore, max_points: int = MAX_POINTS) -> pd.DataFrame:
    """One row per run and kept point: the run's labels, the step, the training tokens seen and the training loss
    (block mean, see the module docstring). Runs without a log (none in a finished study) are left out."""
    parts = []
    for r in runs.itertuples():
        path = store.final_dir("train", r.run) / TRAIN_LOG_FILE
        if not path.exists():
            continue
        records = [x for x, _ in complete_log_records(path)[0] if "loss" in x]  # a torn tail left out
        if not records:
            continue
        steps = np.array([int(x["step"]) for x in records])
        losses = np.array([float(x["loss"]) if x["loss"] is not None else math.nan for x in records])
        steps, losses = block_means(steps, losses, max_points)
        parts.append(pd.DataFrame({"run": r.run, "config": r.config, "optimizer": r.optimizer,
                                   "width_mult": r.width_mult, "seed": r.seed, "step": steps,
                                   "tokens": steps * int(r.tokens_per_step), "loss": losses}))
    return pd.concat(parts, ignore_index=True)[CURVE_COLUMNS] if parts else pd.DataFrame(columns=CURVE_COLUMNS)
