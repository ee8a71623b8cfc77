"""A budget for a cascade: the cheapest threshold that meets every check with confidence.

A check passes "with confidence" as the verdict's do, when its whole 95% interval does: the
quality, the share deferred and the mean energy and cost per request by a paired bootstrap over
examples, a latency percentile by its distribution-free order-statistic interval (open above
when too few requests bound it), peak memory as the pair's single figure. The threshold is chosen
on the calibration split and judged again on the held-out split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from smallfit.cascade.curves import resample_weights
from smallfit.cascade.replay import Arrays, per_request
from smallfit.errors import SmallfitError
from smallfit.judge.budget import Check, parse_budget
from smallfit.metrics import quantile_of
from smallfit.scoring import order_statistic_ranks

Array = NDArray[np.float64]
MEANS = ("deferred_share", "energy_j_per_request", "cost_usd_per_request", "seconds_per_request")
PERCENTILES = ("latency_s", "latency_s_p90", "latency_s_p95", "latency_s_p99")


def parse(text: str, metric: str, task: str) -> list[Check]:
    """The budget's checks; a one-line error for a figure a cascade does not have."""
    checks = parse_budget(text)
    allowed = (metric, *MEANS[:3], *PERCENTILES, "peak_rss_bytes")
    for c in checks:
        if c.task not in (None, task):
            raise SmallfitError(f"budget check {c} is for task {c.task}, but the cascade runs on {task}; "
                                "drop the task prefix or pick that task with --task")
        if c.metric not in allowed:
            raise SmallfitError(f"a cascade's budget cannot check {c.metric}: use {', '.join(allowed)}")
    return checks


@dataclass(frozen=True)
class Bounds:
    """Per threshold row: each check's figure and 95% interval."""

    value: dict[str, Array]
    low: dict[str, Array]
    high: dict[str, Array]


def bounds(a: Arrays, thresholds: Array, metric: str, peak_bytes: float | None, wanted: set[str],
           seed: int = 0) -> Bounds:
    """The figures ``wanted`` and their intervals at every threshold row, on ``a``'s examples."""
    per = per_request(a, thresholds)
    n = a.n
    weights = resample_weights(n, seed=seed)
    means: dict[str, Array | None] = {metric: per.quality, "deferred_share": (per.answered_by > 0).astype(np.float64),
                                      "energy_j_per_request": per.energy_j, "cost_usd_per_request": per.cost_usd,
                                      "seconds_per_request": per.latency_s}
    value: dict[str, Array] = {}
    low: dict[str, Array] = {}
    high: dict[str, Array] = {}
    rows = per.quality.shape[0]
    for name in wanted:
        if name in means:
            x = means[name]
            if x is None:
                raise SmallfitError(f"{name} was not measured for every model of the cascade (no energy reading); "
                                    "drop it from the budget or use --cost seconds")
            reps = x @ weights.T / n  # rows x (1 + resamples)
            value[name] = reps[:, 0]
            low[name], high[name] = np.quantile(reps[:, 1:], [0.025, 0.975], axis=1)
        elif name in PERCENTILES:
            q = quantile_of(name) or 0.5
            value[name] = np.quantile(per.latency_s, q, axis=1)
            ordered = np.sort(per.latency_s, axis=1)
            lo, hi = order_statistic_ranks(n, q)
            low[name] = ordered[:, lo - 1] if lo is not None else np.full(rows, -np.inf)
            high[name] = ordered[:, hi - 1] if hi is not None else np.full(rows, np.inf)
        elif name == "peak_rss_bytes":
            if peak_bytes is None:
                raise SmallfitError("peak_rss_bytes was not measured for every model of the cascade; drop it from "
                                    "the budget")
            value[name] = low[name] = high[name] = np.full(rows, peak_bytes)
    return Bounds(value, low, high)


def confident(checks: list[Check], b: Bounds) -> NDArray[np.bool_]:
    """Rows where every check's whole interval passes."""
    ok = np.ones(len(next(iter(b.value.values()))), dtype=bool)
    for c in checks:
        bound = b.high[c.metric] if c.op in ("<", "<=") else b.low[c.metric]
        ok &= np.vectorize(c.passes, otypes=[bool])(bound)
    return ok


def shortfall(checks: list[Check], b: Bounds) -> Array:
    """Per row, the largest relative amount by which a check's confident end misses it (0: passes)."""
    worst = np.zeros(len(next(iter(b.value.values()))))
    for c in checks:
        upper = c.op in ("<", "<=")
        bound = b.high[c.metric] if upper else b.low[c.metric]
        scale = abs(c.threshold) or 1.0
        miss = (bound - c.threshold) / scale if upper else (c.threshold - bound) / scale
        worst = np.maximum(worst, np.maximum(miss, 0.0))
    return worst


@dataclass(frozen=True)
class Choice:
    """The row picked on the calibration split, and whether it met the budget there."""

    row: int
    met: bool
    """It met every check with confidence on the calibration split (else it is the closest)."""
    candidates: int
    """How many threshold rows met the budget with confidence on the calibration split."""


def choose(checks: list[Check], b: Bounds, cost: Array, quality: Array) -> Choice:
    """The cheapest row meeting every check with confidence (ties: the better quality), else the
    row that misses by the least."""
    ok = confident(checks, b)
    if ok.any():
        rows = np.nonzero(ok)[0]
        best = int(rows[np.lexsort((-quality[rows], cost[rows]))[0]])  # the cheapest, then the best quality
        return Choice(best, True, int(ok.sum()))
    miss = shortfall(checks, b)
    best = int(np.lexsort((cost, miss))[0])  # the least miss, then the cheapest
    return Choice(best, False, 0)
