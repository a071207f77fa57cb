"""The report's statistics over seeds: Student-t confidence intervals of a mean, paired
differences between two variants (paired by seed: the same data order and initialisation
seed on both sides), and how many seeds an interval of a wanted width would need.

Seeds are few (2-5), so the intervals are the exact small-sample t-intervals, which assume the
per-seed accuracies (or their paired differences) are roughly normal; a bootstrap is
meaningless at n = 2. An interval needs two values; with one there is no interval to give."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

LEVEL = 0.95
MAX_SEEDS = 1000  # a suggestion beyond this says "more than"


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided ``level`` t-interval over ``n`` values (bounds NaN when n < 2)."""

    mean: float
    low: float
    high: float
    n: int
    std: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def defined(self) -> bool:
        return self.n >= 2 and math.isfinite(self.low)

    def contains(self, value: float) -> bool:
        return self.defined and self.low <= value <= self.high


def t_quantile(n, level: float = LEVEL):
    """The two-sided ``level`` Student-t quantile with n - 1 degrees of freedom (n: a count or an array)."""
    return stats.t.ppf(0.5 + level / 2, np.asarray(n) - 1)


def t_interval(values, level: float = LEVEL) -> Interval:
    """The mean of ``values`` (NaNs dropped) and its t-interval."""
    x = pd.Series(values, dtype=float).dropna()
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, math.nan)
    std = float(x.std(ddof=1))
    half = float(t_quantile(n, level)) * std / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, std)


def paired_difference(a: pd.Series, b: pd.Series, level: float = LEVEL) -> Interval:
    """a - b over the seeds both hold (Series indexed by seed): the mean difference and its t-interval."""
    common = a.dropna().index.intersection(b.dropna().index)
    return t_interval((a[common] - b[common]).to_numpy(), level)


def verdict(diff: Interval) -> str:
    """What a paired difference says: 'within noise' when its interval holds 0, else higher / lower."""
    if diff.n == 0:
        return "no common seeds"
    if not diff.defined:
        return "cannot tell (1 seed)"
    if diff.std == 0 and diff.mean == 0:
        return "identical"
    if diff.contains(0.0):
        return "within noise"
    return "higher" if diff.mean > 0 else "lower"


def seeds_for(std: float, half_width: float, level: float = LEVEL) -> int | None:
    """The fewest seeds (at least 2) whose t-interval of the mean has at most ``half_width``, for
    values spread with sample std ``std``; None when std is unknown, MAX_SEEDS + 1 beyond reach."""
    if not math.isfinite(std) or half_width <= 0:
        return None
    n = np.arange(2, MAX_SEEDS + 1)
    reached = np.flatnonzero(t_quantile(n, level) * std / np.sqrt(n) <= half_width)
    return int(n[reached[0]]) if reached.size else MAX_SEEDS + 1


def fmt_seeds(n: int | None) -> str:
    if n is None:
        return "–"
    return f"> {MAX_SEEDS}" if n > MAX_SEEDS else str(n)
