"""One training run across several processes (GPUs): data-parallel, with gradients averaged before the optimizer step.

The algorithm must not change with the process count: every rank takes a contiguous shard of the same global batch
(sampled from (seed, step) exactly as a single process would), DDP averages the gradients, and the optimizer (Muon,
NorMuon, Dion, Lion, AdamW) then runs the identical update on every rank on the full-batch gradient. Only rank 0
writes checkpoints, logs and results.

Sources of the rank layout, in order: torchrun-style environment (WORLD_SIZE > 1), else a submitit job with several
tasks (one per GPU: launcher.gpus_per_node > 1), else a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def detect() -> DistContext:
    """The rank layout of this process, exporting the env:// variables for a multi-task submitit job."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return DistContext(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                           int(os.environ.get("LOCAL_RANK", "0")))
    if os.environ.get("SUBMITIT_EXECUTOR"):
        try:
            import submitit

            env = submitit.JobEnvironment()
            if env.num_tasks > 1:
                torch_env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
                return DistContext(torch_env.rank, torch_env.world_size, torch_env.local_rank)
        except RuntimeError:  # not inside a submitit job after all
            pass
    return DistContext()


def setup(device: torch.device) -> tuple[DistContext, torch.device]:
    """Initialise the process group when there are several ranks; each rank gets its own GPU (local rank)."""
    ctx = detect()
    if not ctx.active:
        return ctx, device
    if device.type == "cuda":
        torch.cuda.set_device(ctx.local_rank)
        device = torch.device("cuda", ctx.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://",
                                rank=ctx.rank, world_size=ctx.world_size)
    return ctx, device


def mean_across_ranks(value: float, ctx: DistContext, device: torch.device) -> float:
    """Average a scalar over ranks (so every rank takes the same divergence decision)."""
    if not ctx.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / ctx.world_size


def sum_across_ranks(values: list[float], ctx: DistContext, device: torch.device) -> list[float]:
    if not ctx.active:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        dist.barrier()


def teardown(ctx: DistContext) -> None:
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()
