"""Quintic Newton–Schulz orthogonalisation (the "zeroth power" used by Muon and NorMuon).

Given U (m×n) with SVD U = A·diag(σ)·Bᵀ, the polar factor is A·Bᵀ: the same singular vectors with every singular
value set to 1. Newton–Schulz approximates it with a few odd matrix polynomials

    X ← a·X + (b·A + c·A²)·X,   A = X·Xᵀ,

each of which maps every singular value s of X to p(s) = a·s + b·s³ + c·s⁵ and leaves the singular vectors alone.
Starting from X = U/‖U‖_F (so every s ≤ 1), five iterations push all s > ~1e-3 into a band around 1; they do not
converge to exactly 1 (the coefficients trade exactness for a steep slope at 0), see `PAPER_COEFFS`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .defaults import NEWTON_SCHULZ
from .matrix_base import resolve_dtype as _resolve_dtype

Coeffs = tuple[float, float, float]

# Per-iteration (a, b, c) triples used by the paper's code, one per step. Composing the five scalar polynomials
# (checked on a fine grid of s): every normalised singular value s in [0.01, 1] lands in [0.978, 1.032], every s in
# [0.0025, 1] in [0.970, 1.145]; smaller s stay small (they are mostly noise directions).
PAPER_COEFFS: tuple[Coeffs, ...] = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)

# Keller Jordan's original triple, applied at every step (the one torch.optim.Muon uses). Five steps map s in
# [0.01, 1] to [0.68, 1.13]: a wider band than the paper's schedule.
JORDAN_COEFFS: tuple[Coeffs, ...] = ((3.4445, -4.7750, 2.0315),)

COEFF_SETS: dict[str, tuple[Coeffs, ...]] = {"paper": PAPER_COEFFS, "jordan": JORDAN_COEFFS}


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """Accept a torch dtype or its name ("float32", "bfloat16", ...), so that specs can stay JSON."""
    return _resolve_dtype(dtype, "Newton-Schulz dtype")


def coefficient_schedule(coeffs: str | Sequence[Coeffs], steps: int) -> list[Coeffs]:
    """The (a, b, c) triple of each of the `steps` iterations.

    A named set or an explicit list of triples. A list shorter than `steps` repeats its last triple (so the one-triple
    "jordan" set is applied `steps` times, and "paper" with steps > 5 keeps its final, most conservative triple); a
    longer list is truncated to its first `steps` triples.
    """
    if steps < 1:
        raise ValueError(f"Newton-Schulz needs at least one step, got steps={steps}")
    if isinstance(coeffs, str):
        if coeffs not in COEFF_SETS:
            raise ValueError(f"unknown Newton-Schulz coefficients {coeffs!r}; valid: {sorted(COEFF_SETS)}")
        triples = list(COEFF_SETS[coeffs])
    else:
        triples = [tuple(float(x) for x in t) for t in coeffs]  # type: ignore[misc]
        if not triples or any(len(t) != 3 for t in triples):
            raise ValueError(f"coefficients must be a non-empty list of (a, b, c) triples, got {coeffs!r}")
    return [triples[min(i, len(triples) - 1)] for i in range(steps)]  # type: ignore[misc]


def orthogonalize(
    U: Tensor,
    steps: int = NEWTON_SCHULZ["ns_steps"],
    coeffs: str | Sequence[Coeffs] = NEWTON_SCHULZ["ns_coeffs"],
    eps: float = NEWTON_SCHULZ["ns_eps"],
    dtype: torch.dtype | str = NEWTON_SCHULZ["ns_dtype"],
) -> Tensor:
    """Approximate polar factor of the 2-D matrix U (m×n) by quintic Newton–Schulz.

    Defaults: Muon's, `defaults.NEWTON_SCHULZ` (docs/science.md §4). Computation runs in `dtype`: the cast of U, the
    normalisation and every iteration (fp32 by default, since bf16 matmuls are ~15× slower on CPU; the paper ran
    bf16, which the gpt2 presets set through `ns_dtype`). The result is returned in U's dtype, shape (m, n). U itself
    is never modified. A zero U gives a zero result (0 / (0 + eps) = 0), never NaN.
    """
    if U.ndim != 2:
        raise ValueError(f"orthogonalize expects a 2-D matrix, got shape {tuple(U.shape)}")
    schedule = coefficient_schedule(coeffs, steps)
    X = U.to(resolve_dtype(dtype))
    # Work on the wide orientation so that the Gram matrix X·Xᵀ is min(m, n)² (cheaper, and it is the side whose
    # polynomial the coefficients were designed for).
    transposed = U.size(0) > U.size(1)
    if transposed:
        X = X.T
    # ‖X‖_2 ≤ ‖X‖_F, so after this every singular value is ≤ 1: inside the interval the polynomials were tuned on.
    X = X / (X.norm() + eps)
    for a, b, c in schedule:
        A = X @ X.T  # (k, k), k = min(m, n)
        B = torch.addmm(A, A, A, beta=b, alpha=c)  # b·A + c·A·A
        X = torch.addmm(X, B, X, beta=a)  # a·X + B·X
    if transposed:
        X = X.T
    return X.to(U.dtype)
