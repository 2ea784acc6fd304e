"""Streamed covariance of token activations and its eigenvalues (docs/science.md §5).

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

CPU path: the centred chunk plus one extra row √(n_a n_b / n)·δ go through one in-place BLAS ``dsyrk`` (upper
triangle only, M2 := AᵀA + M2), which adds M2_b and the merge term together: n·D² flops per chunk, no D×D temporary
and no extra pass over the D×D accumulator. Torch path (``device=``, e.g. "cuda"): the same algebra with ``addmm_``
on float64 tensors on that device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.linalg import blas

from specscale.measure.metrics import EIG_FLOOR

# Rows per chunk when the caller gives none: ~16 MB of float64 rows, clamped to [512, 4096] rows. Measured on a
# 2-core AVX-512 machine (benchmarks/spectra_throughput.py): the per-chunk passes (convert, centre) run at cache
# speed while the chunk is small, but each dsyrk call also streams the whole D×D accumulator (300 MB at D = 6144),
# so fewer than ~512 rows per call loses to that traffic; 512 rows at D = 6144 and 1024 at D = 2048 reach 0.9-1.0×
# the speed of one bare XᵀX.
_DEFAULT_CHUNK_BYTES = 16 * 2**20
_MIN_CHUNK_ROWS = 512
_MAX_CHUNK_ROWS = 4096


def default_chunk_tokens(dim: int) -> int:
    """Chunk length (rows) used when none is given: ~16 MB of float64 rows, between 512 and 4096."""
    return int(min(_MAX_CHUNK_ROWS, max(_MIN_CHUNK_ROWS, _DEFAULT_CHUNK_BYTES // (8 * max(int(dim), 1)))))


def _as_numpy_f64(chunk: torch.Tensor) -> np.ndarray:
    """A tensor of any float dtype (bf16 included, which numpy lacks) → float64 numpy array on the host."""
    return chunk.detach().to(device="cpu", dtype=torch.float64).numpy()


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
            # Fortran order: dsyrk updates it in place only when it is F-contiguous. Upper triangle only.
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
        """Add rows: ``chunk`` is (n, D) (or (D,) for one row), numpy array or torch tensor, any float dtype.

        The caller's data are never modified. Work per chunk: n·D² flops in one rank-(n+1) update of M2, and three
        O(n·D) passes (chunk mean, conversion and centring into a new float64 array, residual mean); no O(D²) pass,
        which at D = 6144 would stream the 300 MB accumulator once more per chunk.
        """
        if self.device is None:
            src = _as_numpy_f64(chunk) if isinstance(chunk, torch.Tensor) else np.asarray(chunk)
        else:
            src = torch.as_tensor(chunk)
        if src.ndim == 1:
            src = src.reshape(1, -1)
        if src.ndim != 2 or src.shape[1] != self.dim:
            raise ValueError(f"expected rows of shape (n, {self.dim}), got {tuple(src.shape)}")
        n_b = int(src.shape[0])
        if n_b == 0:
            return
        # y holds the centred chunk in rows 0..n_b−1 and the merge term √w·δ in row n_b, so that one symmetric
        # rank-k update adds M2_b + w δδᵀ.
        if self.device is None:
            raw_mean = src.mean(axis=0, dtype=np.float64)  # summed in float64 straight from fp16/fp32 storage
            finite = bool(np.all(np.isfinite(raw_mean)))
            y = np.empty((n_b + 1, self.dim), dtype=np.float64)
            if finite:
                np.subtract(src, raw_mean, out=y[:n_b], dtype=np.float64)  # convert and centre in one pass
        else:
            y = torch.empty((n_b + 1, self.dim), dtype=torch.float64, device=self.device)
            y[:n_b] = src  # converts dtype and device; never aliases the caller's data
            raw_mean = y[:n_b].mean(dim=0)
            finite = bool(torch.isfinite(raw_mean).all())
            if finite:
                y[:n_b] -= raw_mean
        # A NaN or inf anywhere in a column makes its mean non-finite: an O(D) check instead of an O(n·D) pass.
        if not finite:
            raise ValueError("chunk contains NaN or inf")
        if self._shift is None:
            # Everything is kept relative to K = the first chunk's mean, so the running mean and δ are small
            # numbers with full relative precision however large the offset.
            self._shift = raw_mean.copy() if isinstance(raw_mean, np.ndarray) else raw_mean.clone()
        # The axis-0 sum runs row by row, so raw_mean is off by e ≲ n·eps·|offset|; the residual r = mean(y)
        # recovers it (corrected two-pass mean) and goes into the chunk mean, keeping δ accurate for any offset.
        # yᵀy then exceeds the centred Gram matrix by n·r rᵀ, of relative size (e/σ)², ≤ 1e-16 even in the worst
        # case for an offset of 1e4·σ and 4096-row chunks (typically ~1e-22): not worth another pass.
        # y − raw_mean itself is exact for a large offset (Sterbenz).
        residual = y[:n_b].mean(0)
        mu_b = (raw_mean - self._shift) + residual  # chunk mean relative to K; (D,)
        n_a, n = self._n, self._n + n_b
        delta = mu_b - self._mean
        y[n_b] = delta * (n_a * n_b / n) ** 0.5  # zero for the first chunk
        if self.device is None:
            # y is C-contiguous (n_b+1, D), so y.T is an F-contiguous (D, n_b+1) view: dsyrk(trans=0) adds yᵀy to
            # the upper triangle of M2 in place, without a copy or a D×D temporary.
            m2 = blas.dsyrk(1.0, y.T, beta=1.0, c=self._m2, trans=0, lower=0, overwrite_c=1)
            if not np.shares_memory(m2, self._m2):  # the BLAS wrapper copies only if the layout was wrong
                self._m2 = m2
        else:
            # Full GEMM (torch has no syrk); on a GPU the factor 2 in flops is cheaper than a triangular kernel.
            self._m2.addmm_(y.T, y)
        self._mean += delta * (n_b / n)
        self._n = n

    def _check_enough(self) -> None:
        if self._n < 2:
            raise ValueError(f"covariance needs at least 2 rows, have {self._n}")

    def covariance(self) -> np.ndarray:
        """Centred covariance M2 / (N − 1), shape (D, D), float64 numpy, symmetric."""
        self._check_enough()
        if self.device is not None:
            return self.covariance_tensor().cpu().numpy()
        return _mirror_upper(self._m2, 1.0 / (self._n - 1))

    def covariance_tensor(self) -> torch.Tensor:
        """Centred covariance as a float64 tensor on the accumulator's device (no host copy on a GPU)."""
        self._check_enough()
        if self.device is None:
            return torch.from_numpy(self.covariance())
        cov = self._m2 / (self._n - 1)
        return 0.5 * (cov + cov.T)  # GEMM round-off can leave it asymmetric in the last bit


def _mirror_upper(upper: np.ndarray, scale: float, block: int = 128) -> np.ndarray:
    """scale · (the symmetric matrix whose upper triangle ``upper`` holds), as a new C-contiguous array.

    ``upper`` is F-ordered (dsyrk's layout). Copying the triangle block by block keeps each transposed read in
    cache: ~4× faster than U + Uᵀ at D = 2048, where that strided transpose cost ~10% of the whole accumulation.
    """
    out = upper * scale  # F-ordered copy, upper triangle valid
    dim = out.shape[0]
    for j0 in range(0, dim, block):
        j1 = min(j0 + block, dim)
        diag = out[j0:j1, j0:j1]
        out[j0:j1, j0:j1] = np.triu(diag) + np.triu(diag, 1).T
        for i0 in range(j1, dim, block):
            i1 = min(i0 + block, dim)
            out[i0:i1, j0:j1] = out[j0:j1, i0:i1].T
    return out.T  # symmetric, so the transpose is the same matrix, and C-contiguous


def eigenvalues(
    cov: np.ndarray | torch.Tensor, device: str | torch.device | None = None, backend: str = "torch"
) -> np.ndarray:
    """Eigenvalues of a symmetric matrix, clamped ≥ 1e-12, sorted descending; shape (D,), float64 numpy.

    Eigenvalues only (no eigenvectors: 2-3× cheaper), always in float64, reading the lower triangle.
    ``backend="torch"`` (default) uses ``torch.linalg.eigvalsh``: on a GPU (``device`` given, or ``cov`` already a
    tensor there) cuSOLVER; on the CPU torch's LAPACK, which in the x86 wheels is MKL: measured on one core here,
    2.2-2.6× faster than numpy's OpenBLAS ``eigvalsh`` for D = 1536-4096 and within ±5% of it for D ≤ 1024, with the
    same eigenvalues to 1e-15 relative (benchmarks/spectra_throughput.py). ``backend="numpy"`` uses
    ``numpy.linalg.eigvalsh`` (CPU only).
    """
    if backend not in ("torch", "numpy"):
        raise ValueError(f"backend must be 'torch' or 'numpy', got {backend!r}")
    if not isinstance(cov, torch.Tensor):
        cov = np.asarray(cov, dtype=np.float64)
    shape = tuple(cov.shape)
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"expected a square matrix, got shape {shape}")
    on_accelerator = isinstance(cov, torch.Tensor) and cov.device.type != "cpu"
    if backend == "numpy" and device is None and not on_accelerator:
        mat = cov.detach().cpu().numpy() if isinstance(cov, torch.Tensor) else cov
        vals = np.linalg.eigvalsh(mat)
    else:
        if device is not None:
            target = torch.device(device)
        else:
            target = cov.device if isinstance(cov, torch.Tensor) else torch.device("cpu")
        mat = torch.as_tensor(cov).to(device=target, dtype=torch.float64)
        vals = torch.linalg.eigvalsh(mat).cpu().numpy()
    # eigvalsh returns ascending order; the spectrum is reported largest first.
    return np.maximum(vals, EIG_FLOOR)[::-1].copy()


def accumulate_array(
    array: Any, chunk_tokens: int | None = None, device: str | torch.device | None = None
) -> CovarianceAccumulator:
    """Stream an (N, D) array-like (numpy, zarr.Array, memmap) through a CovarianceAccumulator in row chunks.

    Only one block is in memory at a time (``array[i:j]`` reads rows i..j), plus its float64 copy of at most
    ``chunk_tokens`` rows. For a zarr array, reads are aligned to its stored row chunks (so no stored chunk is
    decoded twice): a block is the largest whole number of stored chunks within ``chunk_tokens`` rows, or one stored
    chunk, fed to the accumulator ``chunk_tokens`` rows at a time, when a stored chunk is longer than that.
    """
    if len(array.shape) != 2:
        raise ValueError(f"expected an (N, D) array, got shape {tuple(array.shape)}")
    n_rows, dim = int(array.shape[0]), int(array.shape[1])
    step = int(chunk_tokens) if chunk_tokens is not None else default_chunk_tokens(dim)
    if step < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    read_rows = step
    stored = getattr(array, "chunks", None)
    if isinstance(stored, tuple) and stored and int(stored[0]) > 0:
        rows = int(stored[0])
        read_rows = rows * max(1, step // rows)
    acc = CovarianceAccumulator(dim, device=device)
    for start in range(0, n_rows, read_rows):
        block = array[start : min(start + read_rows, n_rows)]  # storage dtype (fp16/fp32), not yet float64
        for sub in range(0, block.shape[0], step):
            acc.update(block[sub : sub + step])
    return acc


def covariance_of_array(
    array: Any, chunk_tokens: int | None = None, device: str | torch.device | None = None
) -> np.ndarray:
    """Centred (N − 1)-normalised covariance (D×D float64) of an (N, D) array-like, streamed in row chunks."""
    return accumulate_array(array, chunk_tokens=chunk_tokens, device=device).covariance()
