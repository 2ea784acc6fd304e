"""Effective-rank metrics against closed forms (specscale.spectra, science.md §5)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from specscale import spectra
from specscale.spectra import (
    DEFAULT_ALPHAS,
    METRICS,
    hard_rank,
    reinjection,
    renyi_curve,
    renyi_rank,
    soft_rank,
    spectral_entropy,
    tail_integrity_index,
)

NAMED_ALPHAS = [0.0, 0.5, 1.0, 2.0, 5.0, math.inf]


def test_default_alphas_cover_the_named_points() -> None:
    for a in NAMED_ALPHAS:
        assert a in DEFAULT_ALPHAS
    assert list(DEFAULT_ALPHAS) == sorted(DEFAULT_ALPHAS)
    assert len(DEFAULT_ALPHAS) >= 10


@pytest.mark.parametrize("dim", [1, 7, 512])
def test_identity_covariance_has_full_rank_for_every_metric(dim: int) -> None:
    eigs = np.linalg.eigvalsh(np.eye(dim))
    assert soft_rank(eigs) == pytest.approx(dim, rel=1e-12)
    assert hard_rank(eigs) == pytest.approx(dim, rel=1e-12)
    assert spectral_entropy(eigs) == pytest.approx(math.log(dim), abs=1e-12)
    for a in NAMED_ALPHAS:
        assert renyi_rank(eigs, a) == pytest.approx(dim, rel=1e-12), a


@pytest.mark.parametrize("k,dim", [(1, 10), (5, 64), (40, 300)])
def test_rank_k_projector_gives_k(k: int, dim: int) -> None:
    # k unit eigenvalues, the rest exactly 0 (clamped to 1e-12 and outside the numerical support), shuffled.
    eigs = np.zeros(dim)
    eigs[:k] = 1.0
    np.random.default_rng(k).shuffle(eigs)
    assert soft_rank(eigs) == pytest.approx(k, rel=1e-12)
    assert hard_rank(eigs) == pytest.approx(k, rel=1e-12)
    for a in DEFAULT_ALPHAS:
        assert renyi_rank(eigs, a) == pytest.approx(k, rel=1e-12), a


def test_negative_roundoff_eigenvalues_are_clamped() -> None:
    assert hard_rank([2.0, 2.0, -1e-15, -3e-9]) == pytest.approx(2.0, rel=1e-12)
    assert renyi_rank([2.0, 2.0, -1e-15, -3e-9], 0.0) == pytest.approx(2.0, rel=1e-12)


# Two modes with p = (3/4, 1/4): R_α = ((3/4)^α + (1/4)^α)^(1/(1−α)), so
#   α = 0.5: ((√3 + 1)/2)² = 1 + √3/2      α = 2: 1/(9/16 + 1/16) = 8/5
#   α = 5:   (244/1024)^(−1/4) = (256/61)^(1/4)   α = ∞: 1/max p = 4/3
#   α = 1:   exp(ln 4 − (3/4) ln 3) = 4 / 3^(3/4)     α = 0: 2 modes
TWO_MODE_CLOSED_FORM = {
    0.0: 2.0,
    0.5: 1.0 + math.sqrt(3.0) / 2.0,
    1.0: 4.0 / 3.0**0.75,
    2.0: 8.0 / 5.0,
    5.0: (256.0 / 61.0) ** 0.25,
    math.inf: 4.0 / 3.0,
}


@pytest.mark.parametrize("alpha", list(TWO_MODE_CLOSED_FORM))
def test_two_mode_spectrum_matches_closed_form(alpha: float) -> None:
    eigs = np.array([0.0, 6.0, 0.0, 2.0])  # p = (3/4, 1/4) after dropping the zeros; any scale
    assert renyi_rank(eigs, alpha) == pytest.approx(TWO_MODE_CLOSED_FORM[alpha], rel=1e-13)


def test_two_mode_soft_and_hard_closed_form() -> None:
    eigs = [3.0, 1.0]
    assert soft_rank(eigs) == pytest.approx(4.0 / 3.0**0.75, rel=1e-13)
    assert hard_rank(eigs) == pytest.approx((3.0 + 1.0) ** 2 / (9.0 + 1.0), rel=1e-13)
    assert spectral_entropy(eigs) == pytest.approx(math.log(4.0) - 0.75 * math.log(3.0), rel=1e-13)


def _random_spectra() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        rng.lognormal(0.0, 2.0, size=200),
        (np.arange(1, 1001) ** -1.1) * 7.3,  # power-law tail, like trained FFN spectra
        rng.exponential(size=50),
        np.linalg.eigvalsh(np.cov(rng.standard_normal((40, 120)), rowvar=False)),  # rank-deficient (N < D)
    ]


@pytest.mark.parametrize("idx", range(4))
def test_renyi_rank_is_non_increasing_in_alpha(idx: int) -> None:
    eigs = _random_spectra()[idx]
    alphas = sorted(set(DEFAULT_ALPHAS) | {0.1, 0.9, 0.99, 1.01, 1.1, 2.5, 50.0, 200.0})
    curve = renyi_curve(eigs, alphas)
    assert np.all(np.isfinite(curve))
    assert np.all(np.diff(curve) <= 1e-12 * curve[:-1]), curve
    assert hard_rank(eigs) <= soft_rank(eigs)


@pytest.mark.parametrize("idx", range(4))
def test_renyi_1_is_soft_and_renyi_2_is_hard(idx: int) -> None:
    eigs = _random_spectra()[idx]
    lam = np.maximum(eigs, 1e-12)
    assert renyi_rank(eigs, 1.0) == soft_rank(eigs)
    assert renyi_rank(eigs, 2.0) == pytest.approx(hard_rank(eigs), rel=1e-12)
    assert hard_rank(eigs) == pytest.approx(lam.sum() ** 2 / (lam**2).sum(), rel=1e-9)
    p = lam / lam.sum()
    assert soft_rank(eigs) == pytest.approx(math.exp(-np.sum(p * np.log(p))), rel=1e-9)


def test_renyi_is_continuous_across_the_alpha_one_switch() -> None:
    # Below |α − 1| = 1e-4 a first-order expansion replaces the 0/0 formula: both sides must agree smoothly.
    eigs = _random_spectra()[0]
    soft = soft_rank(eigs)
    for eps in (0.99e-4, 1.01e-4, 1e-3):
        for a in (1.0 - eps, 1.0 + eps):
            # slope of R_α at α = 1 is bounded by R·Var(ln p)/2: a few units here, so a·eps bound
            assert abs(renyi_rank(eigs, a) - soft) < 10.0 * soft * eps
    left, right = renyi_rank(eigs, 1.0 - 0.99e-4), renyi_rank(eigs, 1.0 - 1.01e-4)
    assert abs(left - right) < 1e-3 * abs(soft - renyi_rank(eigs, 0.9)) + 1e-9


@pytest.mark.parametrize("scale", [1e-6, 3.7, 1e9])
def test_ranks_are_scale_invariant(scale: float) -> None:
    eigs = _random_spectra()[0]
    for name, fn in METRICS.items():
        assert fn(eigs * scale) == pytest.approx(fn(eigs), rel=1e-10), name


def test_large_alpha_with_tiny_probabilities_is_stable() -> None:
    # Flat spectrum over 10^4 modes: p = 1e-4 and p^200 = 1e-800 underflows to 0 in a direct computation.
    flat = np.ones(10_000)
    # (harmless underflow of exp(α ln p − max) to 0 is allowed; overflow, 0·inf and log(0) are not)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        assert renyi_rank(flat, 200.0) == pytest.approx(10_000.0, rel=1e-10)
    # One dominant mode plus 1000 modes at p ~ 1e-13: R_200 → 1/max p from above.
    eigs = np.concatenate([[1.0], np.full(1000, 1e-10)])
    p_max = 1.0 / (1.0 + 1000 * 1e-10)
    value = renyi_rank(eigs, 200.0)
    assert math.isfinite(value)
    assert value == pytest.approx(p_max ** (-200.0 / 199.0), rel=1e-12)
    assert renyi_rank(eigs, math.inf) == pytest.approx(1.0 / p_max, rel=1e-14)
    assert renyi_rank(eigs, 1e6) == pytest.approx(1.0 / p_max, rel=1e-9)


def test_metrics_mapping_names_and_functions() -> None:
    eigs = [4.0, 2.0, 1.0, 1.0]
    assert METRICS["soft_rank"] is soft_rank
    assert METRICS["hard_rank"] is hard_rank
    for a in DEFAULT_ALPHAS:
        assert METRICS[spectra.renyi_metric_name(a)](eigs) == renyi_rank(eigs, a)
    assert {"renyi_0", "renyi_0.5", "renyi_1", "renyi_2", "renyi_5", "renyi_inf"} <= set(METRICS)
    everything = spectra.all_metrics(eigs)
    assert set(everything) == set(METRICS)
    for name, fn in METRICS.items():
        assert everything[name] == pytest.approx(fn(eigs), rel=1e-14)


def test_reinjection_on_hand_example() -> None:
    post = [1.0, 1.0, 1.0, 1.0]  # R_α = 4 for every α
    pre = [3.0, 1.0, 0.0, 0.0]  # two modes, p = (3/4, 1/4)
    assert reinjection(post, pre, 2.0) == pytest.approx(4.0 / 1.6, rel=1e-13)
    assert reinjection(post, pre, math.inf) == pytest.approx(3.0, rel=1e-13)
    assert reinjection(post, pre, 0.0) == pytest.approx(2.0, rel=1e-13)
    assert reinjection(pre, pre, 0.5) == pytest.approx(1.0, rel=1e-14)


def test_tail_integrity_index_on_hand_example() -> None:
    # per-layer differences 6, 6, 9 → mean 7
    assert tail_integrity_index([10.0, 12.0, 14.0], [4.0, 6.0, 5.0]) == pytest.approx(7.0, rel=1e-15)
    assert tail_integrity_index([3.0], [5.0]) == pytest.approx(-2.0)
    with pytest.raises(ValueError):
        tail_integrity_index([1.0, 2.0], [1.0])


def test_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError):
        renyi_rank([1.0, 2.0], -0.5)
    with pytest.raises(ValueError):
        soft_rank([])
    with pytest.raises(ValueError):
        hard_rank([1.0, float("nan")])


def test_numerically_zero_spectrum_has_rank_zero() -> None:
    zeros = np.zeros(16)
    assert soft_rank(zeros) == 0.0
    assert hard_rank(zeros) == 0.0
    assert renyi_rank(zeros, 0.5) == 0.0
    assert spectral_entropy(zeros) == -math.inf
