"""Muon as the paper ran it: classical momentum, Nesterov look-ahead, quintic Newton–Schulz, shape-scaled lr.

Per 2-D weight W (m×n = fan_out×fan_in) with gradient G:

    M ← μ·M + G                      # momentum buffer, state["momentum_buffer"], shape (m, n)
    U ← μ·M + G   (Nesterov)         # or U ← M without Nesterov
    O ← NS(U)                        # newton_schulz.orthogonalize
    W ← (1 − lr·wd)·W − lr·scale(m, n)·O

Classical momentum (M ← μM + G) differs from the EMA form (M ← μM + (1 − μ)G) only by the factor (1 − μ), which
the Frobenius normalisation inside NS removes, so both give the same O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from .defaults import MUON
from .matrix_base import MatrixOptimizer, dtype_name
from .newton_schulz import Coeffs, coefficient_schedule, orthogonalize


class Muon(MatrixOptimizer):
    """Muon for 2-D block matrices. `ns_dtype` is a torch dtype or its name; it is kept as a name in the param
    groups so that `state_dict()` stays plain data. Defaults: `defaults.MUON` (docs/science.md §4).

    Precision as the paper ran it (vendored microsoft/dion `muon.py`): the momentum buffer in the parameter's dtype
    (fp32 here), only the Newton–Schulz input cast to `ns_dtype` (bf16 on the paper's GPUs) and the orthogonalised
    direction applied to the fp32 weights."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = MUON["lr"],
        momentum: float = MUON["momentum"],
        nesterov: bool = MUON["nesterov"],
        weight_decay: float = MUON["weight_decay"],
        scale_rule: str = MUON["scale_rule"],
        ns_steps: int = MUON["ns_steps"],
        ns_coeffs: str | Sequence[Coeffs] = MUON["ns_coeffs"],
        ns_dtype: torch.dtype | str = MUON["ns_dtype"],
        ns_eps: float = MUON["ns_eps"],
    ) -> None:
        coefficient_schedule(ns_coeffs, ns_steps)  # validates steps and coefficients now, not at the first step
        defaults = dict(
            lr=lr,
            momentum=momentum,
            nesterov=bool(nesterov),
            weight_decay=weight_decay,
            scale_rule=scale_rule,
            ns_steps=int(ns_steps),
            ns_coeffs=ns_coeffs,
            ns_dtype=dtype_name(ns_dtype, "Newton-Schulz dtype"),
            ns_eps=ns_eps,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:  # per-group overrides are validated and kept as names, like the defaults
            group["ns_dtype"] = dtype_name(group["ns_dtype"], "Newton-Schulz dtype")

    def _direction(self, p: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> Tensor:
        mu = group["momentum"]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        buf = state["momentum_buffer"]
        buf.mul_(mu).add_(grad)  # M ← μ·M + G
        # Nesterov before NS (orthogonalising M and then adding G would be a different algorithm).
        U = grad.add(buf, alpha=mu) if group["nesterov"] else buf
        O = orthogonalize(
            U,
            steps=group["ns_steps"],
            coeffs=group["ns_coeffs"],
            eps=group["ns_eps"],
            dtype=group["ns_dtype"],
        )
        return self._postprocess(O, state, group)

    def _postprocess(self, O: Tensor, state: dict[str, Any], group: dict[str, Any]) -> Tensor:
        """Hook for variants that reshape the orthogonalised direction (NorMuon). Muon uses O as is."""
        return O
