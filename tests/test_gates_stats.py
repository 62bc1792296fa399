"""The bake gate's statistics against reference values computed independently.

References: scipy.stats (Mann-Whitney U, binomial Wilson intervals), published worked examples
(Hanley & McNeil 1982's CT ratings; Newcombe 1998's Wilson and difference intervals), and
brute force (the full matrix of positive/negative comparisons for DeLong, all pairwise
differences for Hodges-Lehmann, sorted samples for order statistics). The sequential claims
(checking often does not raise the error rate) are checked by simulation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from airflow_fsmigration.gates import stats as S
from airflow_fsmigration.gates import stats_rank as R

pytestmark = pytest.mark.unit

# Hanley & McNeil (1982), Table 1: CT ratings (1 definitely normal .. 5 definitely abnormal).
HM_NORMAL = [1] * 33 + [2] * 6 + [3] * 6 + [4] * 11 + [5] * 2
HM_ABNORMAL = [1] * 3 + [2] * 2 + [3] * 2 + [4] * 11 + [5] * 33


def _brute_delong(labels, *scores):
    y = np.asarray(labels).astype(bool)
    v10s, v01s = [], []
    for s in scores:
        s = np.asarray(s, dtype=float)
        pos, neg = s[y], s[~y]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        v10s.append(psi.mean(axis=1))
        v01s.append(psi.mean(axis=0))
    m, n = len(v10s[0]), len(v01s[0])
    k = len(scores)
    cov = np.empty((k, k))
    for a in range(k):
        for b in range(k):
            s10 = np.sum((v10s[a] - v10s[a].mean()) * (v10s[b] - v10s[b].mean())) / (m - 1)
            s01 = np.sum((v01s[a] - v01s[a].mean()) * (v01s[b] - v01s[b].mean())) / (n - 1)
            cov[a, b] = s10 / m + s01 / n
    return np.array([v.mean() for v in v10s]), cov


def test_auc_of_the_hanley_mcneil_ratings_and_their_standard_errors():
    labels = [0] * len(HM_NORMAL) + [1] * len(HM_ABNORMAL)
    scores = HM_NORMAL + HM_ABNORMAL
    aucs, cov = S.delong(labels, scores)
    assert aucs[0] == pytest.approx(0.893, abs=5e-4)  # the paper's trapezoidal area
    # The paper's standard error (its own approximation) from A, 51 abnormal and 58 normal.
    assert math.sqrt(S.hanley_mcneil_var(0.893, 51, 58)) == pytest.approx(
        0.032, abs=6e-4
    )  # 0.0325, printed 0.032
    # DeLong's is the empirical counterpart: close to it, and equal to the brute-force matrix.
    ref_auc, ref_cov = _brute_delong(labels, scores)
    assert aucs[0] == pytest.approx(ref_auc[0])
    assert cov[0, 0] == pytest.approx(ref_cov[0, 0])
    assert math.sqrt(cov[0, 0]) == pytest.approx(0.0307, abs=5e-4)


def test_auc_is_mann_whitney_u_over_mn():
    rng = np.random.default_rng(3)
    pos, neg = rng.normal(1.0, 1.0, 70), np.round(rng.normal(0.0, 1.0, 130), 1)  # ties too
    u = sps.mannwhitneyu(pos, neg, alternative="two-sided").statistic
    labels = np.r_[np.ones(70), np.zeros(130)]
    assert S.auc(labels, np.r_[pos, neg]) == pytest.approx(u / (70 * 130))


def test_paired_delong_matches_brute_force_covariance():
    rng = np.random.default_rng(5)
    y = rng.random(300) < 0.3
    a = y * 1.2 + rng.normal(size=300)
    b = a + rng.normal(scale=0.5, size=300)  # correlated: the paired shadow score
    aucs, cov = S.delong(y, a, b)
    ref_auc, ref_cov = _brute_delong(y, a, b)
    np.testing.assert_allclose(aucs, ref_auc)
    np.testing.assert_allclose(cov, ref_cov)
    iv, _auc_a, _auc_b = S.paired_auc_drop(y, a, b, margin=0.01, sequential=False)
    var = ref_cov[0, 0] + ref_cov[1, 1] - 2 * ref_cov[0, 1]
    assert iv.estimate == pytest.approx(ref_auc[0] - ref_auc[1])
    assert iv.se == pytest.approx(math.sqrt(var))
    assert iv.hi - iv.estimate == pytest.approx(1.959964 * math.sqrt(var), rel=1e-5)
    # Pairing removes the shared noise: the paired interval is much narrower than the unpaired one.
    up, _, _ = S.unpaired_auc_drop(y, a, y, b, margin=0.01, sequential=False)
    assert iv.se < 0.7 * up.se


def test_wilson_and_newcombe_against_published_and_scipy_values():
    # Newcombe (1998a), example 81/263: 0.2553 to 0.3662; scipy's Wilson interval agrees.
    lo, hi = S.wilson(81, 263)
    assert (lo, hi) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    for k, n in ((0, 20), (1, 300), (29, 30), (500, 1000)):
        ci = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert S.wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)
    # Newcombe (1998b), 56/70 vs 48/80, method 10: 0.0524 to 0.3339.
    d = S.newcombe_diff(56, 70, 48, 80)
    assert (d.estimate, d.lo, d.hi) == pytest.approx((0.2, 0.0524, 0.3339), abs=1e-4)


def test_hodges_lehmann_matches_all_pairwise_differences():
    rng = np.random.default_rng(11)
    x = np.round(rng.gamma(2.0, 3.0, 60) + 4.0, 1)
    y = np.round(rng.gamma(2.0, 3.0, 45), 1)
    diffs = np.sort((x[:, None] - y[None, :]).ravel())
    iv = R.hodges_lehmann(R.weighted(x), R.weighted(y), sequential=False)
    total = len(diffs)
    k = math.floor(total / 2 - 1.959964 * math.sqrt(total * (len(x) + len(y) + 1) / 12))
    assert iv.estimate == pytest.approx(diffs[math.ceil(total / 2) - 1], abs=1e-6)
    assert iv.lo == pytest.approx(diffs[k - 1], abs=1e-6)
    assert iv.hi == pytest.approx(diffs[total - k], abs=1e-6)
    # The interval is the set of shifts the two-sided Mann-Whitney test does not reject (5%).
    for shift, inside in ((iv.estimate, True), (iv.lo - 0.5, False), (iv.hi + 0.5, False)):
        p = sps.mannwhitneyu(x - shift, y, alternative="two-sided", method="asymptotic").pvalue
        assert bool(p > 0.05) == inside
    # Counts (histogram bins) give the same answer as the expanded sample.
    vals, counts = np.unique(x, return_counts=True)
    again = R.hodges_lehmann(R.weighted(vals, counts), R.weighted(y), sequential=False)
    assert (again.estimate, again.lo, again.hi) == pytest.approx((iv.estimate, iv.lo, iv.hi), abs=1e-6)


def test_quantile_interval_is_order_statistics():
    rng = np.random.default_rng(2)
    x = rng.exponential(5.0, 2000)
    iv = R.quantile_interval(R.weighted(x), 0.99, sequential=False)
    s = np.sort(x)
    sd = math.sqrt(2000 * 0.99 * 0.01)
    assert iv.lo == s[math.floor(1980 - 1.959964 * sd) - 1]
    assert iv.hi == s[math.ceil(1980 + 1.959964 * sd)]
    assert iv.lo < 5.0 * math.log(100) < iv.hi  # the true p99 of Exp(mean 5)
    # Too few reads to bound a p99 from above: the upper end is infinite, never the max.
    assert R.quantile_interval(R.weighted(x[:150]), 0.99).hi == math.inf


def test_decide_is_non_inferiority_and_inconclusive_never_passes():
    m = 0.01
    assert S.decide(S.Interval(0.0, -0.004, 0.004, "t"), m) is S.Decision.PASS
    assert S.decide(S.Interval(0.02, 0.012, 0.03, "t"), m) is S.Decision.FAIL
    assert S.decide(S.Interval(0.01, 0.002, 0.018, "t"), m) is S.Decision.INCONCLUSIVE
    assert S.decide(S.Interval(0.0, -math.inf, math.inf, "t"), m) is S.Decision.INCONCLUSIVE
    assert S.decide(None, m) is S.Decision.INCONCLUSIVE


def test_min_positives_follow_the_margin():
    small, large = S.auc_min_positives(0.9, 0.0045, 5.0), S.auc_min_positives(0.9, 0.018, 5.0)
    assert large < small
    for need, margin in ((small, 0.0045), (large, 0.018)):
        assert S.hanley_mcneil_var(0.9, need, need * 5) <= margin**2
        assert S.hanley_mcneil_var(0.9, need - 1, (need - 1) * 5) > margin**2


def test_confidence_sequence_holds_under_repeated_looks_where_a_fixed_interval_does_not():
    # 4000 streams of N(0, 1) means checked at 200 looks: how many ever exclude the truth?
    rng = np.random.default_rng(0)
    looks = np.arange(1, 201) * 5
    sums = np.cumsum(rng.normal(size=(4000, looks[-1])), axis=1)[:, looks - 1]
    est = sums / looks
    se = 1 / np.sqrt(looks)
    rho = S.mixture_rho(0.2)
    mult = np.array([S.cs_multiplier(1 / s**2, rho) for s in se])
    cs_miss = np.mean(np.any(np.abs(est) > mult * se, axis=1))
    fixed_miss = np.mean(np.any(np.abs(est) > 1.959964 * se, axis=1))
    assert cs_miss <= 0.05
    assert fixed_miss > 0.25  # why a fixed interval cannot be checked hourly


def test_rate_mixture_sprt_is_valid_under_repeated_looks_and_detects():
    rng = np.random.default_rng(1)
    limit = 0.01
    for true, want in ((0.01, "valid"), (0.03, "detects")):
        events = rng.random((1000, 5000)) < true
        k = np.cumsum(events, axis=1)
        rejected = 0
        for row in k:
            rejected += any(R.rate_exceeds(int(row[n - 1]), n, limit)[0] for n in range(100, 5001, 100))
        rate = rejected / 1000
        if want == "valid":
            assert rate <= 0.05
        else:
            assert rate >= 0.95
    assert R.rate_exceeds(20_000, 21_000, 0.001)[0]
    assert not R.rate_exceeds(0, 100_000, 0.001)[0]


def test_keep_warm_drift_check_finds_a_slow_rise_and_holds_its_false_alarm_rate():
    from airflow_fsmigration.gates.keepwarm import drift_check

    rng = np.random.default_rng(4)
    sd = 0.003  # a day's paired difference in false-negative rate
    drift = 0.006 * np.minimum(np.arange(1, 31) / 21, 1.0)  # +3% of a 20% rate by day 21
    null = [drift_check(rng.normal(0, sd, 30), [sd**2] * 30).breached for _ in range(2000)]
    found = [drift_check(drift + rng.normal(0, sd, 30), [sd**2] * 30) for _ in range(500)]
    assert np.mean(null) <= 0.05
    assert np.mean([f.breached for f in found]) >= 0.9
    assert all(f.first_breach_day is None or f.first_breach_day <= 30 for f in found)
    st = drift_check([0.01] * 3, [1e-4] * 3)
    assert st.days == 3 and st.total == pytest.approx(0.03) and "cumulative +0.03000" in st.explain()
