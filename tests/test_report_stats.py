"""The report's statistics (benchmark/report/stats.py) against scipy, and the majority baseline on real data."""

from __future__ import annotations

import math

import pytest
from scipy import stats as sp

from benchmark.report import stats
from conftest import MIRROR

A = [76.55, 77.53, 75.80, 77.10]
B = [77.53, 78.2, 76.9]


def test_welch_matches_scipy():
    ref = sp.ttest_ind(A, B, equal_var=False)
    assert math.isclose(stats.welch_p(A, B), ref.pvalue, rel_tol=1e-10)
    lo, hi = stats.welch(A, B).interval(0.95)
    ci = ref.confidence_interval(0.95)
    assert math.isclose(lo, ci.low, rel_tol=1e-9) and math.isclose(hi, ci.high, rel_tol=1e-9)
    assert stats.welch_p([1.0], [2.0, 3.0]) is None and stats.welch_p([1.0, 1.0], [1.0, 1.0]) is None


def test_tost_is_two_one_sided_welch_tests_of_scipy():
    eq = stats.tost(A, B, margin=1.0)
    # H0 diff <= -1: shift a up by the margin and test "greater"; H0 diff >= +1: shift down, test "less"
    p_low = sp.ttest_ind([a + 1.0 for a in A], B, equal_var=False, alternative="greater").pvalue
    p_high = sp.ttest_ind([a - 1.0 for a in A], B, equal_var=False, alternative="less").pvalue
    assert math.isclose(eq.p, max(p_low, p_high), rel_tol=1e-9)
    ci = sp.ttest_ind(A, B, equal_var=False).confidence_interval(0.90)
    assert math.isclose(eq.low, ci.low, rel_tol=1e-9) and math.isclose(eq.high, ci.high, rel_tol=1e-9)
    # equivalence shown exactly when the 90% interval lies inside the margin
    assert eq.equivalent == (-1.0 < eq.low and eq.high < 1.0)
    tight = stats.tost([70.0, 70.1, 69.9, 70.05], [70.02, 69.95, 70.08, 70.0])
    assert tight.equivalent and -1.0 < tight.low < tight.high < 1.0
    far = stats.tost([80.0, 80.5, 79.5], [70.0, 70.5, 69.5])
    assert not far.equivalent and far.low > 1.0


def test_the_audit_example_is_not_parity():
    """The audit: -0.78 over 3 seeds a side; 90% interval about -2.19..+0.62 fails TOST at ±1."""
    st_a, full = [70.74 - 1.2, 70.74 + 0.1, 70.74 + 1.1], [71.52 - 0.3, 71.52 - 0.2, 71.52 + 0.5]
    eq = stats.tost(st_a, full)
    assert eq.low < -1.0 < eq.high and not eq.equivalent


def test_holm_by_hand():
    # sorted: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06 monotone), 0.5 (x1)
    assert stats.holm([0.03, 0.5, 0.01, None, 0.02]) == pytest.approx([0.06, 0.5, 0.04, None, 0.06])
    assert stats.holm([0.9, 0.8]) == [1.0, 1.0] and stats.holm([]) == []
    # the audit: 24 tests, RTE's 0.004 misses its Holm threshold 0.05/23 ≈ 0.0022 when two smaller p precede it
    ps = [0.0001, 0.0005, 0.004] + [0.5] * 21
    adj = stats.holm(ps)
    assert adj[0] < 0.05 and adj[1] < 0.05 and adj[2] > 0.05


def test_family_two_passes_return_the_adjusted_values_in_order():
    fam = stats.Family("t")
    assert [fam.add(p) for p in (0.01, None, 0.04)] == [None, None, None]
    fam.close()
    assert [fam.add(p) for p in (0.01, None, 0.04)] == pytest.approx([0.02, None, 0.04])
    assert fam.size == 2


def test_p_values_print_two_significant_digits_below_a_tenth():
    assert stats.p_text(0.051) == "p = 0.051" and stats.p_text(0.05) == "p = 0.050"
    assert stats.p_text(0.0042) == "p = 0.0042" and stats.p_text(0.0009) == "p < 0.001"
    assert stats.p_text(0.456) == "p = 0.46" and stats.p_text(0.1) == "p = 0.10"
    assert stats.p_with_holm(0.004, 0.07) == "p = 0.0040, Holm 0.070"
    assert stats.p_with_holm(0.001, 0.02) == "p = 0.0010, Holm 0.020†"




@pytest.mark.skipif(MIRROR is None or not (MIRROR / "nyu-mll__glue" / "mrpc" / "train.parquet").exists(),
                    reason="needs the offline data mirror (AFBENCH_DATA_DIR)")
def test_majority_baseline_from_the_mirror(registry):
    from benchmark.report.baseline import majority_baselines

    got = majority_baselines(registry, ["mrpc", "csqa"], MIRROR)
    m = got["mrpc"]
    assert m.dev_rows == 408 and m.accuracy == pytest.approx(100 * 279 / 408) and m.how == "predicts 'equivalent'"
    assert m.near(68.5) and not m.near(69.69)  # one dev row = 0.245 points
    assert got["csqa"].accuracy == pytest.approx(20.0) and got["csqa"].how == "uniform chance, 1/5"


def test_majority_baseline_degrades_without_data(registry):
    from benchmark.report.baseline import majority_baselines

    m = majority_baselines(registry, ["rte"], None)["rte"]
    assert m.accuracy is None and "AFBENCH_DATA_DIR" in m.why and not m.near(50.0)
