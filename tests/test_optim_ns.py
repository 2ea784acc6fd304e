"""Newton–Schulz orthogonalisation: coefficient schedule, singular-value band, orientation, dtype, torch oracle."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from specscale.optim.newton_schulz import (
    JORDAN_COEFFS,
    PAPER_COEFFS,
    coefficient_schedule,
    orthogonalize,
    resolve_dtype,
)
from tolerances import ns_tol, rounding_tol


def _random(shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _scalar_schedule(s: torch.Tensor, schedule: list[tuple[float, float, float]]) -> torch.Tensor:
    """What NS does to each singular value: compose p(s) = a·s + b·s³ + c·s⁵ (float64)."""
    for a, b, c in schedule:
        s = a * s + b * s**3 + c * s**5
    return s


@pytest.mark.parametrize("shape", [(64, 32), (32, 64)])
def test_singular_values_in_band_and_vectors_kept(shape: tuple[int, int]) -> None:
    U = _random(shape)
    s = torch.linalg.svdvals(U.double())
    # Precondition of the band: after Frobenius normalisation every singular value is >= 0.01. A 64x32 Gaussian has
    # min s / ||U||_F ~ 0.06, so this holds with a wide margin.
    assert (s / s.norm()).min() >= 0.01
    O = orthogonalize(U)
    assert O.shape == U.shape and O.dtype == torch.float32
    sv = torch.linalg.svdvals(O.double())
    # Band: composing the paper's five polynomials maps every s in [0.01, 1] into [0.97775, 1.03178] (evaluated on a
    # 2e6-point grid), rounded outward; fp32 moves the singular values by at most the spectral-norm error bound tol
    # (≈ 2e-3 here), still inside the slack the band leaves to the ±3.2% it asserts.
    tol = ns_tol(U)
    assert sv.min() >= 0.9777 - tol and sv.max() <= 1.0318 + tol
    # NS keeps the singular vectors: O = A diag(p(s)) Bᵀ, so O differs from the exact polar factor A·Bᵀ by at most
    # max |p(s) − 1| <= 0.0318 in spectral norm, plus the fp32 error.
    A, _, Bh = torch.linalg.svd(U.double(), full_matrices=False)
    assert torch.linalg.matrix_norm(O.double() - A @ Bh, ord=2) <= 0.0318 + tol


# The square case uses seed 11: square Gaussians often have σ_min/‖U‖_F < 0.01 (seed 1: 0.0015), where the first
# polynomials are steep and the fp32 bound grows to within 10× of a swapped coefficient triple's effect; seed 11 has
# 0.026.
@pytest.mark.parametrize(("shape", "seed"), [((48, 16), 1), ((16, 48), 1), ((24, 24), 11)])
def test_matches_exact_svd_of_coefficient_schedule(shape: tuple[int, int], seed: int) -> None:
    # Independent oracle for the per-iteration schedule: apply the composed scalar polynomials to the exact singular
    # values in float64. Any wrong/missing/reordered coefficient triple or a wrong normalisation breaks this.
    U = _random(shape, seed=seed)
    A, s, Bh = torch.linalg.svd(U.double(), full_matrices=False)
    expected = A @ torch.diag(_scalar_schedule(s / s.norm(), list(PAPER_COEFFS))) @ Bh
    # fp32 NS error bound for this U (chains of m·n and max + 2·min products, NS gains): 6-7e-4 here
    tol = ns_tol(U)
    torch.testing.assert_close(orthogonalize(U).double(), expected, atol=tol, rtol=0)
    jordan = A @ torch.diag(_scalar_schedule(s / s.norm(), list(JORDAN_COEFFS) * 5)) @ Bh
    tol_jordan = ns_tol(U, coeffs="jordan")  # Jordan's triple is steeper: larger gains, ≈ 1e-3
    torch.testing.assert_close(orthogonalize(U, coeffs="jordan").double(), jordan, atol=tol_jordan, rtol=0)
    # The tolerances are far below what they must detect: the two schedules differ by ~0.1, and swapping the first
    # two paper triples moves O by 0.037-0.044 here (50-70× tol).
    assert (expected - jordan).abs().max() > 20 * tol_jordan
    swapped = [PAPER_COEFFS[1], PAPER_COEFFS[0], *PAPER_COEFFS[2:]]
    assert (A @ torch.diag(_scalar_schedule(s / s.norm(), swapped)) @ Bh - expected).abs().max() > 20 * tol


def test_equals_torch_muon_oracle_in_bf16() -> None:
    # torch.optim.Muon's NS is bf16-only and takes a single (a, b, c) triple: compare with the same triple, both bf16.
    from torch.optim._muon import _zeropower_via_newtonschulz

    for shape in [(64, 32), (32, 64)]:
        U = _random(shape, seed=2)
        ours = orthogonalize(U, steps=5, coeffs="jordan", dtype=torch.bfloat16)
        theirs = _zeropower_via_newtonschulz(U, JORDAN_COEFFS[0], 5, 1e-7).float()
        assert ours.dtype == torch.float32  # output in U's dtype, computed in bf16
        # Same op sequence (addmm) gives identical bits today. Another kernel could round some entries of a bf16
        # product the other way: one bf16 eps (2^-7, relative) at most per entry, hence in Frobenius norm; the
        # paper schedule, ≈ 0.27 away, is still rejected.
        rel = (ours - theirs).norm() / theirs.norm()
        assert rel <= rounding_tol(torch.bfloat16, 1, safety=1.0), rel


def test_gram_is_min_dimension_squared() -> None:
    # Record every matrix product's output shape: the Gram X·Xᵀ must be min(m, n) x min(m, n) for both orientations.
    class RecordShapes(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.shapes: list[tuple[int, ...]] = []

        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            if getattr(func, "__name__", "") in ("matmul", "__matmul__", "mm", "addmm"):
                self.shapes.append(tuple(out.shape))
            return out

    for shape in [(40, 8), (8, 40)]:
        with RecordShapes() as rec:
            orthogonalize(_random(shape), steps=2)
        # Per iteration: Gram (8, 8), b·A + c·A² (8, 8), update (8, 40).
        assert rec.shapes == [(8, 8), (8, 8), (8, 40)] * 2


def test_transpose_symmetry_zero_input_and_no_mutation() -> None:
    U = _random((20, 12), seed=3)
    U_before = U.clone()
    O = orthogonalize(U)
    assert torch.equal(U, U_before)
    # Same polynomials on Uᵀ (exact arithmetic: identical), but the BLAS calls see other memory layouts: each side is
    # within ns_tol of the exact result. A wrong orientation or missing transpose back would be O(1) off.
    torch.testing.assert_close(orthogonalize(U.T.contiguous()), O.T, atol=2 * ns_tol(U), rtol=0)
    Z = orthogonalize(torch.zeros(6, 4))
    assert torch.equal(Z, torch.zeros(6, 4))


def test_dtype_handling() -> None:
    U = _random((16, 8), seed=4)
    out_bf16_in = orthogonalize(U.bfloat16())  # fp32 compute, result back in bf16
    assert out_bf16_in.dtype == torch.bfloat16
    # The same fp32 computation on the same values, then one round-to-nearest to bf16: |δ| ≤ eps/2·|x| (rtol = eps
    # leaves a factor 2). Computing in bf16 instead would be off by several bf16 eps.
    reference = orthogonalize(U.bfloat16().float())
    torch.testing.assert_close(
        out_bf16_in.float(), reference, atol=0, rtol=rounding_tol(torch.bfloat16, 1, safety=1.0)
    )
    assert orthogonalize(U, dtype="bfloat16").dtype == torch.float32
    assert resolve_dtype("bfloat16") is torch.bfloat16 and resolve_dtype(torch.float32) is torch.float32
    with pytest.raises(ValueError, match="unknown Newton-Schulz dtype"):
        orthogonalize(U, dtype="int8")


def test_coefficient_schedule_and_errors() -> None:
    assert coefficient_schedule("paper", 5) == list(PAPER_COEFFS)
    assert coefficient_schedule("paper", 3) == list(PAPER_COEFFS[:3])
    assert coefficient_schedule("paper", 7) == list(PAPER_COEFFS) + [PAPER_COEFFS[-1]] * 2
    assert coefficient_schedule("jordan", 4) == [(3.4445, -4.7750, 2.0315)] * 4
    assert coefficient_schedule([(1, 0, 0)], 2) == [(1.0, 0.0, 0.0)] * 2
    with pytest.raises(ValueError, match="unknown Newton-Schulz coefficients"):
        coefficient_schedule("polar", 5)
    with pytest.raises(ValueError, match="at least one step"):
        coefficient_schedule("paper", 0)
    with pytest.raises(ValueError, match="triples"):
        coefficient_schedule([(1.0, 2.0)], 1)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="2-D"):
        orthogonalize(torch.ones(2, 3, 4))
