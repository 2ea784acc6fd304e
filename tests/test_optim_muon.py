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

from specscale.optim import Dion, Lion, Muon, NorMuon, orthogonalize, shape_scale

LR, MU, WD = 0.1, 0.9, 0.05

W0 = torch.tensor([[1.0, -2.0], [0.5, 0.0], [-1.0, 3.0], [2.0, 1.0]])  # (4, 2): tall, fan_out 4, fan_in 2
G1 = torch.tensor([[0.3, -0.1], [0.0, 0.2], [-0.4, 0.5], [0.1, 0.1]])
G2 = torch.tensor([[-0.2, 0.4], [0.3, -0.1], [0.2, 0.0], [-0.5, 0.3]])


def _param(W: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(W.clone())


def _step(opt: torch.optim.Optimizer, p: nn.Parameter, G: torch.Tensor) -> None:
    p.grad = G.clone()
    opt.step()


def test_muon_two_steps_by_hand() -> None:
    p = _param(W0)
    opt = Muon([p], lr=LR, momentum=MU, nesterov=True, weight_decay=WD, scale_rule="spectral")
    scale = math.sqrt(4 / 2)  # spectral rule, tall 4x2

    _step(opt, p, G1)
    M1 = G1  # 0·μ + G1
    U1 = MU * M1 + G1  # Nesterov look-ahead, before NS
    W1 = (1 - LR * WD) * W0 - LR * scale * orthogonalize(U1)
    torch.testing.assert_close(p.data, W1, atol=1e-6, rtol=0)
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], M1, atol=0, rtol=0)

    _step(opt, p, G2)
    M2 = MU * G1 + G2
    U2 = MU * M2 + G2
    W2 = (1 - LR * WD) * W1 - LR * scale * orthogonalize(U2)
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], M2, atol=1e-7, rtol=0)
    torch.testing.assert_close(p.data, W2, atol=1e-6, rtol=0)


def test_muon_without_nesterov_uses_buffer() -> None:
    p = _param(W0)
    opt = Muon([p], lr=LR, momentum=MU, nesterov=False, weight_decay=0.0)
    _step(opt, p, G1)
    _step(opt, p, G2)
    M2 = MU * G1 + G2
    expected = W0 - LR * math.sqrt(2) * (orthogonalize(G1) + orthogonalize(M2))
    torch.testing.assert_close(p.data, expected, atol=1e-6, rtol=0)


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
    assert shape_scale(rule, shape) == pytest.approx(scale, rel=1e-12)
    W = W0 if shape == (4, 2) else W0.T.contiguous()
    G = G1 if shape == (4, 2) else G1.T.contiguous()
    p = _param(W)
    opt = Muon([p], lr=LR, momentum=MU, weight_decay=0.0, scale_rule=rule)
    _step(opt, p, G)
    torch.testing.assert_close((W - p.data) / LR, scale * orthogonalize((1 + MU) * G), atol=1e-5, rtol=0)


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
    torch.testing.assert_close(p16.data, p32.data, atol=LR * 0.02, rtol=0)


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

    def normalised(O: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        O_hat = O / (v.sqrt() + eps)
        return O_hat * (O.norm() / O_hat.norm())

    _step(opt, p, G1)
    O1 = orthogonalize((1 + MU) * G1)
    s1 = (O1**2).mean(dim=1, keepdim=True)  # (4, 1): one value per output row
    v1 = (1 - beta2) * s1  # v starts at 0, no bias correction
    W1 = (1 - LR * WD) * W0 - LR * scale * normalised(O1, v1)
    torch.testing.assert_close(opt.state[p]["second_moment"], v1, atol=1e-7, rtol=0)
    torch.testing.assert_close(p.data, W1, atol=1e-6, rtol=0)
    # First step: v ∝ s, so every row of the update has the same RMS; the total Frobenius norm is Muon's.
    upd = ((1 - LR * WD) * W0 - p.data) / (LR * scale)
    row_rms = upd.square().mean(dim=1).sqrt()
    torch.testing.assert_close(row_rms, row_rms.mean().expand(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(upd.norm(), O1.norm(), atol=1e-5, rtol=0)

    _step(opt, p, G2)
    O2 = orthogonalize(MU * (MU * G1 + G2) + G2)
    v2 = v1 + (1 - beta2) * ((O2**2).mean(dim=1, keepdim=True) - v1)
    W2 = (1 - LR * WD) * W1 - LR * scale * normalised(O2, v2)
    torch.testing.assert_close(opt.state[p]["second_moment"], v2, atol=1e-7, rtol=0)
    torch.testing.assert_close(p.data, W2, atol=1e-6, rtol=0)


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


_OPTIMIZERS = {
    "muon": lambda params: Muon(params, lr=0.05),
    "dion": lambda params: Dion(params, lr=0.05, rank_fraction=0.5),
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


def test_ddp_step_equals_full_batch_step(tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    X, Y, init = _data()
    for name in _OPTIMIZERS:
        single = _TwoLayer()
        single.load_state_dict(init)
        _one_step(single, single, name, X, Y)
        moved = (single.fc1.weight - init["fc1.weight"]).abs().max()
        assert moved > 1e-3  # the step did something
        for rank in range(2):
            got = torch.load(tmp_path / f"{name}_rank{rank}.pt")
            for key, value in single.state_dict().items():
                torch.testing.assert_close(got[key], value, atol=1e-6, rtol=0, msg=f"{name} rank {rank} {key}")
