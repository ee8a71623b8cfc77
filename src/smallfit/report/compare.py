"""``smallfit compare``: each figure's change between two runs (or two candidates) and its significance.

- Quality means: difference with the combined standard error ``√(se_a² + se_b²)``, a z test and
  its two-sided p-value (the runs are treated as independent samples).
- Latency and throughput figures: a bootstrap of the difference over each run's raw requests
  (1000 resamples of each, seed 0): its 95% interval and a two-sided bootstrap p-value.
- Memory, size and load time are single measurements: the change is shown, untested.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.table import Table
from rich.text import Text

from smallfit.errors import SmallfitError
from smallfit.judge.evidence import TIMING_METRICS, timings_from_rows
from smallfit.judge.stats import Z95, bootstrap_difference, difference_z_test
from smallfit.metrics import (
    EFFICIENCY_METRICS,
    METRICS,
    QUALITY_METRICS,
    efficiency_from_timings,
    timed_requests,
)
from smallfit.records import RequestTiming
from smallfit.report.table import fmt_metric
from smallfit.results import ResultRow, collect
from smallfit.store import Store

Z_TEST = "z test, combined s.e."
BOOTSTRAP = "bootstrap, raw requests"
UNTESTED = "single measurement: untested"


@dataclass(frozen=True)
class Change:
    """One figure of one candidate x task in run A and run B, ``b − a`` with its test."""

    candidate: str  # "A" or "A → B" when the candidates differ
    task: str
    metric: str
    a: float
    b: float
    low: float | None
    high: float | None
    p: float | None
    test: str

    @property
    def diff(self) -> float:
        """``b − a``."""
        return self.b - self.a


def _statistic(metric: str) -> Callable[[Sequence[RequestTiming]], float]:
    def stat(rows: Sequence[RequestTiming]) -> float:
        value = efficiency_from_timings(rows, resamples=0).get(metric)
        return math.nan if value is None else value
    return stat


def _pairs(a: list[str], b: list[str], cand_a: str | None, cand_b: str | None) -> list[tuple[str, str]]:
    if cand_a or cand_b:
        x, y = cand_a or cand_b, cand_b or cand_a
        assert x is not None and y is not None
        for name, names, which in ((x, a, "A"), (y, b, "B")):
            if name not in names:
                raise SmallfitError(f"run {which} has no candidate {name!r}; its candidates: {', '.join(names)}")
        return [(x, y)]
    common = [c for c in a if c in b]
    if not common:
        raise SmallfitError("the two runs have no candidate name in common; pick one of each with "
                            "--candidate-a NAME --candidate-b NAME")
    return [(c, c) for c in common]


def _row_changes(label: str, ra: ResultRow, rb: ResultRow, ta: list[RequestTiming],
                 tb: list[RequestTiming]) -> list[Change]:
    out = []
    for m in (*QUALITY_METRICS, *EFFICIENCY_METRICS):
        a, b = ra.metrics.get(m), rb.metrics.get(m)
        if a is None or b is None:
            continue
        low = high = p = None
        if m in QUALITY_METRICS:
            se_a, se_b = ra.metrics.get(f"{m}_stderr"), rb.metrics.get(f"{m}_stderr")
            test = Z_TEST if se_a is not None and se_b is not None else "no standard error: untested"
            if se_a is not None and se_b is not None:
                _, _, p = difference_z_test(a, se_a, b, se_b)
                se = math.sqrt(se_a**2 + se_b**2)
                low, high = b - a - Z95 * se, b - a + Z95 * se
        elif m in TIMING_METRICS and len(ta) >= 2 and len(tb) >= 2:
            test = BOOTSTRAP
            _, low, high, p = bootstrap_difference(ta, tb, _statistic(m))
        else:
            test = UNTESTED
        out.append(Change(label, ra.task, m, a, b, low, high, None if p is None or math.isnan(p) else p, test))
    return out


def compare_runs(store: Store, run_a: str, run_b: str, cand_a: str | None = None,
                 cand_b: str | None = None) -> list[Change]:
    """Every figure both runs have for the matched candidates and their common tasks."""
    res_a, res_b = collect(store, run_a), collect(store, run_b)
    pairs = _pairs([c["name"] for c in res_a.candidates], [c["name"] for c in res_b.candidates], cand_a, cand_b)
    rows_a = {(r.candidate, r.task): r for r in res_a.rows if r.error is None}
    rows_b = {(r.candidate, r.task): r for r in res_b.rows if r.error is None}
    out: list[Change] = []
    for x, y in pairs:
        label = x if x == y else f"{x} → {y}"
        for (cand, task), ra in rows_a.items():
            rb = rows_b.get((y, task))
            if cand != x or rb is None:
                continue
            ta = timed_requests(timings_from_rows(store.timings(str(res_a.run["id"]), x, task)))
            tb = timed_requests(timings_from_rows(store.timings(str(res_b.run["id"]), y, task)))
            out.extend(_row_changes(label, ra, rb, ta, tb))
    if not out:
        raise SmallfitError("nothing to compare: the matched candidates have no finished task in common")
    return out


def changes_table(changes: list[Change], run_a: str, run_b: str) -> Table:
    """The comparison as a terminal table, saying which test gave each p-value."""
    table = Table(title=f"run A {run_a} → run B {run_b} (change = B − A; significant: p < 0.05)",
                  title_justify="left", header_style="bold")
    for col in ("candidate", "task", "metric", "A", "B", "change", "95% CI of change", "p", "test"):
        table.add_column(col, no_wrap=col in ("candidate", "task", "metric", "p"), min_width=10 if col == "test" else None)
    for c in changes:
        better = (c.diff > 0) == METRICS[c.metric].higher_is_better
        style = ("green" if better else "red") if c.p is not None and c.p < 0.05 and c.diff else ""
        ci = f"{_signed(c.metric, c.low)} … {_signed(c.metric, c.high)}" if c.low is not None else "-"
        p = "-" if c.p is None else ("< 0.001" if c.p < 0.001 else f"{c.p:.3f}")
        table.add_row(c.candidate, c.task, c.metric, fmt_metric(c.metric, c.a), fmt_metric(c.metric, c.b),
                      Text(_signed(c.metric, c.diff), style=style), ci, p, c.test)
    return table


def _signed(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return ("+" if value > 0 else "−" if value < 0 else "") + fmt_metric(metric, abs(value))
