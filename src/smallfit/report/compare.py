"""``smallfit compare``: each figure's change between two runs (or two candidates) and its significance.

Quality figures are compared example by example when both sides scored the same examples
(matched by sample id and prompt):

- shares of 0/1 scores (acc, exact_match...): the exact McNemar test on the examples only one
  side got right (its p-value; no interval: a bootstrap of few discordant pairs undercovers);
- other means of per-example scores (f1...): the paired t interval and test of the mean of the
  per-example differences (its coverage, unlike a paired bootstrap's, holds at 10 examples:
  ``benchmarks/coverage.py``).

When the two sides share some examples but not all, the sets are stated in the test column and
the comparison is an unpaired z test with the combined standard error ``√(se_a² + se_b²)``; so
is a figure that is not a mean of per-example scores (perplexity). Two sides that scored no
example in common cannot be compared on quality: a one-line error (exit 2).

Latency and throughput figures: when both sides timed the same prompts (the same examples and
the same number of latency prompts), a bootstrap paired by prompt (the prompts resampled, with
all of each side's requests on them); otherwise an unpaired bootstrap over each side's requests.
Memory, size and load time are single measurements: the change is shown, untested.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from rich.table import Table
from rich.text import Text

from smallfit.errors import SmallfitError
from smallfit.judge.evidence import TIMING_METRICS, timings_from_rows
from smallfit.judge.stats import Z95, bootstrap_difference, difference_z_test, mcnemar_exact_p, paired_t
from smallfit.metrics import (
    EFFICIENCY_METRICS,
    METRICS,
    QUALITY_METRICS,
    efficiency_from_timings,
    timed_requests,
)
from smallfit.records import RequestTiming
from smallfit.report.table import fmt_metric
from smallfit.results import ResultRow, Scores, collect
from smallfit.scoring import expanded_alpha, percentile
from smallfit.store import Store

Z_TEST = "z test, combined s.e."
MCNEMAR = "exact McNemar, paired by example"
PAIRED_T = "paired t, by example"
BOOTSTRAP = "bootstrap, raw requests"
PAIRED_TIMING = "bootstrap paired by prompt"
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


Figures = dict[tuple[int, ...], dict[str, float | None]]


def _statistic(metric: str, memo: Figures) -> Callable[[Sequence[RequestTiming]], float]:
    """``metric`` of a set of requests. Every figure of a resample is computed once and shared by
    all the metrics tested on it (the bootstraps draw the same resamples for every metric)."""
    def stat(rows: Sequence[RequestTiming]) -> float:
        key = tuple(map(id, rows))
        figures = memo.get(key)
        if figures is None:
            figures = memo[key] = efficiency_from_timings(rows, intervals=False)
        value = figures.get(metric)
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


def _z_test(m: str, a: float, b: float, ra: ResultRow, rb: ResultRow, why: str) -> tuple[
        float | None, float | None, float | None, str]:
    se_a, se_b = ra.metrics.get(f"{m}_stderr"), rb.metrics.get(f"{m}_stderr")
    if se_a is None or se_b is None:
        return None, None, None, f"no standard error: untested ({why})"
    _, _, p = difference_z_test(a, se_a, b, se_b)
    se = math.sqrt(se_a**2 + se_b**2)
    return b - a - Z95 * se, b - a + Z95 * se, p, f"{Z_TEST}, unpaired: {why}"


def quality_test(m: str, a: float, b: float, ra: ResultRow, rb: ResultRow, sa: Scores, sb: Scores) -> tuple[
        float | None, float | None, float | None, str]:
    """(low, high, p, test) of ``b − a`` for quality metric ``m``: paired by example when both sides
    scored the same examples, else an unpaired z test that says why (see the module docstring)."""
    if not sa or not sb:
        return _z_test(m, a, b, ra, rb, "no per-example scores stored")
    keys_a, keys_b = [k for k, _ in sa], [k for k, _ in sb]
    shared = set(keys_a) & set(keys_b)
    if not shared:
        raise SmallfitError(f"{ra.task}: the two sides scored no example in common (matched by sample id and "
                            "prompt), so their quality cannot be compared; run both on the same examples "
                            "(the same --limit, or --sample with the same --seed)")
    if set(keys_a) != set(keys_b) or len(set(keys_a)) != len(keys_a) or len(set(keys_b)) != len(keys_b):
        return _z_test(m, a, b, ra, rb, f"example sets differ, {len(shared)} shared of {len(keys_a)} and "
                       f"{len(keys_b)}")
    score_a, score_b = dict(sa), dict(sb)
    if any(m not in score_a[k] or m not in score_b[k] for k in keys_a):
        return _z_test(m, a, b, ra, rb, f"{m} has no per-example score")
    xa = [score_a[k][m] for k in keys_a]
    xb = [score_b[k][m] for k in keys_a]
    if abs(sum(xa) / len(xa) - a) > 1e-9 or abs(sum(xb) / len(xb) - b) > 1e-9:
        return _z_test(m, a, b, ra, rb, f"{m} is not a mean of per-example scores")
    if all(v in (0.0, 1.0) for v in xa + xb):
        only_a = sum(1 for x, y in zip(xa, xb, strict=True) if x > y)
        only_b = sum(1 for x, y in zip(xa, xb, strict=True) if y > x)
        return None, None, mcnemar_exact_p(only_a, only_b), f"{MCNEMAR} ({len(xa)}; {only_a} right only in A, " \
            f"{only_b} only in B)"
    if len(xa) < 2:
        return _z_test(m, a, b, ra, rb, "one shared example")
    _, low, high, p = paired_t([y - x for x, y in zip(xa, xb, strict=True)])
    return low, high, p, f"{PAIRED_T} ({len(xa)} examples)"


def _prompt_groups(timings: list[RequestTiming], prompts: int) -> dict[int, list[RequestTiming]]:
    """Timed requests by the prompt they sent: request ``i`` of a phase used prompt ``i mod prompts``
    (the timing pass cycles through the prompts in order)."""
    groups: dict[int, list[RequestTiming]] = {}
    for t in timings:
        groups.setdefault(t.index % prompts, []).append(t)
    return groups


def paired_timing_bootstrap(ga: Mapping[int, list[RequestTiming]], gb: Mapping[int, list[RequestTiming]],
                            stat: Callable[[Sequence[RequestTiming]], float], resamples: int = 1000,
                            seed: int = 0) -> tuple[float, float, float, float]:
    """``stat(b) − stat(a)`` with a bootstrap paired by prompt: the shared prompts are resampled
    with replacement and each draw takes every request of both sides on them; the expanded
    percentile interval over prompts and a two-sided p-value (at least ``1 / resamples``)."""
    keys = sorted(set(ga) & set(gb))
    rng = random.Random(seed)
    diffs = []
    for _ in range(resamples):
        pick = [keys[rng.randrange(len(keys))] for _ in keys]
        diffs.append(stat([t for k in pick for t in gb[k]]) - stat([t for k in pick for t in ga[k]]))
    diffs = [d for d in diffs if not math.isnan(d)]
    tail = expanded_alpha(len(keys))
    observed = stat([t for k in keys for t in gb[k]]) - stat([t for k in keys for t in ga[k]])
    if not diffs:
        return observed, math.nan, math.nan, math.nan
    below = sum(d <= 0 for d in diffs) / len(diffs)
    above = sum(d >= 0 for d in diffs) / len(diffs)
    p = min(1.0, max(1.0 / resamples, 2 * min(below, above)))
    return observed, percentile(diffs, 100 * tail), percentile(diffs, 100 * (1 - tail)), p


def _same_prompts(ra: ResultRow, rb: ResultRow, sa: Scores, sb: Scores) -> int | None:
    """The number of prompts both sides' timed requests cycle through, when they are the same prompts."""
    prompts = ra.info.latency_pass_prompts or ra.info.n_samples or 0
    if (prompts < 2 or prompts != (rb.info.latency_pass_prompts or rb.info.n_samples or 0)
            or [k for k, _ in sa] != [k for k, _ in sb]):
        return None
    return prompts


def _row_changes(label: str, ra: ResultRow, rb: ResultRow, ta: list[RequestTiming],
                 tb: list[RequestTiming], sa: Scores, sb: Scores) -> list[Change]:
    out = []
    prompts = _same_prompts(ra, rb, sa, sb)
    ga, gb = (_prompt_groups(ta, prompts), _prompt_groups(tb, prompts)) if prompts else ({}, {})
    memo: Figures = {}
    for m in (*QUALITY_METRICS, *EFFICIENCY_METRICS):
        a, b = ra.metrics.get(m), rb.metrics.get(m)
        if a is None or b is None:
            continue
        low = high = p = None
        if m in QUALITY_METRICS:
            low, high, p, test = quality_test(m, a, b, ra, rb, sa, sb)
        elif m in TIMING_METRICS and len(set(ga) & set(gb)) >= 2:
            test = f"{PAIRED_TIMING} ({len(set(ga) & set(gb))} prompts)"
            _, low, high, p = paired_timing_bootstrap(ga, gb, _statistic(m, memo))
        elif m in TIMING_METRICS and len(ta) >= 2 and len(tb) >= 2:
            test = f"{BOOTSTRAP}, unpaired: the sides timed different prompts"
            _, low, high, p = bootstrap_difference(ta, tb, _statistic(m, memo))
        else:
            test = UNTESTED
        low, high = (None, None) if low is None or high is None or math.isnan(low) else (low, high)
        out.append(Change(label, ra.task, m, a, b, low, high, None if p is None or math.isnan(p) else p, test))
    return out


def compare_runs(store: Store, run_a: str, run_b: str, cand_a: str | None = None,
                 cand_b: str | None = None) -> list[Change]:
    """Every figure both runs have for the matched candidates and their common tasks."""
    res_a, res_b = collect(store, run_a), collect(store, run_b)
    pairs = _pairs([c["name"] for c in res_a.candidates], [c["name"] for c in res_b.candidates], cand_a, cand_b)
    rows_a = {(r.candidate, r.task): r for r in res_a.rows if r.error is None}
    rows_b = {(r.candidate, r.task): r for r in res_b.rows if r.error is None}
    scores_a, scores_b = res_a.scores, res_b.scores
    out: list[Change] = []
    for x, y in pairs:
        label = x if x == y else f"{x} → {y}"
        for (cand, task), ra in rows_a.items():
            rb = rows_b.get((y, task))
            if cand != x or rb is None:
                continue
            ta = timed_requests(timings_from_rows(store.timings(str(res_a.run["id"]), x, task)))
            tb = timed_requests(timings_from_rows(store.timings(str(res_b.run["id"]), y, task)))
            out.extend(_row_changes(label, ra, rb, ta, tb, scores_a.get((x, task), []),
                                    scores_b.get((y, task), [])))
    if not out:
        raise SmallfitError("nothing to compare: the matched candidates have no finished task in common")
    return out


def changes_table(changes: list[Change], run_a: str, run_b: str) -> Table:
    """The comparison as a terminal table, saying which test gave each p-value."""
    table = Table(title=f"run A {run_a} → run B {run_b} (change = B − A; significant: p < 0.05)",
                  title_justify="left", header_style="bold")
    for col in ("candidate", "task", "metric", "A", "B", "change", "95% CI of change", "p", "test"):
        table.add_column(col, no_wrap=col in ("candidate", "task", "metric", "p"),
                         min_width=10 if col == "test" else None)
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
