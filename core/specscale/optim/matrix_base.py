"""What Muon, NorMuon and Dion share: 2-D-only parameters, the shape scale of the lr, decoupled weight decay.

Each matrix optimizer only decides a *direction* O (m×n, roughly unit singular values) from the gradient and its
own state; this base class applies it the same way for all of them:

    W ← (1 − lr·wd)·W − lr·scale(m, n)·O

with wd decoupled and multiplied by the *unscaled* lr (docs/science.md §4), and W of `nn.Linear` laid out as
(m, n) = (fan_out, fan_in).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from specscale.optim.defaults import DTYPE_NAMES

# Run specs are JSON, so a dtype travels as its torch name ("bfloat16") and is resolved here, at construction; the
# names a precision field may hold are defaults.DTYPE_NAMES (the spec checks them without importing torch).
DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_NAMES}


def resolve_dtype(dtype: torch.dtype | str, field: str = "dtype") -> torch.dtype:
    """A torch dtype or its name ("float32", "bfloat16", "torch.bfloat16") → the torch dtype. `field` names the
    hyperparameter in the error (e.g. "Newton-Schulz dtype", "Dion state_dtype")."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"unknown {field} {dtype}; valid: {sorted(DTYPES)}")
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"unknown {field} {dtype!r}; valid: {sorted(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype | str, field: str = "dtype") -> str:
    """The name under which a dtype is kept in param groups (so that `state_dict()` stays plain data)."""
    return str(resolve_dtype(dtype, field)).removeprefix("torch.")


# Named lr shape-scale rules. "spectral" is what the paper ran (c_fc 4d×d: ×2, c_proj d×4d: ×0.5); the others are
# the public alternatives (Keller Jordan / torch.optim.Muon "original", and Moonlight's AdamW-RMS matching).
SCALE_RULES: tuple[str, ...] = ("spectral", "max1", "moonlight")


def shape_scale(rule: str, shape: tuple[int, ...] | torch.Size) -> float:
    """Multiplier of the lr for a weight of shape (m, n) = (fan_out, fan_in) under the named rule."""
    m, n = int(shape[0]), int(shape[1])
    if rule == "spectral":
        return math.sqrt(m / n)  # unclamped: wide matrices get < 1
    if rule == "max1":
        return math.sqrt(max(1.0, m / n))
    if rule == "moonlight":
        return 0.2 * math.sqrt(max(m, n))
    raise ValueError(f"unknown scale_rule {rule!r}; valid: {list(SCALE_RULES)}")


def check_common_hparams(lr: float, momentum: float, weight_decay: float, scale_rule: str) -> None:
    """Fail early, naming the argument, instead of producing a silently wrong trajectory."""
    if not lr >= 0.0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if not weight_decay >= 0.0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if scale_rule not in SCALE_RULES:
        raise ValueError(f"unknown scale_rule {scale_rule!r}; valid: {list(SCALE_RULES)}")


class MatrixOptimizer(torch.optim.Optimizer):
    """Base class: subclasses implement `_direction(p, grad, state, group) -> Tensor` of p's shape."""

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)
        for group in self.param_groups:
            # Per-group overrides must be as valid as the defaults.
            check_common_hparams(group["lr"], group["momentum"], group["weight_decay"], group["scale_rule"])
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(
                        f"{type(self).__name__} only optimizes 2-D weight matrices (fan_out, fan_in); got a parameter "
                        f"of shape {tuple(p.shape)}. Route 1-D parameters, embeddings and the head to the scalar "
                        f"optimizer (Lion / AdamW)."
                    )

    def _direction(self, p: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> Tensor:
        raise NotImplementedError

    def _param_index(self, p: Tensor) -> int:
        """Position of p among all parameters of this optimizer (group order): a stable per-parameter id, used to
        seed per-parameter random state deterministically."""
        i = 0
        for group in self.param_groups:
            for q in group["params"]:
                if q is p:
                    return i
                i += 1
        raise KeyError("parameter is not managed by this optimizer")

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                # p.grad is only read: subclasses build new tensors (never modify the gradient in place).
                direction = self._direction(p, p.grad, self.state[p], group)
                scale = shape_scale(group["scale_rule"], p.shape)
                p.mul_(1.0 - lr * wd)
                p.add_(direction.to(p.dtype), alpha=-lr * scale)
        return loss
