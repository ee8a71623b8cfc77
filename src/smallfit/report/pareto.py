"""Pareto frontiers of a run: per task, which candidates no other beats on both of two figures."""

from __future__ import annotations

from dataclasses import dataclass

from smallfit.errors import SmallfitError
from smallfit.judge.verdict import dominators
from smallfit.metrics import METRICS, QUALITY_METRICS
from smallfit.results import ResultRow, RunResults

QUALITY = "quality"  # an axis name: each task's main quality metric


@dataclass(frozen=True)
class Point:
    """A candidate on the plane; ``dominated_by`` names the candidates that beat it on both axes."""

    candidate: str
    x: float
    y: float
    dominated_by: tuple[str, ...]

    @property
    def dominated(self) -> bool:
        """True when another candidate is at least as good on both axes and better on one."""
        return bool(self.dominated_by)


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


def task_frontier(results: RunResults, task: str, x: str, y: str) -> Frontier | None:
    """The frontier of one task, or None when no candidate of it has both figures."""
    rows = [r for r in results.rows if r.task == task]
    xm, ym = _axis(x, rows), _axis(y, rows)
    if xm is None or ym is None:
        return None
    have, missing = [], {}
    for r in rows:
        xv, yv = r.metrics.get(xm), r.metrics.get(ym)
        if r.error:
            missing[r.candidate] = f"failed: {r.error}"
        elif xv is None or yv is None:
            missing[r.candidate] = f"{xm if xv is None else ym} not measured"
        else:
            have.append((r.candidate, xv, yv))
    if not have:
        return None
    doms = dominators([(xv, yv) for _, xv, yv in have], METRICS[xm].higher_is_better, METRICS[ym].higher_is_better)
    points = [Point(c, xv, yv, tuple(have[j][0] for j in d)) for (c, xv, yv), d in zip(have, doms, strict=True)]
    return Frontier(task, xm, ym, points, missing)


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
    out = [f for t in ([task] if task else tasks) if (f := task_frontier(results, t, x, y)) is not None]
    if not out:
        where = f"task {task!r}" if task else "any task"
        have = sorted({m for r in results.rows if task in (None, r.task) for m, v in r.metrics.items()
                       if v is not None and m in METRICS})
        raise SmallfitError(f"run {results.run['id']} has no candidate with both {x} and {y} on {where}; "
                            f"figures it has: {', '.join(have) or 'none (every candidate failed)'}")
    return out
