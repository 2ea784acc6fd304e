"""Dion (single device): a rank-r orthonormal update from one warm-started power iteration, with error feedback.

For W (m×n = fan_out×fan_in), k = min(m, n), r = min(ceil(f·k), m, n), tall = m ≥ n:

    M ← M + G                                   # accumulator (not an EMA), state["M"], (m, n)
    B ← M if tall else Mᵀ                       # (big, k)
    P ← orthonormal basis of B·Q  (QR, fp32)    # (big, r): one power iteration warm-started by Q
    R ← Bᵀ·P                                    # (k, r)
    if M == 0: P ← 0, R ← Q                     # QR of a zero matrix is not a basis (Cholesky-QR gives NaN)
    M ← M − (1 − μ)·(P·Rᵀ if tall else R·Pᵀ)    # error feedback: the captured rank-r part decays by μ,
                                                #   the residual stays in M for the next steps
    Q ← R with each column / (its 2-norm + ε)   # state["Q"], (k, r)
    W ← (1 − lr·wd)·W − lr·scale(m, n)·(P·Qᵀ if tall else Q·Pᵀ)

With f = 1 (and B of full rank) P spans the whole column space of B, P·Rᵀ = P·Pᵀ·B = B, so M ← μ·M: heavy-ball
momentum with a column-normalised direction. With f < 1 whatever the rank-r step misses is carried forward in M.
Q starts as a Gaussian (k, r) drawn once from a generator seeded by (seed, parameter index): deterministic per
parameter and independent of the global RNG.

Precision follows the paper's vendored microsoft/dion (`DionMixedPrecisionConfig`, on in every Dion run of the
paper): M is stored in `state_dtype` and every matmul with it (B·Q, Bᵀ·P, P·Rᵀ, P·Qᵀ) runs in that dtype, Q cast to
it first; the QR and the column normalisation of R run in fp32 and their results are cast back to `state_dtype`;
Q is stored in `q_dtype`. With both fp32 (the default) this is exactly the all-fp32 computation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from .defaults import DION
from .matrix_base import MatrixOptimizer, dtype_name, resolve_dtype

# Subtracted from f·k before the ceiling to absorb float error: 0.1·30 = 3.0000000000000004 must give r = 3, not 4.
_CEIL_SLACK = 1e-9


def check_rank_fraction(f: float) -> float:
    """Validate a Dion rank fraction: a real number in (0, 1]."""
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not (0.0 < float(f) <= 1.0):
        raise ValueError(f"Dion rank_fraction must be a number in (0, 1], got {f!r}")
    return float(f)


def dion_rank(shape: tuple[int, ...] | torch.Size, rank_fraction: float) -> int:
    """r = min(ceil(f·min(m, n)), m, n), at least 1."""
    f = check_rank_fraction(rank_fraction)
    m, n = int(shape[0]), int(shape[1])
    k = min(m, n)
    return max(1, min(math.ceil(f * k - _CEIL_SLACK), m, n))


def initial_q(shape: tuple[int, ...] | torch.Size, rank: int, seed: int, index: int) -> Tensor:
    """The starting Q (min(m, n), rank) in fp32 on CPU for parameter number `index` of an optimizer."""
    gen = torch.Generator(device="cpu")
    # Distinct, reproducible stream per (seed, parameter); large odd multiplier keeps nearby seeds apart.
    gen.manual_seed((int(seed) * 1_000_003 + int(index)) % (2**63))
    return torch.randn(min(int(shape[0]), int(shape[1])), rank, generator=gen, dtype=torch.float32)


class Dion(MatrixOptimizer):
    """Dion with rank fraction f in (0, 1]; same lr scale rule and decoupled weight decay as Muon.
    Defaults: `defaults.DION` (docs/science.md §4), where `seed` is the hyperparameter "q_seed". `state_dtype` and
    `q_dtype` are torch dtypes or their names, kept as names in the param groups."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = DION["lr"],
        momentum: float = DION["momentum"],
        weight_decay: float = DION["weight_decay"],
        rank_fraction: float = DION["rank_fraction"],
        scale_rule: str = DION["scale_rule"],
        eps: float = DION["eps"],
        seed: int = DION["q_seed"],
        state_dtype: torch.dtype | str = DION["state_dtype"],
        q_dtype: torch.dtype | str = DION["q_dtype"],
    ) -> None:
        check_rank_fraction(rank_fraction)
        if not eps > 0.0:
            raise ValueError(f"eps must be > 0, got {eps}")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            rank_fraction=float(rank_fraction),
            scale_rule=scale_rule,
            eps=eps,
            seed=int(seed),
            state_dtype=dtype_name(state_dtype, "Dion state_dtype"),
            q_dtype=dtype_name(q_dtype, "Dion q_dtype"),
        )
        super().__init__(params, defaults)
        for group in self.param_groups:  # per-group overrides are validated and kept as names, like the defaults
            group["state_dtype"] = dtype_name(group["state_dtype"], "Dion state_dtype")
            group["q_dtype"] = dtype_name(group["q_dtype"], "Dion q_dtype")

    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        r = dion_rank(p.shape, group["rank_fraction"])
        state["M"] = torch.zeros_like(p, dtype=resolve_dtype(group["state_dtype"]), memory_format=torch.preserve_format)
        q = initial_q(p.shape, r, group["seed"], self._param_index(p))
        state["Q"] = q.to(device=p.device, dtype=resolve_dtype(group["q_dtype"]))

    def _direction(self, p: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> Tensor:
        if "M" not in state:
            self._init_state(p, state, group)
        M, Q = state["M"], state["Q"]  # (m, n), (k, r)
        mu, eps = group["momentum"], group["eps"]
        tall = p.size(0) >= p.size(1)

        M.add_(grad)  # accumulator, rounded to state_dtype
        B = M if tall else M.T  # (big, k), state_dtype: the matmuls below run in M's dtype
        Qm = Q.to(M.dtype)  # (k, r); a no-op when q_dtype == state_dtype
        # Zero guard without a host sync: a 0-dim device bool selects P ← 0, R ← Q when M is all zero (Householder QR
        # of a zero matrix is finite, but not a basis of anything; Cholesky-QR would give NaN).
        nonzero = M.ne(0).any()
        P, _ = torch.linalg.qr((B @ Qm).float(), mode="reduced")  # (big, r), orthonormal columns, QR in fp32
        P = P.to(M.dtype)
        P = torch.where(nonzero, P, torch.zeros_like(P))
        R = torch.where(nonzero, B.T @ P, Qm)  # (k, r)
        captured = P @ R.T if tall else R @ P.T  # (m, n): the rank-r part of M this step uses
        M.sub_(captured, alpha=1.0 - mu)
        R32 = R.float()
        Q_new = (R32 / (R32.norm(dim=0, keepdim=True) + eps)).to(M.dtype)  # (k, r), unit columns (zero stay 0)
        Q.copy_(Q_new)  # stored in q_dtype
        return P @ Q_new.T if tall else Q_new @ P.T  # (m, n), rank ≤ r, in state_dtype
