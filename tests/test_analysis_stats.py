"""analysis.stats against scipy/statsmodels and against hand-checked textbook values."""

import numpy as np
import pytest
from scipy import stats as st
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from analysis import stats

# Welch's t-test example (two samples of 15; Wikipedia "Welch's t-test", example 1):
# t = -2.46, df = 25.0, two-sided p = 0.021.
A1 = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
A2 = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]


def test_describe_t_interval_known_sample():
    d = stats.describe([1, 2, 3, 4, 5])
    # mean 3, sd sqrt(2.5), sem sqrt(0.5), t(0.975, 4) = 2.7764 (tables)
    assert (d["n"], d["mean"], d["median"]) == (5, 3.0, 3.0)
    assert d["sd"] == pytest.approx(np.sqrt(2.5))
    half = 2.7764 * np.sqrt(0.5)
    assert d["ci_low"] == pytest.approx(3 - half, abs=1e-4)
    assert d["ci_high"] == pytest.approx(3 + half, abs=1e-4)


def test_describe_small_samples():
    assert stats.describe([]) ["n"] == 0
    one = stats.describe([4.2])
    assert one["mean"] == 4.2 and np.isnan(one["sd"]) and np.isnan(one["ci_low"])


def test_welch_textbook_and_library_agreement():
    w = stats.welch(A1, A2)
    assert w["t"] == pytest.approx(-2.46, abs=0.005)
    assert w["df"] == pytest.approx(25.0, abs=0.05)
    assert w["p"] == pytest.approx(0.021, abs=0.0005)
    # Welch-Satterthwaite df by hand
    v1, v2 = np.var(A1, ddof=1) / 15, np.var(A2, ddof=1) / 15
    assert w["df"] == pytest.approx((v1 + v2) ** 2 / (v1**2 / 14 + v2**2 / 14))
    ref = st.ttest_ind(A1, A2, equal_var=False)
    assert w["p"] == pytest.approx(ref.pvalue)
    lo, hi = CompareMeans(DescrStatsW(np.array(A1)), DescrStatsW(np.array(A2))).tconfint_diff(
        usevar="unequal")
    assert (w["diff_ci_low"], w["diff_ci_high"]) == pytest.approx((lo, hi))
    assert w["diff"] == pytest.approx(np.mean(A1) - np.mean(A2))


def test_hedges_g_matches_formula():
    a, b = np.array(A1), np.array(A2)
    sp = np.sqrt(((14 * a.var(ddof=1)) + 14 * b.var(ddof=1)) / 28)
    j = 1 - 3 / (4 * 30 - 9)
    assert stats.hedges_g(a, b) == pytest.approx(j * (a.mean() - b.mean()) / sp)


def test_holm_hand_checked_and_nan():
    # sorted 0.01*3 = 0.03, 0.03*2 = 0.06, max(0.04*1, 0.06) = 0.06
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = stats.holm([0.01, np.nan, 0.04])
    assert out[0] == pytest.approx(0.02) and np.isnan(out[1]) and out[2] == pytest.approx(0.04)


def test_mcnemar_exact_binomial():
    target = np.zeros(100, dtype=int)
    a, b = target.copy(), target.copy()
    a[:1] = 1  # a wrong, b right on 1 example
    b[1:10] = 1  # b wrong, a right on 9
    m = stats.mcnemar_exact(a, b, target)
    assert (m["only_a"], m["only_b"]) == (9, 1)
    assert m["p"] == pytest.approx(22 / 1024)  # 2 * P(X <= 1), X ~ Bin(10, 1/2)


def test_paired_bootstrap_seeded():
    rng = np.random.default_rng(1)
    target = rng.integers(0, 10, 2000)
    a = np.where(rng.random(2000) < 0.9, target, (target + 1) % 10)
    b = np.where(rng.random(2000) < 0.8, target, (target + 1) % 10)
    r1, r2 = stats.paired_bootstrap(a, b, target), stats.paired_bootstrap(a, b, target)
    assert r1 == r2 and r1["label"] == "test-set noise only, not seed-to-seed variance"
    assert r1["ci_low"] < r1["diff"] < r1["ci_high"] < 0  # a makes fewer errors
    same = stats.paired_bootstrap(a, a, target)
    assert (same["diff"], same["ci_low"], same["ci_high"]) == (0, 0, 0)


@pytest.mark.parametrize(("args", "want"), [
    (("lower", 3, 3, -1.0, 0.001), "reproduced"),
    (("lower", 3, 3, 1.0, 0.001), "contradicted"),
    (("higher", 3, 3, 1.0, 0.2), "inconclusive"),
    (("higher", 3, 3, 0.0, float("nan")), "inconclusive"),
    (("lower", 1, 3, -1.0, float("nan")), "insufficient seeds (n=1)"),
    (("", 3, 3, -1.0, 0.001), "no paper direction"),
])
def test_verdict_rules(args, want):
    assert stats.verdict(*args) == want


def test_paper_direction():
    assert stats.paper_direction("fail", "") == "higher"
    assert stats.paper_direction(" FAIL ", "lower") == "higher"
    assert stats.paper_direction("6.37", "lower") == "lower"
    assert stats.paper_direction("", "") == ""



def test_tost_against_a_hand_computed_example():
    """a - b = -0.1 with both seed variances 0.04 (n = 3): se = sqrt(2 * 0.04 / 3), Welch df = 4;
    with delta 0.5 the lower test has t = 0.4 / se = 2.449 (p = 0.03524 on 4 df), the upper
    t = -0.6 / se = -3.674 (p = 0.01066); TOST p is the larger; 90% CI -0.1 +- 2.132 * se."""
    a, b = [10.0, 10.2, 10.4], [10.1, 10.3, 10.5]
    r = stats.tost(a, b, 0.5)
    assert r["p_tost"] == pytest.approx(0.03524, abs=1e-5)
    assert r["ci90_low"] == pytest.approx(-0.1 - 0.34813, abs=1e-5)
    assert r["ci90_high"] == pytest.approx(-0.1 + 0.34813, abs=1e-5)
    assert stats.verdict("lower", 3, 3, -0.1, 0.6, delta=0.5, p_tost=r["p_tost"]) == \
        "equivalent within ±0.5"


def test_a_wide_ci_is_never_called_equivalent():
    a, b = [8.0, 11.0, 14.0], [9.0, 12.5, 10.0]  # sd ~ 3 points: the 90% CI spans +-5
    for delta in (0.3, 1.0, 2.0):
        r = stats.tost(a, b, delta)
        assert r["ci90_low"] < -delta or r["ci90_high"] > delta
        assert r["p_tost"] >= 0.05
        v = stats.verdict("higher", 3, 3, float(np.mean(a) - np.mean(b)), 0.9, delta=delta,
                          p_tost=r["p_tost"])
        assert not v.startswith("equivalent")
    # the CI and the p agree: p < 0.05 exactly when the 90% CI lies inside the margin
    rng = np.random.default_rng(0)
    for _ in range(200):
        x, y = rng.normal(0, 1, 4), rng.normal(0.3, 1, 5)
        r = stats.tost(x, y, 1.2)
        inside = -1.2 < r["ci90_low"] and r["ci90_high"] < 1.2
        assert inside == (r["p_tost"] < 0.05)


def test_precision_mix_counts_and_flags_disagreeing_precisions():
    same = stats.precision_mix(["bf16"] * 3, [5.0, 5.1, 5.2])
    assert same["precisions"] == "3 bf16" and np.isnan(same["precision_p"])
    mixed = stats.precision_mix(["bf16", "bf16", "bf16", "fp32", "fp32"],
                                [5.0, 5.1, 5.2, 7.0, 7.1])
    assert mixed["precisions"] == "3 bf16, 2 fp32" and mixed["precision_p"] < 0.05
    close = stats.precision_mix(["bf16", "fp32", "bf16", "fp32"], [5.0, 5.05, 5.3, 5.2])
    assert close["precision_p"] > 0.05


def test_paper_position_against_a_hand_computed_example():
    """x = 1, 2, 3 (mean 2, sd 1, n 3), paper 5: z = 3; scale sqrt(4/3) = 1.1547; with 2 df the
    t CDF is 1/2 + t / (2 sqrt(2 + t^2)), so t = 2.598 gives p = 0.1216, and t(0.975, 2) =
    4.3027 gives the prediction interval 2 -+ 4.9683."""
    r = stats.paper_position([1.0, 2.0, 3.0], 5.0)
    t = 3 / np.sqrt(4 / 3)
    assert r["z"] == pytest.approx(3.0)
    assert r["p_pred"] == pytest.approx(2 * (0.5 - t / (2 * np.sqrt(2 + t * t))), rel=1e-9)
    assert r["p_pred"] == pytest.approx(0.1216, abs=1e-4)
    assert (r["pi_low"], r["pi_high"]) == pytest.approx((2 - 4.96837, 2 + 4.96837), abs=1e-4)
    assert np.isnan(stats.paper_position([7.96], 11.5)["z"])  # one seed: no spread yet
