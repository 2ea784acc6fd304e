"""One-line readings of the report's numbers, computed from them: a sentence in the report is built here from the
table it describes, so it can never contradict that table (issue: no fixed text beside a number).

A reading of a difference states the estimate, its interval, the interval adjusted for the claim's family, n and
the claim's verdict from results/claims.csv (specscale.fit.claims): "resolved" when the adjusted interval excludes 0,
"not resolved" otherwise, "not tested" without an interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd
from specscale.tokens.sets import ALL_SETS
from specscale.measure.registry import display_name

MINUS = "−"  # U+2212: a minus sign that does not break a line or read as a hyphen


def signed(x: float, digits: int = 2) -> str:
    """+0.12 / −0.05 / '—' for NaN."""
    if x is None or not math.isfinite(x):
        return "—"
    text = f"{abs(x):.{digits}f}"
    return (MINUS if x < 0 and float(text) != 0 else "+") + text


def plain(x: float, digits: int = 2) -> str:
    """0.12 / −0.05 / '—' for NaN (no '+' on positives)."""
    return signed(x, digits).lstrip("+")


def interval(low: float, high: float, digits: int = 2, sign: bool = True) -> str:
    """'[−0.05, +0.29]' (or without '+' when sign is False); '' when either end is missing."""
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return ""
    f = signed if sign else plain
    return f"[{f(low, digits)}, {f(high, digits)}]"


def claim_reading(what: str, estimate: float, low: float, high: float, low_adj: float, high_adj: float,
                  n_text: str, verdict: object, adjusted: str = "", digits: int = 2) -> str:
    """'muon − adamw, TAIL β_hard: +0.31 [+0.22, +0.39], Holm [+0.18, +0.43], 3 vs 3 seeds: resolved'. The verdict is
    the claim's, from results/claims.csv (read on the adjusted interval, which is named `adjusted`; '' for the primary
    endpoint, whose interval is not adjusted). No claim (NaN): 'not tested'."""
    ci, adj = interval(low, high, digits), interval(low_adj, high_adj, digits)
    parts = [f"{what}: {signed(estimate, digits)}" + (f" {ci}" if ci else "")]
    if adjusted and adj:
        parts.append(f"{adjusted} {adj}")
    return ", ".join([*parts, n_text]) + f": {verdict if isinstance(verdict, str) and verdict else 'not tested'}"


def plural(n: int, noun: str) -> str:
    """'1 seed', '3 seeds'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


# --- The report's readings -------------------------------------------------------------------------------------------
# Each function below takes the table a report table or figure shows (or the data it is drawn from) and returns a
# Reading: the n it shows, the kind of interval it shows and one computed line. The report's sections call them, so a
# sentence beside a table is always computed from that table. None when there is nothing to read (the table or figure
# is then absent and the report says why).

OLS_INTERVAL = "OLS 95% t-interval over widths"
SEED_INTERVAL = "between-seed 95% t-interval"
NO_INTERVAL = "no interval"
RHO_TOL = 1e-6  # ρ_α within this of 1 is not "above 1" (α = 0 gives exactly 1 when both sites have full rank)


@dataclass(frozen=True)
class Reading:
    """What a table or figure shows (n, interval kind) and its one-line reading, all computed from its data."""

    n: str  # 'n = 9 groups, 2 seeds, widths k ∈ {1, 2, 4}'
    interval: str  # 'OLS 95% t-interval over widths', 'no interval (one run per cell)', ...
    text: str  # the reading

    def caption(self, title: str) -> str:
        """A table's caption: 'title — interval; n'."""
        return f"{title} — {self.interval}; {self.n}"

    def figure_line(self, title: str) -> str:
        """The paragraph that goes with a figure (its title is fixed text): interval, n and the reading."""
        return f"**Figure: {title}** — {self.interval}; {self.n}. {self.text}"

    def table_line(self, title: str) -> str:
        """The paragraph that goes with a table (its caption already says n and the interval): the reading."""
        return f"**Table: {title}** — {self.text}"


def n_text(*parts: str) -> str:
    """'n = 3 optimizers, 2 seeds' from the non-empty parts ('' when none)."""
    parts = tuple(p for p in parts if p)
    return "n = " + ", ".join(parts) if parts else ""


def num(x: float) -> str:
    return f"{float(x):g}"


def widths_text(widths: Iterable[float], symbol: str = "k") -> str:
    """'widths k ∈ {1, 2, 4}', 'width k = 2' or '' (NaN ignored)."""
    ks = sorted({float(w) for w in widths if w is not None and math.isfinite(float(w))})
    if not ks:
        return ""
    if len(ks) == 1:
        return f"width {symbol} = {num(ks[0])}"
    return f"widths {symbol} ∈ {{{', '.join(map(num, ks))}}}"


def seeds_text(seeds: Iterable[Any]) -> str:
    """'1 seed', '2 seeds' (distinct values, NaN ignored)."""
    values = {int(s) for s in seeds if s is not None and not (isinstance(s, float) and math.isnan(s))}
    return plural(len(values), "seed") if values else ""


def k_of_n(k: int, n: int) -> str:
    return f"{int(k)} of {int(n)}"


def value_range(values: Iterable[float], digits: int = 2) -> str:
    """'from 0.06 to 0.28' / '0.12' (one value) / '—' (none finite)."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return "—"
    lo, hi = min(v), max(v)
    return plain(lo, digits) if plain(lo, digits) == plain(hi, digits) else f"from {plain(lo, digits)} to {plain(hi, digits)}"


def ratio_text(x: float, digits: int = 2) -> str:
    """'×1.23'."""
    return "×—" if x is None or not math.isfinite(x) else f"×{x:.{digits}f}"


def ratio_range(values: Iterable[float], digits: int = 2) -> str:
    """'×0.84 to ×0.90' / '×0.84' (one value, or all equal at these digits) / '×—'."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return ratio_text(math.nan)
    lo, hi = ratio_text(min(v), digits), ratio_text(max(v), digits)
    return lo if lo == hi else f"{lo} to {hi}"


def listing(names: Iterable[str], empty: str = "none") -> str:
    names = [str(n) for n in names]
    return ", ".join(names) if names else empty


def alpha_text(alpha: float) -> str:
    return "∞" if math.isinf(alpha) else num(alpha)


def metric_name(metric: str) -> str:
    """A metric's short label in a sentence ('soft'), from the metric registry."""
    return display_name(metric)


def as_bool(s: pd.Series) -> pd.Series:
    """A flag column as booleans (CSV text 'True'/'False' included)."""
    return s.map(lambda v: str(v).strip().lower() in ("true", "1", "yes") if isinstance(v, str) else bool(v))


def bucket_order(buckets: Iterable[str]) -> list[str]:
    order = {b: i for i, b in enumerate(ALL_SETS)}
    return sorted(set(buckets), key=lambda b: (order.get(b, 9), b))
