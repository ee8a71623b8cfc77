"""Pure statistics for verdicts and comparisons: intervals, sample sizes, significance tests.

No I/O and no third-party library, so each function can be checked by hand in a test.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import TypeVar

from smallfit.scoring import binomial_pmfs, percentile, t_cdf, t_quantile

T = TypeVar("T")
Z95 = 1.959963984540054  # two-sided 95% normal quantile
Z80 = 0.8416212335729143  # one-sided normal quantile of 80% power


def normal_cdf(x: float) -> float:
    """Standard normal cumulative distribution function."""
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def two_sided_p(z: float) -> float:
    """Two-sided p-value of a standard normal statistic ``z``."""
    return 2.0 * (1.0 - normal_cdf(abs(z)))


def wilson_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` observed over ``n`` trials.

    ``(p + z²/2n ± z √(p(1−p)/n + z²/4n²)) / (1 + z²/n)``: unlike the normal interval it stays
    within [0, 1] and is not empty at p = 0 or 1, which small evaluations hit often.
    """
    if n < 1:
        raise ValueError("Wilson interval needs n >= 1")
    if not 0.0 <= p <= 1.0:
        raise ValueError("a proportion must be within [0, 1]")
    z2 = z * z
    centre = p + z2 / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    denom = 1 + z2 / n
    return max(0.0, (centre - half) / denom), min(1.0, (centre + half) / denom)


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """P(B <= k), B ~ Binomial(n, p)."""
    return min(1.0, sum(binomial_pmfs(n, p)[: k + 1]))


def _solve_decreasing(f: Callable[[float], float], target: float) -> float:
    """The p in [0, 1] where the decreasing ``f(p)`` crosses ``target``, by bisection (1e-12)."""
    lo, hi = 0.0, 1.0
    while hi - lo > 1e-12:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) > target else (lo, mid)
    return (lo + hi) / 2


def clopper_pearson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper–Pearson (exact) interval of a proportion: ``successes`` of ``n`` trials.

    The lower end is the share ``p`` at which ``P(B >= successes) = (1 − level)/2`` (0 when
    ``successes = 0``), the upper end the ``p`` at which ``P(B <= successes) = (1 − level)/2``
    (1 when ``successes = n``), B ~ Binomial(n, p). Each side misses with probability at most
    ``(1 − level)/2`` whatever the true share, so it covers at least ``level`` at every n: Wilson's
    interval dips to about 92% at n = 10..100 (``benchmarks/coverage.py``).
    """
    if n < 1:
        raise ValueError("Clopper-Pearson interval needs n >= 1")
    if not 0 <= successes <= n:
        raise ValueError("successes must be within [0, n]")
    tail = (1.0 - level) / 2.0
    # P(B >= k) rises with p: 1 - P(B <= k - 1) crosses tail where P(B <= k - 1) crosses 1 - tail
    low = 0.0 if successes == 0 else _solve_decreasing(lambda p: _binomial_cdf(successes - 1, n, p), 1.0 - tail)
    high = 1.0 if successes == n else _solve_decreasing(lambda p: _binomial_cdf(successes, n, p), tail)
    return low, high


def share_interval(share: float, n: int) -> tuple[float, float]:
    """The 95% interval smallfit stores for a share of ``n`` examples scored 0 or 1: Clopper–Pearson
    of ``round(share · n)`` successes (:data:`SHARE_INTERVAL` names it)."""
    if not 0.0 <= share <= 1.0:
        raise ValueError("a proportion must be within [0, 1]")
    return clopper_pearson_interval(round(share * n), n)


SHARE_INTERVAL = "clopper-pearson"


def more_needed(n: int, se: float, value: float, threshold: float, z: float = Z95,
                power_z: float = Z80) -> int | None:
    """About how many more examples would decide a check with 80% power.

    The standard error shrinks as 1/√n. If the true value is the one observed, the interval
    ``value ± z·se_N`` excludes ``threshold`` with probability ``power`` once
    ``|value − threshold| = (z + z_power)·se_N``, that is at
    ``n_needed ≈ n ((z + z_power)·se / |value − threshold|)²`` (``z_power`` = 0.84 for 80%;
    with ``power_z=0`` this is the n whose interval just reaches the threshold, a coin flip).
    Returns the extra ``n_needed − n`` (at least 1), or None when the value sits on the
    threshold (no finite n).
    """
    gap = abs(value - threshold)
    if gap == 0 or se <= 0 or n < 1:
        return None
    needed = math.ceil(n * ((z + power_z) * se / gap) ** 2)
    return max(1, needed - n)


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Exact (binomial) McNemar test of paired 0/1 scores: ``only_a`` examples right only on side
    A, ``only_b`` only on side B. Under no difference each discordant example is a fair coin, so
    the two-sided p-value is ``min(1, 2 P(X ≤ min(only_a, only_b)))``, X ~ Binomial(discordant, ½);
    1 when no example is discordant."""
    total = only_a + only_b
    if total == 0:
        return 1.0
    pmf = binomial_pmfs(total, 0.5)
    return min(1.0, 2.0 * sum(pmf[: min(only_a, only_b) + 1]))


def paired_t(diffs: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """Mean of paired differences ``b − a`` (one per example), its ``level`` Student t interval
    ``mean ± t_{(1+level)/2, n−1} · sd/√n`` and the two-sided p-value of the paired t test.

    Chosen over a paired bootstrap by simulation (``benchmarks/coverage.py``: partial-credit
    scores, n = 10 to 100): 94-96% coverage where the expanded bootstrap gave 92.9-94.4%. All
    differences equal: a zero-width interval, p = 1 when they are 0 and 0 otherwise.
    """
    if len(diffs) < 2:
        raise ValueError("a paired t interval needs at least two pairs")
    n = len(diffs)
    mean = math.fsum(diffs) / n
    se = math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / (n - 1) / n)
    if se == 0:
        return mean, mean, mean, 1.0 if mean == 0 else 0.0
    half = t_quantile(0.5 + level / 2, n - 1) * se
    p = 2.0 * (1.0 - t_cdf(abs(mean) / se, n - 1))
    return mean, mean - half, mean + half, max(0.0, min(1.0, p))


def difference_z_test(mean_a: float, se_a: float, mean_b: float, se_b: float) -> tuple[float, float, float]:
    """Difference ``b − a`` of two independent means, its z statistic and two-sided p-value.

    The standard error of the difference is ``√(se_a² + se_b²)``; with zero combined error the
    test is undefined and gives ``z = nan, p = nan``.
    """
    diff = mean_b - mean_a
    se = math.sqrt(se_a * se_a + se_b * se_b)
    if se == 0:
        return diff, math.nan, math.nan
    z = diff / se
    return diff, z, two_sided_p(z)


def bootstrap_difference(
    a: Sequence[T],
    b: Sequence[T],
    statistic: Callable[[Sequence[T]], float],
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float, float]:
    """``statistic(b) − statistic(a)``, its 95% percentile-bootstrap interval and a p-value.

    Each sample is resampled independently with replacement; the two-sided p-value is twice the
    smaller share of resampled differences on either side of 0 (at least ``1 / resamples``).
    """
    if not a or not b:
        raise ValueError("bootstrap of an empty sequence")
    rng = random.Random(seed)
    diffs = []
    for _ in range(resamples):
        da = [a[rng.randrange(len(a))] for _ in a]
        db = [b[rng.randrange(len(b))] for _ in b]
        diffs.append(statistic(db) - statistic(da))
    low, high = percentile(diffs, 2.5), percentile(diffs, 97.5)
    below = sum(d <= 0 for d in diffs) / resamples
    above = sum(d >= 0 for d in diffs) / resamples
    p = min(1.0, max(1.0 / resamples, 2 * min(below, above)))
    return statistic(b) - statistic(a), low, high, p
