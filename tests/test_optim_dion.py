"""Dion: rank rule, f = 1 reduces to heavy ball, rank ≤ r, error feedback by hand, zero guard, seeding, orientation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from specscale.optim import Dion, dion_rank, initial_q

LR, MU, WD = 0.1, 0.9, 0.05


def _rand(shape: tuple[int, int], seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _update(opt: Dion, p: nn.Parameter, G: torch.Tensor, wd: float = 0.0) -> torch.Tensor:
    """One step; returns the direction D with W_new = (1 − lr·wd)·W − lr·√(m/n)·D."""
    before = p.detach().clone()
    p.grad = G.clone()
    opt.step()
    m, n = p.shape
    return ((1 - LR * wd) * before - p.detach()) / (LR * math.sqrt(m / n))


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
    buf = torch.zeros(shape)
    for t in range(3):
        G = _rand(shape, 10 + t)
        D = _update(opt, p, G)
        # f = 1: P spans the whole column space of B, so the captured part is all of M: M ← μ·(M + G).
        buf = MU * (buf + G)
        torch.testing.assert_close(opt.state[p]["M"], buf, atol=1e-5, rtol=0)
        # The update lives in M's column space (tall) / row space (wide) and has full rank k = 4 ...
        acc = buf / MU  # M + G before the feedback
        basis = torch.linalg.qr(acc if shape[0] >= shape[1] else acc.T).Q  # (8, 4)
        big_side = D if shape[0] >= shape[1] else D.T  # (8, 4)
        torch.testing.assert_close(basis @ (basis.T @ big_side), big_side, atol=1e-5, rtol=0)
        assert torch.linalg.matrix_rank(D) == 4
        # ... and is a sum of k rank-one terms p_i q_iᵀ with orthonormal p_i and unit q_i: ‖D‖_F² = r exactly.
        torch.testing.assert_close(D.norm() ** 2, torch.tensor(4.0), atol=1e-4, rtol=0)


def test_low_rank_update_and_residual_kept() -> None:
    shape, f = (16, 12), 0.25
    r = dion_rank(shape, f)
    assert r == 3
    p = nn.Parameter(_rand(shape, 1))
    opt = Dion([p], lr=LR, momentum=MU, weight_decay=0.0, rank_fraction=f)
    G = _rand(shape, 2)
    D = _update(opt, p, G)
    assert torch.linalg.matrix_rank(D) == r
    torch.testing.assert_close(D.norm() ** 2, torch.tensor(float(r)), atol=1e-4, rtol=0)
    # Error feedback removes only (1 − μ) times a rank-r part: G − M_new has rank r, and the residual
    # (M_new − μ·G)/(1 − μ) = G − captured keeps most of a random G's energy (a rank-3 part of a 16x12 Gaussian
    # holds well under half of it), i.e. nothing the step missed is thrown away.
    M = opt.state[p]["M"]
    assert torch.linalg.matrix_rank(G - M) == r
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
    for G in (G1, G2):
        M = M + G.double()
        B = M if tall else M.T
        P = torch.linalg.qr(B @ Q).Q  # (big, r)
        # Captured part = projection of B onto span(P); error feedback keeps the rest plus μ times the captured part.
        captured = P @ (P.T @ B)
        M = M - (1 - MU) * (captured if tall else captured.T)
        R = B.T @ P  # (k, r)
        Q = R / (R.norm(dim=0, keepdim=True) + 1e-8)
        D = P @ Q.T if tall else Q @ P.T
        W = (1 - LR * WD) * W - LR * math.sqrt(shape[0] / shape[1]) * D
    torch.testing.assert_close(opt.state[p]["M"].double(), M, atol=1e-5, rtol=0)
    torch.testing.assert_close(opt.state[p]["Q"].double(), Q, atol=1e-5, rtol=0)
    torch.testing.assert_close(p.detach().double(), W, atol=1e-6, rtol=0)


def test_zero_gradient_guard() -> None:
    W0 = _rand((6, 4), 6)
    p = nn.Parameter(W0.clone())
    opt = Dion([p], lr=LR, momentum=MU, weight_decay=WD, rank_fraction=0.5, seed=9)
    p.grad = torch.zeros(6, 4)
    opt.step()
    assert torch.isfinite(p.detach()).all()
    assert torch.equal(p.detach(), W0 * (1 - LR * WD))  # only decayed
    assert torch.equal(opt.state[p]["M"], torch.zeros(6, 4))
    Q0 = initial_q((6, 4), 2, 9, 0)
    torch.testing.assert_close(opt.state[p]["Q"], Q0 / (Q0.norm(dim=0, keepdim=True) + 1e-8), atol=1e-7, rtol=0)


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
    for _ in range(2):
        D_t = _update(opt_t, tall, G)
        D_w = _update(opt_w, wide, G.T.contiguous())
        torch.testing.assert_close(D_w, D_t.T, atol=1e-5, rtol=0)
