"""The report's small statistics (benchmark/report/stats.py: paired TOST, Holm) against scipy, and the majority baseline on real data."""

from __future__ import annotations

import math

import pytest
from scipy import stats as sp

from benchmark.report import stats
from conftest import MIRROR

D = [-0.98, -0.67, -1.10, 0.20]  # per-seed differences A - B of a paired design


def test_tost_is_two_one_sided_paired_tests_of_scipy():
    eq = stats.tost(D, margin=1.0)
    # H0 diff <= -1: shift up by the margin and test "greater"; H0 diff >= +1: shift down, test "less"
    p_low = sp.ttest_1samp([d + 1.0 for d in D], 0.0, alternative="greater").pvalue
    p_high = sp.ttest_1samp([d - 1.0 for d in D], 0.0, alternative="less").pvalue
    assert math.isclose(eq.p, max(p_low, p_high), rel_tol=1e-9)
    ci = sp.ttest_1samp(D, 0.0).confidence_interval(0.90)
    assert math.isclose(eq.low, ci.low, rel_tol=1e-9) and math.isclose(eq.high, ci.high, rel_tol=1e-9)
    # equivalence shown exactly when the 90% interval lies inside the margin
    assert (eq.p < stats.SIGNIFICANCE) == (-1.0 < eq.low and eq.high < 1.0)
    tight = stats.tost([0.02, -0.05, 0.1, 0.01])
    assert tight.p < stats.SIGNIFICANCE and -1.0 < tight.low < tight.high < 1.0
    far = stats.tost([10.0, 10.5, 9.5])
    assert far.p >= stats.SIGNIFICANCE and far.low > 1.0
    assert stats.tost([1.0]) is None and stats.tost([0.5, 0.5, 0.5]) is None


def test_the_audit_example_is_not_parity():
    """minilm_table1: ST-A vs Full, per-seed means over 4 tasks differ by -0.78 on average over 3 paired seeds;
    the paired 90% interval reaches beyond ±1, so TOST fails."""
    eq = stats.tost([-2.30, -0.04, 0.00])
    assert eq.low < -1.0 < eq.high and eq.p >= stats.SIGNIFICANCE


def test_holm_by_hand():
    # sorted: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06 monotone), 0.5 (x1)
    assert stats.holm([0.03, 0.5, 0.01, None, 0.02]) == pytest.approx([0.06, 0.5, 0.04, None, 0.06])
    assert stats.holm([0.9, 0.8]) == [1.0, 1.0] and stats.holm([]) == []
    # the audit: 24 tests, RTE's 0.004 misses its Holm threshold 0.05/23 ≈ 0.0022 when two smaller p precede it
    ps = [0.0001, 0.0005, 0.004] + [0.5] * 21
    adj = stats.holm(ps)
    assert adj[0] < 0.05 and adj[1] < 0.05 and adj[2] > 0.05


def test_p_values_print_two_significant_digits_below_a_tenth():
    assert stats.p_text(0.051) == "p = 0.051" and stats.p_text(0.05) == "p = 0.050"
    assert stats.p_text(0.0042) == "p = 0.0042" and stats.p_text(0.0009) == "p < 0.001"
    assert stats.p_text(0.456) == "p = 0.46" and stats.p_text(0.1) == "p = 0.10"
    # a p just below the level never prints as 0.050 (it sits beside a †); just above it, 0.050 is right
    assert stats.p_value(0.0496) == "0.0496" and stats.p_value(0.0504) == "0.050" and stats.p_value(0.04) == "0.040"
    assert stats.p_value(0.04996) == "0.04996" and stats.p_value(0.049996) == "0.049996"  # never "0.0500"†




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
