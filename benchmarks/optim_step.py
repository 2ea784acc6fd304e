"""Time one optimizer step per optimizer and FFN width, as a ratio to AdamW's step measured in the same run.

The parameters are stand-ins with the model's names and layouts (nn.Linear (fan_out, fan_in)): per block q, k, v, o
(d, d), c_fc (k·d, d), c_proj (d, k·d); optionally the embedding and head (vocab, d). Gradients are fixed random
tensors, so only the optimizer's own work is timed (no forward/backward).

    python benchmarks/optim_step.py --preset tiny                               # d 64, 2 layers, widths 1..8
    python benchmarks/optim_step.py --preset gpt2-160m --layers 1 --widths 1 2 4 8   # reduced, CPU minutes
    python benchmarks/optim_step.py --preset gpt2-160m --device cuda --ns-dtype bfloat16
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from specscale.optim.factory import build_optimizer
from specscale.optim.defaults import default_hparams

# Block shapes: (d_model, n_layers). Heads do not change any matrix shape (q, k, v, o are d×d), so they are omitted.
PRESETS: dict[str, tuple[int, int]] = {"tiny": (64, 2), "gpt2-160m": (768, 12)}
NAMES = ["adamw", "muon", "normuon", "dion_1_2", "dion_1_16"]


def stand_in_params(
    d: int, layers: int, width: int, vocab: int, device: torch.device
) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Parameters by role, each with a fixed random gradient (seeded, so every optimizer sees the same ones)."""
    gen = torch.Generator().manual_seed(0)
    roles: dict[str, list[tuple[str, nn.Parameter]]] = {"matrix": [], "embed": [], "head": [], "other": []}

    def make(role: str, name: str, shape: tuple[int, int]) -> None:
        p = nn.Parameter(torch.randn(*shape, generator=gen).mul_(shape[1] ** -0.5).to(device))
        p.grad = torch.randn(*shape, generator=gen).mul_(1e-3).to(device)
        roles[role].append((name, p))

    hidden = width * d
    for i in range(layers):
        for sub in ("q", "k", "v", "o"):
            make("matrix", f"blocks.{i}.attn.{sub}.weight", (d, d))
        make("matrix", f"blocks.{i}.mlp.c_fc.weight", (hidden, d))
        make("matrix", f"blocks.{i}.mlp.c_proj.weight", (d, hidden))
    if vocab > 0:
        make("embed", "embed.weight", (vocab, d))
        make("head", "head.weight", (vocab, d))
    return roles


def time_steps(
    names: list[str], roles: dict, d: int, ns_dtype: str, warmup: int, repeats: int, device: torch.device
) -> dict[str, float]:
    """Best-of-`repeats` seconds of one `.step()` per optimizer.

    All optimizers are built over the same parameters and timed in interleaved rounds (one step of each per round),
    so a burst of load from other processes hits all of them alike; the minimum is the least disturbed step.
    Gradients are kept between steps (no zero_grad); the weights drift a little, which does not change the cost.
    """
    opts = {}
    for name in names:
        hp = default_hparams(name)
        if "ns_dtype" in hp:
            hp["ns_dtype"] = ns_dtype
        opts[name] = build_optimizer(roles, name, hp, d_model=d)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for opt in opts.values():
        for _ in range(warmup):  # first steps allocate state (and Dion draws Q)
            opt.step()
    sync()
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name, opt in opts.items():
            t0 = time.perf_counter()
            opt.step()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: min(ts) for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--widths", type=int, nargs="+", default=list(range(1, 9)), help="FFN width multipliers k")
    ap.add_argument("--layers", type=int, default=None, help="override the preset's number of layers")
    ap.add_argument("--vocab", type=int, default=0, help="add embedding and head (vocab, d); 0 = block matrices only")
    ap.add_argument("--names", nargs="+", default=NAMES)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--ns-dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    d, layers = PRESETS[args.preset]
    layers = args.layers or layers
    names = ["adamw"] + [n for n in args.names if n != "adamw"]  # the baseline is always measured
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# {args.preset}: d_model {d}, {layers} layers, vocab {args.vocab}, ns_dtype {args.ns_dtype}, {where}")
    print(f"# best of {args.repeats} interleaved steps after {args.warmup} warm-up; 'x' = ratio to AdamW at that width")
    header = f"{'width':>5} {'adamw ms':>9} " + " ".join(f"{n:>16}" for n in names[1:])
    print(header)
    for k in args.widths:
        roles = stand_in_params(d, layers, k, args.vocab, device)
        secs = time_steps(names, roles, d, args.ns_dtype, args.warmup, args.repeats, device)
        base = secs["adamw"]
        cells = " ".join(f"{secs[n] * 1e3:8.2f}ms {secs[n] / base:5.1f}x" for n in names[1:])
        print(f"{k:>4}x {base * 1e3:8.2f}  {cells}", flush=True)


if __name__ == "__main__":
    main()
