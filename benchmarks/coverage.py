"""Coverage of every 95% interval smallfit uses, at the sample sizes its runs use.

Each interval is simulated many times from a population whose true value is known; coverage is
the share of intervals that contain it. Target: at least 94% everywhere, or the verdict says
``uncertain`` there (an open percentile interval). The intervals are the ones smallfit stores:

- Clopper–Pearson (shares of 0/1 scores: acc, acc_norm, exact_match): exact coverage, summed over
  the binomial distribution (no simulation error), at several true shares, and its worst case over
  a fine grid of shares; Wilson's, used before, is shown for contrast (it dips to about 92%).
- Expanded percentile bootstrap of a mean over examples (f1 and other non-0/1 scores), 1000
  resamples: simulated on skewed, bounded scores (a mix of 0, 1 and Beta(2, 2) partial credit).
- Order-statistic intervals of p50/p90/p95/p99 (latency, TTFT, TPOT): exact coverage from the
  binomial distribution of ranks (it holds for any continuous distribution), checked by
  simulation on lognormal latencies; the percentile bootstrap used before is shown for contrast.
- Rates over requests (decode_tok_s: sum of tokens / sum of seconds): the delta-method t
  interval, at per-request spreads up to a coefficient of variation of 0.47, plus a stress row
  at 0.66; the expanded bootstrap used before is shown for contrast.
- Paired differences of partial-credit scores (compare, trade-off cards): the paired t interval;
  the paired bootstrap used before, and on 0/1 pairs (why those get McNemar's p), for contrast.

The rate and paired intervals call smallfit's own functions; the bootstraps are vectorised with
numpy here (the rule is smallfit's: resample with replacement, take the ``expanded_alpha(n)``
and ``1 − expanded_alpha(n)`` percentiles with NumPy's default "linear" rule, which is
``smallfit.scoring.percentile``).

    PYTHONPATH=src .venv/bin/python benchmarks/coverage.py [--reps 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from smallfit.judge.stats import paired_t, share_interval, wilson_interval
from smallfit.scoring import (
    binomial_pmfs,
    expanded_alpha,
    order_statistic_ranks,
    ratio_t_interval,
    requests_to_bound,
    t_quantile,
)

EXAMPLE_SIZES = (10, 20, 25, 40, 50, 100)  # --limit of the examples and the bundled default run
REQUEST_SIZES = (10, 20, 36, 50, 72, 100, 200)  # timing_min_requests default 10, MAX_TIMED_REQUESTS 200
RESAMPLES = 1000
TARGET = 0.94


def share_exact(n: int, p: float, wilson: bool = False) -> float:
    """P(the interval of X/n contains p), X ~ Binomial(n, p), summed exactly: smallfit's
    (Clopper–Pearson) or Wilson's."""
    pmf = binomial_pmfs(n, p)
    covered = 0.0
    for k in range(n + 1):
        low, high = wilson_interval(k / n, n) if wilson else share_interval(k / n, n)
        if low <= p <= high:
            covered += pmf[k]
    return covered


def share_worst(n: int, wilson: bool = False, grid: int = 400) -> tuple[float, float]:
    """(lowest coverage, the share where it happens) over true shares 0.01 .. 0.99."""
    bounds = [wilson_interval(k / n, n) if wilson else share_interval(k / n, n) for k in range(n + 1)]
    worst = (1.0, 0.0)
    for i in range(1, grid):
        p = 0.01 + 0.98 * i / grid
        pmf = binomial_pmfs(n, p)
        cov = sum(pmf[k] for k, (lo, hi) in enumerate(bounds) if lo <= p <= hi)
        worst = min(worst, (cov, p))
    return worst


def order_statistic_exact(n: int, q: float) -> float | None:
    """P(x_(l) <= ξ_q <= x_(u)) for a continuous distribution: P(l <= B <= u - 1), B ~ Bin(n, q);
    None when the interval is open above (the verdict is then uncertain)."""
    low, high = order_statistic_ranks(n, q)
    if high is None:
        return None
    pmf = binomial_pmfs(n, q)
    return sum(pmf[b] for b in range((low or 0), high))


def _boot_bounds(stats: np.ndarray, n: int, expanded: bool = True) -> tuple[np.ndarray, np.ndarray]:
    tail = expanded_alpha(n) if expanded else 0.025
    return np.percentile(stats, 100 * tail, axis=1), np.percentile(stats, 100 * (1 - tail), axis=1)


def bootstrap_mean_coverage(rng: np.random.Generator, n: int, reps: int, draw: object, truth: float) -> float:
    """Expanded percentile bootstrap of a mean of ``n`` draws, ``reps`` times."""
    hits = 0
    for _ in range(reps):
        x = draw(rng, n)  # type: ignore[operator]
        idx = rng.integers(0, n, size=(RESAMPLES, n))
        means = x[idx].mean(axis=1)[None, :]
        low, high = _boot_bounds(means, n)
        hits += int(low[0] <= truth <= high[0])
    return hits / reps


def partial_credit(rng: np.random.Generator, n: int) -> np.ndarray:
    """Token-F1-like scores: 0 with 0.3, 1 with 0.4, else Beta(2, 2); mean 0.3 · 0 + 0.4 + 0.3 · 0.5 = 0.55."""
    u = rng.random(n)
    return np.where(u < 0.3, 0.0, np.where(u < 0.7, 1.0, rng.beta(2, 2, n)))


def percentile_sim(rng: np.random.Generator, n: int, q: float, reps: int) -> tuple[float | None, float]:
    """Simulated coverage of the order-statistic interval and of the old percentile bootstrap
    on lognormal latencies (median 0.2 s, sigma 0.5)."""
    truth = 0.2 * math.exp(0.5 * _norm_ppf(q))
    low_r, high_r = order_statistic_ranks(n, q)
    os_hits = boot_hits = 0
    for _ in range(reps):
        x = np.sort(0.2 * np.exp(0.5 * rng.standard_normal(n)))
        if high_r is not None:
            lo = x[low_r - 1] if low_r else 0.0
            os_hits += int(lo <= truth <= x[high_r - 1])
        idx = rng.integers(0, n, size=(200, n))
        boot = np.percentile(x[idx], 100 * q, axis=1)
        boot_hits += int(np.percentile(boot, 2.5) <= truth <= np.percentile(boot, 97.5))
    return (os_hits / reps if high_r is not None else None), boot_hits / reps


def _norm_ppf(q: float) -> float:
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < q else (lo, mid)
    return (lo + hi) / 2


def rate_coverage(rng: np.random.Generator, n: int, reps: int, sigma: float) -> float:
    """smallfit's rate interval (:func:`smallfit.scoring.ratio_t_interval`, delta-method t) of
    sum(tokens) / sum(seconds) over requests: 31 tokens per request, decode seconds lognormal
    (median 0.5 s, log-sd ``sigma``); the true rate is 31 / E[seconds]. Vectorised over
    ``reps`` data sets; the first few are checked against smallfit's own function."""
    truth = 31 / (0.5 * math.exp(sigma**2 / 2))
    secs = 0.5 * np.exp(sigma * rng.standard_normal((reps, n)))
    rate = 31 * n / secs.sum(axis=1)
    resid = 31 - rate[:, None] * secs
    se = np.sqrt((resid**2).sum(axis=1) / (n * (n - 1))) / secs.mean(axis=1)
    half = t_quantile(0.975, n - 1) * se
    for i in range(3):
        interval = ratio_t_interval([31.0] * n, secs[i].tolist())
        assert interval is not None and abs(interval[1] - (rate[i] - half[i])) < 1e-9 * rate[i]
    return float(((rate - half <= truth) & (truth <= rate + half)).mean())


def rate_bootstrap_coverage(rng: np.random.Generator, n: int, reps: int, sigma: float) -> float:
    """The expanded percentile bootstrap of the rate, used before (for contrast)."""
    truth = 31 / (0.5 * math.exp(sigma**2 / 2))
    hits = 0
    for _ in range(reps):
        secs = 0.5 * np.exp(sigma * rng.standard_normal(n))
        idx = rng.integers(0, n, size=(RESAMPLES, n))
        low, high = _boot_bounds((31 * n / secs[idx].sum(axis=1))[None, :], n)
        hits += int(low[0] <= truth <= high[0])
    return hits / reps


def paired_truth(rng: np.random.Generator) -> float:
    """E[b − a] for the continuous pairs of :func:`paired_pairs`, from two million draws."""
    big = rng.random(2_000_000)
    a_big = np.where(big < 0.3, 0.0, np.where(big < 0.7, 1.0, rng.beta(2, 2, big.size)))
    return float((np.clip(a_big + 0.05 + 0.15 * rng.standard_normal(big.size), 0, 1) - a_big).mean())


def paired_pairs(rng: np.random.Generator, n: int, binary: bool) -> tuple[np.ndarray, np.ndarray]:
    """Binary: a ~ Bernoulli(0.6); b agrees with a 80% of the time, else a fresh Bernoulli(0.7).
    Continuous: a ~ partial credit, b = clip(a + N(0.05, 0.15), 0, 1)."""
    if binary:
        a = (rng.random(n) < 0.6).astype(float)
        return a, np.where(rng.random(n) < 0.8, a, (rng.random(n) < 0.7).astype(float))
    a = partial_credit(rng, n)
    return a, np.clip(a + 0.05 + 0.15 * rng.standard_normal(n), 0, 1)


def paired_coverage(rng: np.random.Generator, n: int, reps: int, truth: float) -> float:
    """smallfit's paired comparison of per-example partial-credit scores: the paired t interval of
    the mean difference (:func:`smallfit.judge.stats.paired_t`), vectorised over ``reps`` data
    sets; the first few are checked against smallfit's own function."""
    pairs = [paired_pairs(rng, n, binary=False) for _ in range(reps)]
    d = np.array([b - a for a, b in pairs])
    mean = d.mean(axis=1)
    half = t_quantile(0.975, n - 1) * d.std(axis=1, ddof=1) / math.sqrt(n)
    for i in range(3):
        _, low, _, _ = paired_t(d[i].tolist())
        assert abs(low - (mean[i] - half[i])) < 1e-12
    return float(((mean - half <= truth) & (truth <= mean + half)).mean())


def paired_bootstrap_coverage(rng: np.random.Generator, n: int, reps: int, binary: bool, truth: float) -> float:
    """The paired expanded percentile bootstrap of mean(b − a), for contrast: used before for
    partial credit, never for 0/1 scores (McNemar's exact test gives their p-value instead)."""
    hits = 0
    for _ in range(reps):
        a, b = paired_pairs(rng, n, binary)
        d = b - a
        idx = rng.integers(0, n, size=(RESAMPLES, n))
        low, high = _boot_bounds(d[idx].mean(axis=1)[None, :], n)
        hits += int(low[0] <= truth <= high[0])
    return hits / reps


def _mark(cov: float | None) -> str:
    if cov is None:
        return "open above: verdict uncertain"
    return "ok" if cov >= TARGET else "BELOW 94%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=1000, help="simulated data sets per cell (bootstraps)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    worst: list[float] = []

    def row(name: str, n: int, setting: str, cov: float | None, note: str = "") -> None:
        if cov is not None:
            worst.append(cov)
        shown = "-" if cov is None else f"{100 * cov:.1f}%"
        print(f"{name:<34} {n:>4}  {setting:<28} {shown:>7}  {_mark(cov)}{note}")

    print(f"{'interval':<34} {'n':>4}  {'true value':<28} {'cover':>7}  verdict")
    for n in EXAMPLE_SIZES:
        for p in (0.5, 0.7, 0.8, 0.9):
            row("Clopper-Pearson (acc, exact)", n, f"share {p}", share_exact(n, p))
        cov, at = share_worst(n)
        row("Clopper-Pearson (acc, exact)", n, f"worst share, at {at:.3f}", cov)
        cov, at = share_worst(n, wilson=True)
        print(f"{'  [Wilson, used before]':<34} {n:>4}  {f'worst share, at {at:.3f}':<28} {100 * cov:>6.1f}%  "
              f"{_mark(cov)}")
    for n in EXAMPLE_SIZES:
        row("expanded bootstrap of a mean", n, "partial credit, mean 0.55",
            bootstrap_mean_coverage(rng, n, args.reps, partial_credit, 0.55))
    for q, label in ((0.5, "p50"), (0.9, "p90"), (0.95, "p95"), (0.99, "p99")):
        for n in REQUEST_SIZES:
            row(f"order statistic {label} (exact)", n, "any continuous", order_statistic_exact(n, q))
    for q, label in ((0.5, "p50"), (0.95, "p95")):
        for n in (10, 25, 50, 72, 100):
            sim, boot = percentile_sim(rng, n, q, max(200, args.reps // 2))
            row(f"order statistic {label} (simulated)", n, "lognormal latency", sim,
                f"   [old percentile bootstrap: {100 * boot:.1f}%]")
    for sigma, cv in ((0.1, 0.10), (0.3, 0.31), (0.45, 0.47)):
        for n in REQUEST_SIZES:
            cov = rate_coverage(rng, n, 20 * args.reps, sigma)
            row("delta-method t of a rate", n, f"decode tok/s, CV {cv:.2f}", cov,
                f"   [old expanded bootstrap: {100 * rate_bootstrap_coverage(rng, n, args.reps // 2, sigma):.1f}%]"
                if n in (10, 36, 72) else "")
    for n in (10, 20, 36, 72, 200):
        stress = rate_coverage(rng, n, 20 * args.reps, 0.6)
        print(f"{'  [stress: rate, CV 0.66]':<34} {n:>4}  {'lognormal sigma 0.6':<28} {100 * stress:>6.1f}%  "
              f"{'ok' if stress >= TARGET else 'below 94%: a spread beyond measured runs (see note)'}")
    truth = paired_truth(rng)
    for n in EXAMPLE_SIZES:
        row("paired t, partial credit", n, f"diff {truth:+.3f}", paired_coverage(rng, n, 20 * args.reps, truth),
            f"   [old paired bootstrap: {100 * paired_bootstrap_coverage(rng, n, args.reps // 2, False, truth):.1f}%]")
    for n in (10, 25, 50):
        cov = paired_bootstrap_coverage(rng, n, args.reps // 2, True, 0.2 * (0.7 - 0.6))
        print(f"{'  [paired bootstrap, 0/1: not used]':<34} {n:>4}  {'diff +0.02, 80% agree':<28} {100 * cov:>6.1f}%  "
              "why compare gives McNemar's exact p and no interval for 0/1 scores")
    print("\nrequests that bound a percentile from above at 95%: "
          + ", ".join(f"p{round(100 * q)} {requests_to_bound(q)}" for q in (0.5, 0.9, 0.95, 0.99)))
    print(f"lowest coverage of a closed interval: {100 * min(worst):.1f}% (target {100 * TARGET:.0f}%); "
          f"{args.reps} simulated data sets per bootstrap cell (Monte Carlo s.e. about "
          f"{100 * math.sqrt(0.95 * 0.05 / args.reps):.1f} points), {20 * args.reps} per rate and paired t cell "
          f"({100 * math.sqrt(0.95 * 0.05 / (20 * args.reps)):.2f} points); {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
