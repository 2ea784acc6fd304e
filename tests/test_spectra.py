"""Effective-rank metrics against closed forms (specscale.measure.metrics, docs/science.md §5)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from specscale.measure import metrics as spectra
from specscale.measure.metrics import (
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
from specscale.measure.registry import (
    FIT_METRICS,
    REGISTRY,
    display_name,
    lookup,
    metric_names,
    renyi_metric_name,
    renyi_order,
)
from tolerances import rounding_tol

NAMED_ALPHAS = [0.0, 0.5, 1.0, 2.0, 5.0, math.inf]
F64 = np.float64


def _rank_rtol(n: int, alpha: float = 1.0) -> float:
    """Relative float64 rounding bound of a Rényi rank R_α = exp(H_α) over n eigenvalues (an absolute bound on H_α).

    ln p_i = ln λ_i − ln Σλ carries the sum's n roundings and 3 more (two logs, the difference), absolutely.
    H₁ = −Σ p ln p: that error times (1 + 2·ln n) (p carries it relatively, ln p absolutely, H ≤ ln n), plus the n-term
    sum. H_α = logsumexp(α·ln p)/(1 − α): α times it in the exponents, the n-term sum and its log, over |1 − α|.
    H_∞ = −max ln p: as ln p. H₀ = ln |support|: 1. exp(H) adds 1.
    """
    if alpha == 0.0:
        ops = 2.0
    elif math.isinf(alpha):
        ops = n + 4.0
    elif abs(alpha - 1.0) < 1e-4:  # the code's first-order expansion around α = 1
        ops = (n + 3) * (1 + 2 * math.log(n)) + n + 1
    else:
        ops = (alpha * (n + 3) + n + 2) / abs(1.0 - alpha) + 1
    return rounding_tol(F64, ops)


def test_default_alphas_cover_the_named_points() -> None:
    for a in NAMED_ALPHAS:
        assert a in DEFAULT_ALPHAS
    assert list(DEFAULT_ALPHAS) == sorted(DEFAULT_ALPHAS)
    assert len(DEFAULT_ALPHAS) >= 10


@pytest.mark.parametrize("dim", [1, 7, 512])
def test_identity_covariance_has_full_rank_for_every_metric(dim: int) -> None:
    eigs = np.linalg.eigvalsh(np.eye(dim))
    # float64 rounding of the rank over dim eigenvalues (_rank_rtol: ≲ 1.3e-11 at dim 512); one mode more or less is
    # 1/dim ≥ 2e-3 relative
    assert soft_rank(eigs) == pytest.approx(dim, rel=_rank_rtol(dim, 1.0))
    assert hard_rank(eigs) == pytest.approx(dim, rel=_rank_rtol(dim, 2.0))
    assert spectral_entropy(eigs) == pytest.approx(math.log(dim), abs=_rank_rtol(dim, 1.0))
    for a in NAMED_ALPHAS:
        assert renyi_rank(eigs, a) == pytest.approx(dim, rel=_rank_rtol(dim, a)), a


@pytest.mark.parametrize("k,dim", [(1, 10), (5, 64), (40, 300)])
def test_rank_k_projector_gives_k(k: int, dim: int) -> None:
    # k unit eigenvalues, the rest exactly 0 (clamped to 1e-12 and outside the numerical support), shuffled.
    eigs = np.zeros(dim)
    eigs[:k] = 1.0
    np.random.default_rng(k).shuffle(eigs)
    # rounding over the k supported eigenvalues; counting a clamped zero would be off by 1/k
    assert soft_rank(eigs) == pytest.approx(k, rel=_rank_rtol(k, 1.0))
    assert hard_rank(eigs) == pytest.approx(k, rel=_rank_rtol(k, 2.0))
    for a in DEFAULT_ALPHAS:
        assert renyi_rank(eigs, a) == pytest.approx(k, rel=_rank_rtol(k, a)), a


def test_negative_roundoff_eigenvalues_are_clamped() -> None:
    assert hard_rank([2.0, 2.0, -1e-15, -3e-9]) == pytest.approx(2.0, rel=_rank_rtol(4, 2.0))
    assert renyi_rank([2.0, 2.0, -1e-15, -3e-9], 0.0) == pytest.approx(2.0, rel=_rank_rtol(4, 0.0))


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
    # the rank's rounding over 4 values plus the closed form's own (≤ 3 roundings)
    tol = _rank_rtol(4, alpha) + rounding_tol(F64, 3)
    assert renyi_rank(eigs, alpha) == pytest.approx(TWO_MODE_CLOSED_FORM[alpha], rel=tol)


def test_two_mode_soft_and_hard_closed_form() -> None:
    eigs = [3.0, 1.0]
    # the metric's rounding over 2 values plus the closed form's (≤ 3 roundings); H ≈ 0.56, so relative ≤ 2× absolute
    assert soft_rank(eigs) == pytest.approx(4.0 / 3.0**0.75, rel=_rank_rtol(2, 1.0) + rounding_tol(F64, 3))
    hard = (3.0 + 1.0) ** 2 / (9.0 + 1.0)
    assert hard_rank(eigs) == pytest.approx(hard, rel=_rank_rtol(2, 2.0) + rounding_tol(F64, 3))
    entropy = math.log(4.0) - 0.75 * math.log(3.0)
    assert spectral_entropy(eigs) == pytest.approx(entropy, rel=(_rank_rtol(2, 1.0) + rounding_tol(F64, 3)) / entropy)


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
    # non-increasing up to the two neighbours' rounding (_rank_rtol; largest next to α = 1, where 1/|1 − α| ≤ 100)
    slack = np.array([_rank_rtol(eigs.size, a) + _rank_rtol(eigs.size, b) for a, b in zip(alphas, alphas[1:])])
    assert np.all(np.diff(curve) <= slack * curve[:-1]), curve
    assert hard_rank(eigs) <= soft_rank(eigs)


@pytest.mark.parametrize("idx", range(4))
def test_renyi_1_is_soft_and_renyi_2_is_hard(idx: int) -> None:
    eigs = _random_spectra()[idx]
    lam = np.maximum(eigs, 1e-12)
    assert renyi_rank(eigs, 1.0) == soft_rank(eigs)
    n = eigs.size
    # the same code path (R₂ is hard_rank): at most each side's rounding
    assert renyi_rank(eigs, 2.0) == pytest.approx(hard_rank(eigs), rel=2 * _rank_rtol(n, 2.0))
    # Direct float64 formulas over all n values: sums of n terms (2n + 3 roundings for Σλ and Σλ², the log-form
    # entropy like _rank_rtol). The metrics drop eigenvalues at or below max(1e-12, n·eps·λ_max) from the support;
    # the formulas keep them, which moves them by ≤ 2·n·that/Σλ (times 1 + |ln p| ≤ 30 for the entropy).
    dropped = 2 * n * max(1e-12, n * np.finfo(F64).eps * lam.max()) / lam.sum()
    tol = _rank_rtol(n, 2.0) + rounding_tol(F64, 2 * n + 3) + dropped
    assert hard_rank(eigs) == pytest.approx(lam.sum() ** 2 / (lam**2).sum(), rel=tol)
    p = lam / lam.sum()
    tol = 2 * _rank_rtol(n, 1.0) + 30 * dropped
    assert soft_rank(eigs) == pytest.approx(math.exp(-np.sum(p * np.log(p))), rel=tol)


def test_renyi_is_continuous_across_the_alpha_one_switch() -> None:
    # Below |α − 1| = 1e-4 a first-order expansion replaces the 0/0 formula: both sides must agree smoothly.
    eigs = _random_spectra()[0]
    soft = soft_rank(eigs)
    for eps in (0.99e-4, 1.01e-4, 1e-3):
        for a in (1.0 - eps, 1.0 + eps):
            # slope of R_α at α = 1 is bounded by R·Var(ln p)/2: a few units here, so a·eps bound (float64
            # rounding, ≤ _rank_rtol ≈ 1e-8 relative even at |α − 1| = 1e-4, is far below it)
            assert abs(renyi_rank(eigs, a) - soft) < 10.0 * soft * eps
    left, right = renyi_rank(eigs, 1.0 - 0.99e-4), renyi_rank(eigs, 1.0 - 1.01e-4)
    # plus both sides' rounding, the direct formula's amplified by 1/|1 − α| ≈ 1e4
    rounding = (_rank_rtol(eigs.size, 1.0 - 0.99e-4) + _rank_rtol(eigs.size, 1.0 - 1.01e-4)) * soft
    assert abs(left - right) < 1e-3 * abs(soft - renyi_rank(eigs, 0.9)) + rounding


@pytest.mark.parametrize("scale", [1e-6, 3.7, 1e9])
def test_ranks_are_scale_invariant(scale: float) -> None:
    eigs = _random_spectra()[0]
    # each side's rounding at the worst α of METRICS (α = 1.5: ×5 of the sum's), plus the scaling's 1 per value
    tol = 2 * max(_rank_rtol(eigs.size, a) for a in DEFAULT_ALPHAS) + rounding_tol(F64, 1)
    for name, fn in METRICS.items():
        assert fn(eigs * scale) == pytest.approx(fn(eigs), rel=tol), name


def test_large_alpha_with_tiny_probabilities_is_stable() -> None:
    # Flat spectrum over 10^4 modes: p = 1e-4 and p^200 = 1e-800 underflows to 0 in a direct computation.
    flat = np.ones(10_000)
    # (harmless underflow of exp(α ln p − max) to 0 is allowed; overflow, 0·inf and log(0) are not)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        assert renyi_rank(flat, 200.0) == pytest.approx(10_000.0, rel=_rank_rtol(flat.size, 200.0))
    # One dominant mode plus 1000 modes at p ~ 1e-13: R_200 → 1/max p from above.
    eigs = np.concatenate([[1.0], np.full(1000, 1e-10)])
    p_max = 1.0 / (1.0 + 1000 * 1e-10)
    value = renyi_rank(eigs, 200.0)
    assert math.isfinite(value)
    # Rounding over 1001 values plus the oracle's (p_max, a power: 4); R differs from 1/p_max = 1 + 1e-7 by the
    # small modes, 1e5× these bounds. R_1e6 = p_max^(−α/(α − 1)) differs from 1/p_max by ln(1/p_max)/α ≈ 1e-13 more.
    n = eigs.size
    assert value == pytest.approx(p_max ** (-200.0 / 199.0), rel=_rank_rtol(n, 200.0) + rounding_tol(F64, 4))
    assert renyi_rank(eigs, math.inf) == pytest.approx(1.0 / p_max, rel=_rank_rtol(n, math.inf) + rounding_tol(F64, 3))
    tol = _rank_rtol(n, 1e6) + rounding_tol(F64, 3) + math.log(1.0 / p_max) / 1e6
    assert renyi_rank(eigs, 1e6) == pytest.approx(1.0 / p_max, rel=tol)


def test_metrics_mapping_names_and_functions() -> None:
    eigs = [4.0, 2.0, 1.0, 1.0]
    assert METRICS["soft_rank"] is soft_rank
    assert METRICS["hard_rank"] is hard_rank
    for a in DEFAULT_ALPHAS:
        assert METRICS[renyi_metric_name(a)](eigs) == renyi_rank(eigs, a)
    assert {"renyi_0", "renyi_0.5", "renyi_1", "renyi_2", "renyi_5", "renyi_inf"} <= set(METRICS)
    # all_metrics runs the same code on the same ln p as the single metrics: equal up to a rounding or two, and
    # 1e-14 (≈ 45 eps) is 20× that
    everything = spectra.all_metrics(eigs)
    assert set(everything) == set(METRICS) | {"entropy"}
    assert everything["entropy"] == pytest.approx(spectral_entropy(eigs), rel=1e-14)
    for name, fn in METRICS.items():
        assert everything[name] == pytest.approx(fn(eigs), rel=1e-14)


@pytest.mark.parametrize("alphas", [DEFAULT_ALPHAS, (), (0.25, 3.0, 2.0, 0.25)])
def test_all_metrics_gives_the_registry_names_in_its_order(alphas: tuple[float, ...]) -> None:
    # the ranks.csv header the fit stage reads against the registry: the same names, in the same order
    assert list(spectra.all_metrics([4.0, 2.0, 1.0, 1.0], alphas)) == metric_names(alphas)
    assert metric_names(()) == ["entropy", "renyi_1", "renyi_2", "soft_rank", "hard_rank"]


def test_registry_names_and_betas() -> None:
    assert FIT_METRICS == ("soft_rank", "hard_rank")  # the two ranks every β is fitted for (R₁, R₂)
    assert [display_name(m) for m in FIT_METRICS] == ["soft", "hard"]  # the labels the tables always printed
    assert len({m.name for m in REGISTRY}) == len(REGISTRY)
    for a in (0.0, 0.5, 1.0, 2.0, 20.0, math.inf):
        assert renyi_order(renyi_metric_name(a)) == a and lookup(renyi_metric_name(a)).family
    assert [renyi_metric_name(a) for a in (0.0, 0.5, math.inf)] == ["renyi_0", "renyi_0.5", "renyi_inf"]
    # a Rényi name is one that renyi_metric_name makes: other spellings are no metric
    for name in ("renyi_0.50", "renyi_x", "renyi_", "renyi_-1", "rho_0.5", "tii", "noise_floor"):
        assert lookup(name) is None, name
    with pytest.raises(ValueError, match="alpha"):
        renyi_metric_name(-1.0)


def test_reinjection_on_hand_example() -> None:
    post = [1.0, 1.0, 1.0, 1.0]  # R_α = 4 for every α
    pre = [3.0, 1.0, 0.0, 0.0]  # two modes, p = (3/4, 1/4)
    # a ratio of two ranks over 4 values: both ranks' rounding, the division and the oracle's (1)
    ratio_tol = lambda a: 2 * _rank_rtol(4, a) + rounding_tol(F64, 2)
    assert reinjection(post, pre, 2.0) == pytest.approx(4.0 / 1.6, rel=ratio_tol(2.0))
    assert reinjection(post, pre, math.inf) == pytest.approx(3.0, rel=ratio_tol(math.inf))
    assert reinjection(post, pre, 0.0) == pytest.approx(2.0, rel=ratio_tol(0.0))
    assert reinjection(pre, pre, 0.5) == pytest.approx(1.0, rel=ratio_tol(0.5))


def test_tail_integrity_index_on_hand_example() -> None:
    # per-layer differences 6, 6, 9 → mean 7
    # three differences, a sum of 3 and a division (7 roundings) at magnitude ≤ 21; small integers: exact in practice
    tii = tail_integrity_index([10.0, 12.0, 14.0], [4.0, 6.0, 5.0])
    assert tii == pytest.approx(7.0, abs=rounding_tol(F64, 7, magnitude=21.0))
    assert tail_integrity_index([3.0], [5.0]) == pytest.approx(-2.0, abs=rounding_tol(F64, 2, magnitude=5.0))
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
