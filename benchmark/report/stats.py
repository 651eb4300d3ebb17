"""The report's small statistics: the two one-sided paired tests (TOST) of an equivalence claim, Holm's
family-wise adjustment, and how a p-value is printed (the comparisons themselves: ``inference.py``).

The unit of a test is one seed's accuracy (points); the design is paired by seed, so TOST runs on the
per-seed differences (a one-sample t over n - 1 degrees of freedom).
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


def mean_interval(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """Two-sided ``level`` t interval of the mean over seeds; None with fewer than two values."""
    if len(values) < 2:
        return None
    m, se = statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))
    q = float(stats.t.ppf(0.5 + level / 2, len(values) - 1))
    return m - q * se, m + q * se


@dataclass(frozen=True)
class Equivalence:
    p: float  # TOST p: the larger of the two one-sided p-values
    low: float  # the (1 - 2 alpha) = 90% interval of the difference
    high: float


def tost(diffs: list[float], margin: float = EQUIVALENCE_MARGIN) -> Equivalence | None:
    """Two one-sided paired t-tests of H0: |mean difference| >= margin over the per-seed differences (A - B of
    the same seed). Equivalence at level alpha is shown when both reject, i.e. when the (1 - 2 alpha) interval
    lies inside (-margin, +margin). None below 2 seeds or with no spread."""
    n = len(diffs)
    if n < 2 or statistics.stdev(diffs) == 0:
        return None
    d, se, df = statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(n), n - 1
    p_low = stats.t.sf((d + margin) / se, df)  # H0: diff <= -margin
    p_high = stats.t.cdf((d - margin) / se, df)  # H0: diff >= +margin
    q = stats.t.ppf(1 - SIGNIFICANCE, df)
    return Equivalence(float(max(p_low, p_high)), d - q * se, d + q * se)


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


def p_value(p: float) -> str:
    """A p-value as printed: "< 0.001"; two significant digits below 0.1 (0.051 never reads 0.05; 0.0042),
    as many more as it takes not to put it on the other side of the significance level (0.0496, not 0.050 beside
    a †);
    two decimals above."""
    if p < 0.001:
        return "< 0.001"
    if p < 0.1:
        for digits in range(2, 17):  # 0.051, 0.050, 0.0042 (no exponent above 1e-4); 0.0496, 0.049996
            s = f"{p:#.{digits}g}"
            if (float(s) < SIGNIFICANCE) == (p < SIGNIFICANCE):
                return s
        return s
    return f"{p:.2f}"


def p_text(p: float) -> str:
    """``p = 0.051`` / ``p < 0.001``."""
    s = p_value(p)
    return f"p {s}" if s.startswith("<") else f"p = {s}"
