"""Dion: rank rule, f = 1 reduces to heavy ball, rank ≤ r, error feedback by hand, zero guard, seeding, orientation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from specscale.optim.dion import Dion, dion_rank, initial_q
from tolerances import dion_tol, rounding_tol

LR, MU, WD = 0.1, 0.9, 0.05
F32 = torch.float32


def _rand(shape: tuple[int, int], seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _update(opt: Dion, p: nn.Parameter, G: torch.Tensor, wd: float = 0.0) -> torch.Tensor:
    """One step; returns the direction D with W_new = (1 − lr·wd)·W − lr·√(m/n)·D, read back in float64."""
    before = p.detach().double()
    p.grad = G.clone()
    opt.step()
    m, n = p.shape
    return ((1 - LR * wd) * before - p.detach().double()) / (LR * math.sqrt(m / n))


def _readback_tol(W: torch.Tensor) -> float:
    """Error of D read back from fp32 weights: the update's five roundings at |W| (two products, a sum, two Python
    factors cast to fp32), divided by lr·scale."""
    m, n = W.shape
    return rounding_tol(F32, 5, magnitude=W.abs().max()) / (LR * math.sqrt(m / n))


def _state_q(opt: Dion, p: nn.Parameter, r: int, index: int = 0, seed: int = 0) -> torch.Tensor:
    """The Q the next step starts from (the parameter's starting Q before its first step)."""
    state = opt.state[p]
    return state["Q"].clone() if "Q" in state else initial_q(p.shape, r, seed, index)


def _big_side(M: torch.Tensor) -> torch.Tensor:
    return M if M.size(0) >= M.size(1) else M.T


def test_rank_rule() -> None:
    assert dion_rank((64, 32), 0.5) == 16
    assert dion_rank((32, 64), 0.5) == 16
    assert dion_rank((768, 3072), 1 / 16) == 48
    assert dion_rank((30, 40), 0.1) == 3  # 0.1·30 = 3.0000000000000004 in floats: still 3
    assert dion_rank((10, 7), 0.3) == 3  # ceil(2.1)
    assert dion_rank((5, 9), 1.0) == 5
    assert dion_rank((5, 9), 0.01) == 1  # ceil(0.05)
    for bad in (0.0, -0.5, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match=r"rank_fraction must be a number in \(0, 1\]"):
            dion_rank((4, 4), bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rank_fraction"):
        Dion([nn.Parameter(torch.ones(4, 4))], rank_fraction=0.0)


@pytest.mark.parametrize("shape", [(8, 4), (4, 8)])
def test_full_rank_is_heavy_ball_with_column_normalised_direction(shape: tuple[int, int]) -> None:
    p = nn.Parameter(_rand(shape, 0))
    opt = Dion([p], lr=LR, momentum=MU, weight_decay=0.0, rank_fraction=1.0)
    buf = torch.zeros(shape, dtype=torch.float64)  # float64 oracle
    tol_M = 0.0
    for t in range(3):
        G = _rand(shape, 10 + t)
        acc = buf + G.double()  # M + G before the feedback
        # Error bounds of this fp32 step (dion_tol: QR chain × κ(B·Q) × column-norm ratio). With f = 1,
        # span(B·Q) = span(B) for any invertible Q, so only M's error carries into the next step (normwise,
        # ≤ √(m·n)·tol_M relative to ‖M + G‖₂).
        carried = math.sqrt(acc.numel()) * tol_M / torch.linalg.matrix_norm(acc, ord=2).item()
        direction, captured = dion_tol(_big_side(acc), _state_q(opt, p, 4), input_rel=carried, input_ops=1)
        W_before = p.detach().clone()
        D = _update(opt, p, G)
        tol_D = _readback_tol(W_before) + direction
        # f = 1: P spans the whole column space of B, so the captured part is all of M: M ← μ·(M + G). Error: the
        # earlier error (×μ), (1 − μ) × the captured part's, two roundings of M ← M + G − (1 − μ)·captured. Without
        # error feedback (M ← M + G) or with the wrong decay M would be off by O(1).
        buf = MU * acc
        tol_M = MU * tol_M + (1 - MU) * captured + rounding_tol(F32, 3, magnitude=acc.abs().max())
        torch.testing.assert_close(opt.state[p]["M"].double(), buf, atol=tol_M, rtol=0)
        # The update lives in M's column space (tall) / row space (wide) and has full rank k = 4 ...
        basis = torch.linalg.qr(_big_side(acc)).Q  # (8, 4), float64
        big_side = _big_side(D)  # (8, 4)
        # (I − basis·basisᵀ)·ΔD: each entry ≤ the 2-norm of ΔD's column, ≤ √8 · tol_D. A random (8, 4) direction
        # would leave O(1) outside the 4-dim column space.
        torch.testing.assert_close(basis @ (basis.T @ big_side), big_side, atol=math.sqrt(8) * tol_D, rtol=0)
        # numerical rank: singular values of ΔD are ≤ ‖ΔD‖_F ≤ √32 · tol_D; D's own are O(1)
        noise = math.sqrt(D.numel()) * tol_D
        assert torch.linalg.matrix_rank(D, atol=noise, rtol=0) == 4
        # ... and is a sum of k rank-one terms p_i q_iᵀ with orthonormal p_i and unit q_i: ‖D‖_F² = r exactly
        # (‖D‖_F = 2: the square's error is ≤ 2·2·‖ΔD‖_F + ‖ΔD‖_F²). A missing column normalisation is O(1) off.
        torch.testing.assert_close(D.norm() ** 2, torch.tensor(4.0).double(), atol=4 * noise + noise**2, rtol=0)


def test_low_rank_update_and_residual_kept() -> None:
    shape, f = (16, 12), 0.25
    r = dion_rank(shape, f)
    assert r == 3
    p = nn.Parameter(_rand(shape, 1))
    opt = Dion([p], lr=LR, momentum=MU, weight_decay=0.0, rank_fraction=f)
    G = _rand(shape, 2)
    direction, captured = dion_tol(G, initial_q(shape, r, 0, 0))  # B = M = G (tall), float64 bound
    tol_D = _readback_tol(p.detach()) + direction
    D = _update(opt, p, G)
    noise = math.sqrt(D.numel()) * tol_D  # ≥ ‖ΔD‖_F ≥ every singular value of the error
    assert torch.linalg.matrix_rank(D, atol=noise, rtol=0) == r
    assert torch.linalg.svdvals(D)[r - 1] > 100 * noise  # the r-th direction is real, not rounding
    # ‖D‖_F² = r: error ≤ 2·√r·‖ΔD‖_F + ‖ΔD‖_F²; rank r − 1 or unnormalised columns would be off by O(1)
    torch.testing.assert_close(
        D.norm() ** 2, torch.tensor(float(r)).double(), atol=2 * math.sqrt(r) * noise + noise**2, rtol=0
    )
    # Error feedback removes only (1 − μ) times a rank-r part: G − M_new has rank r, and the residual
    # (M_new − μ·G)/(1 − μ) = G − captured keeps most of a random G's energy (a rank-3 part of a 16x12 Gaussian
    # holds well under half of it), i.e. nothing the step missed is thrown away.
    M = opt.state[p]["M"]
    # G − M in fp32: M = G − (1 − μ)·captured has the captured part's error times (1 − μ) plus 3 roundings at |G|,
    # and the subtraction one more; the error matrix's singular values are ≤ √(m·n) × that.
    rank_noise = math.sqrt(G.numel()) * ((1 - MU) * captured + rounding_tol(F32, 4, magnitude=G.abs().max()))
    assert torch.linalg.matrix_rank((G - M).double(), atol=rank_noise, rtol=0) == r
    assert torch.linalg.svdvals((G - M).double())[r - 1] > 100 * rank_noise
    residual = (M - MU * G) / (1 - MU)
    assert residual.norm() > 0.5 * G.norm()
    assert opt.state[p]["Q"].shape == (12, r)


@pytest.mark.parametrize("shape", [(10, 6), (6, 10)])
def test_error_feedback_two_steps_by_hand(shape: tuple[int, int]) -> None:
    f, seed = 0.5, 123
    r = dion_rank(shape, f)
    tall = shape[0] >= shape[1]
    W0 = _rand(shape, 3)
    p = nn.Parameter(W0.clone())
    opt = Dion([p], lr=LR, momentum=MU, weight_decay=WD, rank_fraction=f, seed=seed)
    G1, G2 = _rand(shape, 4), _rand(shape, 5)
    p.grad = G1.clone()
    opt.step()
    p.grad = G2.clone()
    opt.step()

    # Hand computation in float64, written in "big-side" form: B = M (tall) or Mᵀ (wide), shape (big, k).
    Q = initial_q(shape, r, seed, index=0).double()  # (k, r)
    M = torch.zeros(shape, dtype=torch.float64)
    W = W0.double()
    # Error bounds along the way (dion_tol per step, the earlier step's relative error carried in through M and Q;
    # M and W add their own roundings: M ← M + G − (1 − μ)·captured, 3; the weight update, 5 at |W|).
    tol_M = tol_W = carried = 0.0
    for G in (G1, G2):
        M = M + G.double()
        B = M if tall else M.T
        direction, tol_captured = dion_tol(B, Q, input_rel=carried, input_ops=1)
        carried = direction
        tol_M += (1 - MU) * tol_captured + rounding_tol(F32, 3, magnitude=M.abs().max())
        tol_W += rounding_tol(F32, 5, magnitude=W.abs().max()) + LR * math.sqrt(shape[0] / shape[1]) * direction
        P = torch.linalg.qr(B @ Q).Q  # (big, r)
        # Captured part = projection of B onto span(P); error feedback keeps the rest plus μ times the captured part.
        captured = P @ (P.T @ B)
        M = M - (1 - MU) * (captured if tall else captured.T)
        R = B.T @ P  # (k, r)
        Q = R / (R.norm(dim=0, keepdim=True) + 1e-8)
        D = P @ Q.T if tall else Q @ P.T
        W = (1 - LR * WD) * W - LR * math.sqrt(shape[0] / shape[1]) * D
    torch.testing.assert_close(opt.state[p]["M"].double(), M, atol=tol_M, rtol=0)
    torch.testing.assert_close(opt.state[p]["Q"].double(), Q, atol=carried, rtol=0)
    torch.testing.assert_close(p.detach().double(), W, atol=tol_W, rtol=0)
    # Far below the effect: plain heavy-ball momentum (M ← μ·M + G, no error feedback) would differ by O(1) here.
    assert (M - (MU * G1.double() + G2.double())).abs().max() > 100 * tol_M


def test_zero_gradient_guard() -> None:
    W0 = _rand((6, 4), 6)
    p = nn.Parameter(W0.clone())
    opt = Dion([p], lr=LR, momentum=MU, weight_decay=WD, rank_fraction=0.5, seed=9)
    p.grad = torch.zeros(6, 4)
    opt.step()
    assert torch.isfinite(p.detach()).all()
    assert torch.equal(p.detach(), W0 * (1 - LR * WD))  # only decayed
    assert torch.equal(opt.state[p]["M"], torch.zeros(6, 4))
    Q0 = initial_q((6, 4), 2, 9, 0).double()
    # float64 oracle; fp32 column norm of k = 4 terms, + eps, division: 7 roundings on unit-norm columns
    expected = Q0 / (Q0.norm(dim=0, keepdim=True) + 1e-8)
    torch.testing.assert_close(opt.state[p]["Q"].double(), expected, atol=rounding_tol(F32, 7), rtol=0)


def test_q_seeding_is_per_parameter_and_deterministic() -> None:
    def fresh_q() -> list[torch.Tensor]:
        ps = [nn.Parameter(torch.zeros(6, 4)), nn.Parameter(torch.zeros(6, 4))]
        opt = Dion(ps, rank_fraction=0.5, seed=5)
        for p in ps:
            p.grad = torch.zeros(6, 4)  # zero guard: Q ← Q0 column-normalised, so Q reveals Q0
        opt.step()
        return [opt.state[p]["Q"].clone() for p in ps]

    torch.manual_seed(0)
    a = fresh_q()
    torch.manual_seed(1)  # the global RNG must not matter
    b = fresh_q()
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.allclose(a[0], a[1])  # two parameters of one shape get different starting Q
    assert not torch.equal(initial_q((6, 4), 2, 5, 0), initial_q((6, 4), 2, 6, 0))


def test_wide_is_transpose_of_tall() -> None:
    # Orientation: Dion on Wᵀ with Gᵀ must take the transposed direction (same Q seed, same big-side algebra).
    G = _rand((9, 5), 7)
    tall = nn.Parameter(_rand((9, 5), 8))
    wide = nn.Parameter(tall.detach().T.clone())
    opt_t = Dion([tall], lr=LR, weight_decay=0.0, rank_fraction=0.4)
    opt_w = Dion([wide], lr=LR, weight_decay=0.0, rank_fraction=0.4)
    carried = 0.0
    for _ in range(2):
        # Same algebra in exact arithmetic, different memory layouts for BLAS: each side within its bound
        # (dion_tol on the tall side's B = M + G, earlier error carried; D read back from the weights) of the exact
        # direction. A wrong orientation would be O(1) off.
        B = (opt_t.state[tall]["M"].double() if "M" in opt_t.state[tall] else 0.0) + G.double()
        direction, _ = dion_tol(B, _state_q(opt_t, tall, 2), input_rel=carried, input_ops=1)
        carried = direction
        tol = _readback_tol(tall.detach()) + _readback_tol(wide.detach()) + 2 * direction
        D_t = _update(opt_t, tall, G)
        D_w = _update(opt_w, wide, G.T.contiguous())
        torch.testing.assert_close(D_w, D_t.T, atol=tol, rtol=0)
