"""One run across two processes (gloo, CPU) trains the same model as one process on the full batch: the global batch
is sharded by rank, DDP averages gradients before the optimizer step, and only rank 0 writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import make_project, write_tokens_dir
from specscale.plan import make_plan
from specscale.spec import load_study
from specscale.train import train_run

PARAMS = ("preset: smoke\nmodel: {d_model: 32, n_layers: 2, n_heads: 2}\n"
          "train: {device: cpu, val_tokens: 2048, steps: 6, batch_size: 8, micro_batch_size: 2, seq_len: 32,\n"
          "        log_every: 3, keep_checkpoints: 2, precision: fp32}\n"
          "sweep: {optimizers: [OPT], widths: [2], seeds: [0]}\n")

CHILD = '''
import json, sys
from pathlib import Path
from specscale.train import train_run
spec = json.loads(Path(sys.argv[1]).read_text())
out = train_run(spec, Path(sys.argv[2]), Path(sys.argv[3]), threads=1, resume_every=4)
print("RESULT", json.dumps({k: out.get(k) for k in ("rank", "world_size", "val_loss")}), flush=True)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("optimizer", ["muon", "dion_1_2"])
def test_two_ranks_equal_one_process(tmp_path: Path, optimizer: str) -> None:
    tokens = write_tokens_dir(tmp_path / "tokens", vocab_size=64)
    params = make_project(tmp_path / "project", PARAMS.replace("OPT", optimizer))
    spec = make_plan(load_study(params), params).train[0].spec
    single = tmp_path / "single"
    single.mkdir()
    train_run(spec, single, tokens, threads=1, resume_every=4)

    multi = tmp_path / "multi"
    multi.mkdir()
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    port = str(_free_port())
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
    # the same validation loss: evaluation batches are shared out over ranks and summed back
    assert multi_result["val_loss"] == pytest.approx(single_result["val_loss"], rel=1e-5)
    for step in single_result["checkpoints"]:
        a = torch.load(single / "ckpt" / f"step_{step:06d}.pt")
        b = torch.load(multi / "ckpt" / f"step_{step:06d}.pt")
        assert a.keys() == b.keys()
        for name in a:
            # identical up to float32 summation order of the gradient all-reduce
            torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=f"{name} at step {step}")
    losses = [json.loads(line)["loss"] for line in (multi / "log.jsonl").read_text().splitlines()]
    ref = [json.loads(line)["loss"] for line in (single / "log.jsonl").read_text().splitlines()]
    assert losses == pytest.approx(ref, rel=1e-5)
