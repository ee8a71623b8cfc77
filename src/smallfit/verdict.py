"""Budget verdicts: each candidate's results checked against the declared budget.

Verdicts are ``pass``, ``fail``, ``error`` (the candidate or one of its tasks failed to run) and
``none`` (no budget was declared). The record already carries a place for a confidence interval
(``low``/``high``) so that an ``uncertain`` verdict can be added without changing its shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from smallfit.budget import Check

PASS, FAIL, ERROR, NONE, UNCERTAIN = "pass", "fail", "error", "none", "uncertain"


@dataclass(frozen=True)
class Row:
    """One candidate x task outcome, as the verdict sees it."""

    candidate: str
    task: str
    metrics: Mapping[str, float | None]
    error: str | None = None


@dataclass(frozen=True)
class CheckResult:
    """A check applied to one row: the measured value and whether it met the threshold."""

    check: str
    task: str
    metric: str
    value: float | None
    passed: bool
    reason: str = ""
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class CandidateVerdict:
    """The overall verdict for one candidate and every check behind it."""

    candidate: str
    verdict: str
    checks: list[CheckResult] = field(default_factory=list)


def _applies(check: Check, row: Row) -> bool:
    return (check.task is None or check.task == row.task) and check.metric in row.metrics


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
            results.append(CheckResult(str(check), row.task, check.metric, value, check.passes(value)))
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
            verdict = PASS if all(res.passed for res in results) else FAIL
        out[cand] = CandidateVerdict(cand, verdict, results)
    return out


def smallest_passing(verdicts: Mapping[str, CandidateVerdict], sizes: Mapping[str, float | None]) -> str | None:
    """The passing candidate with the smallest model size on disk, or None if none passes."""
    passing = [c for c, v in verdicts.items() if v.verdict == PASS and sizes.get(c) is not None]
    if not passing:
        return None
    return min(passing, key=lambda c: (sizes[c] or 0.0, c))
