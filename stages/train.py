"""train stage (fan-out): one training run per sweep point, submitted through submitit."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from specscale.cache import RunStore
from specscale.train import RESUME_FILE, train_run


def run_one(spec: dict[str, Any], work: Path, store: RunStore) -> dict[str, Any]:
    tokens_dir = store.final_dir("tokenize", spec["inputs"]["tokenize"])
    # Threads are a launcher concern (not in the key): SPECSCALE_THREADS is set by the CLI from train.threads.
    threads = int(os.environ.get("SPECSCALE_THREADS", "0"))
    result = train_run(spec, work, tokens_dir, threads=threads)
    result["drop"] = [RESUME_FILE]  # the resume state is replaced, never published
    return result
