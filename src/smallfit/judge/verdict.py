"""Budget verdicts with confidence intervals, and the Pareto frontier of two figures.

A check with an interval passes when the whole 95% interval is on the right side of the
threshold, fails when the whole interval is on the wrong side, and is ``uncertain`` otherwise,
with about how many more examples (or requests) would decide it with 80% power (if the true
value is the one measured). A percentile with too few requests to bound it from above has an
open interval: an upper-bound check on it is ``uncertain`` until the requests reach the count
that bounds it (72 for a p95). A figure without an interval (memory, size, load time, energy,
cost, ITL, KL: single measurements or point figures) is a plain pass or fail.

A candidate's verdict is ``error`` (it or one of its tasks failed to run), ``none`` (no budget),
``fail`` (a check failed), ``uncertain`` (none failed, some undecided) or ``pass`` (every check
passed with confidence).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from smallfit.judge.budget import Check
from smallfit.judge.evidence import Interval
from smallfit.judge.stats import more_needed

PASS, FAIL, ERROR, NONE, UNCERTAIN = "pass", "fail", "error", "none", "uncertain"


@dataclass(frozen=True)
class Row:
    """One candidate x task outcome, as the verdict sees it."""

    candidate: str
    task: str
    metrics: Mapping[str, float | None]
    error: str | None = None
    intervals: Mapping[str, Interval] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckResult:
    """A check applied to one row: the measured value, its interval, and the outcome.

    ``passed`` is true only for a pass with confidence; ``outcome`` is ``pass``, ``fail`` or
    ``uncertain``. ``low``/``high`` bound the 95% interval over ``n`` examples or requests
    (both None for a single measurement; ``high`` alone None for a percentile too few requests
    bound from above); ``needed`` is about how many more would decide an uncertain check with
    80% power (for an open percentile: how many more reach the count that bounds it).
    """

    check: str
    task: str
    metric: str
    value: float | None
    passed: bool
    reason: str = ""
    low: float | None = None
    high: float | None = None
    outcome: str = ""
    n: int | None = None
    needed: int | None = None
    method: str | None = None
    unit: str | None = None

    def __post_init__(self) -> None:
        if not self.outcome:
            object.__setattr__(self, "outcome", PASS if self.passed else FAIL)


@dataclass(frozen=True)
class CandidateVerdict:
    """The overall verdict for one candidate and every check behind it."""

    candidate: str
    verdict: str
    checks: list[CheckResult] = field(default_factory=list)


def _applies(check: Check, row: Row) -> bool:
    return (check.task is None or check.task == row.task) and check.metric in row.metrics


def apply_check(check: Check, task: str, value: float, interval: Interval | None) -> CheckResult:
    """One check on one figure: plain without an interval, else by where the interval lies."""
    if interval is None:
        return CheckResult(str(check), task, check.metric, value, check.passes(value))
    ok_low, ok_high = check.passes(interval.low), check.passes(interval.high)
    needed: int | None = None
    if ok_low and ok_high:
        outcome, reason = PASS, ""
    elif not ok_low and not ok_high:
        outcome, reason = FAIL, "the whole interval misses"
    elif interval.open_above and not ok_high and interval.bound_n is not None:
        outcome, needed = UNCERTAIN, max(1, interval.bound_n - interval.n)
        reason = (f"{interval.n} requests cannot bound this percentile from above; it takes at least "
                  f"{interval.bound_n} ({needed} more)")
    else:
        outcome = UNCERTAIN
        needed = more_needed(interval.n, interval.se_toward(value, check.threshold), value, check.threshold)
        reason = (f"about {needed} more {interval.unit} would decide it with 80% power" if needed is not None
                  else "the value sits on the threshold")
    high = None if interval.open_above else interval.high
    return CheckResult(str(check), task, check.metric, value, outcome == PASS, reason, interval.low,
                       high, outcome, interval.n, needed, interval.method, interval.unit)


def check_row(checks: Sequence[Check], row: Row) -> list[CheckResult]:
    """Apply every check that concerns this row's task and metrics."""
    results = []
    for check in checks:
        if not _applies(check, row):
            continue
        value = row.metrics.get(check.metric)
        if value is None:
            results.append(CheckResult(str(check), row.task, check.metric, None, False, "not measured"))
        else:
            results.append(apply_check(check, row.task, value, row.intervals.get(check.metric)))
    return results


def judge(checks: Sequence[Check], rows: Sequence[Row]) -> dict[str, CandidateVerdict]:
    """Verdict per candidate: ``error`` if any of its rows failed, else ``pass`` only if every
    applicable check passed, and a check that applies to none of its rows fails as not measured."""
    out: dict[str, CandidateVerdict] = {}
    for cand in dict.fromkeys(r.candidate for r in rows):
        mine = [r for r in rows if r.candidate == cand]
        results = [res for r in mine if r.error is None for res in check_row(checks, r)]
        if any(r.error for r in mine):
            verdict = ERROR
        elif not checks:
            verdict = NONE
        else:
            for check in checks:
                if not any(res.check == str(check) for res in results):
                    results.append(CheckResult(str(check), check.task or "*", check.metric, None, False,
                                               "no task of this candidate reports it"))
            outcomes = {res.outcome for res in results}
            verdict = FAIL if FAIL in outcomes else UNCERTAIN if UNCERTAIN in outcomes else PASS
        out[cand] = CandidateVerdict(cand, verdict, results)
    return out


def smallest_passing(verdicts: Mapping[str, CandidateVerdict], sizes: Mapping[str, float | None]) -> str | None:
    """The candidate that passes with confidence with the smallest model size on disk, or None."""
    passing = [c for c, v in verdicts.items() if v.verdict == PASS and sizes.get(c) is not None]
    if not passing:
        return None
    return min(passing, key=lambda c: (sizes[c] or 0.0, c))


def dominators(points: Sequence[tuple[float, float]], x_higher_better: bool,
               y_higher_better: bool) -> list[list[int]]:
    """For each (x, y) point, the indices of the points that dominate it: at least as good on
    both axes and strictly better on one (Pareto). Points with none form the frontier; equal
    points do not dominate each other."""
    sx, sy = (1.0 if x_higher_better else -1.0), (1.0 if y_higher_better else -1.0)
    scored = [(sx * x, sy * y) for x, y in points]
    return [[j for j, (ox, oy) in enumerate(scored) if ox >= x and oy >= y and (ox > x or oy > y)]
            for x, y in scored]


Span = tuple[float, float, float]  # (low, value, high) of a figure; low = high = value without an interval


def dominators_beyond(points: Sequence[tuple[Span, Span]], x_higher_better: bool,
                      y_higher_better: bool) -> list[list[int]]:
    """For each point with its intervals ``((x_low, x, x_high), (y_low, y, y_high))``, the indices
    of the points that dominate it beyond the intervals: on each axis the other's worse end is at
    least as good as this one's better end, strictly better on one. A figure without an interval
    is its own two ends (compared as a point); an open end (``±inf``) reaches as far as it can, so
    a candidate whose interval is open on its worse side dominates nothing on that axis."""
    def ends(span: Span, higher_better: bool) -> tuple[float, float]:
        lo, value, hi = span
        lo, hi = min(lo, value), max(hi, value)
        return (lo, hi) if higher_better else (-hi, -lo)  # (worse, better), larger is better

    boxes = [(ends(x, x_higher_better), ends(y, y_higher_better)) for x, y in points]
    out = []
    for (px, py) in boxes:
        out.append([j for j, (ox, oy) in enumerate(boxes)
                    if ox[0] >= px[1] and oy[0] >= py[1] and (ox[0] > px[1] or oy[0] > py[1])])
    return out


def dominated(points: Sequence[tuple[float, float]], x_higher_better: bool, y_higher_better: bool) -> list[bool]:
    """For each point, whether another point dominates it (see :func:`dominators`)."""
    return [bool(d) for d in dominators(points, x_higher_better, y_higher_better)]
