"""Lion: the scalar optimizer for the embedding, the head (and any other non-block parameter) under
Muon / NorMuon / Dion.

    U ← sign(β₁·M + (1 − β₁)·G)        # the step direction interpolates *before* the momentum update
    M ← β₂·M + (1 − β₂)·G              # state["exp_avg"], shape of W
    W ← (1 − lr·wd)·W − lr·U

Works for parameters of any shape; sign(0) = 0, so an entry with zero gradient and zero momentum does not move.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from .defaults import LION


def _check_hparams(lr: float, betas: tuple[float, float], weight_decay: float) -> None:
    if not lr >= 0.0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
    if not weight_decay >= 0.0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")


class Lion(torch.optim.Optimizer):
    """Lion with decoupled weight decay; defaults are the paper's settings, `defaults.LION` (docs/science.md §4)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = LION["lr"],
        betas: tuple[float, float] = LION["betas"],
        weight_decay: float = LION["weight_decay"],
    ) -> None:
        _check_hparams(lr, betas, weight_decay)
        super().__init__(params, dict(lr=lr, betas=(float(betas[0]), float(betas[1])), weight_decay=weight_decay))
        for group in self.param_groups:  # per-group lrs (embedding, head, gains) must be as valid as the defaults
            _check_hparams(group["lr"], group["betas"], group["weight_decay"])

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m = state["exp_avg"]
                update = torch.sign(m.lerp(grad, 1.0 - beta1))  # sign(β₁·M + (1 − β₁)·G), new tensor
                m.lerp_(grad, 1.0 - beta2)  # M ← β₂·M + (1 − β₂)·G
                p.mul_(1.0 - lr * wd)
                p.add_(update, alpha=-lr)
        return loss
