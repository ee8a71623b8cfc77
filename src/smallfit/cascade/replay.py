"""Replay a cascade at many thresholds at once, with no new inference.

Stage ``j`` answers an example that reaches it unless its signal is below the stage's threshold
(``signal < t_j``), in which case the example goes on to stage ``j + 1``; the last stage always
answers. A request's seconds (energy, cost) are the sum over the stages it reached: the small
model's on every request, the larger one's added on each deferred request. Everything is numpy
over a (thresholds x examples) grid, so a thousand thresholds over a thousand examples take a
fraction of a second (``benchmarks/cascade_replay.py`` prints the time).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]
Mask = NDArray[np.bool_]


@dataclass(frozen=True)
class Arrays:
    """What a replay needs, per stage and example: quality, the deferral signal (all stages but
    the last) and per-request costs (seconds always; joules and dollars where measured)."""

    quality: list[Array]
    signal: list[Array]
    latency_s: list[Array]
    energy_j: list[Array] | None = None
    cost_usd: list[Array] | None = None

    @property
    def n(self) -> int:
        """Examples."""
        return len(self.quality[0])

    def take(self, index: NDArray[np.int64]) -> Arrays:
        """The same arrays over a subset (or a resample) of the examples."""
        def sub(xs: list[Array] | None) -> list[Array] | None:
            return None if xs is None else [x[index] for x in xs]

        return Arrays([q[index] for q in self.quality], [s[index] for s in self.signal],
                      [t[index] for t in self.latency_s], sub(self.energy_j), sub(self.cost_usd))


@dataclass(frozen=True)
class PerRequest:
    """Per threshold row and example (T x n): the answer's quality, the request's seconds, energy
    and cost, and which stage answered it."""

    quality: Array
    latency_s: Array
    energy_j: Array | None
    cost_usd: Array | None
    answered_by: NDArray[np.int64]


def per_request(a: Arrays, thresholds: Array) -> PerRequest:
    """Each example's outcome at each row of ``thresholds`` (T x stages-1, or a 1-D array of T
    thresholds for two stages)."""
    th = np.asarray(thresholds, dtype=np.float64)
    if th.ndim == 1:
        th = th[:, None]
    rows, n = th.shape[0], a.n
    reach = np.ones((rows, n), dtype=bool)
    quality = np.zeros((rows, n))
    latency = np.zeros((rows, n))
    energy = np.zeros((rows, n)) if a.energy_j is not None else None
    cost = np.zeros((rows, n)) if a.cost_usd is not None else None
    answered = np.full((rows, n), len(a.quality) - 1, dtype=np.int64)
    for j in range(len(a.quality)):
        latency += reach * a.latency_s[j]
        if energy is not None and a.energy_j is not None:
            energy += reach * a.energy_j[j]
        if cost is not None and a.cost_usd is not None:
            cost += reach * a.cost_usd[j]
        if j == len(a.quality) - 1:
            quality += reach * a.quality[j]
            break
        onward = reach & (a.signal[j][None, :] < th[:, j : j + 1])
        here = reach & ~onward
        quality += here * a.quality[j]
        answered[here] = j
        reach = onward
    return PerRequest(quality, latency, energy, cost, answered)


@dataclass(frozen=True)
class Figures:
    """Per threshold row: the cascade's figures over the examples."""

    thresholds: Array
    quality: Array
    deferred_share: Array
    """Share of requests the first stage passed on (to any later stage)."""
    latency_s: Array
    """Median of the per-request seconds."""
    latency_s_p95: Array
    """95th percentile of the per-request seconds (not a sum of percentiles)."""
    energy_j_per_request: Array | None
    cost_usd_per_request: Array | None
    seconds_per_request: Array
    """Mean per-request seconds."""

    def cost(self, kind: str) -> Array | None:
        """Mean cost per request in ``seconds``, ``joules`` or ``dollars``."""
        return {"seconds": self.seconds_per_request, "joules": self.energy_j_per_request,
                "dollars": self.cost_usd_per_request}[kind]


def replay(a: Arrays, thresholds: Array) -> Figures:
    """The cascade's figures at every row of ``thresholds``."""
    th = np.asarray(thresholds, dtype=np.float64)
    per = per_request(a, th)
    lat = np.quantile(per.latency_s, [0.5, 0.95], axis=1)  # linear interpolation, as scoring.percentile
    return Figures(
        thresholds=th, quality=per.quality.mean(axis=1), deferred_share=(per.answered_by > 0).mean(axis=1),
        latency_s=lat[0], latency_s_p95=lat[1],
        energy_j_per_request=None if per.energy_j is None else per.energy_j.mean(axis=1),
        cost_usd_per_request=None if per.cost_usd is None else per.cost_usd.mean(axis=1),
        seconds_per_request=per.latency_s.mean(axis=1))


def all_thresholds(signal: Array) -> Array:
    """Every distinct threshold of a signal: each value it takes (``signal < value`` defers the
    examples below it; the lowest defers none) and +inf (defers all)."""
    return np.append(np.unique(signal), np.inf)
