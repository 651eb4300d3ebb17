"""Comparisons that follow the design (``shared/design/inference.md``): two methods on one task are paired
by seed (same data order, same held-out slice; a fusion run of seed s reads seed s's adapters) and by dev
row (both are scored on the same rows). One comparison carries both sources of noise:

    d[s, r] = correct_A[s, r] - correct_B[s, r]        s: paired seed (n), r: dev row (m)  in {-1, 0, 1}

The two-level paired bootstrap (Berg-Kirkpatrick et al. 2012; Bouthillier et al. 2021), replicate b:
    seeds  s*_1..s*_n  ~ uniform over the n paired seeds (with replacement)
    rows   r*_1..r*_m  ~ uniform over the m rows, drawn anew for each drawn seed, the same rows for A and B
    D_b = 100 * mean_k mean_j d[s*_k, r*_j]                                 (points)
Δ is the observed mean difference, its 95% CI the 2.5 / 97.5 percentiles of D_b, and P(A > B) the share of
(replicate, drawn seed) pairs whose row-resampled difference is > 0, ties counted half: the probability
that A beats B on a new seed and a new dev sample, not the share of replicates with D_b > 0.

Without per-example predictions a run is one accuracy: m = 1 and d[s, 0] is the difference of the two
accuracies, so the same code is the seed-level bootstrap; ``Comparison.level`` says which one was used.
Over tasks ("on average"): resampled within each task (stratified), per-task differences averaged with
equal weights, as the paper's mean column is.

Almost Stochastic Order (Dror et al. 2019; del Barrio et al. 2018) is a second, seed-level view: ``aso`` gives
eps_min, the upper bound (at 95% confidence) of the share of the two per-seed score distributions' quantile
functions on which A is below B; eps_min < 0.5 reads "A is almost stochastically larger than B". It is computed
as the ``deepsig`` package computes it (its quantile functions, dt = 0.005, 1,000 bootstrap draws of each side's
seeds, sigma from the bootstrapped violation ratios), vectorised over the draws; tests/test_inference.py checks it
against ``deepsig.aso`` on the same draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

REPLICATES = 10_000
BOOTSTRAP_SEED = 20210419  # fixed and printed with the results: the CI of a report never moves by chance
POWER = 0.8
ALPHA = 0.05
_CHUNK = 500  # replicates drawn at once (bounds memory: chunk x seeds x rows counts)
ASO_REPLICATES = 1000  # deepsig's default num_bootstrap_iterations
ASO_DT = 0.005  # deepsig's default differential of the quantile integral
ASO_CONFIDENCE = 0.95  # deepsig's default confidence_level (no Bonferroni: a view beside the tests, not a test)


@dataclass(frozen=True)
class Paired:
    """One task's paired design: ``a`` and ``b`` are (seeds, rows) arrays of per-row scores in [0, 1]
    (correct = 1), the same seed and row at the same index; ``level`` is "rows" or "seeds" (m = 1)."""

    seeds: tuple[int, ...]
    a: np.ndarray
    b: np.ndarray

    def __post_init__(self):
        if self.a.shape != self.b.shape or self.a.ndim != 2 or self.a.shape[0] != len(self.seeds):
            raise ValueError(f"paired scores must be (seeds, rows) of one shape: {self.a.shape} vs {self.b.shape}")

    @property
    def level(self) -> str:
        return "rows" if self.a.shape[1] > 1 else "seeds"

    @classmethod
    def from_accuracies(cls, a: dict[int, float], b: dict[int, float]) -> Paired:
        """The seed-level design from per-seed accuracies (points), paired on the seeds both sides have."""
        seeds = tuple(sorted(set(a) & set(b)))
        col = lambda acc: np.array([acc[s] / 100.0 for s in seeds], dtype=float).reshape(-1, 1)  # noqa: E731
        return cls(seeds, col(a), col(b))

    @classmethod
    def from_rows(cls, a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> Paired:
        """The row-level design from per-seed correctness vectors over the same dev rows."""
        seeds = tuple(sorted(set(a) & set(b)))
        if seeds and len({len(a[s]) for s in seeds} | {len(b[s]) for s in seeds}) != 1:
            raise ValueError("every run of a row-level comparison must be scored on the same dev rows")
        stack = lambda x: np.stack([np.asarray(x[s], dtype=float) for s in seeds])  # noqa: E731
        return cls(seeds, stack(a), stack(b))


@dataclass(frozen=True)
class Comparison:
    delta: float  # mean over seeds of acc_A - acc_B, points
    low: float  # 95% percentile interval of the two-level bootstrap
    high: float
    p_better: float  # P(A > B) on a new seed and dev sample, ties half
    n: int  # paired seeds
    level: str  # "rows" (two-level) or "seeds" (seed-level only)
    paired_t_p: float | None  # paired t-test over seeds (the paper's style), for comparison only
    sd_diff: float | None  # sample SD of the per-seed differences, points
    aso: float | None = None  # ASO eps_min of A's per-seed accuracies over B's (< 0.5: A almost stochastically larger)

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def _draws(design: Paired, reps: int, rng: np.random.Generator) -> np.ndarray:
    """(reps, n) row-resampled differences (points) of each drawn seed, drawn ``_CHUNK`` replicates at a time."""
    d = design.a - design.b  # (n, m)
    n, m = d.shape
    # correct/incorrect scores make d[s, r] one of -1, 0, +1: the rows drawn for a seed then matter only through
    # how many of each kind they hold, (N+, N-, N0) ~ Multinomial(m, shares of the three kinds in that seed),
    # and the resampled difference is (N+ - N-) / m: the same distribution in O(1) per draw instead of O(m)
    ternary = bool(np.isin(d, (-1.0, 0.0, 1.0)).all())
    shares = np.stack([(d == 1).mean(axis=1), (d == -1).mean(axis=1), (d == 0).mean(axis=1)], axis=1)  # (n, 3)
    out = np.empty((reps, n))
    for start in range(0, reps, _CHUNK):
        k = min(_CHUNK, reps - start)
        seeds = rng.integers(0, n, size=(k, n))  # (k, n) drawn seeds
        if m == 1:
            out[start:start + k] = d[seeds, 0]
        elif ternary:
            counts = rng.multinomial(m, shares[seeds])  # (k, n, 3): N+, N-, N0 per drawn seed
            out[start:start + k] = (counts[..., 0] - counts[..., 1]) / m
        else:  # other scores: draw the rows themselves
            counts = rng.multinomial(m, np.full(m, 1.0 / m), size=(k, n))  # (k, n, m) rows drawn per drawn seed
            out[start:start + k] = np.einsum("knm,knm->kn", counts, d[seeds]) / m
    return 100.0 * out


def compare(design: Paired, *, reps: int = REPLICATES, seed: int = BOOTSTRAP_SEED) -> Comparison | None:
    """The two-level paired bootstrap of one task's A - B; None without a paired seed."""
    n = len(design.seeds)
    if n == 0:
        return None
    draws = _draws(design, reps, np.random.default_rng(seed))
    per_seed = 100.0 * (design.a - design.b).mean(axis=1)  # (n,)
    low, high = np.percentile(draws.mean(axis=1), [2.5, 97.5])
    return Comparison(float(per_seed.mean()), float(low), float(high), _p_better(draws), n, design.level,
                      paired_t(per_seed), float(np.std(per_seed, ddof=1)) if n > 1 else None,
                      aso(100.0 * design.a.mean(axis=1), 100.0 * design.b.mean(axis=1)))


def compare_over_tasks(designs: dict[str, Paired], *, reps: int = REPLICATES) -> Comparison | None:
    """"On average over tasks": each task resampled on its own (stratified), the per-task differences
    averaged with equal weights; P(A > B) draws one new seed (and dev sample) per task."""
    designs = {t: d for t, d in designs.items() if d.seeds}
    if not designs:
        return None
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    draws = [_draws(d, reps, rng) for _, d in sorted(designs.items())]  # each (reps, n_t)
    means = np.mean([x.mean(axis=1) for x in draws], axis=0)  # (reps,)
    one_seed = np.mean([x[:, 0] for x in draws], axis=0)  # a new seed on every task: column 0 is one uniform draw
    low, high = np.percentile(means, [2.5, 97.5])
    per_task = [100.0 * (d.a - d.b).mean() for _, d in sorted(designs.items())]
    levels = {d.level for d in designs.values()}
    per_seed = per_seed_over_tasks(designs)  # seed-level view of the average
    return Comparison(float(np.mean(per_task)), float(low), float(high), _p_better(one_seed[:, None]),
                      min(len(d.seeds) for d in designs.values()), "rows" if levels == {"rows"} else "seeds",
                      paired_t(per_seed), float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else None,
                      aso(per_seed_over_tasks(designs, lambda d, i: d.a[i]),
                          per_seed_over_tasks(designs, lambda d, i: d.b[i])))


def per_seed_over_tasks(designs: dict[str, Paired], side=lambda d, i: d.a[i] - d.b[i]) -> list[float]:
    """Per seed that every task has, the mean over tasks of ``side`` of that seed's row ``i`` (points; by default
    A - B, else e.g. A's accuracy alone), in seed order."""
    common = sorted(set.intersection(*(set(d.seeds) for d in designs.values()))) if designs else []
    return [float(np.mean([100.0 * side(d, d.seeds.index(s)).mean() for d in designs.values()])) for s in common]


def _p_better(draws: np.ndarray) -> float:
    return float(((draws > 0).sum() + 0.5 * (draws == 0).sum()) / draws.size)


def paired_t(diffs) -> float | None:
    """Two-sided p of the paired t-test over seeds (the per-seed differences); None below 2 seeds or with
    no spread (none beyond float rounding: 78.0 - 75.0 and 77.1 - 74.1 must not give a p of 1e-16)."""
    diffs = np.asarray(diffs, dtype=float)
    if diffs.size < 2 or np.std(diffs, ddof=1) <= 1e-9 * max(1.0, float(np.abs(diffs).max())):
        return None
    return float(stats.ttest_1samp(diffs, 0.0).pvalue)


# ----------------------------------------------------------------------------------- almost stochastic order
def _quantiles(sorted_scores: np.ndarray, t: np.ndarray) -> np.ndarray:
    """deepsig's empirical quantile function F^-1(t) = sorted[ceil(n t) - 1] (clipped), over the last axis."""
    n = sorted_scores.shape[-1]
    idx = np.clip(np.ceil(n * t).astype(int) - 1, 0, n - 1)
    return sorted_scores[..., idx]


def violation_ratios(sorted_a: np.ndarray, sorted_b: np.ndarray) -> np.ndarray:
    """eps_W2 of sorted score samples (..., n_a) and (..., n_b), as deepsig's ``compute_violation_ratio``: the
    integral over t in (0, 1) of (G^-1 - F^-1)^2 where F^-1 < G^-1 (its first grid point left out, as deepsig
    leaves it out), over the whole squared Wasserstein distance; 0.5 where the two distributions are equal."""
    t = np.arange(ASO_DT, 1, ASO_DT)
    f, g = _quantiles(sorted_a, t), _quantiles(sorted_b, t)
    diff = g - f
    w2 = np.sum(diff ** 2 * ASO_DT, axis=-1)
    violated = np.where(f >= g, 0.0, diff)
    part = np.sum(violated[..., 1:] ** 2 * ASO_DT, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(w2 == 0, 0.5, part / np.where(w2 == 0, 1.0, w2))


def aso_from_draws(a, b, ua: np.ndarray, ub: np.ndarray) -> float:
    """eps_min from given uniforms ``ua`` (reps, n_a) and ``ub`` (reps, n_b): each bootstrap draw is a side's
    quantile function at its uniforms (a resample of its scores with replacement), as in deepsig."""
    sa, sb = np.sort(np.asarray(a, dtype=float)), np.sort(np.asarray(b, dtype=float))
    ratio = float(violation_ratios(sa, sb))
    samples = violation_ratios(np.sort(_quantiles(sa, ua), axis=1), np.sort(_quantiles(sb, ub), axis=1))
    const = math.sqrt(len(sa) * len(sb) / (len(sa) + len(sb)))
    sigma = float(np.std(const * (samples - ratio)))
    return float(np.clip(ratio - sigma / const * stats.norm.ppf(1 - ASO_CONFIDENCE), 0.0, 1.0))


def aso(a, b) -> float | None:
    """Almost Stochastic Order's eps_min of scores ``a`` over ``b`` (Dror et al. 2019, as ``deepsig.aso``
    computes it); None where a side has no score. Seeded: a report's value never moves by chance."""
    if len(a) == 0 or len(b) == 0:
        return None
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    return aso_from_draws(a, b, rng.uniform(0, 1, (ASO_REPLICATES, len(a))),
                          rng.uniform(0, 1, (ASO_REPLICATES, len(b))))


# --------------------------------------------------------------------------------------------- power
def minimal_detectable_effect(sd_diff: float, n: int) -> float:
    """The paired design's minimal detectable effect (points) at ``POWER``, two-sided ``ALPHA``:
    MDE = (t_{1-alpha/2, n-1} + t_{power, n-1}) * sd_d / sqrt(n)."""
    if n < 2:
        return math.inf
    df = n - 1
    return float((stats.t.ppf(1 - ALPHA / 2, df) + stats.t.ppf(POWER, df)) * sd_diff / math.sqrt(n))


def seeds_needed(effect: float, sd_diff: float) -> int | None:
    """The fewest paired seeds whose MDE reaches ``|effect|``; None when more than 1,000 (or no effect)."""
    if effect == 0 or not math.isfinite(effect):
        return None
    return next((n for n in range(2, 1001) if minimal_detectable_effect(sd_diff, n) <= abs(effect)), None)


def equivalence_half_width(sd_diff: float, n: int) -> float:
    """The half-width of the paired (1 - 2 alpha) interval, t_{1-alpha, n-1} * sd_d / sqrt(n) (inf below 2 seeds)."""
    return float(stats.t.ppf(1 - ALPHA, n - 1) * sd_diff / math.sqrt(n)) if n >= 2 else math.inf


def equivalence_reachable(sd_diff: float, n: int, margin: float) -> bool:
    """Whether TOST at ``margin`` can pass at all with n paired seeds and this spread: the (1 - 2 alpha)
    interval's half-width must fit inside the margin."""
    return equivalence_half_width(sd_diff, n) < margin

