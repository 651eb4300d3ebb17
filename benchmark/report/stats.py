"""Every statistic a report prints, in one place: Welch's t-test over seeds, its confidence interval,
the two one-sided tests (TOST) of an equivalence claim, Holm's family-wise adjustment, and how a
p-value is printed.

The unit of every test is one seed's accuracy (points); samples are small (3 seeds per side is the
norm), so every test is Welch's (unequal variances, Welch-Satterthwaite degrees of freedom).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats

SIGNIFICANCE = 0.05
# An "on par" claim is an equivalence claim: the difference lies within +-EQUIVALENCE_MARGIN points,
# shown by TOST at level SIGNIFICANCE (the 90% interval lies inside the margin). The paper states no
# tolerance; one accuracy point is our reading of "on par".
EQUIVALENCE_MARGIN = 1.0


@dataclass(frozen=True)
class Welch:
    diff: float  # mean(a) - mean(b), points
    se: float  # standard error of the difference
    df: float  # Welch-Satterthwaite degrees of freedom

    def interval(self, level: float) -> tuple[float, float]:
        """Two-sided ``level`` confidence interval of the difference."""
        q = stats.t.ppf(0.5 + level / 2, self.df)
        return self.diff - q * self.se, self.diff + q * self.se


def mean_interval(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """Two-sided ``level`` t interval of the mean over seeds; None with fewer than two values."""
    if len(values) < 2:
        return None
    m, se = statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))
    q = float(stats.t.ppf(0.5 + level / 2, len(values) - 1))
    return m - q * se, m + q * se


def welch(a: list[float], b: list[float]) -> Welch | None:
    """Welch's statistics of ``a - b``; None with fewer than 2 values a side or no variance at all."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)  # squared standard errors
    if va + vb <= 0:
        return None
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return Welch(statistics.fmean(a) - statistics.fmean(b), math.sqrt(va + vb), df)


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided p of Welch's t-test over seeds; None when it cannot be computed."""
    w = welch(a, b)
    if w is None:
        return None
    return float(2 * stats.t.sf(abs(w.diff) / w.se, w.df))


@dataclass(frozen=True)
class Equivalence:
    p: float  # TOST p: the larger of the two one-sided p-values
    low: float  # the (1 - 2 alpha) = 90% interval of the difference
    high: float
    margin: float

    @property
    def equivalent(self) -> bool:
        return self.p < SIGNIFICANCE


def tost(a: list[float], b: list[float], margin: float = EQUIVALENCE_MARGIN) -> Equivalence | None:
    """Two one-sided Welch tests of H0: |mean(a) - mean(b)| >= margin. Equivalence at level alpha is shown
    when both reject, i.e. when the (1 - 2 alpha) interval lies inside (-margin, +margin)."""
    w = welch(a, b)
    if w is None:
        return None
    p_low = stats.t.sf((w.diff + margin) / w.se, w.df)  # H0: diff <= -margin
    p_high = stats.t.cdf((w.diff - margin) / w.se, w.df)  # H0: diff >= +margin
    low, high = w.interval(1 - 2 * SIGNIFICANCE)
    return Equivalence(float(max(p_low, p_high)), float(low), float(high), margin)


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment over the family of the non-None p-values (None stays None): the k-th
    smallest of m is multiplied by (m - k + 1), made monotone and capped at 1."""
    idx = sorted((i for i, p in enumerate(pvalues) if p is not None), key=lambda i: pvalues[i])
    m = len(idx)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for k, i in enumerate(idx):
        running = max(running, min(1.0, (m - k) * pvalues[i]))
        out[i] = running
    return out


class Family:
    """The p-values of one family (one backbone's Table 2, or its findings table), adjusted by Holm.

    Used in two passes over the same deterministic code: the first ``add``s every raw p (and gets None
    back); after ``close()`` a second pass ``add``s them again in the same order and gets each one's
    adjusted value."""

    def __init__(self, name: str):
        self.name = name
        self.raw: list[float | None] = []
        self.adjusted: list[float | None] | None = None
        self._next = 0

    def add(self, p: float | None) -> float | None:
        if self.adjusted is None:
            self.raw.append(p)
            return None
        assert self.raw[self._next] == p, "the second pass must add the same p-values in the same order"
        self._next += 1
        return self.adjusted[self._next - 1]

    def close(self) -> Family:
        self.adjusted = holm(self.raw)
        self._next = 0
        return self

    @property
    def size(self) -> int:
        return sum(p is not None for p in self.raw)


def p_value(p: float) -> str:
    """A p-value as printed: "< 0.001"; two significant digits below 0.1 (0.051 never reads 0.05; 0.0042);
    two decimals above."""
    if p < 0.001:
        return "< 0.001"
    if p < 0.1:
        return f"{p:#.2g}"  # 0.051, 0.050, 0.0042 (no exponent above 1e-4)
    return f"{p:.2f}"


def p_text(p: float) -> str:
    """``p = 0.051`` / ``p < 0.001``."""
    s = p_value(p)
    return f"p {s}" if s.startswith("<") else f"p = {s}"


def p_with_holm(p: float, adjusted: float | None) -> str:
    """Raw p and its Holm-adjusted value, † on the adjusted one when it is below the significance level."""
    if adjusted is None:
        return p_text(p)
    return p_text(p) + f", Holm {p_value(adjusted)}" + ("†" if adjusted < SIGNIFICANCE else "")
