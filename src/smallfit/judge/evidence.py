"""Confidence intervals of stored figures, for verdicts: from the samples and the raw timings.

- ``acc``, ``acc_norm``, ``exact_match`` (shares of n examples): the Clopper–Pearson (exact)
  interval, which covers at least 95% at every n (Wilson's dips to about 92%).
- Other quality metrics: the stored 95% bootstrap interval (``<metric>_ci_low/_ci_high``), else
  ``value ± 1.96 stderr`` when only a standard error was stored (runs made before the intervals).
- p50/p90/p95/p99 of TTFT, TPOT and latency: a distribution-free order-statistic interval over
  the requests (open above where too few requests bound the percentile: p95 under 72).
- Decode, prefill and input rates: an expanded percentile bootstrap over the requests.
- ITL percentiles, memory, size, load time, energy, cost and KL: no interval (point checks).

New runs store each interval when they are measured (:func:`smallfit.metrics.timing_intervals`);
runs stored before that get the same intervals computed from their stored timings on read.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from smallfit.judge.stats import SHARE_INTERVAL, Z95, share_interval
from smallfit.metrics import PERCENTILE_CI_KEYS, RATE_CI_KEYS, efficiency_from_timings, quantile_of, timed_requests
from smallfit.records import RequestTiming
from smallfit.scoring import requests_to_bound

SHARE_METRICS = ("acc", "acc_norm", "exact_match")
TIMING_METRICS = (*PERCENTILE_CI_KEYS, *RATE_CI_KEYS)
ORDER_STATISTIC = "order statistic (requests)"
RATE_INTERVAL = "delta-method t (requests)"  # "bootstrap (requests)" in runs stored before
OPEN_ABOVE = ", open above"


@dataclass(frozen=True)
class Interval:
    """A 95% interval of a figure, over ``n`` examples or requests (``unit``), and how it was made."""

    low: float
    high: float  # math.inf where too few requests bound a percentile from above (open)
    n: int
    method: str  # "clopper-pearson" ("wilson" in runs stored before), "bootstrap" (stored), "normal"
    #              (value ± 1.96 s.e.), "delta-method t (requests)" ("bootstrap (requests)"
    #              before), "order statistic (requests)"[", open above"]
    unit: str  # "examples" or "requests": what more of would narrow it
    bound_n: int | None = None
    """Percentiles: the fewest requests whose order statistics bound it from above at 95%."""

    @property
    def open_above(self) -> bool:
        """No finite upper bound: too few requests for this percentile."""
        return math.isinf(self.high)

    def se_toward(self, value: float, threshold: float) -> float:
        """The standard error the interval implies on the threshold's side of ``value``: that
        side's half-width over 1.96 (an exact or bootstrap interval need not be symmetric)."""
        side = self.high - value if threshold >= value else value - self.low
        return max(0.0, side) / Z95


def interval_methods(metrics: Mapping[str, float | None]) -> dict[str, str]:
    """How each stored interval of a task's metrics was made, recorded with the task (TaskInfo)."""
    out: dict[str, str] = {}
    for key, value in metrics.items():
        if not key.endswith("_ci_low") or value is None:
            continue
        metric = key.removesuffix("_ci_low")
        if metric in PERCENTILE_CI_KEYS:
            out[metric] = ORDER_STATISTIC + (OPEN_ABOVE if metrics.get(f"{metric}_ci_high") is None else "")
        else:
            out[metric] = (RATE_INTERVAL if metric in RATE_CI_KEYS
                           else SHARE_INTERVAL if metric in SHARE_METRICS else "bootstrap (examples)")
    return out


def stored_interval(metric: str, metrics: Mapping[str, float | None], method: str) -> Interval | None:
    """The interval stored with a figure when it was measured: the one every reader uses. A
    percentile's interval whose method says ``open above`` has ``high = inf``."""
    value, low, high = metrics.get(metric), metrics.get(f"{metric}_ci_low"), metrics.get(f"{metric}_ci_high")
    if high is None and method.endswith(OPEN_ABOVE):
        high = math.inf
    if value is None or low is None or high is None:
        return None
    requests = "(requests)" in method
    n = metrics.get("timed_requests") if requests else metrics.get("n_samples")
    q = quantile_of(metric)
    return Interval(min(low, value), max(high, value), int(n or 0), method, "requests" if requests else "examples",
                    requests_to_bound(q) if q is not None else None)


def quality_interval(metric: str, metrics: Mapping[str, float | None], n: int | None) -> Interval | None:
    """The interval of a quality metric over ``n`` examples for a run stored before intervals
    were stored once (see :func:`stored_interval`), or None when there is nothing to build one from."""
    value = metrics.get(metric)
    if value is None or not n:
        return None
    if metric in SHARE_METRICS and 0.0 <= value <= 1.0:
        low, high = share_interval(value, n)
        return Interval(low, high, n, SHARE_INTERVAL, "examples")
    low_v, high_v = metrics.get(f"{metric}_ci_low"), metrics.get(f"{metric}_ci_high")
    if low_v is not None and high_v is not None:
        return Interval(min(low_v, value), max(high_v, value), n, "bootstrap", "examples")
    se = metrics.get(f"{metric}_stderr")
    if se is not None:
        return Interval(value - Z95 * se, value + Z95 * se, n, "normal", "examples")
    return None


def timing_intervals(timings: Sequence[RequestTiming], names: Sequence[str]) -> dict[str, Interval]:
    """Intervals of the timing figures ``names`` from the raw requests, for runs stored before
    intervals were stored once: the very rule new runs store (:func:`smallfit.metrics.timing_intervals`)."""
    gen = timed_requests(timings)
    if not any(m in TIMING_METRICS for m in names) or not gen:
        return {}
    figures = efficiency_from_timings(gen)
    methods = interval_methods(figures)
    found = {m: stored_interval(m, figures, methods[m]) for m in names if m in TIMING_METRICS and m in methods}
    return {m: iv for m, iv in found.items() if iv is not None}


def timings_from_rows(rows: Sequence[sqlite3.Row]) -> list[RequestTiming]:
    """Stored ``timings`` rows back as records (token times are not needed for the figures)."""
    return [RequestTiming(r["idx"], r["phase"], r["n_prompt_tokens"], r["n_output_tokens"], r["ttft_s"],
                          r["latency_s"]) for r in rows]
