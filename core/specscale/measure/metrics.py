"""Effective-rank metrics of a covariance spectrum (docs/science.md §5).

Every function takes the eigenvalues λ of one covariance matrix as a 1-D array in any order (numpy, float64 or
anything convertible). The conventions, shared by all metrics:

* λ is clamped to ≥ ``EIG_FLOOR`` (1e-12): a covariance is positive semi-definite, so negative values are round-off.
* p = λ / Σλ is the normalised spectrum (a probability distribution over directions).
* **Numerical support.** Eigenvalues at or below ``max(EIG_FLOOR, D·eps·λ_max)`` are below what a float64
  eigensolver can resolve (its absolute error is ≈ D·eps·‖C‖) and are treated as *exact zeros* (they carry no
  probability mass). For soft and hard rank this changes the result by < 1e-9 relative against keeping them at the
  clamp (the paper's code); it matters for small Rényi orders α, where every noise eigenvalue of a rank-deficient
  covariance (N < D) would otherwise add ~(1e-12)^α to Σ p^α, and it makes R₀ the numerical rank
  (``numpy.linalg.matrix_rank`` convention) instead of always D. A spectrum with an empty support (a numerically
  zero covariance, e.g. a dead site) has every rank 0 and entropy −∞ (= ln 0).

* **Storage noise** (α < 0.5 only). Activations stored as fp16/bf16 (or computed in bf16) carry rounding noise that
  fills the null space of a rank-deficient covariance: a rank-64 input at D = 512 has R₀ = 64 from fp32 storage but
  512 from bf16. ``all_metrics(..., noise_floor=storage_noise_floor(dtype, E[x²], N))`` removes eigenvalues at or
  below that floor from the support of the orders α < ``SUPPORT_CUT_BELOW_ALPHA`` (derivation at
  `storage_noise_floor`). Orders α ≥ 0.5, soft and hard rank included, keep the support above, unchanged.

Rényi rank R_α = exp(H_α), H_α = ln(Σ p^α) / (1 − α), is computed in the log domain: ln Σ p^α = logsumexp(α ln p),
so α = 200 with p ~ 1e-15 neither underflows to log(0) nor overflows. Limits: α = 0 → |support|, α = 1 → soft rank
exp(−Σ p ln p), α = ∞ → 1 / max p. R_α is non-increasing in α, so hard (α = 2) ≤ soft (α = 1).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import logsumexp

from specscale.measure.registry import REGISTRY, check_alpha, renyi_metric_name, renyi_orders

EIG_FLOOR = 1e-12
# Below N = 4·D samples the hard rank of a D-dim covariance is biased low (too few samples); such spectra are flagged.
MIN_N_OVER_D = 4.0

# Machine epsilon (spacing of floats at 1.0) of each activation storage dtype: numpy has no bfloat16, so by name.
STORAGE_EPS: dict[str, float] = {"float64": 2.0**-52, "float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}

# Orders below this get the storage-noise cut. Why 0.5: a flat rank-r signal plus D − r noise eigenvalues of relative
# size q = p_noise/p_signal changes Σ p^α by the fraction ((D − r)/r)·q^α. For bf16 storage (q ≈ eps²/12 · r/D ≈
# 6e-7 at r = 64, D = 512) that is 0.6% at α = 0.5 but 20% at α = 0.25 and 700% at α = 0 (fp16: 0.07%, 7%, 700%):
# below 0.5 the noise decides the value, from 0.5 up it is a (sub-)percent bias, and a cut there would itself move
# the fp32-stored α ≥ 0.5 numbers (soft and hard rank included) the study already has.
SUPPORT_CUT_BELOW_ALPHA = 0.5

# Rényi orders for α-curves (pre rank, post rank and reinjection against α; the paper's grid is unpublished,
# docs/science.md §9). Dense below 2, where R_α changes fastest for heavy-tailed spectra, then roughly geometric up to 20,
# plus the limit ∞. It contains the named points 0 (numerical rank), 0.5, 1 (soft), 2 (hard), 5 and ∞ (1 / max p).
DEFAULT_ALPHAS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, math.inf)

# Within this distance of α = 1 the direct formula loses digits to cancellation (0/0); use the first-order
# expansion H_α ≈ H₁ − (α − 1)/2 · Var_p(ln p) instead (error O((α − 1)²), i.e. < 1e-8 relative here).
_ALPHA_ONE_BAND = 1e-4


def storage_noise_floor(dtype: str, second_moments: ArrayLike, n_samples: int) -> float:
    """Largest covariance eigenvalue that rounding the activations to `dtype` can create (same units as λ).

    `second_moments` is E[x_j²] per unit j, shape (D,), *uncentred* (rounding error scales with |x|, not with x − μ);
    `n_samples` is N. Derivation (docs/science.md §9):
      * Rounding x to nearest with machine epsilon eps (2^-7 bf16, 2^-10 fp16, 2^-23 fp32) errs by at most half a
        spacing, and the spacing at |x| = m·2^e (1 ≤ m < 2) is eps·2^e ≤ eps·|x|. The error is ≈ uniform over the
        spacing: variance spacing²/12 ≤ eps²·x²/12. So unit j gets noise of variance σ_j² ≤ eps²/12 · E[x_j²].
      * The errors of different entries are independent, so the noise Z (N×D) is Z = G·diag(σ) with G of unit-variance
        independent entries. Its sample covariance diag(σ)·GᵀG/N·diag(σ) has largest eigenvalue ≤ max σ_j² ·
        ‖GᵀG/N‖ and ‖GᵀG/N‖ → (1 + √(D/N))² (the Marchenko–Pastur edge). max_j, not the mean: the null space of a
        rank-r signal is (D − r)-dimensional, and by interlacing its largest noise eigenvalue is at least the
        (r + 1)-th largest σ_j², so units with large activations set the floor.
      * The stored data are signal S plus Z; for a rank-r signal the (r + 1)-th and later singular values of S + Z
        are at most σ_max(Z) (Weyl), so every eigenvalue the noise puts in the signal's null space is ≤ the floor.
    Returns eps²/12 · max_j E[x_j²] · (1 + √(D/N))²; 0 for float64 storage is not special-cased (it is ≈ 1e-33).
    """
    if dtype not in STORAGE_EPS:
        raise ValueError(f"unknown activation storage dtype {dtype!r}; valid: {sorted(STORAGE_EPS)}")
    m2 = np.asarray(second_moments, dtype=np.float64).ravel()
    if m2.size == 0 or not np.all(np.isfinite(m2)) or np.any(m2 < 0):
        raise ValueError("second moments must be a non-empty vector of finite values >= 0")
    if int(n_samples) < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    edge = (1.0 + math.sqrt(m2.size / int(n_samples))) ** 2
    return STORAGE_EPS[dtype] ** 2 / 12.0 * float(m2.max()) * edge


def _log_probabilities(eigs: ArrayLike, noise_floor: float = 0.0) -> np.ndarray:
    """ln p over the numerical support of the spectrum (see module docstring), eigenvalues at or below `noise_floor`
    (absolute) also left out; shape (k,), k ≤ D, may be empty."""
    lam = np.asarray(eigs, dtype=np.float64).ravel()
    if lam.size == 0:
        raise ValueError("empty eigenvalue vector")
    if not np.all(np.isfinite(lam)):
        raise ValueError("eigenvalues contain NaN or inf")
    if not (math.isfinite(noise_floor) and noise_floor >= 0.0):
        raise ValueError(f"noise_floor must be a finite number >= 0, got {noise_floor}")
    lam = np.maximum(lam, EIG_FLOOR)
    threshold = max(EIG_FLOOR, lam.size * np.finfo(np.float64).eps * float(lam.max()), float(noise_floor))
    support = lam[lam > threshold]
    if support.size == 0:
        return support
    # Subtract in the log domain so that p = λ/Σλ never rounds to 0 for tiny λ.
    return np.log(support) - math.log(float(support.sum()))


def _log_renyi_rank(log_p: np.ndarray, alpha: float) -> float:
    """H_α (nats) from ln p over the support; -inf for an empty support."""
    if log_p.size == 0:
        return -math.inf
    if alpha == 0.0:
        return math.log(log_p.size)
    if math.isinf(alpha):
        return -float(log_p.max())
    p = np.exp(log_p)
    shannon = -float(np.dot(p, log_p))
    if abs(alpha - 1.0) < _ALPHA_ONE_BAND:
        variance = float(np.dot(p, (log_p + shannon) ** 2))  # Var_p(ln p); E_p[ln p] = −H₁
        return shannon - 0.5 * (alpha - 1.0) * variance
    return float(logsumexp(alpha * log_p)) / (1.0 - alpha)


def spectral_entropy(eigs: ArrayLike) -> float:
    """Shannon entropy −Σ p ln p of the normalised spectrum, in nats (ln D for a flat spectrum)."""
    return _log_renyi_rank(_log_probabilities(eigs), 1.0)


def soft_rank(eigs: ArrayLike) -> float:
    """Shannon effective rank exp(−Σ p ln p) (Roy & Vetterli); = R₁."""
    return math.exp(spectral_entropy(eigs))


def hard_rank(eigs: ArrayLike) -> float:
    """Participation ratio (Σλ)² / Σλ² = 1 / Σ p²; = R₂."""
    # 1/Σp² via logsumexp of 2 ln p: the same number as (Σλ)²/Σλ², without squaring large λ.
    return math.exp(_log_renyi_rank(_log_probabilities(eigs), 2.0))


def renyi_rank(eigs: ArrayLike, alpha: float) -> float:
    """Rényi effective rank R_α = (Σ p^α)^(1/(1−α)) for α ≥ 0, with the limits α = 1 (soft) and α = ∞ (1/max p)."""
    return math.exp(_log_renyi_rank(_log_probabilities(eigs), check_alpha(alpha)))


def renyi_curve(eigs: ArrayLike, alphas: Sequence[float] = DEFAULT_ALPHAS) -> np.ndarray:
    """R_α for each α in ``alphas`` (shape (len(alphas),)), normalising the spectrum once."""
    log_p = _log_probabilities(eigs)
    return np.array([math.exp(_log_renyi_rank(log_p, check_alpha(a))) for a in alphas])


def reinjection(eigs_post: ArrayLike, eigs_pre: ArrayLike, alpha: float) -> float:
    """ρ_α = R_α(post) / R_α(pre): rank re-created by the FFN nonlinearity (post = after ReLU², pre = c_fc output)."""
    pre = renyi_rank(eigs_pre, alpha)
    if pre == 0.0:
        return math.nan  # a numerically zero pre-activation covariance: the ratio is undefined
    return renyi_rank(eigs_post, alpha) / pre


def tail_integrity_index(
    hard_post_tail_by_layer: ArrayLike, hard_post_head_by_layer: ArrayLike
) -> float:
    """Mean over layers of hard_post(TAIL) − hard_post(HEAD) (the authors' logged TII).

    Both inputs are per-layer hard ranks of the post site, shape (L,), in the same layer order. A NaN (e.g. a skipped
    bucket) propagates to the result rather than being silently dropped.
    """
    tail = np.asarray(hard_post_tail_by_layer, dtype=np.float64).ravel()
    head = np.asarray(hard_post_head_by_layer, dtype=np.float64).ravel()
    if tail.shape != head.shape:
        raise ValueError(f"TAIL and HEAD need one value per layer each, got {tail.size} and {head.size}")
    if tail.size == 0:
        raise ValueError("no layers given")
    return float(np.mean(tail - head))


def _build_metrics() -> dict[str, Callable[[ArrayLike], float]]:
    metrics: dict[str, Callable[[ArrayLike], float]] = {"soft_rank": soft_rank, "hard_rank": hard_rank}
    for alpha in DEFAULT_ALPHAS:
        metrics[renyi_metric_name(alpha)] = functools.partial(renyi_rank, alpha=alpha)
    return metrics


# Metric name → function of an eigenvalue vector. Names match the `metric` column of the rank tables.
METRICS: dict[str, Callable[[ArrayLike], float]] = _build_metrics()


# How each registered metric (registry.REGISTRY, the Rényi family aside) comes from one spectrum: a function of ln p
# over the support and of {α: R_α} at the run's orders (soft and hard rank are R₁ and R₂ themselves, not
# recomputed).
_FROM_LOG_P: dict[str, Callable[[np.ndarray, Mapping[float, float]], float]] = {
    "entropy": lambda log_p, renyi: _log_renyi_rank(log_p, 1.0),
    "soft_rank": lambda log_p, renyi: renyi[1.0],
    "hard_rank": lambda log_p, renyi: renyi[2.0],
}
# A metric in the registry without a function here would be missing from every ranks.csv: fail at import instead.
if _missing := [m.name for m in REGISTRY if not m.family and m.name not in _FROM_LOG_P]:
    raise ImportError(f"metrics.py has no function for the registered metrics {_missing} (_FROM_LOG_P)")


def all_metrics(
    eigs: ArrayLike, alphas: Sequence[float] = DEFAULT_ALPHAS, noise_floor: float = 0.0
) -> dict[str, float]:
    """Every metric of one spectrum, normalising it once: the one path the pipeline, the tests and the benchmark use.

    Keys, in ranks.csv's column order (registry.metric_names): ``entropy`` (nats), ``renyi_<α>`` for each α of
    sorted(alphas ∪ {1, 2}), then ``soft_rank`` (= R₁) and ``hard_rank`` (= R₂). `noise_floor` (absolute, λ's
    units; `storage_noise_floor` of the activations' dtype) leaves eigenvalues at or below it out of the support of
    the orders α < 0.5 only; 0 = no cut.
    """
    log_p = _log_probabilities(eigs)
    log_p_cut = _log_probabilities(eigs, noise_floor) if noise_floor != 0.0 else log_p  # (a bad floor fails there)
    renyi = {alpha: math.exp(_log_renyi_rank(log_p_cut if alpha < SUPPORT_CUT_BELOW_ALPHA else log_p, alpha))
             for alpha in renyi_orders(alphas)}
    out: dict[str, float] = {}
    for metric in REGISTRY:  # the registry's order is ranks.csv's column order
        if metric.family:
            out.update((renyi_metric_name(alpha), value) for alpha, value in renyi.items())
        else:
            out[metric.name] = _FROM_LOG_P[metric.name](log_p, renyi)
    return out
