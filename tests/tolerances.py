"""Floating-point tolerances for the tests, derived from the dtype's epsilon and the size of the computation.

Model (standard forward error analysis; Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., §2-3):
every rounded operation (a multiply, an add, a cast, a sqrt) has a relative error of at most u = eps/2. A result
that comes out of a chain of n such operations (a dot product or sum of n terms, n successive updates) is within
about n·eps of the exact value, relative to the size of the numbers involved (`magnitude`). This bound assumes
that every rounding error points the same way; in practice they partly cancel (typical error ~√n·u), so it is
loose by a wide margin. `safety` (default 8) covers what an operation count leaves out: a few uncounted casts,
intermediates somewhat larger than `magnitude`, a BLAS kernel that blocks its sums differently on another CPU.

n·eps does *not* cover amplification by the problem itself (its condition number). Where a computation amplifies
its rounding errors, the test multiplies by a gain and says which:
  * Newton-Schulz: the quintic polynomials are steep, see `ns_gains` / `ns_tol`.
  * QR (Dion's power iteration): the basis of X moves by about κ(X) times X's relative perturbation.

Comparisons of identical computations (resume equality, the same op sequence on the same data) stay bit-for-bit
(atol = rtol = 0): they are not rounding questions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def eps(dtype: Any) -> float:
    """Machine epsilon (the spacing of floats at 1.0) of a torch or numpy float dtype.

    float64: 2^-52 ≈ 2.2e-16, float32: 2^-23 ≈ 1.2e-7, bfloat16: 2^-7 ≈ 7.8e-3, float16: 2^-10 ≈ 9.8e-4.
    """
    if isinstance(dtype, torch.dtype):
        return float(torch.finfo(dtype).eps)
    return float(np.finfo(dtype).eps)


def rounding_tol(dtype: Any, n_ops: float, magnitude: float = 1.0, safety: float = 8.0) -> float:
    """Absolute tolerance for a result reached through a chain of about `n_ops` rounded operations in `dtype` on
    numbers of size `magnitude`: safety · n_ops · eps(dtype) · magnitude (see the module docstring).

    Pass magnitude = 1 to get a relative tolerance (rtol, or a bound on a relative error).
    """
    if not n_ops >= 1:
        raise ValueError(f"n_ops must be >= 1, got {n_ops}")
    return float(safety * n_ops * eps(dtype) * float(magnitude))


# --- Newton-Schulz ----------------------------------------------------------------------------------------------


def ns_gains(coeffs: str | Sequence[tuple[float, float, float]] = "paper", steps: int = 5,
             s_min: float = 0.01) -> tuple[float, float, float]:
    """First-order error gains of quintic Newton-Schulz for normalised singular values s in [s_min, 1].

    Step u maps each singular value by p_u(s) = a·s + b·s³ + c·s⁵, so a small error in the singular values (and, via
    divided differences of the same polynomials, in the singular vectors; we take the same factor for them) present
    before step u is multiplied by |p_u'| there. Evaluated along each s's trajectory on a grid, returns

      g_input: max |P'(s)|, P = p_steps ∘ … ∘ p_1: an error already in U (the momentum and Nesterov updates before
               NS) goes through all steps. ≈ 21 for the paper schedule and s_min = 0.01, but ∏a ≈ 490 as s_min → 0.
      g_scale: max |s·P'(s)|: the Frobenius normalisation rescales every s by the same (1 + δ). ≈ 7 for any s_min.
      g_iter:  max Σ_t ∏_{u>t} |p_u'(s)|: errors made inside step t go through the steps after it. ≈ 9 (paper,
               s_min = 0.01), ≈ 38 for Jordan's triple repeated five times.
    """
    from specscale.optim.newton_schulz import coefficient_schedule

    x = np.linspace(float(s_min), 1.0, 100_001)
    s = x.copy()
    slopes = []
    for a, b, c in coefficient_schedule(coeffs, steps):
        slopes.append(np.abs(a + 3 * b * x**2 + 5 * c * x**4))
        x = a * x + b * x**3 + c * x**5
    after = np.ones_like(s)  # ∏ of the slopes of the steps after t, for t = steps, steps − 1, ..., 1
    g_iter = np.ones_like(s)
    for slope in reversed(slopes[1:]):
        after = after * slope
        g_iter = g_iter + after
    composite = after * slopes[0]
    return float(composite.max()), float(np.abs(s * composite).max()), float(g_iter.max())


def ns_tol(U: torch.Tensor, coeffs: str | Sequence[tuple[float, float, float]] = "paper", steps: int = 5,
           input_ops: int = 0, dtype: torch.dtype = torch.float32, magnitude: float = 1.0,
           safety: float = 1.0) -> float:
    """Bound on the error of `orthogonalize(U)` computed in `dtype`, entrywise and in spectral norm (the output has
    singular values ≈ 1, so magnitude = 1 measures it in its own units).

    Rounded-operation chains, each times its gain from `ns_gains` (s_min = σ_min(U)/‖U‖_F, computed here in float64):
      * `input_ops` operations that already went into U's entries (e.g. 3 for μ·(μ·M + G) + G), gain g_input;
      * the Frobenius normalisation, a sum of m·n squares, gain g_scale;
      * one iteration: Gram X·Xᵀ (dot products of length max(m, n)), A·A and B·X (length min(m, n)), and three
        scalings/additions, gain g_iter (which already sums over the iterations).
    `safety` defaults to 1: the n·eps chains and the gains are each worst cases, and their product already over-
    estimates the errors measured for the matrices in these tests (4-10 eps in fp32) by more than 25×.
    """
    m, n = int(U.shape[0]), int(U.shape[1])
    s = torch.linalg.svdvals(U.detach().double())
    s_min = float(s.min() / s.norm()) if float(s.norm()) > 0 else 0.0
    g_input, g_scale, g_iter = ns_gains(coeffs, steps, s_min)
    weighted_ops = input_ops * g_input + m * n * g_scale + (max(m, n) + 2 * min(m, n) + 3) * g_iter
    return rounding_tol(dtype, weighted_ops, magnitude, safety)


# --- Dion ---------------------------------------------------------------------------------------------------------


def dion_tol(B: torch.Tensor, Q: torch.Tensor, input_rel: float = 0.0, input_ops: int = 0,
             dtype: torch.dtype = torch.float32, safety: float = 1.0) -> tuple[float, float]:
    """Bounds on the errors of one Dion power-iteration step computed in `dtype`, from float64 copies of its inputs:
    B (big×k, the big-side view of the accumulator M + G) and the warm start Q (k×r).

    Returns (direction, captured):
      direction: entrywise error of Q_new = R/‖R_{:,i}‖ and of D = P·Q_newᵀ (entries ≤ 1), and the relative error
                 that carries into the next step through M and Q;
      captured:  entrywise error of the captured part P·Rᵀ, absolute (units of B).
    Model: a chain of input_ops (already in B) + k (B·Q) + big·r (Householder QR, backward error ~ big·r·eps) +
    big (R = Bᵀ·P) + r (P·Rᵀ, P·Q_newᵀ) + k + 3 (column norms, + eps, division) rounded operations, relative to
    ‖B‖₂, plus `input_rel` (a relative error B and Q already carry, e.g. from an earlier step). The orthonormal basis
    P of B·Q moves by κ(B·Q) times that; normalising R's columns divides by their norms, which amplifies by
    ρ = ‖B‖₂ / min_i ‖R_{:,i}‖ ≥ 1. `safety` defaults to 1: chain, κ and ρ are each worst cases.
    """
    B64, Q64 = B.detach().double(), Q.detach().double()
    big, k = B64.shape
    r = Q64.shape[1]
    X = B64 @ Q64
    sv = torch.linalg.svdvals(X)
    kappa = float(sv[0] / sv[-1])
    P = torch.linalg.qr(X).Q
    norm_b = float(torch.linalg.matrix_norm(B64, ord=2))
    rho = norm_b / float((B64.T @ P).norm(dim=0).min())
    n_ops = input_ops + k + big * r + big + r + k + 3
    rel = kappa * (input_rel + rounding_tol(dtype, n_ops, 1.0, safety))
    return rel * rho, rel * norm_b
