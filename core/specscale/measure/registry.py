"""The metric registry: every metric of a spectrum the pipeline knows, by its ranks.csv name, and what happens to it.

The one list of metric names. The spectra stage computes them in this order (`metrics.all_metrics` walks `REGISTRY`,
so a spectra run's ranks.csv header is `SPECTRUM_COLUMNS` then `metric_names(alphas)`); the fit stage selects the
metric columns of ranks.csv by it and fails on a column it does not know (`fit.fit.metric_columns`); `FIT_METRICS`,
the metrics that get a β, is derived from it. No specscale imports and no numerics, so that compare/ and report/,
which read results rather than the code that made them, can name metrics the same way.

A metric is one entry, or the Rényi family: one entry standing for R_α at each order α of the run's grid, named by
`renyi_metric_name` (the α grid is a run parameter, so the family's names are known only with the grid).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Where a metric appears. Every metric is a column of a spectra run's ranks.csv and a row of results/ranks.csv.
RANKS_TABLE = "ranks.csv"  # results/ranks.csv: median over the last checkpoints, then over layers, per run
BETAS_TABLE = "betas.csv"  # results/betas.csv: an OLS β over widths per group (the fit stage fits these only)
RENYI_TABLE = "renyi.csv"  # results/compare/renyi.csv and the report's Rényi section: R_α and ρ_α against α
PLACES = (RANKS_TABLE, BETAS_TABLE, RENYI_TABLE)

# The columns of a spectra run's ranks.csv that are not metrics, in the order measure/spectra.py writes them first.
SPECTRUM_COLUMNS: tuple[str, ...] = ("step", "layer", "site", "bucket", "N", "D", "N_over_D", "noise_floor")

RENYI_PREFIX = "renyi_"


@dataclass(frozen=True)
class Metric:
    """One metric of a spectrum (or the Rényi family, `family=True`)."""

    name: str  # the ranks.csv column and the `metric` value of the results tables
    display: str  # short label: console and report tables ("β soft"), betas.json keys ("beta_soft")
    # a β with everything the study reports about it: the layer bootstrap, β per layer and per step, seed means,
    # optimizer differences, betas.json, and the β tables of the compare stage and the report
    beta: bool = False
    shown: tuple[str, ...] = (RANKS_TABLE,)  # `PLACES` it appears in
    family: bool = False

    def __post_init__(self) -> None:
        # a wrong entry fails at import, before any run computes or fits with it
        if not set(self.shown) <= set(PLACES) or RANKS_TABLE not in self.shown:
            raise ValueError(f"metric {self.name!r}: shown {self.shown} must include {RANKS_TABLE!r}, within {PLACES}")
        if self.beta and BETAS_TABLE not in self.shown:
            raise ValueError(f"metric {self.name!r} gets a β, so it is shown in {BETAS_TABLE!r}")


RENYI = Metric(RENYI_PREFIX + "<α>", "R_α", shown=(RANKS_TABLE, BETAS_TABLE, RENYI_TABLE), family=True)

# ranks.csv's column order. metrics.py holds each entry's function (its `_FROM_LOG_P`) and fails at import when one
# is missing. Display names are what the tables printed before the registry existed ('soft', 'hard'), so no table
# changes; entropy keeps its name.
REGISTRY: tuple[Metric, ...] = (
    Metric("entropy", "entropy"),  # Shannon entropy in nats: reported, never fitted (a log, not a rank)
    RENYI,
    Metric("soft_rank", "soft", beta=True, shown=(RANKS_TABLE, BETAS_TABLE)),  # = R₁
    Metric("hard_rank", "hard", beta=True, shown=(RANKS_TABLE, BETAS_TABLE)),  # = R₂
)
_BY_NAME = {m.name: m for m in REGISTRY if not m.family}

FIT_METRICS: tuple[str, ...] = tuple(m.name for m in REGISTRY if m.beta)  # the metrics that get a β, in order
# Orders every spectrum gets whatever the grid: soft and hard rank are R₁ and R₂ (same numbers, one computation).
RENYI_ALWAYS: tuple[float, ...] = (1.0, 2.0)


def check_alpha(alpha: float) -> float:
    """`alpha` as a float; a NaN or negative order fails (R_α is defined for α ≥ 0, with α = inf the limit)."""
    alpha = float(alpha)
    if math.isnan(alpha) or alpha < 0.0:
        raise ValueError(f"Rényi order alpha must be >= 0 (or inf), got {alpha}")
    return alpha


def renyi_metric_name(alpha: float) -> str:
    """Metric name of R_α, e.g. 'renyi_0.5', 'renyi_2', 'renyi_inf': the only place these names are made."""
    return f"{RENYI_PREFIX}{check_alpha(alpha):g}"


def renyi_order(name: str) -> float | None:
    """α of a Rényi metric name ('renyi_0.5' → 0.5, 'renyi_inf' → inf); None for any other name, a non-canonical
    spelling ('renyi_0.50') included, so that a name is a member exactly when `renyi_metric_name` makes it."""
    if not isinstance(name, str) or not name.startswith(RENYI_PREFIX):
        return None
    try:
        alpha = float(name.removeprefix(RENYI_PREFIX))
        return alpha if renyi_metric_name(alpha) == name else None
    except ValueError:
        return None


def is_renyi(name: str) -> bool:
    return renyi_order(name) is not None


def renyi_orders(alphas: Iterable[float]) -> list[float]:
    """The orders a spectrum is measured at for the grid `alphas`: sorted, without repeats, R₁ and R₂ always in."""
    return sorted({check_alpha(a) for a in alphas} | set(RENYI_ALWAYS))


def metric_names(alphas: Iterable[float]) -> list[str]:
    """Every metric column of a ranks.csv measured with the α grid `alphas`, in column order."""
    orders = renyi_orders(alphas)
    names: list[str] = []
    for m in REGISTRY:
        names += [renyi_metric_name(a) for a in orders] if m.family else [m.name]
    return names


def lookup(name: str) -> Metric | None:
    """The registry entry of a metric name (the family entry for a Rényi name); None for a name that is no metric
    (a derived row of results/ranks.csv such as 'tii' or 'rho_<α>', or a non-metric column)."""
    return _BY_NAME.get(name) or (RENYI if is_renyi(name) else None)


def shown_in(name: str, place: str) -> bool:
    """Whether metric `name` appears in `place` (one of `PLACES`); False for a name that is no metric."""
    if place not in PLACES:
        raise ValueError(f"unknown place {place!r}; known: {PLACES}")
    entry = lookup(name)
    return entry is not None and place in entry.shown


def display_name(name: str) -> str:
    """The short label of a metric ('soft_rank' → 'soft'); a Rényi order and any other name are shown as they are."""
    entry = _BY_NAME.get(name)
    return entry.display if entry is not None else str(name)


def unknown_columns(columns: Sequence[str], non_metric: Iterable[str]) -> list[str]:
    """The columns that are neither a registered metric nor one of `non_metric`, in their order."""
    known = set(non_metric)
    return [c for c in columns if c not in known and lookup(c) is None]
