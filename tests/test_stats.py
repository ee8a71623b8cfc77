"""Pure statistics, against hand-computed values."""

import math

import pytest

from smallfit.judge.stats import (
    bootstrap_difference,
    difference_z_test,
    more_needed,
    two_sided_p,
    wilson_interval,
)
from smallfit.judge.verdict import dominated


def test_wilson_interval_by_hand():
    # 50 of 100: centre 0.5 + z²/200, half-width z·√(0.0025 + z²/40000), over 1 + z²/100
    low, high = wilson_interval(0.5, 100)
    assert low == pytest.approx(0.40383, abs=1e-5) and high == pytest.approx(0.59617, abs=1e-5)
    # 0 of 10: the interval is [0, (z²/n) / (1 + z²/n)] = [0, 0.38415/1.38415]
    assert wilson_interval(0.0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert wilson_interval(1.0, 10) == pytest.approx((0.72247, 1.0), abs=1e-5)
    with pytest.raises(ValueError):
        wilson_interval(0.5, 0)


def test_more_needed_scales_with_the_squared_ratio():
    # n_needed = 100 (1.96 · 0.05 / 0.02)² = 100 · 4.9² = 2401 (2400.9 with the exact z): 2301 more
    assert more_needed(100, 0.05, 0.52, 0.5) == 2301
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
