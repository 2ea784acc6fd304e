"""One run across two processes (gloo, CPU) trains the same model as one process on the full batch: the global batch
is sharded by rank, DDP averages gradients before the optimizer step, and only rank 0 writes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import free_port, make_project, write_tokens_dir
from specscale.model.gpt import GPT
from specscale.tokens.shards import TokenWindows, open_tokens
from stages.runner import plan_study
from specscale.study.spec import load_study
from specscale.model.build import model_shape
from specscale.train.train import train_run
from tolerances import rounding_tol

PARAMS = ("preset: smoke\nmodel: {d_model: 32, n_layers: 2, n_heads: 2}\n"
          "train: {device: cpu, val_tokens: 2048, steps: 6, batch_size: 8, micro_batch_size: 2, seq_len: 32,\n"
          "        log_every: 3, keep_checkpoints: 2, precision: fp32}\n"
          "sweep: {optimizers: [OPT], widths: [2], seeds: [0]}\n")

CHILD = '''
import json, sys
from pathlib import Path
from specscale.train.train import train_run
spec = json.loads(Path(sys.argv[1]).read_text())
out = train_run(spec, Path(sys.argv[2]), Path(sys.argv[3]), threads=1, resume_every=4)
print("RESULT", json.dumps({k: out.get(k) for k in ("rank", "world_size", "val_loss")}), flush=True)
'''


# The two layouts differ only in the order the gradient is summed: single process, 4 micro-batches of 2 in turn;
# two ranks, 2 micro-batches each, an all-reduce sum and a halving: ≤ 6 roundings per gradient entry and step.
GRAD_ORDER_OPS = 6
# How much the optimizers may amplify a relative gradient error into their direction: Newton-Schulz's first-order
# gain is ≈ 21 for normalised singular values ≥ 0.01 (tolerances.ns_gains), Dion's κ(B·Q)·ρ is of that order for
# these small matrices, and six steps of training can compound them a few-fold. (Lion takes a sign: a rounding
# difference flips it only if its argument is within rounding of 0, which these 6 steps do not meet.)
AMPLIFICATION = 100.0


def _loss_bound(spec: dict, tokens: Path, a: dict, b: dict, x: torch.Tensor, y: torch.Tensor) -> float:
    """Bound on |L(b) − L(a)|, the mean cross-entropy on (x, y) under the weights `a` and `b` of two runs, as each
    run computes it in fp32.

    First order, Σ_W ‖∇_W L(a)‖_F·‖W_b − W_a‖_F (the second-order term is ~‖ΔW‖² ≲ 1e-12), plus each run's fp32
    rounding of the loss: a log-sum-exp over V, a mean over a micro-batch's 64 tokens, the combination of
    micro-batches and ranks (6) and 4 more, at |logit| + ln V.
    """
    vocab = json.loads((tokens / "tokens.json").read_text())["vocab_size"]
    model = GPT(model_shape(spec, vocab))
    model.load_state_dict(a)
    logits = model(x)
    torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)).backward()
    first_order = sum(p.grad.norm().item() * (b[n] - a[n]).double().norm().item() for n, p in model.named_parameters())
    V = logits.size(-1)
    magnitude = logits.abs().max().item() + math.log(V)
    return first_order + 2 * rounding_tol(torch.float32, V + 64 + GRAD_ORDER_OPS + 4, magnitude=magnitude)


@pytest.mark.parametrize("optimizer", ["muon", "dion_1_2"])
def test_two_ranks_equal_one_process(tmp_path: Path, optimizer: str) -> None:
    tokens = write_tokens_dir(tmp_path / "tokens", vocab_size=64)
    params = make_project(tmp_path / "project", PARAMS.replace("OPT", optimizer))
    spec = plan_study(load_study(params), params).train[0].spec
    single = tmp_path / "single"
    single.mkdir()
    train_run(spec, single, tokens, threads=1, resume_every=4)

    multi = tmp_path / "multi"
    multi.mkdir()
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-c", CHILD, str(spec_path), str(multi), str(tokens)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads(out.split("RESULT ", 1)[1]) for out, _ in outs]
    assert results[0]["world_size"] == 2 and results[1]["rank"] == 1  # rank 1 reports itself, rank 0 the run
    single_result = json.loads((single / "result.json").read_text())
    multi_result = json.loads((multi / "result.json").read_text())  # written once, by rank 0
    assert multi_result["checkpoints"] == single_result["checkpoints"] == [0, 3, 6]
    train = spec["train"]
    lr = max(v for k, v in spec["optim"]["hparams"].items() if k.endswith("lr") and isinstance(v, float))
    ckpt = {}
    for step in single_result["checkpoints"]:
        a = torch.load(single / "ckpt" / f"step_{step:06d}.pt")
        b = torch.load(multi / "ckpt" / f"step_{step:06d}.pt")
        ckpt[step] = (a, b)
        assert a.keys() == b.keys()
        # Identical up to the fp32 summation order of the gradient: per step, GRAD_ORDER_OPS roundings relative to the
        # gradient, amplified into the direction (AMPLIFICATION) and moved by lr·scale (scale ≤ 2 here); plus the
        # update's own 5 roundings per step relative to |W|. A broken reduction moves weights by ~lr per step.
        atol = AMPLIFICATION * rounding_tol(torch.float32, max(GRAD_ORDER_OPS * step, 1), magnitude=2 * lr)
        rtol = rounding_tol(torch.float32, max(5 * step, 1))
        for name in a:
            torch.testing.assert_close(b[name], a[name], rtol=rtol, atol=atol, msg=f"{name} at step {step}")
    # The same validation loss: evaluation batches are shared out over ranks and summed back (sharing out or summing
    # wrongly changes it by ≳ 1%; the bound is ~1e-3 relative, from the weights' difference and the fp32 loss).
    val = TokenWindows(open_tokens(tokens / "val.bin"), train["seq_len"])
    n_val = min(len(val), train["val_tokens"] // train["seq_len"])
    bound = _loss_bound(spec, tokens, *ckpt[6], *val.batch(range(n_val)))
    assert abs(multi_result["val_loss"] - single_result["val_loss"]) <= bound
    # Training losses, logged after steps 1, 3, 6: those of steps 0, 2, 5's batches at weights W_0, W_2, W_5. Bounded
    # like the validation loss with the nearest later checkpoint (W_0, W_3, W_6) standing in: the weights' difference
    # only grows with the steps and one step changes the gradient little; a factor 2 covers the substitution.
    windows = TokenWindows(open_tokens(tokens / "train.bin"), train["seq_len"])
    ref = [json.loads(line) for line in (single / "log.jsonl").read_text().splitlines()]
    losses = [json.loads(line)["loss"] for line in (multi / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in ref] == [1, 3, 6] and len(losses) == 3
    for entry, loss, at in zip(ref, losses, (0, 3, 6)):
        batch = windows.batch(windows.sample_indices(entry["step"] - 1, train["batch_size"], spec["seed"]))
        bound = _loss_bound(spec, tokens, *ckpt[at], *batch)
        assert abs(loss - entry["loss"]) <= 2 * bound, (entry, loss, bound)
