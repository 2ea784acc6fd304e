"""The spectra stage's probe forward, per (step, layer) slice: the whole model (what it ran before) against
`GPT.forward_through(·, l)` (blocks 0…l, no head), at a paper preset's real shape.

    python benchmarks/probe_forward.py [--preset gpt2-160m|gpt2-350m] [--width K] [--tokens N] [--repeats R]

For every layer l it times, in the same run and best of R, one full forward and one forward through block l over the
same N tokens, and prints the summed time over the L slices of a checkpoint for both, their ratio, and the ratio the
FLOP count predicts (core/specscale/model/gpt.py: probe_forward_flops against the full forward with its head).
Activations of the slices are bit-identical either way (tests/test_model.py); this measures only the time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from specscale.model.gpt import GPT, flops_per_token, probe_forward_flops
from specscale.tokens.shards import GPT2_VOCAB
from specscale.study.spec import load_study, to_container
from specscale.model.build import model_shape

ROOT = Path(__file__).resolve().parents[1]


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["gpt2-160m", "gpt2-350m"], default="gpt2-160m")
    parser.add_argument("--width", type=int, default=8, help="FFN width multiplier k (D = k·d_model)")
    parser.add_argument("--tokens", type=int, default=1024, help="probe tokens per forward (whole windows)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    study = load_study(ROOT / "no-params.yaml", preset=args.preset)  # the preset alone, no params.yaml on top
    study.model.ffn_mult = args.width
    shape = model_shape(to_container(study), GPT2_VOCAB)  # the preset's shape, embedding padded as in training
    layers, seq = shape.n_layers, shape.max_seq_len
    torch.manual_seed(0)
    model = GPT(shape).eval()
    x = torch.randint(0, shape.vocab_size, (max(args.tokens // seq, 1), seq))
    print(f"{args.preset} k={args.width}: D={shape.ffn_dim}, {layers} layers, {x.numel()} tokens per forward, "
          f"{torch.get_num_threads()} threads")
    full = through = 0.0
    with torch.no_grad():
        for layer in range(layers):
            full += best_of(lambda: model(x), args.repeats)
            through += best_of(lambda layer=layer: model.forward_through(x, layer), args.repeats)
    whole_model = layers * flops_per_token(shape, seq) / 3  # the old probe: a full forward (head included) per slice
    predicted = whole_model / sum(probe_forward_flops(shape, seq, l) for l in range(layers))
    print(f"per checkpoint ({layers} slices): whole model {full:.2f} s, through block l {through:.2f} s")
    print(f"speed-up {full / through:.2f}× (FLOPs predict {predicted:.2f}×)")


if __name__ == "__main__":
    main()
