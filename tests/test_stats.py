"""Pure statistics, against hand-computed values."""

import math

import pytest

from smallfit.judge.stats import (
    bootstrap_difference,
    clopper_pearson_interval,
    difference_z_test,
    mcnemar_exact_p,
    more_needed,
    paired_t,
    share_interval,
    two_sided_p,
    wilson_interval,
)
from smallfit.judge.verdict import dominated, dominators_beyond
from smallfit.scoring import expanded_alpha, order_statistic_ranks, quantile_interval, requests_to_bound, t_quantile


def test_wilson_interval_by_hand():
    # 50 of 100: centre 0.5 + z²/200, half-width z·√(0.0025 + z²/40000), over 1 + z²/100
    low, high = wilson_interval(0.5, 100)
    assert low == pytest.approx(0.40383, abs=1e-5) and high == pytest.approx(0.59617, abs=1e-5)
    # 0 of 10: the interval is [0, (z²/n) / (1 + z²/n)] = [0, 0.38415/1.38415]
    assert wilson_interval(0.0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert wilson_interval(1.0, 10) == pytest.approx((0.72247, 1.0), abs=1e-5)
    with pytest.raises(ValueError):
        wilson_interval(0.5, 0)


def test_clopper_pearson_by_hand():
    # 0 of 10: the high end solves (1 − p)^10 = 0.025, p = 1 − 0.025^(1/10); 10 of 10 mirrors it
    assert clopper_pearson_interval(0, 10) == pytest.approx((0.0, 1 - 0.025 ** 0.1), abs=1e-9)
    assert clopper_pearson_interval(10, 10) == pytest.approx((0.025 ** 0.1, 1.0), abs=1e-9)
    # 1 of 10: the low end solves P(B >= 1) = 1 − (1 − p)^10 = 0.025, p = 1 − 0.975^(1/10)
    assert clopper_pearson_interval(1, 10)[0] == pytest.approx(1 - 0.975 ** 0.1, abs=1e-9)
    # 5 of 10: P(B <= 5 | 0.81291) = 0.025 (tables: 0.18709 – 0.81291), symmetric about 0.5
    low, high = clopper_pearson_interval(5, 10)
    assert (low, high) == pytest.approx((0.18709, 0.81291), abs=1e-5) and low + high == pytest.approx(1.0)
    assert share_interval(0.5, 100) == pytest.approx((0.39832, 0.60168), abs=1e-5)
    # wider than Wilson's on both sides: that is what buys the coverage
    wl, wh = wilson_interval(0.5, 100)
    assert share_interval(0.5, 100)[0] < wl and share_interval(0.5, 100)[1] > wh
    with pytest.raises(ValueError):
        clopper_pearson_interval(11, 10)
    with pytest.raises(ValueError):
        share_interval(1.5, 10)


def test_clopper_pearson_covers_95_at_the_sizes_runs_use():
    # exact coverage at true shares where Wilson's undercovers (at n = 50, share 0.98: about 92%)
    from smallfit.scoring import binomial_pmfs
    for n, p in ((10, 0.65435), (20, 0.50735), (50, 0.0198), (50, 0.92875), (100, 0.89935)):
        pmf = binomial_pmfs(n, p)
        cov = sum(pmf[k] for k in range(n + 1) if clopper_pearson_interval(k, n)[0] <= p
                  <= clopper_pearson_interval(k, n)[1])
        assert cov >= 0.95, (n, p, cov)


def test_more_needed_scales_with_the_squared_ratio():
    # 80% power: n_needed = 100 ((1.96 + 0.8416) · 0.05 / 0.02)² = 100 · 7.004² = 4905.6: 4806 more
    assert more_needed(100, 0.05, 0.52, 0.5) == 4806
    # without the power term the interval only just reaches the threshold (a coin flip):
    # 100 (1.96 · 0.05 / 0.02)² = 100 · 4.9² = 2401 (2400.9 with the exact z): 2301 more
    assert more_needed(100, 0.05, 0.52, 0.5, power_z=0.0) == 2301
    assert more_needed(100, 0.05, 0.5, 0.5) is None  # on the threshold: no n decides it
    assert more_needed(100, 0.001, 0.52, 0.5) == 1  # already decided: at least one, never negative


def test_difference_z_test_by_hand():
    diff, z, p = difference_z_test(0.5, 0.03, 0.6, 0.04)  # se = √(0.0009 + 0.0016) = 0.05
    assert diff == pytest.approx(0.1) and z == pytest.approx(2.0)
    assert p == pytest.approx(0.0455, abs=1e-4)  # 2 (1 − Φ(2))
    assert two_sided_p(0.0) == 1.0
    assert math.isnan(difference_z_test(0.5, 0.0, 0.5, 0.0)[1])


def test_bootstrap_difference_of_constant_samples():
    diff, low, high, p = bootstrap_difference([1.0] * 5, [2.0] * 7, lambda xs: max(xs), resamples=200)
    assert (diff, low, high) == (1.0, 1.0, 1.0)
    assert p == pytest.approx(1 / 200)  # every resampled difference is above 0
    same = bootstrap_difference([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], lambda xs: sum(xs) / len(xs))
    assert same[0] == 0.0 and same[1] < 0 < same[2] and same[3] > 0.5


def test_pareto_dominance():
    # x: latency (lower is better), y: accuracy (higher is better)
    points = [(1.0, 0.5), (2.0, 0.6), (3.0, 0.55), (1.0, 0.5), (0.5, 0.4)]
    assert dominated(points, x_higher_better=False, y_higher_better=True) == [False, False, True, False, False]
    # both higher-better: (2, 0.6) and (3, 0.55) trade off; they dominate the rest
    assert dominated(points, True, True) == [True, False, False, True, True]
    assert dominated([], True, True) == []


def test_order_statistic_ranks_match_the_binomial_tables():
    # median of 10: ranks 2 and 9 (P(B <= 1) = 11/1024 = 0.0107 <= 0.025 < P(B <= 2) = 0.0547)
    assert order_statistic_ranks(10, 0.5) == (2, 9)
    # p95 of 10: the lower end is rank 8 (P(B <= 7) = 0.0115); nothing bounds it above (0.95^10 = 0.60)
    assert order_statistic_ranks(10, 0.95) == (8, None)
    # p95 of 72: 0.95^72 = 0.0249 <= 0.025, so the maximum bounds it; 71 do not (0.0262)
    assert order_statistic_ranks(72, 0.95)[1] == 72 and order_statistic_ranks(71, 0.95)[1] is None
    assert order_statistic_ranks(5, 0.5) == (None, None)  # 0.5^5 = 0.031 > 0.025 on both sides


def test_requests_to_bound_is_the_first_n_with_a_finite_upper_end():
    assert [requests_to_bound(q) for q in (0.5, 0.9, 0.95, 0.99)] == [6, 36, 72, 368]
    for q in (0.5, 0.9, 0.95, 0.99):
        n = requests_to_bound(q)
        assert order_statistic_ranks(n, q)[1] is not None and order_statistic_ranks(n - 1, q)[1] is None


def test_quantile_interval_takes_the_sorted_values_at_those_ranks():
    values = [float(v) for v in (9, 1, 8, 2, 7, 3, 6, 4, 5, 10)]
    assert quantile_interval(values, 0.5) == (2.0, 9.0)
    assert quantile_interval(values, 0.95) == (8.0, None)


def test_t_quantile_and_expanded_bootstrap_tails():
    assert t_quantile(0.975, 9) == pytest.approx(2.262157, abs=1e-5)
    assert t_quantile(0.975, 1) == pytest.approx(12.7062, abs=1e-3)
    assert t_quantile(0.025, 24) == pytest.approx(-2.063899, abs=1e-5)
    # Φ(−√(10/9) · 2.2622) = Φ(−2.3845) = 0.00855: a wider tail cut than 0.025 at n = 10
    assert expanded_alpha(10) == pytest.approx(0.00855, abs=2e-5)
    assert 0.0247 < expanded_alpha(1000) < 0.025


def test_mcnemar_exact_by_hand():
    assert mcnemar_exact_p(0, 5) == pytest.approx(2 / 32)  # 2 · 0.5^5
    assert mcnemar_exact_p(1, 9) == pytest.approx(2 * 11 / 1024)  # 2 · (1 + 10) / 2^10
    assert mcnemar_exact_p(3, 3) == 1.0 and mcnemar_exact_p(0, 0) == 1.0


def test_paired_t_by_hand():
    diff, low, high, p = paired_t([1.0] * 20 + [0.0] * 20)
    se = math.sqrt(40 * 0.25 / 39) / math.sqrt(40)  # sd of ±0.5 deviations with n − 1 = 39
    t39 = 2.0226909  # t_{0.975, 39} from tables
    assert diff == 0.5
    assert low == pytest.approx(0.5 - t39 * se, abs=1e-6) and high == pytest.approx(0.5 + t39 * se, abs=1e-6)
    assert p < 1e-6  # t = 6.24 on 39 degrees of freedom
    assert paired_t([0.0] * 30) == (0.0, 0.0, 0.0, 1.0)
    assert paired_t([0.1] * 5)[1:] == (0.1, 0.1, 0.0)
    # the p-value at the 95% edge: a mean exactly t_{0.975, n−1} standard errors from 0
    edge = paired_t([1.0, 3.0])  # mean 2, se 1, t_{0.975, 1} = 12.706: p = 2 (1 − F(2)) on 1 df
    assert edge[3] == pytest.approx(1 - 2 * math.atan(2.0) / math.pi, abs=1e-12)
    with pytest.raises(ValueError):
        paired_t([1.0])


def test_dominators_beyond_the_intervals():
    inf = math.inf
    # x: latency (lower is better), y: acc (higher is better); spans are (low, value, high)
    a = ((1.0, 1.5, 2.0), (0.80, 0.85, 0.90))
    b = ((2.5, 3.0, 3.5), (0.50, 0.60, 0.70))  # worse on both, wholly beyond a's intervals
    c = ((1.8, 2.2, 2.6), (0.70, 0.78, 0.86))  # worse by the estimates, but the intervals overlap
    d = ((3.0, 3.0, 3.0), (0.60, 0.60, 0.60))  # no intervals: points; a's worse ends beat them
    assert dominators_beyond([a, b, c, d], False, True) == [[], [0], [], [0, 2]]  # c clears d too
    assert dominated([(x[1], y[1]) for x, y in (a, b, c, d)], False, True) == [False, True, True, True]
    # touching ends on both axes is not strictly better: no domination; strictly on one is
    e = ((2.0, 2.5, 3.0), (0.5, 0.6, 0.8))
    assert dominators_beyond([a, e], False, True) == [[], []]
    f = ((2.0, 2.5, 3.0), (0.5, 0.6, 0.79))
    assert dominators_beyond([a, f], False, True) == [[], [0]]
    # an interval open above on a lower-is-better axis: its worse end is infinite, it dominates
    # nothing there, while a finite interval wholly below the other's low end still dominates it
    g = ((0.5, 0.6, inf), (0.95, 0.97, 0.99))
    h = ((2.0, 2.5, 3.0), (0.5, 0.6, 0.7))
    assert dominators_beyond([g, h], False, True) == [[], []]
    assert dominators_beyond([h, ((3.5, 4.0, inf), (0.1, 0.2, 0.3))], False, True) == [[], [0]]
