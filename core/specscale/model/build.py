"""A run's model outside its training loop: the shape from the spec (vocabulary padded to a multiple), the seeded
init, the device and the precision context its forwards run under, and which checkpoints it keeps and where (the one
place that spells the checkpoint file name). Shared by training (writes them), the probe (reads them) and the cost
estimates (count them), so all three build the same network and agree on its files."""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from specscale.model.gpt import GPT, ModelShape

CHECKPOINT_DIR = "ckpt"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    """The weights of a training run at `step` (the one place that spells the checkpoint file name)."""
    return run_dir / CHECKPOINT_DIR / f"step_{step:06d}.pt"


def logged_steps(steps: int, log_every: int) -> list[int]:
    """docs/science.md §5: step 0, step 1, every log_every steps, and the last step."""
    return sorted({0, min(1, steps), steps, *range(log_every, steps + 1, log_every)})


def kept_checkpoints(steps: int, log_every: int, keep_last: int, keep_all: bool) -> list[int]:
    logged = logged_steps(steps, log_every)
    return logged if keep_all else sorted({0, *logged[-keep_last:]})


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but no CUDA device is visible")
        return torch.device("cuda")
    return torch.device("cpu")


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast on CUDA by default (the paper's setting), plain fp32 on CPU (bf16 matmul there is ~15× slower)."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()


def model_shape(spec: dict[str, Any], vocab_size: int) -> ModelShape:
    m, t = spec["model"], spec["train"]
    padded = math.ceil(vocab_size / m["vocab_multiple"]) * m["vocab_multiple"]
    return ModelShape(vocab_size=padded, d_model=m["d_model"], n_layers=m["n_layers"], n_heads=m["n_heads"],
                      ffn_dim=m["ffn_mult"] * m["d_model"], pos_encoding=m["pos_encoding"], rope_base=m["rope_base"],
                      postln_fraction=m["postln_fraction"], max_seq_len=t["seq_len"])


def build_model(spec: dict[str, Any], vocab_size: int, device: torch.device) -> GPT:
    torch.manual_seed(spec["seed"])  # the init is a function of the seed alone
    return GPT(model_shape(spec, vocab_size)).to(device)
