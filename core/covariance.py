"""Streamed covariance of token activations and its eigenvalues (science.md §5).

X is an (N, D) stack of token vectors (N tokens, D = FFN width), too large to hold in float64 at paper scale
(N = 43k, D = 6144: 2 GB in float64; the D×D accumulator alone is 300 MB). Rows arrive in chunks of any float dtype
(fp16, fp32, bf16 torch tensors) and are accumulated in float64 with Chan et al.'s pairwise merge of
(count, mean, M2 = Σ (x − mean)(x − mean)ᵀ):

    chunk b (n_b rows, mean μ_b, M2_b = centred Gram matrix of the chunk)
    δ = μ_b − μ_a;  n = n_a + n_b
    M2 = M2_a + M2_b + δ δᵀ · n_a n_b / n;   μ = μ_a + δ · n_b / n

Each chunk is centred on its own mean before its Gram matrix is formed, so a large common offset (activations with
mean 1e3 and unit spread) never enters a sum of squares: no catastrophic cancellation, unlike Σxxᵀ − N μμᵀ.
All rows are first shifted by the first chunk's mean (exact for a large offset), so the merged means stay small.
C = M2 / (N − 1).

CPU path: the Gram update is one in-place BLAS ``dsyrk`` (upper triangle only, C := AᵀA + C) and the merge one
in-place ``dsyr`` (rank-1), so a chunk costs n·D² flops and no D×D temporary. Torch path (``device=``, e.g. "cuda"):
the same algebra with ``addmm_``/``addr_`` on float64 tensors on that device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.linalg import blas

from specscale.spectra import EIG_FLOOR

# Rows per chunk when the caller gives none: ~64 MB of float64 per chunk (1365 rows at D = 6144, 8192 at D = 1024).
# ≥ a few hundred rows keeps dsyrk at full speed (its inner dimension is the chunk length); the cap bounds memory.
_DEFAULT_CHUNK_BYTES = 64 * 2**20
_MIN_CHUNK_ROWS = 256


def default_chunk_tokens(dim: int) -> int:
    """Chunk length (rows) used when none is given: about 64 MB of float64 rows, at least 256."""
    return max(_MIN_CHUNK_ROWS, _DEFAULT_CHUNK_BYTES // (8 * max(int(dim), 1)))


def _as_numpy_f64(chunk: Any) -> np.ndarray:
    """Any (n, D) float array or tensor (fp16, bf16, fp32, fp64) → C-contiguous float64 numpy copy."""
    if isinstance(chunk, torch.Tensor):
        return chunk.detach().to(device="cpu", dtype=torch.float64).numpy()
    # np.array always copies, so the caller's buffer is never modified by the in-place centring below.
    return np.array(chunk, dtype=np.float64, order="C")


class CovarianceAccumulator:
    """Running (count, mean, M2) of D-dim rows; ``covariance()`` = M2 / (N − 1), a D×D float64 matrix.

    ``device=None`` uses numpy/BLAS on the CPU; a torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``) keeps the
    float64 accumulator on that device and takes numpy arrays or tensors of any float dtype. Both give the same
    numbers up to float64 round-off.
    """

    def __init__(self, dim: int, device: str | torch.device | None = None) -> None:
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.device = None if device is None else torch.device(device)
        self._n = 0
        self._shift: np.ndarray | torch.Tensor | None = None  # K, set by the first chunk; (D,)
        if self.device is None:
            # Fortran order: dsyrk/dsyr update it in place only when it is F-contiguous. Upper triangle only.
            self._m2: np.ndarray | torch.Tensor = np.zeros((self.dim, self.dim), dtype=np.float64, order="F")
            self._mean: np.ndarray | torch.Tensor = np.zeros(self.dim, dtype=np.float64)
        else:
            self._m2 = torch.zeros((self.dim, self.dim), dtype=torch.float64, device=self.device)
            self._mean = torch.zeros(self.dim, dtype=torch.float64, device=self.device)

    @property
    def n(self) -> int:
        """Number of rows (tokens) accumulated so far."""
        return self._n

    @property
    def mean(self) -> np.ndarray:
        """Per-dimension mean, shape (D,), float64 numpy (zeros before any row)."""
        mean = self._mean if self._shift is None else self._mean + self._shift
        if isinstance(mean, torch.Tensor):
            return mean.cpu().numpy()
        return mean.copy()

    def update(self, chunk: Any) -> None:
        """Add rows: ``chunk`` is (n, D) (or (D,) for one row), numpy array or torch tensor, any float dtype."""
        if self.device is None:
            x = _as_numpy_f64(chunk)
        else:
            source = torch.as_tensor(chunk)  # shares memory with a numpy input
            x = source.to(device=self.device, dtype=torch.float64)
            if x.data_ptr() == source.data_ptr():
                x = x.clone()  # already float64 on this device: copy so the in-place centring spares the caller
        if x.ndim == 1:
            x = x.reshape(1, -1)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected rows of shape (n, {self.dim}), got {tuple(x.shape)}")
        n_b = int(x.shape[0])
        if n_b == 0:
            return
        # Chunk mean by the corrected two-pass method: numpy/torch sum axis 0 row by row (error ~ n·eps·|offset|);
        # the mean of the residual after subtracting it removes that error, so δ below stays accurate for a large
        # common offset. x − raw_mean is exact there (Sterbenz). Four passes over the chunk, all O(n·D).
        raw_mean = x.mean(0)
        # A NaN or inf anywhere in a column makes its mean non-finite: one O(D) check instead of an O(n·D) pass.
        finite = np.all(np.isfinite(raw_mean)) if isinstance(x, np.ndarray) else bool(torch.isfinite(raw_mean).all())
        if not finite:
            raise ValueError("chunk contains NaN or inf")
        if self._shift is None:
            # Everything is kept relative to K = the first chunk's mean, so the running mean and δ are small
            # numbers with full relative precision however large the offset.
            self._shift = raw_mean.copy() if isinstance(raw_mean, np.ndarray) else raw_mean.clone()
        x -= raw_mean
        residual = x.mean(0)
        x -= residual
        mu_b = (raw_mean - self._shift) + residual  # chunk mean relative to K; (D,)
        if self.device is None:
            self._update_numpy(x, mu_b, n_b)
        else:
            self._update_torch(x, mu_b, n_b)
        self._n += n_b

    def _update_numpy(self, x: np.ndarray, mu_b: np.ndarray, n_b: int) -> None:
        # x: centred chunk (n_b, D), C-contiguous, so x.T is an F-contiguous (D, n_b) view and dsyrk(trans=0) forms
        # xᵀx into the upper triangle of M2 in place, without a copy or a D×D temporary.
        m2 = blas.dsyrk(1.0, x.T, beta=1.0, c=self._m2, trans=0, lower=0, overwrite_c=1)
        n_a, n = self._n, self._n + n_b
        delta = mu_b - self._mean
        if n_a > 0:
            m2 = blas.dsyr(n_a * n_b / n, delta, lower=0, a=m2, overwrite_a=1)
        if not np.shares_memory(m2, self._m2):  # the BLAS wrappers copy only if the layout was wrong
            self._m2 = m2
        self._mean += delta * (n_b / n)

    def _update_torch(self, x: torch.Tensor, mu_b: torch.Tensor, n_b: int) -> None:
        # Full GEMM (torch has no syrk); on a GPU the factor 2 in flops is cheaper than a triangular kernel.
        self._m2.addmm_(x.T, x)
        n_a, n = self._n, self._n + n_b
        delta = mu_b - self._mean
        if n_a > 0:
            self._m2.addr_(delta, delta, alpha=n_a * n_b / n)
        self._mean += delta * (n_b / n)

    def _check_enough(self) -> None:
        if self._n < 2:
            raise ValueError(f"covariance needs at least 2 rows, have {self._n}")

    def covariance(self) -> np.ndarray:
        """Centred covariance M2 / (N − 1), shape (D, D), float64 numpy, symmetric."""
        self._check_enough()
        if self.device is not None:
            return self.covariance_tensor().cpu().numpy()
        upper = self._m2
        # Only the upper triangle is maintained: mirror it (U + Uᵀ counts the diagonal twice).
        cov = upper + upper.T
        cov[np.diag_indices(self.dim)] -= np.diagonal(upper)
        cov /= self._n - 1
        return cov

    def covariance_tensor(self) -> torch.Tensor:
        """Centred covariance as a float64 tensor on the accumulator's device (no host copy on a GPU)."""
        self._check_enough()
        if self.device is None:
            return torch.from_numpy(self.covariance())
        cov = self._m2 / (self._n - 1)
        return 0.5 * (cov + cov.T)  # GEMM round-off can leave it asymmetric in the last bit


def eigenvalues(cov: np.ndarray | torch.Tensor, device: str | torch.device | None = None) -> np.ndarray:
    """Eigenvalues of a symmetric matrix, clamped ≥ 1e-12, sorted descending; shape (D,), float64 numpy.

    Eigenvalues only (no eigenvectors: ~2-3× cheaper). CPU: ``numpy.linalg.eigvalsh`` (LAPACK syevd, reads the lower
    triangle). ``device`` given, or ``cov`` a tensor on a non-CPU device: ``torch.linalg.eigvalsh`` in float64 there.
    """
    on_torch_device = isinstance(cov, torch.Tensor) and cov.device.type != "cpu"
    if device is not None or on_torch_device:
        target = torch.device(device) if device is not None else cov.device  # type: ignore[union-attr]
        mat = torch.as_tensor(cov).to(device=target, dtype=torch.float64)
        vals = torch.linalg.eigvalsh(mat).cpu().numpy()
    else:
        mat = cov.detach().cpu().numpy() if isinstance(cov, torch.Tensor) else np.asarray(cov, dtype=np.float64)
        if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
            raise ValueError(f"expected a square matrix, got shape {mat.shape}")
        vals = np.linalg.eigvalsh(mat)
    # eigvalsh returns ascending order; the spectrum is reported largest first.
    return np.maximum(vals, EIG_FLOOR)[::-1].copy()


def accumulate_array(
    array: Any, chunk_tokens: int | None = None, device: str | torch.device | None = None
) -> CovarianceAccumulator:
    """Stream an (N, D) array-like (numpy, zarr.Array, memmap) through a CovarianceAccumulator in row chunks.

    Only one chunk is in memory at a time (``array[i:j]`` reads rows i..j). For a zarr array the chunk length is
    rounded to a multiple of its row-chunk length so no stored chunk is decoded twice.
    """
    if len(array.shape) != 2:
        raise ValueError(f"expected an (N, D) array, got shape {tuple(array.shape)}")
    n_rows, dim = int(array.shape[0]), int(array.shape[1])
    step = int(chunk_tokens) if chunk_tokens is not None else default_chunk_tokens(dim)
    if step < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    stored_rows = getattr(array, "chunks", None)
    if isinstance(stored_rows, tuple) and stored_rows and int(stored_rows[0]) > 0:
        rows = int(stored_rows[0])
        step = max(rows, (step // rows) * rows)
    acc = CovarianceAccumulator(dim, device=device)
    for start in range(0, n_rows, step):
        acc.update(array[start : min(start + step, n_rows)])
    return acc


def covariance_of_array(
    array: Any, chunk_tokens: int | None = None, device: str | torch.device | None = None
) -> np.ndarray:
    """Centred (N − 1)-normalised covariance (D×D float64) of an (N, D) array-like, streamed in row chunks."""
    return accumulate_array(array, chunk_tokens=chunk_tokens, device=device).covariance()
