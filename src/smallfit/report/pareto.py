"""Pareto frontiers of a run: per task, which candidates no other beats on both of two figures.

Two notions, named apart:

- **dominated** (``Point.dominated_by``): another candidate is better beyond the 95% intervals:
  on each axis its interval's worse end is at least as good as this one's better end, strictly
  better on one (:func:`smallfit.judge.verdict.dominators_beyond`). Figures without an interval
  (memory, size, load time) compare as points; an interval open above (a p95 from too few
  requests) reaches to infinity. The frontier is every candidate not dominated in this sense.
- **dominated by the point estimates** (``Point.dominated_by_estimates``): another candidate's
  values are at least as good on both axes and better on one. A frontier candidate dominated only
  by the estimates is *not distinguishable* from those candidates (``Point.indistinct_from``):
  the estimates order them, the intervals do not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from smallfit.errors import SmallfitError
from smallfit.judge.evidence import quality_interval, stored_interval
from smallfit.judge.verdict import Span, dominators, dominators_beyond
from smallfit.metrics import METRICS, QUALITY_METRICS
from smallfit.results import ResultRow, RunResults

QUALITY = "quality"  # an axis name: each task's main quality metric


@dataclass(frozen=True)
class Point:
    """A candidate on the plane with the 95% interval of each figure (None: the figure has none,
    it is a single measurement; ``x_high``/``y_high`` may be ``inf``: open above)."""

    candidate: str
    x: float
    y: float
    dominated_by: tuple[str, ...]
    """Candidates better on both axes beyond the intervals (see the module docstring)."""
    dominated_by_estimates: tuple[str, ...] = ()
    """Candidates better on both axes by the point estimates alone."""
    x_low: float | None = None
    x_high: float | None = None
    y_low: float | None = None
    y_high: float | None = None

    @property
    def dominated(self) -> bool:
        """True when another candidate is better on both axes beyond the intervals."""
        return bool(self.dominated_by)

    @property
    def indistinct_from(self) -> tuple[str, ...]:
        """Candidates that beat this one by the point estimates but not beyond the intervals."""
        return tuple(c for c in self.dominated_by_estimates if c not in self.dominated_by)


@dataclass(frozen=True)
class Frontier:
    """One task's frontier of ``y`` against ``x``; ``missing`` lists candidates lacking a figure."""

    task: str
    x: str
    y: str
    points: list[Point]
    missing: dict[str, str]  # candidate -> why it is not on the plot


def main_quality(metrics: dict[str, float | None]) -> str | None:
    """A task's main quality metric: the first quality figure it reports."""
    return next((m for m in metrics if m in QUALITY_METRICS and metrics[m] is not None), None)


def _axis(name: str, rows: list[ResultRow]) -> str | None:
    if name != QUALITY:
        return name
    return next((q for r in rows if (q := main_quality(r.metrics))), None)


def task_frontier(results: RunResults, task: str, x: str, y: str, hardware: str | None = None) -> Frontier | None:
    """The frontier of one task (on one hardware class, when given), or None when no candidate of
    it has both figures."""
    rows = [r for r in results.rows if r.task == task and hardware in (None, r.hardware)]
    xm, ym = _axis(x, rows), _axis(y, rows)
    if xm is None or ym is None:
        return None
    have: list[tuple[str, Span, Span]] = []
    missing: dict[str, str] = {}
    for r in rows:
        xv, yv = r.metrics.get(xm), r.metrics.get(ym)
        if r.error:
            missing[r.candidate] = f"failed: {r.error}"
        elif xv is None or yv is None:
            missing[r.candidate] = f"{xm if xv is None else ym} not measured"
        else:
            have.append((r.candidate, figure_span(r, xm), figure_span(r, ym)))
    if not have:
        return None
    hib = METRICS[xm].higher_is_better, METRICS[ym].higher_is_better
    beyond = dominators_beyond([(xs, ys) for _, xs, ys in have], *hib)
    plain = dominators([(xs[1], ys[1]) for _, xs, ys in have], *hib)
    names = [c for c, _, _ in have]
    points = [Point(c, xs[1], ys[1], tuple(names[j] for j in b), tuple(names[j] for j in d),
                    *_ends(xs), *_ends(ys))
              for (c, xs, ys), b, d in zip(have, beyond, plain, strict=True)]
    return Frontier(f"{task} on {hardware}" if hardware else task, xm, ym, points, missing)


def figure_span(row: ResultRow, metric: str) -> Span:
    """``(low, value, high)`` of a figure: its stored 95% interval (the one the verdict uses), for
    an older run's quality figure the one made from its examples, else ``(value, value, value)``."""
    value = row.metrics[metric]
    assert value is not None
    method = row.info.intervals.get(metric)
    if method is not None:
        interval = stored_interval(metric, {**row.metrics, "n_samples": float(row.info.n_samples or 0)}, method)
    elif metric in QUALITY_METRICS:
        interval = quality_interval(metric, row.metrics, row.info.n_samples)
    else:
        interval = None
    return (value, value, value) if interval is None else (interval.low, value, interval.high)


def _ends(span: Span) -> tuple[float | None, float | None]:
    low, value, high = span
    return (None, None) if low == value == high and not math.isinf(high) else (low, high)


def _check_axis(name: str) -> None:
    if name != QUALITY and name not in METRICS:
        raise SmallfitError(f"unknown metric {name!r} for an axis: use 'quality' or a metric from 'smallfit metrics' "
                            "(e.g. latency_s_p95, peak_rss_bytes, model_size_bytes, decode_tok_s, acc)")


def frontiers(results: RunResults, x: str, y: str, task: str | None = None) -> list[Frontier]:
    """Every task's frontier (or one task's); a clear error when the run lacks the figures."""
    _check_axis(x)
    _check_axis(y)
    tasks = list(dict.fromkeys(r.task for r in results.rows))
    if task is not None and task not in tasks:
        raise SmallfitError(f"run {results.run['id']} has no task {task!r}; its tasks: {', '.join(tasks)}")
    # figures from different machines are never on one frontier: one per task and hardware class
    classes: list[str | None] = list(results.hardware) if len(results.hardware) > 1 else [None]
    out = [f for t in ([task] if task else tasks) for hw in classes
           if (f := task_frontier(results, t, x, y, hw)) is not None]
    if not out:
        where = f"task {task!r}" if task else "any task"
        have = sorted({m for r in results.rows if task in (None, r.task) for m, v in r.metrics.items()
                       if v is not None and m in METRICS})
        raise SmallfitError(f"run {results.run['id']} has no candidate with both {x} and {y} on {where}; "
                            f"figures it has: {', '.join(have) or 'none (every candidate failed)'}")
    return out
