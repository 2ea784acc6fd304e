"""Shared test helpers: throwaway projects (specs/ + params.yaml) and tiny synthetic token directories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def make_project(root: Path, params: str) -> Path:
    """Copy the repo's specs/ into `root` and write `params` as root/params.yaml; returns the params path."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "specs", root / "specs")
    path = root / "params.yaml"
    path.write_text(params)
    return path


def listing(root: Path) -> list[tuple[str, int, int]]:
    """Every path under root with its size and mtime (ns): equal listings mean nothing was written."""
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


def write_tokens_dir(path: Path, vocab_size: int = 64, n_train: int = 20_000, n_val: int = 4_000,
                     seed: int = 0) -> Path:
    """train.bin / val.bin of a learnable synthetic stream (a noisy repeating pattern) plus tokens.json."""
    from specscale.shards import write_tokens

    rng = np.random.default_rng(seed)
    pattern = rng.integers(0, vocab_size, size=37)

    def stream(n: int) -> np.ndarray:
        tokens = np.resize(pattern, n)
        noise = rng.random(n) < 0.1
        tokens[noise] = rng.integers(0, vocab_size, size=int(noise.sum()))
        return tokens.astype(np.uint16)

    path.mkdir(parents=True, exist_ok=True)
    write_tokens(path / "train.bin", stream(n_train))
    write_tokens(path / "val.bin", stream(n_val))
    (path / "tokens.json").write_text(json.dumps({"vocab_size": vocab_size}))
    return path
