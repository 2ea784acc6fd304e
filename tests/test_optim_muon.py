"""Muon and NorMuon steps against hand computations; scale rules; gradients untouched; DDP equals full batch."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from specscale.optim.dion import Dion, initial_q
from specscale.optim.lion import Lion
from specscale.optim.muon import Muon
from specscale.optim.normuon import NorMuon
from specscale.optim.newton_schulz import orthogonalize
from specscale.optim.matrix_base import shape_scale
from tolerances import dion_tol, ns_tol, rounding_tol

LR, MU, WD = 0.1, 0.9, 0.05
F32 = torch.float32

W0 = torch.tensor([[1.0, -2.0], [0.5, 0.0], [-1.0, 3.0], [2.0, 1.0]])  # (4, 2): tall, fan_out 4, fan_in 2
G1 = torch.tensor([[0.3, -0.1], [0.0, 0.2], [-0.4, 0.5], [0.1, 0.1]])
G2 = torch.tensor([[-0.2, 0.4], [0.3, -0.1], [0.2, 0.0], [-0.5, 0.3]])


def _param(W: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(W.clone())


def _step(opt: torch.optim.Optimizer, p: nn.Parameter, G: torch.Tensor) -> None:
    p.grad = G.clone()
    opt.step()


def _ns64(U: torch.Tensor) -> torch.Tensor:
    """The float64 oracle of the fp32 Newton–Schulz: the same polynomials on a float64 copy of U."""
    return orthogonalize(U.double(), dtype=torch.float64)


def _update_tol(W: torch.Tensor, direction_tol: float, scale: float) -> float:
    """Error of one fp32 step W ← (1 − lr·wd)·W − lr·scale·O against float64: five roundings at |W| (two products,
    their sum, the two Python-float factors cast to fp32) plus lr·scale times the error of O."""
    return rounding_tol(F32, 5, magnitude=W.abs().max()) + LR * scale * direction_tol


def test_muon_two_steps_by_hand() -> None:
    p = _param(W0)
    opt = Muon([p], lr=LR, momentum=MU, nesterov=True, weight_decay=WD, scale_rule="spectral")
    scale = math.sqrt(4 / 2)  # spectral rule, tall 4x2

    # Oracle in float64. Effects tested are O(1e-2) in W (Nesterov or not, the weight decay, the scale √2); the
    # tolerances below are ≲ 1e-4.
    _step(opt, p, G1)
    M1 = G1.double()  # 0·μ + G1
    U1 = MU * M1 + G1.double()  # Nesterov look-ahead, before NS
    W1 = (1 - LR * WD) * W0.double() - LR * scale * _ns64(U1)
    # fp32 NS of U1 (3 roundings already in U: μ cast, product, sum) inside one fp32 weight update
    tol1 = _update_tol(W0, ns_tol(U1, input_ops=3), scale)
    torch.testing.assert_close(p.data.double(), W1, atol=tol1, rtol=0)
    # 0·μ + G1 = G1 in any precision: exact by design
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], G1, atol=0, rtol=0)

    _step(opt, p, G2)
    M2 = MU * M1 + G2.double()
    U2 = MU * M2 + G2.double()
    W2 = (1 - LR * WD) * W1 - LR * scale * _ns64(U2)
    # μ·M + G in fp32: the μ cast, a product, a sum at |M2|; the EMA form (1 − μ)·G instead would be off by O(0.1)
    torch.testing.assert_close(
        opt.state[p]["momentum_buffer"].double(), M2, atol=rounding_tol(F32, 3, magnitude=M2.abs().max()), rtol=0
    )
    # step 1's error carried (×0.995) plus step 2's: NS input has 6 roundings (two momentum updates)
    tol2 = tol1 + _update_tol(W2, ns_tol(U2, input_ops=6), scale)
    torch.testing.assert_close(p.data.double(), W2, atol=tol2, rtol=0)


def test_muon_without_nesterov_uses_buffer() -> None:
    p = _param(W0)
    opt = Muon([p], lr=LR, momentum=MU, nesterov=False, weight_decay=0.0)
    _step(opt, p, G1)
    _step(opt, p, G2)
    M2 = MU * G1.double() + G2.double()
    expected = W0.double() - LR * math.sqrt(2) * (_ns64(G1.double()) + _ns64(M2))  # float64 oracle
    # two fp32 updates; NS inputs carry 0 and 3 roundings. Using U = μ·M + G instead moves W by O(1e-2).
    tol = _update_tol(W0, ns_tol(G1), math.sqrt(2)) + _update_tol(expected, ns_tol(M2, input_ops=3), math.sqrt(2))
    torch.testing.assert_close(p.data.double(), expected, atol=tol, rtol=0)


@pytest.mark.parametrize(
    ("rule", "shape", "scale"),
    [
        ("spectral", (4, 2), math.sqrt(2)),
        ("spectral", (2, 4), math.sqrt(0.5)),  # unclamped: wide matrices are scaled down
        ("max1", (4, 2), math.sqrt(2)),
        ("max1", (2, 4), 1.0),
        ("moonlight", (2, 4), 0.2 * 2.0),
        ("moonlight", (4, 2), 0.2 * 2.0),
    ],
)
def test_scale_rules_in_step(rule: str, shape: tuple[int, int], scale: float) -> None:
    # float64 on both sides: a sqrt or a product and a ratio, ≤ 3 roundings (the rules differ by ≥ 10%)
    assert shape_scale(rule, shape) == pytest.approx(scale, rel=rounding_tol(torch.float64, 3))
    W = W0 if shape == (4, 2) else W0.T.contiguous()
    G = G1 if shape == (4, 2) else G1.T.contiguous()
    p = _param(W)
    opt = Muon([p], lr=LR, momentum=MU, weight_decay=0.0, scale_rule=rule)
    _step(opt, p, G)
    U = (1 + MU) * G.double()
    # The step read back in float64: the fp32 update's roundings at |W| divided by lr, plus scale × the fp32 NS error
    # (U = G + μ·G: 3 roundings). Rules differ by factors ≥ √2 on entries of size ~0.5.
    tol = _update_tol(W, ns_tol(U, input_ops=3), scale) / LR
    torch.testing.assert_close((W.double() - p.data.double()) / LR, scale * _ns64(U), atol=tol, rtol=0)


def test_unknown_scale_rule_and_non_matrix_params_rejected() -> None:
    with pytest.raises(ValueError, match="scale_rule"):
        Muon([_param(W0)], scale_rule="sqrt")
    for cls in (Muon, NorMuon, Dion):
        with pytest.raises(ValueError, match="only optimizes 2-D"):
            cls([nn.Parameter(torch.ones(3))])


def test_constructor_validation_and_bf16_ns() -> None:
    with pytest.raises(ValueError, match="beta2"):
        NorMuon([_param(W0)], beta2=1.0)
    with pytest.raises(TypeError):
        Muon([_param(W0)], beta2=0.9)  # a NorMuon-only argument is not silently accepted by Muon
    with pytest.raises(ValueError, match="momentum"):
        Muon([_param(W0)], momentum=1.0)
    # bf16 Newton-Schulz (the GPU setting) stays within bf16 rounding of the fp32 step; state dicts keep plain names.
    p32, p16 = _param(W0), _param(W0)
    opt16 = Muon([p16], lr=LR, ns_dtype=torch.bfloat16)
    assert opt16.param_groups[0]["ns_dtype"] == "bfloat16"
    _step(Muon([p32], lr=LR), p32, G1)
    _step(opt16, p16, G1)
    assert p16.dtype == torch.float32
    # bf16 (eps 2^-7): products accumulate in fp32, so each of the 5 NS steps rounds its result to bf16 once more;
    # allow one bf16 eps per step on O's O(1) entries, times lr·√2 (measured: 1.1 eps). The worst-case NS gain is
    # left out: with it any bf16 bound exceeds 1. Still 7× below the Jordan-vs-paper-schedule difference (0.04).
    # The fp32 step's own error (NS of U = G + 0.95·G, 3 roundings) is added to the bf16 one.
    U = 1.95 * G1.double()
    bf16_ns = rounding_tol(torch.bfloat16, 5, safety=1.0)
    tol = _update_tol(W0, bf16_ns + ns_tol(U, input_ops=3), math.sqrt(2)) + rounding_tol(F32, 5, magnitude=3.0)
    torch.testing.assert_close(p16.data, p32.data, atol=tol, rtol=0)


@pytest.mark.parametrize("make", [Muon, NorMuon, Dion, Lion])
def test_gradient_is_not_modified(make: type) -> None:
    p = _param(W0)
    opt = make([p])
    for G in (G1, G2):
        p.grad = G.clone()
        opt.step()
        assert torch.equal(p.grad, G)


def test_normuon_two_steps_by_hand() -> None:
    beta2, eps = 0.8, 1e-8
    p = _param(W0)
    opt = NorMuon([p], lr=LR, momentum=MU, weight_decay=WD, beta2=beta2, eps=eps)
    scale = math.sqrt(2)

    # Oracle in float64. Error propagation through NorMuon's statistics, given a bound tol_O on O's entries:
    #   s = mean_j O_ij² (n = 2 columns): |Δs| ≤ 2·max|O|·tol_O + (n + 2) roundings at |s|;
    #   v ← v + (1 − β₂)(s − v): |Δv| ≤ β₂|Δv_old| + (1 − β₂)|Δs| + 3 roundings (lerp) at |v|;
    #   row i of the direction is O_i/√v_i rescaled to ‖O‖_F: relative error ≤ tol_O/rms(O_i) + |Δv_i|/(2 v_i),
    #   at most doubled by the common rescale, plus the two norms' fp32 chains (m·n terms each).
    def normalised(O: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        O_hat = O / (v.sqrt() + eps)
        return O_hat * (O.norm() / O_hat.norm())

    def s_tol(O: torch.Tensor, tol_O: float) -> float:
        s = O.square().mean(dim=1, keepdim=True)
        return 2 * O.abs().max().item() * tol_O + rounding_tol(F32, O.size(1) + 2, magnitude=s.max())

    def direction_tol(O: torch.Tensor, v: torch.Tensor, tol_O: float, tol_v: float) -> float:
        rel = (tol_O / O.square().mean(dim=1).sqrt() + tol_v / (2 * v.squeeze(1))).max().item()
        return (2 * rel + rounding_tol(F32, 2 * O.numel() + 4)) * normalised(O, v).abs().max().item()

    _step(opt, p, G1)
    U1 = (1 + MU) * G1.double()
    O1 = _ns64(U1)
    s1 = (O1**2).mean(dim=1, keepdim=True)  # (4, 1): one value per output row
    v1 = (1 - beta2) * s1  # v starts at 0, no bias correction
    W1 = (1 - LR * WD) * W0.double() - LR * scale * normalised(O1, v1)
    tol_O1 = ns_tol(U1, input_ops=3)  # U = G + μ·G: 3 roundings
    tol_v1 = (1 - beta2) * s_tol(O1, tol_O1) + rounding_tol(F32, 3, magnitude=v1.max())
    # v ≈ 0.1; bias correction (÷ (1 − β₂)) or a missing EMA would change it by O(v)
    torch.testing.assert_close(opt.state[p]["second_moment"].double(), v1, atol=tol_v1, rtol=0)
    tol_d1 = direction_tol(O1, v1, tol_O1, tol_v1)
    tol_W1 = _update_tol(W0, tol_d1, scale)
    torch.testing.assert_close(p.data.double(), W1, atol=tol_W1, rtol=0)
    # First step: v ∝ s, so every row of the update has the same RMS; the total Frobenius norm is Muon's. Read back
    # in float64: the update's roundings divided by lr·scale (entries, hence RMS and ‖·‖_F/√(m·n)) plus tol_d1.
    upd = ((1 - LR * WD) * W0.double() - p.data.double()) / (LR * scale)
    tol_upd = rounding_tol(F32, 5, magnitude=W0.abs().max()) / (LR * scale) + tol_d1
    row_rms = upd.square().mean(dim=1).sqrt()
    torch.testing.assert_close(row_rms, row_rms.mean().expand(4), atol=2 * tol_upd, rtol=0)
    torch.testing.assert_close(upd.norm(), O1.norm(), atol=math.sqrt(upd.numel()) * tol_upd + tol_O1, rtol=0)

    _step(opt, p, G2)
    U2 = MU * (MU * G1.double() + G2.double()) + G2.double()
    O2 = _ns64(U2)
    s2 = (O2**2).mean(dim=1, keepdim=True)
    v2 = v1 + (1 - beta2) * (s2 - v1)
    W2 = (1 - LR * WD) * W1 - LR * scale * normalised(O2, v2)
    tol_O2 = ns_tol(U2, input_ops=6)  # two momentum updates and the Nesterov look-ahead: 6 roundings
    tol_v2 = beta2 * tol_v1 + (1 - beta2) * s_tol(O2, tol_O2) + rounding_tol(F32, 3, magnitude=v2.max())
    torch.testing.assert_close(opt.state[p]["second_moment"].double(), v2, atol=tol_v2, rtol=0)
    tol_W2 = tol_W1 + _update_tol(W2, direction_tol(O2, v2, tol_O2, tol_v2), scale)
    torch.testing.assert_close(p.data.double(), W2, atol=tol_W2, rtol=0)


@pytest.mark.parametrize("make", [Muon, NorMuon])
def test_zero_gradient_only_decays(make: type) -> None:
    p = _param(W0)
    opt = make([p], lr=LR, weight_decay=WD)
    for _ in range(2):
        _step(opt, p, torch.zeros_like(W0))
    assert torch.isfinite(p.data).all()
    assert torch.equal(p.data, W0 * (1 - LR * WD) * (1 - LR * WD))  # two decays, nothing else


# --- DDP: two gloo ranks on half batches each equal one process on the full batch --------------------------------


class _TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16, bias=False)  # (16, 8): tall
        self.fc2 = nn.Linear(16, 4, bias=False)  # (4, 16): wide

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


DDP_LR = 0.05
_OPTIMIZERS = {
    "muon": lambda params: Muon(params, lr=DDP_LR),
    "dion": lambda params: Dion(params, lr=DDP_LR, rank_fraction=0.5),
}


def _data() -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(7)
    X, Y = torch.randn(8, 8, generator=gen), torch.randn(8, 4, generator=gen)
    torch.manual_seed(3)
    return X, Y, _TwoLayer().state_dict()


def _one_step(model: nn.Module, forward: nn.Module, name: str, X: torch.Tensor, Y: torch.Tensor) -> None:
    opt = _OPTIMIZERS[name](list(model.parameters()))
    # Mean loss: the mean of the two half-batch means (DDP's gradient averaging) is the full-batch mean.
    nn.functional.mse_loss(forward(X), Y).backward()
    opt.step()


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        X, Y, init = _data()
        half = X.size(0) // world
        rows = slice(rank * half, (rank + 1) * half)
        for name in _OPTIMIZERS:
            model = _TwoLayer()
            model.load_state_dict(init)
            ddp = nn.parallel.DistributedDataParallel(model)
            _one_step(model, ddp, name, X[rows], Y[rows])
            torch.save(model.state_dict(), os.path.join(out_dir, f"{name}_rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


# Rounded operations behind one gradient entry: forward fc1 (dot length 8) and fc2 (16), the loss derivative (3),
# back through fc2 (4), the sum over the 8 rows, and DDP's all-reduce sum and halving (2).
_GRAD_OPS = 8 + 16 + 3 + 4 + 8 + 2


def _step_tols(name: str, X: torch.Tensor, Y: torch.Tensor, init: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per weight, a bound on how far one fp32 step (of either process layout) lands from the exact step.

    The two layouts sum the gradient in a different order; each gradient is within _GRAD_OPS roundings of exact,
    relative to Σ_b |g_b| (g_b: row b's term), which exceeds |G| where rows cancel: measured here as the ratio of
    Frobenius norms. That input error goes through the optimizer's own bound (ns_tol, dion_tol, with their gains),
    plus five roundings of the weight update. The difference of the two layouts is at most twice this.
    """
    model = _TwoLayer()
    model.load_state_dict(init)
    nn.functional.mse_loss(model(X), Y).backward()
    full = {k: p.grad.clone() for k, p in model.named_parameters()}
    abs_sum = {k: torch.zeros_like(g) for k, g in full.items()}
    for b in range(X.size(0)):  # row b's term of the mean loss
        model.zero_grad()
        (nn.functional.mse_loss(model(X[b : b + 1]), Y[b : b + 1]) / X.size(0)).backward()
        for k, p in model.named_parameters():
            abs_sum[k] += p.grad.abs()
    tols = {}
    for index, (key, G) in enumerate(full.items()):
        grad_ops = math.ceil(_GRAD_OPS * (abs_sum[key].norm() / G.norm()).item())
        scale = shape_scale("spectral", G.shape)
        if name == "muon":  # first step: buffer = G, U = G + 0.95·G (3 roundings)
            direction = ns_tol(G, input_ops=grad_ops + 3)
        else:  # Dion, rank fraction 0.5, q seed 0: B = M = G (big side), Q the parameter's starting Q
            B = G if G.size(0) >= G.size(1) else G.T
            r = math.ceil(0.5 * min(G.shape))
            direction, _ = dion_tol(B, initial_q(G.shape, r, 0, index), input_ops=grad_ops)
        tols[key] = DDP_LR * scale * direction + rounding_tol(F32, 5, magnitude=init[key].abs().max())
    return tols


def test_ddp_step_equals_full_batch_step(tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    X, Y, init = _data()
    for name in _OPTIMIZERS:
        single = _TwoLayer()
        single.load_state_dict(init)
        _one_step(single, single, name, X, Y)
        moved = (single.fc1.weight - init["fc1.weight"]).abs().max()
        assert moved > 1e-3  # the step did something
        # What a broken reduction would give: rank 0's half batch alone. It must be far outside the tolerance.
        half = _TwoLayer()
        half.load_state_dict(init)
        _one_step(half, half, name, X[:4], Y[:4])
        tols = _step_tols(name, X, Y, init)
        for key, value in single.state_dict().items():
            assert (half.state_dict()[key] - value).abs().max() > 10 * 2 * tols[key], (name, key)
        for rank in range(2):
            got = torch.load(tmp_path / f"{name}_rank{rank}.pt")
            for key, value in single.state_dict().items():
                # each layout within tols of the exact step, so within twice that of each other
                torch.testing.assert_close(got[key], value, atol=2 * tols[key], rtol=0, msg=f"{name} rank {rank} {key}")
