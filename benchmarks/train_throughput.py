"""Tokens/s of the train stage's step loop against a bare PyTorch loop (same model, batch, process).

The train stage adds deterministic (seed, step) batch sampling from memory-mapped shards, the LR schedule, gradient
accumulation bookkeeping and the role-routed optimizer. This measures what that costs. Target ratio ≥ 0.95.

    python benchmarks/train_throughput.py [--d-model 64 --layers 2 --heads 4 --ffn-mult 4 --steps 30 --optimizer adamw]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from specscale.optim.defaults import default_hparams
from specscale.tokens.shards import write_tokens
from specscale.train.train import Trainer
from specscale.model.build import build_model


def make_spec(args: argparse.Namespace) -> dict:
    return {
        "model": {"d_model": args.d_model, "n_layers": args.layers, "n_heads": args.heads, "ffn_mult": args.ffn_mult,
                  "pos_encoding": "rope", "rope_base": 10000.0, "postln_fraction": 0.0, "vocab_multiple": 64},
        "train": {"steps": 10_000, "batch_size": args.batch, "micro_batch_size": 0, "seq_len": args.seq_len,
                  "decay_fraction": 0.2, "precision": "auto", "device": args.device},
        "optim": {"name": args.optimizer, "hparams": default_hparams(args.optimizer)},
        "seed": 0,
    }


def time_loop(step_fn, steps: int, warmup: int) -> float:
    for i in range(warmup):
        step_fn(i)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step_fn(i)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ffn-mult", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--optimizer", default="adamw")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    spec = make_spec(args)
    with tempfile.TemporaryDirectory() as tmp:
        tokens_dir = Path(tmp)
        rng = np.random.default_rng(0)
        for split, n in (("train", 2_000_000), ("val", 100_000)):
            write_tokens(tokens_dir / f"{split}.bin", rng.integers(1, args.vocab, n).astype(np.uint16))
        (tokens_dir / "tokens.json").write_text(json.dumps({"vocab_size": args.vocab}))
        trainer = Trainer(spec, tokens_dir, device)

        # Bare loop: the same architecture and init, torch AdamW on all parameters, one fixed pre-built batch.
        bare_model = build_model(spec, args.vocab, device)
        bare_opt = torch.optim.AdamW(bare_model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.01)
        x, y = trainer.train_windows.batch(np.arange(args.batch))
        x, y = x.to(device), y.to(device)

        def bare_step(_i: int) -> None:
            loss = bare_model.loss(x, y)
            loss.backward()
            bare_opt.step()
            bare_opt.zero_grad(set_to_none=True)

        tokens = args.steps * args.batch * args.seq_len
        ours, bare = [], []
        for _ in range(args.repeats):  # interleave so drift in machine load hits both equally
            bare.append(tokens / time_loop(bare_step, args.steps, args.warmup))
            ours.append(tokens / time_loop(trainer.step, args.steps, args.warmup))
    o, b = float(np.median(ours)), float(np.median(bare))
    print(f"model d={args.d_model} L={args.layers} D={args.ffn_mult * args.d_model} batch {args.batch}×{args.seq_len} "
          f"optimizer {args.optimizer} on {device}")
    print(f"bare PyTorch loop : {b:10.0f} tokens/s")
    print(f"train stage loop  : {o:10.0f} tokens/s")
    print(f"ratio             : {o / b:.3f}  (target ≥ 0.95)")


if __name__ == "__main__":
    main()
