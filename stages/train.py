"""train stage (fan-out): one training run per sweep point, submitted through submitit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from specscale.store.runs import RunStore
from specscale.train.train import RESUME_FILE, train_run


def run_one(spec: dict[str, Any], work: Path, store: RunStore) -> dict[str, Any]:
    tokens_dir = store.final_dir("tokenize", spec["inputs"]["tokenize"])
    runtime = spec["runtime"]  # speed-only settings: not part of the key
    result = train_run(spec, work, tokens_dir, threads=runtime["threads"], resume_every=runtime["resume_every"])
    result["drop"] = [RESUME_FILE]  # the resume state is replaced, never published
    return result
