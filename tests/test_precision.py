"""Precision as the paper ran it: bf16 optimizer arithmetic against fp32, the presets' dtypes end to end, and Rényi
orders α < 0.5 made independent of the activations' storage dtype (docs/science.md §4, §9)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch import nn

from helpers import make_project
from specscale.measure.covariance import CovarianceAccumulator, eigenvalues
from specscale.measure.spectra import measure_store
from specscale.measure.registry import SPECTRUM_COLUMNS, metric_names
from specscale.optim.dion import Dion
from specscale.optim.muon import Muon
from specscale.optim.normuon import NorMuon
from specscale.optim.factory import build_optimizer, roles_from_names
from specscale.optim.defaults import default_hparams
from specscale.optim.newton_schulz import orthogonalize
from specscale.measure.activations import array_name
from specscale.study.spec import load_study
from specscale.measure.metrics import STORAGE_EPS, all_metrics, storage_noise_floor
from specscale.study.sweep import expand_sweep
from tolerances import eps, rounding_tol

F32, BF16 = torch.float32, torch.bfloat16
LR, WD = 0.1, 0.01


def _rand(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- optimizers: bf16 against fp32 ---------------------------------------------------------------------------------

# bf16-rounded results along one step's direction (each a relative error ≤ u = eps/2; counted as eps, so the chain
# n·eps is already twice the worst case of its own roundings):
#   Muon: the cast of U, its Frobenius norm and the division (3), then per Newton–Schulz iteration X·Xᵀ, b·A + c·A·A
#         and a·X + B·X (3 × 5 steps) = 18.
#   NorMuon: Muon's 18, times 5 for the row normalisation in fp32: Ô = O·‖O‖_F / (√v·‖O/√v‖_F) moves by at most
#         δ(O) + ½δ(v) + δ(‖O‖) + δ(‖O/√v‖) ≤ 5δ(O) to first order, with δ(v) ≤ 2δ(O) (v averages squares of O).
#   Dion: M + G, B·Q, the cast of P, Bᵀ·P, P·Rᵀ, M − (1 − μ)·captured, the cast of Q_new, P·Q_newᵀ = 8, plus the 3
#         roundings every earlier step left in M (2) and Q (1), carried in through them.
# Left out, as in test_optim_muon's bf16 test: Newton–Schulz's polynomial gain (ns_gains, ≈ 9) and Dion's κ(B·Q)·ρ,
# with which every bf16 bound exceeds the O(1) entries it bounds. Measured (16×8, 8×16, 3 steps): the weights differ
# by 0.43-0.60 bf16 eps relative to Σ lr·scale·‖D_t‖_F, 24-190× inside the bounds below.
_CHAINS = {"muon": (18, 0), "normuon": (90, 0), "dion_1_2": (8, 3), "dion_1_1": (8, 3)}


def _make(name: str, p: nn.Parameter, low: bool) -> torch.optim.Optimizer:
    if name in ("muon", "normuon"):
        cls = Muon if name == "muon" else NorMuon
        return cls([p], lr=LR, weight_decay=WD, ns_dtype=BF16 if low else F32)
    dtype = "bfloat16" if low else "float32"
    fraction = 0.5 if name == "dion_1_2" else 1.0
    return Dion([p], lr=LR, weight_decay=WD, rank_fraction=fraction, state_dtype=dtype, q_dtype=dtype)


@pytest.mark.parametrize("name", list(_CHAINS))
@pytest.mark.parametrize("shape", [(16, 8), (8, 16)])
def test_bf16_steps_stay_within_bf16_rounding_of_fp32(name: str, shape: tuple[int, int]) -> None:
    steps = 3
    W0 = 0.1 * _rand(shape, 1)  # small weights, as in a network: their fp32 update roundings stay small
    grads = [_rand(shape, 10 + t) for t in range(steps)]  # fixed gradients: only the optimizer's arithmetic differs
    p32, p16 = nn.Parameter(W0.clone()), nn.Parameter(W0.clone())
    o32, o16 = _make(name, p32, low=False), _make(name, p16, low=True)
    scale = math.sqrt(shape[0] / shape[1])
    n_step, n_carry = _CHAINS[name]
    bound = fp32_bound = 0.0
    for t, G in enumerate(grads):
        before = p32.detach().clone()
        for p, opt in ((p32, o32), (p16, o16)):
            p.grad = G.clone()
            opt.step()
        # The fp32 direction, read back: W ← (1 − lr·wd)·W − lr·scale·D.
        D32 = ((1 - LR * WD) * before.double() - p32.detach().double()) / (LR * scale)
        size = float(D32.norm())
        bound += LR * scale * size * rounding_tol(BF16, n_step + n_carry * t, safety=1.0)
        # Each side's fp32 roundings: the same chain in fp32, and the weight update's 5 roundings at |W| per entry.
        fp32_bound += LR * scale * size * rounding_tol(F32, n_step + n_carry * t, safety=1.0)
        fp32_bound += rounding_tol(F32, 5, magnitude=float(before.abs().max()) * math.sqrt(G.numel()), safety=1.0)
    diff = float((p16.detach().double() - p32.detach().double()).norm())
    assert p16.dtype == F32  # the weights stay fp32; only the optimizer's arithmetic is bf16
    assert diff <= bound + 2 * fp32_bound
    # ... and bf16 really ran: well above the most fp32 arithmetic could produce (measured 85-300× above it).
    assert diff > 10 * 2 * fp32_bound
    if name.startswith("dion"):
        assert o16.state[p16]["M"].dtype == BF16 and o16.state[p16]["Q"].dtype == BF16
        assert o32.state[p32]["M"].dtype == F32 and o32.state[p32]["Q"].dtype == F32


def test_precision_fields_reject_unknown_dtypes() -> None:
    p = nn.Parameter(_rand((4, 4), 0))
    with pytest.raises(ValueError, match="unknown Dion state_dtype 'half'"):
        Dion([p], state_dtype="half")
    with pytest.raises(ValueError, match="unknown Dion q_dtype 'int8'"):
        Dion([p], q_dtype="int8")
    with pytest.raises(ValueError, match="unknown Newton-Schulz dtype"):
        Muon([p], ns_dtype=torch.int32)
    assert Dion([p], state_dtype=torch.bfloat16).param_groups[0]["state_dtype"] == "bfloat16"
    # A per-group override is validated and kept as a name too (state_dict() stays plain data).
    assert Dion([{"params": [p], "q_dtype": torch.bfloat16}]).param_groups[0]["q_dtype"] == "bfloat16"
    assert Muon([{"params": [p], "ns_dtype": torch.bfloat16}]).param_groups[0]["ns_dtype"] == "bfloat16"
    with pytest.raises(ValueError, match="unknown Dion state_dtype 'fp8'"):
        Dion([{"params": [p], "state_dtype": "fp8"}])


# --- the dtypes end to end: preset → run spec → factory → step ------------------------------------------------------


class _Blocks(nn.Module):
    """The smallest model the factory routes: one block matrix (role "matrix") and one gain (role "other")."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ParameterDict({"w": nn.Parameter(_rand((16, 8), 3)), "g": nn.Parameter(torch.ones(8))})


@pytest.mark.parametrize("preset, low", [("gpt2-160m", True), ("gpt2-350m", True), ("tiny", False)])
def test_preset_precision_reaches_the_optimizer(tmp_path: Path, preset: str, low: bool) -> None:
    params = make_project(tmp_path, f"preset: {preset}\n")
    study = load_study(params)
    runs = {r.optimizer: r for r in expand_sweep(study, params) if r.arms[0] == "main"}
    want = "bfloat16" if low else "float32"
    assert {runs[n].spec["optim"]["hparams"]["ns_dtype"] for n in ("muon", "normuon")} == {want}
    dion = [r for n, r in runs.items() if n.startswith("dion")]
    assert dion and all(r.spec["optim"]["hparams"]["state_dtype"] == want for r in dion)
    assert all(r.spec["optim"]["hparams"]["q_dtype"] == want for r in dion)
    assert "ns_dtype" not in dion[0].spec["optim"]["hparams"]  # Dion runs no Newton–Schulz
    assert "state_dtype" not in runs["adamw"].spec["optim"]["hparams"]

    # Muon built from the run spec steps with Newton–Schulz in that dtype: bit for bit the hand computation.
    model = _Blocks()
    hp = runs["muon"].spec["optim"]["hparams"]
    opt = build_optimizer(roles_from_names(model.named_parameters()), "muon", hp, d_model=8)
    W0 = model.blocks["w"].detach().clone()
    G = _rand((16, 8), 4)
    model.blocks["w"].grad, model.blocks["g"].grad = G.clone(), torch.ones(8)
    opt.step()
    U = G.add(G, alpha=hp["momentum"])  # Nesterov look-ahead of the first step's buffer M = 0·μ + G = G
    ns = dict(steps=hp["ns_steps"], coeffs=hp["ns_coeffs"], eps=hp["ns_eps"])
    O = orthogonalize(U, dtype=want, **ns)
    expected = W0 * (1 - hp["lr"] * hp["weight_decay"])
    expected = expected.add(O, alpha=-hp["lr"] * math.sqrt(16 / 8))
    assert torch.equal(model.blocks["w"].detach(), expected)
    other = orthogonalize(U, dtype="float32" if low else "bfloat16", **ns)
    assert not torch.equal(O, other)  # the dtype decides the step

    # Dion built from the run spec keeps M and Q in the preset's dtype.
    name = min(n for n in runs if n.startswith("dion"))
    opt = build_optimizer(roles_from_names(model.named_parameters()), name,
                          runs[name].spec["optim"]["hparams"], d_model=8)
    model.blocks["w"].grad = G.clone()
    opt.step()
    state = opt.state[model.blocks["w"]]
    assert state["M"].dtype == state["Q"].dtype == (BF16 if low else F32)


def test_default_precision_is_fp32() -> None:
    assert default_hparams("muon")["ns_dtype"] == default_hparams("normuon")["ns_dtype"] == "float32"
    dion = default_hparams("dion_1_16")
    assert dion["state_dtype"] == dion["q_dtype"] == "float32"


# --- Rényi orders below 0.5 and the storage dtype -------------------------------------------------------------------

D, RANK, N = 512, 64, 4 * 512
R0_RTOL = rounding_tol(np.float64, 2)  # R₀ = exp(ln k): two float64 roundings


def _bf16_round(x: np.ndarray) -> np.ndarray:
    """float32 → the nearest bfloat16 (ties to even), returned as float32: what bf16 storage (or a bf16 forward) keeps.
    numpy has no bfloat16 (and the probe writes through numpy), so bf16 storage is simulated by this rounding: keep
    the top 16 bits of the float32 pattern after adding 0x7FFF plus the lowest kept bit (round half to even)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


def _low_rank_activations(offset: float) -> np.ndarray:
    """(N, D) float32 rows of rank RANK: Gaussian factors times a random (RANK, D) map, units scaled over e^±1 (so the
    floor's max over units matters) plus a common offset (rounding noise scales with |x|, not with x − mean)."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((RANK, D)) / math.sqrt(RANK)
    x = rng.standard_normal((N, RANK)) @ A * np.exp(rng.uniform(-1.0, 1.0, D)) + offset
    return x.astype(np.float32)


def _stored(x: np.ndarray, dtype: str) -> np.ndarray:
    return _bf16_round(x) if dtype == "bfloat16" else x.astype(dtype)


def _spectrum(x: np.ndarray, dtype: str) -> tuple[np.ndarray, float]:
    """Eigenvalues of the stored rows' covariance and their noise floor, as core/specscale/measure/spectra.py
    computes them."""
    acc = CovarianceAccumulator(D)
    acc.update(x)
    cov = acc.covariance()
    second = np.diag(cov) * (N - 1) / N + acc.mean**2
    return eigenvalues(cov), storage_noise_floor(dtype, second, N)


def test_bf16_rounding_helper_matches_torch() -> None:
    x = _low_rank_activations(3.0)[:64]
    assert np.array_equal(_bf16_round(x), torch.from_numpy(x).to(BF16).float().numpy())


@pytest.mark.parametrize("offset", [0.0, 3.0])
def test_small_alpha_ranks_do_not_depend_on_the_storage_dtype(offset: float) -> None:
    x = _low_rank_activations(offset)
    alphas = [0.0, 0.25, 0.5, 1.0, 2.0]
    ref_lam, ref_floor = _spectrum(x, "float32")
    reference = all_metrics(ref_lam, alphas, noise_floor=ref_floor)
    # fp32 storage: the floor lies below the float64 support rule, so nothing moves, every order bit for bit.
    assert reference == all_metrics(ref_lam, alphas)
    assert reference["renyi_0"] == pytest.approx(RANK, rel=R0_RTOL)
    for dtype in ("float16", "bfloat16"):
        lam, floor = _spectrum(_stored(x, dtype), dtype)
        cut, uncut = all_metrics(lam, alphas, noise_floor=floor), all_metrics(lam, alphas)
        assert uncut["renyi_0"] == pytest.approx(D, rel=R0_RTOL)  # the artefact: noise fills the null space
        assert cut["renyi_0"] == pytest.approx(RANK, rel=R0_RTOL)
        assert cut["renyi_0.25"] == pytest.approx(reference["renyi_0.25"], rel=0.05)
        # The floor's margins: every noise eigenvalue below it, every signal eigenvalue far above it.
        assert lam[RANK] < floor < 1e-3 * lam[RANK - 1]
        # α ≥ 0.5 keeps its support: soft and hard rank are exactly what they were without the cut.
        for key in ("renyi_0.5", "renyi_1", "renyi_2", "soft_rank", "hard_rank", "entropy"):
            assert cut[key] == uncut[key]


def test_storage_noise_floor_closed_form_and_errors() -> None:
    # eps²/12 · max E[x²] · (1 + √(D/N))² with D = 2, N = 8: (1 + 1/2)² = 9/4.
    assert storage_noise_floor("bfloat16", [1.0, 4.0], 8) == pytest.approx(
        2.0**-14 / 12 * 4.0 * 2.25, rel=rounding_tol(np.float64, 6))
    for name, value in STORAGE_EPS.items():
        assert value == eps(torch.bfloat16 if name == "bfloat16" else np.dtype(name))
    with pytest.raises(ValueError, match="unknown activation storage dtype 'int8'"):
        storage_noise_floor("int8", [1.0], 4)
    with pytest.raises(ValueError, match="noise_floor"):
        all_metrics([1.0, 0.5], noise_floor=-1.0)


def _store(tmp_path: Path, x: np.ndarray, dtype: str, compute_dtype: str | None) -> tuple[zarr.Group, dict]:
    """A one-array activation store and its manifest, as core/specscale/measure/activations.py writes them."""
    root = zarr.open_group(str(tmp_path / f"acts_{dtype}_{compute_dtype}.zarr"), mode="w")
    arr = root.create_array(array_name(0, 0, "pre", "GLOBAL"), shape=x.shape, dtype=dtype, chunks=(1024, D),
                            attributes={"N": N, "D": D})
    arr[:] = x.astype(dtype)
    manifest = {"steps": [0], "layers": 1, "sites": ["pre"], "sets": {"GLOBAL": N}, "D": D, "dtype": dtype}
    if compute_dtype is not None:
        manifest["compute_dtype"] = compute_dtype
    return root, manifest


def test_measure_store_takes_the_floor_from_the_manifest(tmp_path: Path) -> None:
    x = _low_rank_activations(1.0)
    alphas = [0.0, 0.25, 1.0]
    cpu = torch.device("cpu")
    _, fp32 = measure_store(*_store(tmp_path, x, "float32", None), alphas, cpu)
    _, fp16 = measure_store(*_store(tmp_path, x, "float16", None), alphas, cpu)
    assert list(fp32.columns) == [*SPECTRUM_COLUMNS, *metric_names(alphas)]  # ranks.csv: what the fit reads
    assert fp32["renyi_0"].item() == fp16["renyi_0"].item() == pytest.approx(RANK, rel=R0_RTOL)
    assert fp16["noise_floor"].item() > fp32["noise_floor"].item() > 0
    # bf16 values (a bf16 forward under autocast) stored as float32: only the recorded compute dtype reveals them.
    rounded = _bf16_round(x)
    _, blind = measure_store(*_store(tmp_path, rounded, "float32", None), alphas, cpu)
    _, told = measure_store(*_store(tmp_path, rounded, "float32", "bfloat16"), alphas, cpu)
    assert blind["renyi_0"].item() == pytest.approx(D, rel=R0_RTOL)
    assert told["renyi_0"].item() == pytest.approx(RANK, rel=R0_RTOL)
    assert told["renyi_0.25"].item() == pytest.approx(fp32["renyi_0.25"].item(), rel=0.05)
    assert told["soft_rank"].item() == blind["soft_rank"].item()
