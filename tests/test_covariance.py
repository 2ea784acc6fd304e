"""Streamed covariance and eigenvalues (specscale.measure.covariance) against numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from specscale.measure.covariance import (
    CovarianceAccumulator,
    accumulate_array,
    covariance_of_array,
    default_chunk_tokens,
    eigenvalues,
)
from specscale.measure.metrics import renyi_rank
from tolerances import rounding_tol

F64 = np.float64


def _rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def _cov_rtol(n: int) -> float:
    """Bound on _rel_err between two float64 covariances of the same n rows (streamed vs numpy, or two streams).

    Each entry is a sum of n products of deviations: ≤ n roundings relative to Σ|d_i||d_j| ≤ (n − 1)·max|C|
    (Cauchy-Schwarz), plus the division by N − 1 and the merge term (2). A large offset does not enter: x − mean is
    exact while |x − mean| ≤ |x| (Sterbenz), and the mean's own error e only adds N·e·eᵀ (second order). Each side
    is within that bound: twice. Effects tested are ≥ 1/N (normalisation) or the naive formula's ≳ 1e-9.
    """
    return 2 * rounding_tol(F64, n + 2)


def _mean_atol(x: np.ndarray, chunk: int) -> float:
    """Bound on the difference of the streamed mean and x.mean(axis=0): numpy sums axis 0 row by row (n roundings
    at |x|, also in the first chunk's mean K); the stream merges ⌈n/chunk⌉ chunk means relative to K (at |x − K|)."""
    n = x.shape[0]
    shift = np.abs(x - x[:chunk].mean(axis=0)).max()
    return 2 * rounding_tol(F64, n + 3, magnitude=np.abs(x).max()) + rounding_tol(F64, -(-n // chunk) + 3, shift)


def _data(n: int, d: int, offset: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((d, d)) / np.sqrt(d)  # correlated dimensions, unequal variances
    return rng.standard_normal((n, d)) @ mixing * rng.uniform(0.2, 3.0, d) + offset + rng.standard_normal(d)


def _stream(x: np.ndarray, chunk: int, device: str | None = None) -> CovarianceAccumulator:
    acc = CovarianceAccumulator(x.shape[1], device=device)
    for i in range(0, x.shape[0], chunk):
        acc.update(x[i : i + chunk])
    return acc


@pytest.mark.parametrize(
    "n,d,chunk",
    [(30, 80, 7), (5000, 20, 333), (4096, 64, 4096), (1000, 50, 1)],
    ids=["N<D", "N>>D", "one-chunk", "row-by-row"],
)
@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_streamed_covariance_equals_np_cov(n: int, d: int, chunk: int, offset: float) -> None:
    x = _data(n, d, offset)
    acc = _stream(x, chunk)
    assert acc.n == n
    assert _rel_err(acc.covariance(), np.cov(x, rowvar=False)) < _cov_rtol(n)
    np.testing.assert_allclose(acc.mean, x.mean(axis=0), rtol=0, atol=_mean_atol(x, chunk))
    cov = acc.covariance()
    np.testing.assert_array_equal(cov, cov.T)  # mirrored from one triangle: symmetric bit for bit by design


def test_large_offset_is_centred_stably() -> None:
    # Mean 1e4, unit-scale spread: Σxxᵀ − Nμμᵀ loses ~8 digits here; the streamed result must not.
    x = _data(3000, 40, 1e4, seed=3)
    exact = np.cov(x, rowvar=False)  # numpy centres once with the global mean: accurate to ~1e-16
    naive = (x.T @ x - x.shape[0] * np.outer(x.mean(0), x.mean(0))) / (x.shape[0] - 1)
    assert _rel_err(naive, exact) > 1e-9  # the data really are hard for a one-pass sum of squares
    assert _rel_err(_stream(x, 700).covariance(), exact) < _cov_rtol(x.shape[0])  # ≈ 1e-11, 100× below 1e-9


def test_normalisation_is_n_minus_one() -> None:
    acc = CovarianceAccumulator(2)
    acc.update(np.array([[0.0, 0.0]]))
    acc.update(np.array([[2.0, -2.0]]))
    # deviations ±1 and ∓1; Σ = [[2, −2], [−2, 2]], divided by N − 1 = 1. Small integers: exact in practice; the
    # bound allows the handful of roundings (≤ 8: means, deviations, products, sums, merge, division); N instead of
    # N − 1 would be off by a factor 2 (then 3/2).
    np.testing.assert_allclose(acc.covariance(), [[2.0, -2.0], [-2.0, 2.0]], rtol=rounding_tol(F64, 8))
    np.testing.assert_allclose(acc.mean, [1.0, -1.0], rtol=rounding_tol(F64, 4))
    acc.update(np.array([1.0, -1.0]))  # a single 1-D row: adds no spread, N − 1 = 2
    np.testing.assert_allclose(acc.covariance(), [[1.0, -1.0], [-1.0, 1.0]], rtol=rounding_tol(F64, 8))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_low_precision_chunks_accumulate_in_float64(dtype: type) -> None:
    x = _data(2000, 24, 5.0).astype(dtype)
    ref = np.cov(x.astype(np.float64), rowvar=False)
    # float64 rounding of 2000 rows (≈ 7e-12); accumulating in fp16/fp32 instead would be off by ≳ 1e-7
    assert _rel_err(_stream(x, 300).covariance(), ref) < _cov_rtol(x.shape[0])
    assert x.dtype == dtype  # the caller's array is untouched (no in-place centring of the input)


def test_bf16_tensor_chunks_and_torch_path_match_numpy() -> None:
    x = torch.from_numpy(_data(1500, 32, 10.0)).to(torch.bfloat16)
    ref = np.cov(x.to(torch.float64).numpy(), rowvar=False)
    before = x.clone()
    numpy_path = _stream(x, 256)  # tensors into the numpy path
    torch_path = _stream(x, 256, device="cpu")  # float64 torch accumulator (the CUDA code path, on the CPU)
    tol = _cov_rtol(x.shape[0])  # float64 sums of 1500 rows, ≈ 5e-12
    assert _rel_err(numpy_path.covariance(), ref) < tol
    assert _rel_err(torch_path.covariance(), ref) < tol
    assert _rel_err(torch_path.covariance(), numpy_path.covariance()) < tol
    # two streams over the same chunks: chunk means (256 rows each, at |x|) and 6 merges, each side
    mean_tol = 2 * rounding_tol(F64, 256 + 6 + 3, magnitude=float(x.to(torch.float64).abs().max()))
    np.testing.assert_allclose(torch_path.mean, numpy_path.mean, rtol=0, atol=mean_tol)
    assert torch.equal(x, before)
    tensor_cov = torch_path.covariance_tensor()
    assert tensor_cov.dtype == torch.float64 and tuple(tensor_cov.shape) == (32, 32)


def test_torch_path_does_not_modify_float64_inputs() -> None:
    x = _data(100, 8, 1.0)
    copy = x.copy()
    _stream(x, 30, device="cpu")
    np.testing.assert_array_equal(x, copy)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_matches_numpy() -> None:
    x = _data(6000, 256, 1e3).astype(np.float32)
    gpu = _stream(x, 1024, device="cuda")
    cpu = _stream(x, 1024)
    tol = _cov_rtol(x.shape[0])  # ≈ 2e-11
    assert _rel_err(gpu.covariance(), cpu.covariance()) < tol
    # Weyl: |Δλ| ≤ ‖ΔC‖₂ ≤ D·max|ΔC| from the two covariances, plus each eigensolver's backward error (D roundings
    # at λ_max)
    cov = cpu.covariance()
    expected = eigenvalues(cov)
    atol = cov.shape[0] * tol * float(np.abs(cov).max()) + 2 * rounding_tol(F64, cov.shape[0], magnitude=expected[0])
    np.testing.assert_allclose(eigenvalues(gpu.covariance_tensor()), expected, rtol=0, atol=atol)


def test_zarr_array_with_chunks_not_dividing_n(tmp_path) -> None:
    x = _data(1003, 40, 1e3).astype(np.float32)
    arr = zarr.create_array(store=str(tmp_path / "acts.zarr"), shape=x.shape, chunks=(64, 40), dtype="float32")
    arr[:] = x
    reopened = zarr.open_array(str(tmp_path / "acts.zarr"), mode="r")
    ref = np.cov(x.astype(np.float64), rowvar=False)
    # 1003 = 15·64 + 43; 100 → reads of 64 rows; 30 → one stored chunk per read, fed as 30 + 30 + 4 rows
    for chunk_tokens in (100, 64, 30, 1000, None):
        acc = accumulate_array(reopened, chunk_tokens=chunk_tokens)
        assert acc.n == 1003
        assert _rel_err(acc.covariance(), ref) < _cov_rtol(1003)
    assert _rel_err(covariance_of_array(reopened, 97, device="cpu"), ref) < _cov_rtol(1003)


class _RowReader:
    """Array-like that records the rows each read asks for: proves the stream never loads the whole array."""

    def __init__(self, data: np.ndarray, chunks: tuple[int, int] | None = None) -> None:
        self._data = data
        self.shape = data.shape
        self.reads: list[int] = []
        if chunks is not None:
            self.chunks = chunks  # like zarr.Array.chunks: the stored chunk shape

    def __getitem__(self, key: slice) -> np.ndarray:
        out = self._data[key]
        self.reads.append(out.shape[0])
        return out


def test_array_is_streamed_in_row_chunks() -> None:
    x = _data(1000, 16, 0.0)
    reader = _RowReader(x)
    cov = covariance_of_array(reader, chunk_tokens=128)
    assert max(reader.reads) == 128 and sum(reader.reads) == 1000 and len(reader.reads) == 8
    assert _rel_err(cov, np.cov(x, rowvar=False)) < _cov_rtol(1000)


@pytest.mark.parametrize("chunk_tokens,expected_reads", [(30, [64] * 15 + [40]), (200, [192] * 5 + [40])])
def test_reads_align_to_stored_chunks(chunk_tokens: int, expected_reads: list[int]) -> None:
    x = _data(1000, 16, 2.0)
    reader = _RowReader(x, chunks=(64, 16))
    acc = accumulate_array(reader, chunk_tokens=chunk_tokens)
    assert reader.reads == expected_reads  # whole stored chunks per read, 1000 = 15·64 + 40
    assert acc.n == 1000
    assert _rel_err(acc.covariance(), np.cov(x, rowvar=False)) < _cov_rtol(1000)


def test_default_chunk_bounds_memory() -> None:
    # paper scale D = 6144: 512 rows = 25 MB of float64; small D gets longer chunks, never more than 4096 rows
    assert default_chunk_tokens(6144) == 512
    assert default_chunk_tokens(2048) == 1024
    assert default_chunk_tokens(8) == 4096
    assert all(512 <= default_chunk_tokens(d) <= 4096 for d in (1, 100, 768, 3072, 65536))


def test_eigenvalues_descending_clamped_and_correct() -> None:
    x = _data(20, 50, 3.0)  # N < D: centred covariance has rank 19, the other 31 eigenvalues are round-off
    cov = covariance_of_array(x, chunk_tokens=6)
    eigs = eigenvalues(cov)
    assert eigs.shape == (50,) and eigs.dtype == np.float64
    assert np.all(np.diff(eigs) <= 0)
    assert eigs.min() >= 1e-12  # the clamp: exact by design
    # Weyl: |Δλ| ≤ ‖ΔC‖₂. The two covariances (stream vs np.cov, N = 20 rows) differ by ≤ D·_cov_rtol·max|C| in
    # 2-norm, and each symmetric eigensolver is backward stable: ≤ D roundings at λ_max. Eigenvalue 19 is ~1e-2·λ_max.
    D, lam_max = cov.shape[0], float(eigs[0])
    solver = rounding_tol(F64, D, magnitude=lam_max)
    atol = D * _cov_rtol(x.shape[0]) * float(np.abs(cov).max()) + 2 * solver
    np.testing.assert_allclose(
        eigs[:19], np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1][:19], rtol=0, atol=atol
    )
    assert renyi_rank(eigs, 0.0) == pytest.approx(19.0, rel=rounding_tol(F64, 2))  # numerical rank N − 1: exp(ln 19)
    np.testing.assert_array_equal(eigenvalues(np.diag([-1.0, 2.0, 0.0])), [2.0, 1e-12, 1e-12])  # diagonal: exact
    # the same matrix through two solvers (or one twice): each within its backward error of the exact eigenvalues
    np.testing.assert_allclose(eigenvalues(torch.from_numpy(cov), device="cpu"), eigs, rtol=0, atol=2 * solver)
    np.testing.assert_allclose(eigenvalues(cov, backend="numpy"), eigs, rtol=0, atol=2 * solver)
    with pytest.raises(ValueError):
        eigenvalues(cov, backend="scipy")
    with pytest.raises(ValueError):
        eigenvalues(np.ones((3, 4)))


def test_invalid_use_raises() -> None:
    acc = CovarianceAccumulator(3)
    with pytest.raises(ValueError):
        acc.covariance()  # fewer than 2 rows
    with pytest.raises(ValueError):
        acc.update(np.ones((4, 5)))
    with pytest.raises(ValueError):
        acc.update(np.array([[1.0, np.nan, 0.0]]))
    assert acc.n == 0
    with pytest.raises(ValueError):
        CovarianceAccumulator(0)
