"""How long a cascade replay takes: every figure (quality, share deferred, p50 and p95 of the
per-request seconds, energy and cost per request) at 1,000 thresholds over 1,000 examples, with
no new inference. Target: under a second. The examples are synthetic (a small model right 60% of
the time, its signal higher when right; a large one right 85%): the time depends on the sizes only.

    .venv/bin/python benchmarks/cascade_replay.py [--examples 1000] [--thresholds 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from smallfit.cascade.replay import Arrays, replay


def synthetic(n: int, seed: int = 0) -> Arrays:
    """Two stages over ``n`` examples, with seconds, joules and dollars per request."""
    rng = np.random.default_rng(seed)
    small = (rng.random(n) < 0.6).astype(np.float64)
    large = (rng.random(n) < 0.85).astype(np.float64)
    signal = np.clip(0.5 + 0.3 * (small - 0.5) + rng.normal(0, 0.2, n), 0, 1)
    lat = [rng.gamma(4.0, 0.05, n), rng.gamma(4.0, 0.15, n)]
    return Arrays([small, large], [signal], lat, [x * 20.0 for x in lat], [x * 1e-5 for x in lat])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--thresholds", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    arrays = synthetic(args.examples)
    thresholds = np.linspace(0.0, 1.0, args.thresholds)
    replay(arrays, thresholds[:10])  # numpy's first call pays its imports
    times = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        figures = replay(arrays, thresholds)
        times.append(time.perf_counter() - t0)
    print(f"replay of {args.thresholds} thresholds x {args.examples} examples: "
          f"median {statistics.median(times):.3f} s, max {max(times):.3f} s over {args.rounds} rounds "
          "(target: under 1 s)")
    mid = args.thresholds // 2
    print(f"at threshold {thresholds[mid]:.3f}: quality {figures.quality[mid]:.3f}, deferred "
          f"{figures.deferred_share[mid]:.1%}, latency p50 {figures.latency_s[mid] * 1000:.0f} ms, "
          f"p95 {figures.latency_s_p95[mid] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
