"""The deferral curve of a two-model cascade and its summary figures, as RouteLLM defines them,
with references and paired bootstrap intervals over examples.

For a signal, deferring the examples below each threshold traces quality against the share of
requests sent to the large model. References: each model alone (shares 0 and 1), a random router
(the straight line between them: expected quality ``q_small + d (q_large - q_small)`` at share d)
and the oracle (the examples where the large model gains most deferred first; its peak defers
exactly those the small model gets wrong and the large one right).

- **APGR** (average performance gap recovered): the area under the curve over the share axis
  (trapezoids), less the weak model's area, over the strong model's area less the weak model's:
  ``(AUC - q_small * span) / ((q_large - q_small) * span)``, span = the shares the curve covers
  (all of [0, 1] here). A random router scores 0.5.
- **CPT(x%)** (call-performance threshold): the share of requests sent to the large model at
  which the curve first reaches ``q_small + x (q_large - q_small)``, linear between curve points.
- **ECE** and **Brier score** of a signal read as the chance that the small model is right
  (:func:`smallfit.signals.as_probability`): ECE over ten equal-width bins,
  ``sum_b |sum_{i in b} (correct_i - conf_i)| / n``; Brier ``mean((conf_i - correct_i)^2)``.

Every figure is computed for the observed examples and for ``B`` resamples of them at once
(weights: how many times each example is drawn), so intervals are paired: both models are
resampled on the same examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from smallfit.signals import TOKEN_SIGNALS

Array = NDArray[np.float64]
RESAMPLES = 1000


def resample_weights(n: int, resamples: int = RESAMPLES, seed: int = 0) -> Array:
    """Row 0: every example once (the observed figures); rows 1..B: bootstrap draws."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    weights = np.zeros((resamples + 1, n))
    weights[0] = 1.0
    rows = np.repeat(np.arange(1, resamples + 1), n)
    np.add.at(weights, (rows, draws.ravel()), 1.0)
    return weights


@dataclass(frozen=True)
class Curve:
    """Curve points per weight row (rows x points): share sent to the large model, quality."""

    share: Array
    quality: Array
    weak: Array
    strong: Array


def curve(small: Array, large: Array, signal: Array, weights: Array) -> Curve:
    """The deferral curve of ``signal`` (defer below a threshold) for each weight row; one point
    per distinct threshold (tied signals move together)."""
    order = np.argsort(signal, kind="stable")
    s_sorted = signal[order]
    w = weights[:, order]
    total = w.sum(axis=1)
    zero = np.zeros((w.shape[0], 1))
    cum_w = np.hstack([zero, np.cumsum(w, axis=1)])
    cum_large = np.hstack([zero, np.cumsum(w * large[order], axis=1)])
    cum_small = np.hstack([zero, np.cumsum(w * small[order], axis=1)])
    # a point after k examples only where the next example's signal differs (or at either end)
    cuts = np.concatenate([[0], np.nonzero(np.diff(s_sorted) > 0)[0] + 1, [len(signal)]])
    cuts = np.unique(cuts)
    weak = cum_small[:, -1] / total
    strong = cum_large[:, -1] / total
    share = cum_w[:, cuts] / total[:, None]
    quality = (cum_large[:, cuts] + cum_small[:, -1:] - cum_small[:, cuts]) / total[:, None]
    return Curve(share, quality, weak, strong)


def oracle_curve(small: Array, large: Array, weights: Array) -> Curve:
    """The best any router can do at each share: the examples the large model gains most on first."""
    return curve(small, large, small - large, weights)


def apgr(c: Curve) -> Array:
    """RouteLLM's APGR per row; NaN where both models score the same (no gap to recover)."""
    dx = np.diff(c.share, axis=1)
    auc = (dx * (c.quality[:, 1:] + c.quality[:, :-1]) / 2).sum(axis=1)
    span = c.share[:, -1] - c.share[:, 0]
    gap = (c.strong - c.weak) * span
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.abs(gap) > 1e-12, (auc - c.weak * span) / gap, np.nan)


def cpt(c: Curve, fraction: float) -> Array:
    """RouteLLM's CPT(fraction) per row: the share of large-model calls at which the curve first
    reaches ``weak + fraction (strong - weak)``; NaN where it never does or there is no gap."""
    target = c.weak + fraction * (c.strong - c.weak)
    reached = c.quality >= target[:, None] - 1e-12
    first = np.argmax(reached, axis=1)
    rows = np.arange(len(first))
    prev = np.maximum(first - 1, 0)
    q0, q1 = c.quality[rows, prev], c.quality[rows, first]
    s0, s1 = c.share[rows, prev], c.share[rows, first]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(q1 > q0, (target - q0) / (q1 - q0), 1.0)
    out = np.where(first == 0, c.share[:, 0], s0 + frac * (s1 - s0))
    valid = reached.any(axis=1) & (c.strong - c.weak > 1e-12)
    return np.where(valid, out, np.nan)


def confidence(name: str, signal: Array) -> Array:
    """A signal read as a probability (see smallfit.signals.as_probability), vectorised."""
    if name in TOKEN_SIGNALS:
        return np.exp(np.minimum(signal, 0.0))
    return np.clip(signal, 0.0, 1.0)


def brier(conf: Array, correct: Array, weights: Array) -> Array:
    """Brier score of ``conf`` as the chance of ``correct``, per weight row."""
    out: Array = (weights @ (conf - correct) ** 2) / weights.sum(axis=1)
    return out


def ece(conf: Array, correct: Array, weights: Array, bins: int = 10) -> Array:
    """Expected calibration error over ``bins`` equal-width bins of [0, 1], per weight row."""
    which = np.minimum((conf * bins).astype(np.int64), bins - 1)
    onehot = np.zeros((len(conf), bins))
    onehot[np.arange(len(conf)), which] = 1.0
    gaps = (weights * (correct - conf)) @ onehot  # rows x bins: sum of (correct - conf) per bin
    out: Array = np.abs(gaps).sum(axis=1) / weights.sum(axis=1)
    return out


@dataclass(frozen=True)
class Estimate:
    """A figure on the observed examples with its 95% bootstrap percentile interval (None where
    the figure is undefined, or too many resamples leave it undefined)."""

    value: float | None
    low: float | None
    high: float | None


def estimate(rows: Array) -> Estimate:
    """Row 0 observed, rows 1.. resampled (NaN where undefined)."""
    value = float(rows[0]) if np.isfinite(rows[0]) else None
    rest = rows[1:][np.isfinite(rows[1:])]
    if value is None or len(rest) < 0.9 * (len(rows) - 1) or not len(rest):
        return Estimate(value, None, None)
    low, high = np.quantile(rest, [0.025, 0.975])
    return Estimate(value, float(low), float(high))
