"""Confidence intervals of stored figures, for verdicts: from the samples and the raw timings.

- ``acc``, ``acc_norm``, ``exact_match`` (shares of n examples): the Wilson score interval.
- Other quality metrics: the stored 95% bootstrap interval (``<metric>_ci_low/_ci_high``), else
  ``value ± 1.96 stderr`` when only a standard error was stored (runs made before the intervals).
- Latency and throughput figures: a 95% percentile bootstrap over the very requests the figure
  was computed from (those with a time to first token), recomputing it on each resample.
- Memory, size and load time are single measurements: no interval.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from smallfit.judge.stats import Z95, wilson_interval
from smallfit.metrics import efficiency_from_timings, timed_requests
from smallfit.records import RequestTiming
from smallfit.scoring import percentile

WILSON_METRICS = ("acc", "acc_norm", "exact_match")
TIMING_METRICS = ("ttft_s", "ttft_s_p95", "tpot_s", "tpot_s_p95", "latency_s", "latency_s_p95",
                  "decode_tok_s", "prefill_tok_s", "input_tok_s")


@dataclass(frozen=True)
class Interval:
    """A 95% interval of a figure, over ``n`` examples or requests (``unit``), and how it was made."""

    low: float
    high: float
    n: int
    method: str  # "wilson", "bootstrap" (stored), "normal" (value ± 1.96 s.e.), "bootstrap (requests)"
    unit: str  # "examples" or "requests": what more of would narrow it

    def se_toward(self, value: float, threshold: float) -> float:
        """The standard error the interval implies on the threshold's side of ``value``: that
        side's half-width over 1.96 (a Wilson or bootstrap interval need not be symmetric)."""
        side = self.high - value if threshold >= value else value - self.low
        return max(0.0, side) / Z95


def interval_methods(metrics: Mapping[str, float | None]) -> dict[str, str]:
    """How each stored interval of a task's metrics was made, recorded with the task (TaskInfo)."""
    out: dict[str, str] = {}
    for key, value in metrics.items():
        if not key.endswith("_ci_low") or value is None:
            continue
        metric = key.removesuffix("_ci_low")
        out[metric] = ("bootstrap (requests)" if metric in TIMING_METRICS
                       else "wilson" if metric in WILSON_METRICS else "bootstrap (examples)")
    return out


def stored_interval(metric: str, metrics: Mapping[str, float | None], method: str) -> Interval | None:
    """The interval stored with a figure when it was measured: the one every reader uses."""
    value, low, high = metrics.get(metric), metrics.get(f"{metric}_ci_low"), metrics.get(f"{metric}_ci_high")
    if value is None or low is None or high is None:
        return None
    requests = method.endswith("(requests)")
    n = metrics.get("timed_requests") if requests else metrics.get("n_samples")
    return Interval(min(low, value), max(high, value), int(n or 0), method, "requests" if requests else "examples")


def quality_interval(metric: str, metrics: Mapping[str, float | None], n: int | None) -> Interval | None:
    """The interval of a quality metric over ``n`` examples for a run stored before intervals
    were stored once (see :func:`stored_interval`), or None when there is nothing to build one from."""
    value = metrics.get(metric)
    if value is None or not n:
        return None
    if metric in WILSON_METRICS and 0.0 <= value <= 1.0:
        low, high = wilson_interval(value, n)
        return Interval(low, high, n, "wilson", "examples")
    low_v, high_v = metrics.get(f"{metric}_ci_low"), metrics.get(f"{metric}_ci_high")
    if low_v is not None and high_v is not None:
        return Interval(min(low_v, value), max(high_v, value), n, "bootstrap", "examples")
    se = metrics.get(f"{metric}_stderr")
    if se is not None:
        return Interval(value - Z95 * se, value + Z95 * se, n, "normal", "examples")
    return None


def timing_intervals(timings: Sequence[RequestTiming], names: Sequence[str],
                     resamples: int = 1000, seed: int = 0) -> dict[str, Interval]:
    """Bootstrap intervals of the latency figures ``names`` from the raw requests, for runs stored
    before intervals were stored once: the requests are resampled with replacement and every
    figure recomputed as ``efficiency_from_timings`` computes it."""
    wanted = [m for m in names if m in TIMING_METRICS]
    gen = timed_requests(timings)
    if not wanted or len(gen) < 2:
        return {}
    rng = random.Random(seed)
    draws: dict[str, list[float]] = {m: [] for m in wanted}
    for _ in range(resamples):
        figures = efficiency_from_timings([gen[rng.randrange(len(gen))] for _ in gen], resamples=0)
        for m in wanted:
            value = figures.get(m)
            if value is not None:
                draws[m].append(value)
    return {m: Interval(percentile(v, 2.5), percentile(v, 97.5), len(gen), "bootstrap (requests)", "requests")
            for m, v in draws.items() if v}


def timings_from_rows(rows: Sequence[sqlite3.Row]) -> list[RequestTiming]:
    """Stored ``timings`` rows back as records (token times are not needed for the figures)."""
    return [RequestTiming(r["idx"], r["phase"], r["n_prompt_tokens"], r["n_output_tokens"], r["ttft_s"],
                          r["latency_s"]) for r in rows]
