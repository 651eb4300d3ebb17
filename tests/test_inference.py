"""The design's inference (benchmark/report/inference.py) against independent computations: an exact
enumeration of the two-level bootstrap on a design small enough to list, scipy's one-level bootstrap, the
noncentral t for power, Holm by hand, and deepsig's Almost Stochastic Order."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from benchmark.report import paired  # the module: pytest would collect the classes Tested/Tests
from benchmark.report.inference import (
    Paired,
    aso,
    aso_from_draws,
    compare,
    compare_over_tasks,
    equivalence_reachable,
    minimal_detectable_effect,
    seeds_needed,
)


def _exact(design: Paired):
    """Every outcome of the two-level bootstrap, with its probability: (mean difference over drawn seeds,
    probability), and the exact P(A > B) of one drawn seed with its drawn rows (ties half)."""
    d = design.a - design.b
    n, m = d.shape
    per_seed = {}  # seed -> {row-resampled difference: probability}
    for s in range(n):
        dist = {}
        for rows in itertools.product(range(m), repeat=m):
            v = round(100 * float(np.mean(d[s, list(rows)])), 9)
            dist[v] = dist.get(v, 0.0) + m ** -m
        per_seed[s] = dist
    one = {}
    for s in range(n):
        for v, p in per_seed[s].items():
            one[v] = one.get(v, 0.0) + p / n
    p_better = sum(p for v, p in one.items() if v > 0) + 0.5 * sum(p for v, p in one.items() if v == 0)
    means = {}
    for drawn in itertools.product(range(n), repeat=n):
        for vals in itertools.product(*(per_seed[s].items() for s in drawn)):
            v = round(sum(x for x, _ in vals) / n, 9)
            means[v] = means.get(v, 0.0) + n ** -n * math.prod(p for _, p in vals)
    return means, p_better


def _quantile(dist: dict[float, float], q: float) -> float:
    acc = 0.0
    for v in sorted(dist):
        acc += dist[v]
        if acc >= q - 1e-12:
            return v
    return max(dist)


def test_two_level_bootstrap_matches_the_exact_enumeration():
    a = np.array([[1, 1, 0], [1, 0, 1]], dtype=float)
    b = np.array([[0, 1, 0], [1, 1, 0]], dtype=float)
    design = Paired((1, 2), a, b)
    assert design.level == "rows"
    means, p_better = _exact(design)
    assert math.isclose(sum(means.values()), 1.0, rel_tol=1e-9)
    c = compare(design, reps=40_000, seed=3)
    assert c.delta == pytest.approx(100 * float((a - b).mean()))
    assert c.p_better == pytest.approx(p_better, abs=0.01)
    # the percentile interval lands on the exact distribution's 2.5% / 97.5% atoms (values step by 100/6)
    assert c.low == pytest.approx(_quantile(means, 0.025), abs=100 / 6 + 1e-9)
    assert c.high == pytest.approx(_quantile(means, 0.975), abs=100 / 6 + 1e-9)
    exact_mean = sum(v * p for v, p in means.items())
    assert exact_mean == pytest.approx(c.delta, abs=1e-9)  # the bootstrap distribution is centred on delta


def test_seed_level_bootstrap_agrees_with_scipy_percentile_bootstrap():
    acc_a = {42: 70.1, 43: 68.4, 44: 71.9, 45: 69.0, 46: 72.3}
    acc_b = {42: 68.0, 43: 68.9, 44: 69.5, 45: 66.1, 46: 70.0}
    design = Paired.from_accuracies(acc_a, acc_b)
    assert design.level == "seeds" and design.seeds == (42, 43, 44, 45, 46)
    c = compare(design, reps=20_000, seed=1)
    diffs = np.array([acc_a[s] - acc_b[s] for s in design.seeds])
    ref = stats.bootstrap((diffs,), np.mean, n_resamples=20_000, method="percentile", random_state=7)
    assert c.low == pytest.approx(ref.confidence_interval.low, abs=0.1)
    assert c.high == pytest.approx(ref.confidence_interval.high, abs=0.1)
    assert c.delta == pytest.approx(diffs.mean())
    assert c.paired_t_p == pytest.approx(stats.ttest_rel(list(acc_a.values()), list(acc_b.values())).pvalue)
    assert c.p_better == pytest.approx(float((diffs > 0).mean()), abs=0.01)  # one new seed: 4 of 5 positive


def test_known_answers():
    always = Paired((1, 2, 3), np.ones((3, 50)), np.zeros((3, 50)))
    c = compare(always, reps=2000)
    assert (c.delta, c.low, c.high, c.p_better) == (100.0, 100.0, 100.0, 1.0) and c.excludes_zero
    same = Paired((1, 2), np.eye(2, 10), np.eye(2, 10))
    c = compare(same, reps=2000)
    assert (c.delta, c.low, c.high, c.p_better) == (0.0, 0.0, 0.0, 0.5) and not c.excludes_zero
    assert compare(Paired((), np.zeros((0, 1)), np.zeros((0, 1)))) is None
    with pytest.raises(ValueError, match="same dev rows"):
        Paired.from_rows({1: np.ones(4)}, {1: np.ones(5)})


def test_stratified_average_over_tasks():
    up = Paired((1, 2, 3), np.ones((3, 20)), np.zeros((3, 20)))  # +100 on every seed
    down = Paired((1, 2, 3), np.zeros((3, 20)), np.full((3, 20), 0.5))  # -50 on every seed
    c = compare_over_tasks({"up": up, "down": down}, reps=2000)
    assert c.delta == pytest.approx(25.0) and c.low == pytest.approx(25.0) and c.high == pytest.approx(25.0)
    assert c.p_better == 1.0 and c.n == 3 and c.level == "rows"


def test_power_formulas_against_the_noncentral_t():
    sd, n = 1.2, 5
    mde = minimal_detectable_effect(sd, n)
    df, crit = n - 1, stats.t.ppf(0.975, n - 1)
    nc = mde / (sd / math.sqrt(n))
    power = stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)
    assert 0.75 < power < 0.85  # the textbook approximation; the exact power at the MDE is near 80%
    k = seeds_needed(mde, sd)
    assert k == n
    assert seeds_needed(0.0, sd) is None and minimal_detectable_effect(sd, 1) == math.inf
    # n = 3 with the spread of the issue cannot show equivalence at one point; 30 seeds can
    assert not equivalence_reachable(1.2, 3, 1.0) and equivalence_reachable(1.2, 30, 1.0)


def test_each_test_is_in_one_family_with_holm_inside_it():
    c = compare(Paired.from_accuracies({1: 80.0, 2: 81.0}, {1: 79.0, 2: 79.5}))
    raw = {key: paired.Tested(c, "confirmatory", p) for key, p in (("a", 0.01), ("b", 0.04), ("c", 0.03))}
    raw |= {"d": paired.Tested(c, "exploratory", 0.01), "e": paired.Tested(c, "exploratory", None)}
    tests = paired.Tests(raw)
    assert (tests.get("a").adjusted, tests.get("a").family) == (pytest.approx(0.03), "confirmatory")
    assert tests.get("c").adjusted == pytest.approx(0.06)  # 2 x 0.03
    assert tests.get("b").adjusted == pytest.approx(0.06)  # max(1 x 0.04, 0.06): monotone
    assert (tests.get("d").adjusted, tests.get("d").family) == (pytest.approx(0.01), "exploratory")
    assert (tests.get("e").adjusted, tests.get("e").family) == (None, "exploratory")
    assert tests.size("confirmatory") == 3 and tests.size("exploratory") == 1 and tests.get("f") is None
    assert all(tests.get(k).comparison is c and tests.get(k).p == raw[k].p for k in raw)  # the raw test, adjusted


def test_partial_scores_take_the_general_row_draw_and_match_the_enumeration():
    """Scores other than 0/1 (d outside {-1, 0, 1}) draw the rows themselves; the same exact answer holds."""
    a = np.array([[1, 0.5, 0], [0.5, 0, 1]], dtype=float)
    b = np.array([[0, 1, 0], [1, 0.5, 0]], dtype=float)
    design = Paired((1, 2), a, b)
    means, p_better = _exact(design)
    c = compare(design, reps=40_000, seed=5)
    assert c.p_better == pytest.approx(p_better, abs=0.01)
    assert c.delta == pytest.approx(sum(v * p for v, p in means.items()), abs=1e-9)
    assert c.low == pytest.approx(_quantile(means, 0.025), abs=100 / 12 + 1e-9)
    assert c.high == pytest.approx(_quantile(means, 0.975), abs=100 / 12 + 1e-9)


def _deepsig_draws(seed: int, reps: int, na: int, nb: int) -> tuple[np.ndarray, np.ndarray]:
    """The uniforms deepsig.aso draws with ``seed``: iteration i reseeds numpy's global generator with
    seed + i + 1 and draws len(a), then len(b) uniforms (deepsig/aso.py, get_bootstrapped_violation_ratios)."""
    ua, ub = np.empty((reps, na)), np.empty((reps, nb))
    for i in range(reps):
        rs = np.random.RandomState(seed + i + 1)
        ua[i], ub[i] = rs.uniform(0, 1, na), rs.uniform(0, 1, nb)
    return ua, ub


@pytest.mark.parametrize("case", ["shifted", "overlapping", "reversed", "unequal sizes", "ties", "three seeds"])
def test_aso_matches_deepsig_on_its_own_draws(case):
    """Our vectorised eps_min equals deepsig.aso's to float precision when given the bootstrap draws deepsig
    makes with the same seed (synthetic per-seed accuracies of several shapes, 3 to 20 seeds a side)."""
    deepsig = pytest.importorskip("deepsig", reason="deepsig is not installed (pip install 'deepsig>=1.2.8,<1.3', "
                                                    "part of the test extra): ASO is not checked against it")
    rng = np.random.default_rng(7)
    a, b = {
        "shifted": (rng.normal(75, 1.5, 10), rng.normal(72, 1.5, 10)),
        "overlapping": (rng.normal(70, 2, 12), rng.normal(69.5, 2, 12)),
        "reversed": (rng.normal(60, 1, 8), rng.normal(64, 1, 8)),
        "unequal sizes": (rng.normal(80, 1, 20), rng.normal(79, 3, 6)),
        "ties": (np.array([71.43, 71.43, 73.21, 69.64, 71.43]), np.array([71.43, 69.64, 69.64, 73.21, 71.43])),
        "three seeds": (np.array([66.06, 64.98, 67.15]), np.array([63.9, 65.34, 62.82])),
    }[case]
    reps = 300  # deepsig's loop is the slow side; the draws are deepsig's own, so the count does not matter
    want = deepsig.aso(a, b, num_bootstrap_iterations=reps, seed=11, show_progress=False)
    got = aso_from_draws(a, b, *_deepsig_draws(11, reps, len(a), len(b)))
    assert got == pytest.approx(float(want), abs=1e-12), (case, got, want)


def test_aso_known_answers_and_our_draws():
    """A side that lies wholly above the other has eps_min 0 and the reverse almost 1 (deepsig leaves the first
    grid point out of the violation integral only); equal samples cannot be ordered (eps_min >= 0.5, the ratio
    of a zero Wasserstein distance being 0.5); with our own generator the value is reproducible and close to deepsig's
    reading (the bootstrap differs only in its random stream)."""
    hi, lo = [80.0, 81.0, 82.0], [70.0, 71.0, 72.0]
    assert aso(hi, lo) == 0.0 and aso(lo, hi) > 0.99
    same = [70.0, 71.0, 72.0]
    assert aso(same, same) >= 0.5
    assert aso([], lo) is None
    rng = np.random.default_rng(3)
    a, b = rng.normal(71, 1, 15), rng.normal(70, 1, 15)
    assert aso(a, b) == aso(a, b)  # seeded
    assert aso(a, b) == pytest.approx(aso_from_draws(a, b, *_deepsig_draws(5, 1000, 15, 15)), abs=0.05)


def test_comparisons_carry_aso_of_the_per_seed_accuracies():
    """compare() puts ASO of A's per-seed accuracies over B's beside the bootstrap; over tasks, of the per-seed
    means over tasks."""
    design = Paired.from_accuracies({1: 75.0, 2: 76.0, 3: 77.0}, {1: 70.0, 2: 71.0, 3: 72.0})
    c = compare(design, reps=200)
    assert c.aso == aso([75.0, 76.0, 77.0], [70.0, 71.0, 72.0]) == 0.0
    other = Paired.from_accuracies({1: 60.0, 2: 61.0, 3: 59.0}, {1: 62.0, 2: 63.0, 3: 61.0})
    over = compare_over_tasks({"x": design, "y": other}, reps=200)
    assert over.aso == pytest.approx(aso([67.5, 68.5, 68.0], [66.0, 67.0, 66.5]))
