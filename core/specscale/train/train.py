"""One training run: resumable, logged, divergence-aware. Called by the train stage inside a submitit job.

Divergence (result.json's `diverged` and `diverged_reason`): the paper's × is a final validation perplexity above
`train.diverged_ppl` (1000); the reason then starts "validation perplexity". A non-finite training loss ends training
at once (the weights are no longer numbers) and is the same rule: the perplexity is infinite. The opt-in early stop
(`train.early_stop_loss_ratio` > 0) also ends a run whose training loss exceeds ratio × its step-0 loss; the reason
then starts "early stop".

Files written into the run's work dir:
  log.jsonl           one line per logged step: step, loss, lr factor, tokens/s, elapsed
  ckpt/step_XXXXXX.pt model weights only, at step 0 and the kept logged steps (the probe's checkpoints)
  resume.pt           model + optimizer state + step, replaced every `resume_every` steps, dropped at commit
  result.json         validation loss and perplexity, diverged flag, token counts
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from specscale.train import distributed
from specscale.store.runs import RESULT_FILE, TRAIN_LOG_FILE, VAL_LOG_FILE, complete_log_records
from specscale.train.distributed import DistContext
from specscale.model.build import (CHECKPOINT_DIR, autocast_context, build_model, checkpoint_path, kept_checkpoints,
                                   logged_steps, resolve_device)
from specscale.model.gpt import GPT
from specscale.optim.factory import build_optimizer, roles_from_names
from specscale.tokens.manifest import open_splits
from specscale.tokens.shards import TokenWindows

RESUME_FILE = "resume.pt"


def lr_factor(step: int, steps: int, decay_fraction: float) -> float:
    """Constant, then linear decay to 0 over the last decay_fraction of steps (no warmup). `step` counts from 0."""
    decay_start = steps * (1.0 - decay_fraction)
    if step < decay_start or decay_fraction == 0:
        return 1.0
    return max(0.0, (steps - step) / (steps * decay_fraction))


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def evaluate(model: GPT, windows: TokenWindows, n_tokens: int, batch_size: int, device: torch.device,
             precision: str, ctx: DistContext = DistContext()) -> float:
    """Mean cross-entropy (nats/token) on the first n_tokens of the validation split; batches shared out over ranks."""
    model.eval()
    total, count = 0.0, 0
    for i, (x, y) in enumerate(windows.sequential(batch_size, max_tokens=n_tokens)):
        if i % ctx.world_size != ctx.rank:
            continue
        x, y = x.to(device), y.to(device)
        with autocast_context(device, precision):
            loss = model.loss(x, y)
        total += loss.item() * y.numel()
        count += y.numel()
    model.train()
    total, count = distributed.sum_across_ranks([total, float(count)], ctx, device)
    return total / max(count, 1)


class Trainer:
    """Holds model, optimizer and data; `step(i)` performs optimizer step i (0-based) with grad accumulation."""

    def __init__(self, spec: dict[str, Any], tokens_dir: Path, device: torch.device,
                 ctx: DistContext = DistContext()) -> None:
        self.spec = spec
        self.ctx = ctx
        self.train_cfg = spec["train"]
        self.device = device
        meta = json.loads((tokens_dir / "tokens.json").read_text())
        self.vocab_size = int(meta["vocab_size"])
        train_tokens, val_tokens = open_splits(tokens_dir)  # memory-mapped in place; shards re-checked
        self.train_windows = TokenWindows(train_tokens, self.train_cfg["seq_len"])
        self.val_windows = TokenWindows(val_tokens, self.train_cfg["seq_len"])
        self.model = build_model(spec, self.vocab_size, device)
        # Forward/backward through DDP (averages gradients over ranks); the optimizer acts on the raw parameters.
        self.forward_model = (torch.nn.parallel.DistributedDataParallel(self.model) if ctx.active else self.model)
        named = list(self.model.named_parameters())
        opt = spec["optim"]
        self.optimizer = build_optimizer(roles_from_names(named), opt["name"], opt["hparams"],
                                         d_model=spec["model"]["d_model"])
        per_rank = self.train_cfg["batch_size"] // ctx.world_size
        if per_rank * ctx.world_size != self.train_cfg["batch_size"]:
            raise ValueError(f"train.batch_size={self.train_cfg['batch_size']} must divide over {ctx.world_size} ranks")
        micro = min(self.train_cfg["micro_batch_size"] or per_rank, per_rank)
        if per_rank % micro:
            raise ValueError(f"train.micro_batch_size={micro} must divide the per-rank batch {per_rank}")
        self.micro_batch = micro
        self.accum = per_rank // micro

    def set_lr(self, step: int) -> float:
        factor = lr_factor(step, self.train_cfg["steps"], self.train_cfg["decay_fraction"])
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return factor

    def step(self, step: int) -> float:
        """One optimizer step on the batch for `step` (deterministic in (seed, step)); returns the mean loss."""
        self.set_lr(step)
        indices = self.train_windows.sample_indices(step, self.train_cfg["batch_size"], self.spec["seed"])
        per_rank = len(indices) // self.ctx.world_size
        indices = indices[self.ctx.rank * per_rank:(self.ctx.rank + 1) * per_rank]  # this rank's shard
        total = 0.0
        for a in range(self.accum):
            x, y = self.train_windows.batch(indices[a * self.micro_batch:(a + 1) * self.micro_batch])
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with autocast_context(self.device, self.train_cfg["precision"]):
                loss = _loss(self.forward_model, x, y) / self.accum
            loss.backward()
            total += loss.detach()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return distributed.mean_across_ranks(float(total), self.ctx, self.device)


def _loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy through `model`'s forward (so DDP's gradient hooks see the call)."""
    logits = model(x)
    return torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))


def train_run(spec: dict[str, Any], work: Path, tokens_dir: Path, threads: int = 0, resume_every: int = 50,
              progress_every_s: float = 15.0) -> dict[str, Any]:
    """Train (or resume) one run in `work`; returns result fields (also written to result.json)."""
    if threads:
        torch.set_num_threads(threads)
    cfg = spec["train"]
    ctx, device = distributed.setup(resolve_device(cfg["device"]))
    try:
        return _train(spec, work, tokens_dir, device, ctx, resume_every, progress_every_s)
    finally:
        distributed.teardown(ctx)


def _load_resume(path: Path, device: torch.device, main: bool) -> dict[str, Any] | None:
    """The resume state, or None (fresh start) when there is none or it is unreadable: a damaged resume.pt (a disk
    that filled up, a copy cut short) costs the steps since the start, never the run."""
    if not path.exists():
        return None
    try:
        # weights_only: the resume state is tensors and Python scalars (no pickled objects, no RNG state: batches are
        # a function of (seed, step) and nothing draws from a global generator after the init), so no code runs on load
        state = torch.load(path, map_location=device, weights_only=True)
        _ = state["model"], state["optimizer"], state["step"], state["initial_loss"]
        return state
    except Exception as err:  # any unreadable or incomplete file: the run restarts, it never fails on its own state
        if main:
            print(f"WARNING: {path} is unreadable ({type(err).__name__}: {str(err)[:120]}); restarting this run "
                  f"from step 0", flush=True)
        return None


def _train(spec: dict[str, Any], work: Path, tokens_dir: Path, device: torch.device, ctx: DistContext,
           resume_every: int, progress_every_s: float) -> dict[str, Any]:
    cfg = spec["train"]
    main = ctx.is_main  # only rank 0 writes
    trainer = Trainer(spec, tokens_dir, device, ctx)
    steps = cfg["steps"]
    logged = set(logged_steps(steps, cfg["log_every"]))
    kept = set(kept_checkpoints(steps, cfg["log_every"], cfg["keep_checkpoints"], cfg["keep_all_checkpoints"]))
    ckpt_dir = work / CHECKPOINT_DIR
    if main:
        ckpt_dir.mkdir(exist_ok=True)
        for stale in ckpt_dir.glob("*.tmp"):  # a kill inside _save_atomic leaves one; never publish it
            stale.unlink()
    log_path = work / TRAIN_LOG_FILE
    start_step, initial_loss, diverged, reason, weights_finite = 0, None, False, None, True
    resume_path = work / RESUME_FILE
    state = _load_resume(resume_path, device, main)
    if state is not None:
        trainer.model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        start_step, initial_loss = state["step"], state["initial_loss"]
        if main:
            print(f"resumed from step {start_step}", flush=True)
    val_log_path = work / VAL_LOG_FILE
    val_tokens_at_ckpt = int(cfg.get("checkpoint_val_tokens", 0))  # absent from the spec when 0 (key-neutral)
    if main:
        _truncate_log(log_path, start_step)  # also without resume state: a run killed before its first resume point
        _truncate_log(val_log_path, start_step)
    distributed.barrier(ctx)  # every rank reads the truncated validation log below
    val_done = _logged_steps_in(val_log_path)
    tokens_per_step = cfg["batch_size"] * cfg["seq_len"]
    t0, last_print, tokens_done = time.time(), time.time(), 0
    step = start_step
    while step <= steps:
        if main and step in kept and not checkpoint_path(work, step).exists():
            _save_atomic(trainer.model.state_dict(), checkpoint_path(work, step))
        if val_tokens_at_ckpt and step in kept and step not in val_done:  # every rank: evaluate shares batches
            val = evaluate(trainer.model, trainer.val_windows, val_tokens_at_ckpt, trainer.micro_batch, device,
                           cfg["precision"], ctx)
            if main:
                with val_log_path.open("a") as fh:
                    fh.write(json.dumps({"step": step, "val_loss": val, "val_tokens": val_tokens_at_ckpt}) + "\n")
            val_done.add(step)
        if step == steps:
            break
        loss = trainer.step(step)
        step += 1
        tokens_done += tokens_per_step
        if initial_loss is None:
            initial_loss = loss
        reason = _stop_reason(loss, step, initial_loss, cfg["early_stop_loss_ratio"])
        if reason:
            diverged, weights_finite = True, math.isfinite(loss)
            if main:
                print(f"diverged: {reason}", flush=True)
            break
        elapsed = time.time() - t0
        if main and step in logged:
            entry = {"step": step, "loss": loss, "lr_factor": lr_factor(step - 1, steps, cfg["decay_fraction"]),
                     "tokens_per_s": tokens_done / max(elapsed, 1e-9), "elapsed_s": elapsed}
            with log_path.open("a") as fh:
                fh.write(json.dumps(entry) + "\n")
        if main and (time.time() - last_print > progress_every_s or step == steps):
            rate = tokens_done / max(elapsed, 1e-9)
            eta = (steps - step) * tokens_per_step / max(rate, 1e-9)
            print(f"step {step}/{steps} loss {loss:.4f} {rate / 1e3:.1f}k tok/s eta {eta:.0f}s", flush=True)
            last_print = time.time()
        if step % resume_every == 0 and step < steps:
            if main:
                _save_atomic({"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
                              "step": step, "initial_loss": initial_loss}, resume_path)
            distributed.barrier(ctx)
    # An early stop keeps finite weights, so its perplexity is still measured; after a non-finite loss it is ∞.
    val_loss = evaluate(trainer.model, trainer.val_windows, cfg["val_tokens"], trainer.micro_batch, device,
                        cfg["precision"], ctx) if weights_finite else float("nan")
    val_ppl = math.exp(val_loss) if math.isfinite(val_loss) and val_loss < 700 else float("inf")
    if not diverged and val_ppl > cfg["diverged_ppl"]:
        diverged, reason = True, f"validation perplexity {val_ppl:.1f} > {cfg['diverged_ppl']:g}"
    result = {
        "val_loss": val_loss, "val_ppl": val_ppl, "diverged": diverged, "diverged_reason": reason,
        "steps_done": step, "tokens_seen": step * tokens_per_step, "n_params": trainer.model.num_params(),
        "ffn_dim": trainer.model.shape.ffn_dim, "vocab_size": trainer.model.shape.vocab_size,
        "checkpoints": sorted(int(p.stem.split("_")[1]) for p in ckpt_dir.glob("step_*.pt")),
    }
    if not main:
        return {**result, "device": str(device), "rank": ctx.rank}
    (work / RESULT_FILE).write_text(json.dumps(result, indent=2))
    print(f"done: val loss {val_loss:.4f} ppl {val_ppl:.2f}{' DIVERGED' if diverged else ''}", flush=True)
    return {**result, "device": str(device), "world_size": ctx.world_size}


def _stop_reason(loss: float, step: int, initial_loss: float, early_stop_ratio: float) -> str | None:
    """Why training must end after `step` (None: go on). A non-finite loss always ends it; the loss ratio only when
    the early stop is on (ratio > 0)."""
    if not math.isfinite(loss):
        return f"validation perplexity not finite: train loss {loss} at step {step}, training stopped"
    if early_stop_ratio > 0 and loss > early_stop_ratio * initial_loss:
        return (f"early stop: train loss {loss:.4g} at step {step} > {early_stop_ratio:g} × step-0 loss "
                f"{initial_loss:.4g}")
    return None


def _logged_steps_in(log_path: Path) -> set[int]:
    """Steps that have a line in a JSON-lines log (none if the file is absent)."""
    return {int(record["step"]) for record, _ in complete_log_records(log_path)[0]}


def _truncate_log(log_path: Path, step: int) -> None:
    """Drop log lines past the resume point, so a resumed log equals an uninterrupted one, and a torn tail (one
    warning line: the log goes on after its last complete record)."""
    records, torn = complete_log_records(log_path)
    if torn:
        last = f"step {records[-1][0]['step']}" if records else "none"
        print(f"WARNING: {log_path}: dropped its torn end ({torn} bytes from its first incomplete line: a write cut "
              f"short by a kill or a full disk); the log goes on after its last complete record ({last})", flush=True)
    if log_path.exists():
        log_path.write_bytes(b"".join(line for record, line in records if record["step"] <= step))
