"""Trade-offs against the best-quality candidate, and the noise flags of a run's measurements.

A quality change is tested as ``smallfit compare`` tests it (:func:`smallfit.report.compare.quality_test`):
paired by example when both candidates scored the same examples (exact McNemar for 0/1 scores,
paired t otherwise), an unpaired z test that says why when they did not; each line names
the test that ran.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from smallfit.errors import SmallfitError
from smallfit.metrics import METRICS
from smallfit.report.compare import quality_test
from smallfit.report.pareto import main_quality
from smallfit.report.table import fmt_metric
from smallfit.results import ResultRow, RunResults, Scores

PER_TASK = ("latency_s_p95", "decode_tok_s")
PER_CANDIDATE = ("peak_rss_bytes", "model_size_bytes", "load_s")


@dataclass
class TradeOff:
    """What a candidate gains and gives away against the reference (best-quality) candidate."""

    candidate: str
    reference: str | None
    gains: list[str] = field(default_factory=list)
    costs: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def _ok_rows(results: RunResults, candidate: str) -> list[ResultRow]:
    return [r for r in results.rows if r.candidate == candidate and r.error is None]


def reference_candidate(results: RunResults) -> str | None:
    """The candidate with the best main quality on the most tasks (the first on a tie)."""
    wins: dict[str, int] = {}
    for task in dict.fromkeys(r.task for r in results.rows):
        rows = [r for r in results.rows if r.task == task and r.error is None]
        metric = next((m for r in rows if (m := main_quality(r.metrics))), None)
        scored = [(r.metrics[metric], r.candidate) for r in rows if metric and r.metrics.get(metric) is not None]
        if not scored or metric is None:
            continue
        sign = 1.0 if METRICS[metric].higher_is_better else -1.0
        best = max(scored, key=lambda s: sign * float(s[0] or 0.0))[1]
        wins[best] = wins.get(best, 0) + 1
    order = [c["name"] for c in results.candidates]
    return max(wins, key=lambda c: (wins[c], -order.index(c))) if wins else None


def _quality_change(metric: str, mine: ResultRow, ref: ResultRow, scores: tuple[Scores, Scores],
                    out: TradeOff) -> None:
    """``mine`` against the reference on ``metric``, with the test that ran (the reference is side A)."""
    a, b = ref.metrics.get(metric), mine.metrics.get(metric)
    if a is None or b is None:
        out.missing.append(f"{mine.task}: {metric} not measured")
        return
    if b == a:
        return
    text = f"{mine.task}: {metric} {b:.3f} vs {a:.3f} ({b - a:+.3f}"
    try:
        _, _, p, test = quality_test(metric, a, b, ref, mine, scores[1], scores[0])
    except SmallfitError:
        p, test = None, "untested: no example in common"
    if p is not None:
        text += ", p < 0.001" if p < 0.001 else f", p = {p:.3f}"
    text += f"; {test.replace(' in A', f' in {ref.candidate}').replace(' in B', f' in {mine.candidate}')})"
    better = (b > a) == METRICS[metric].higher_is_better
    (out.gains if better else out.costs).append(text)


def _ratio_change(label: str, metric: str, mine: float | None, ref: float | None, out: TradeOff) -> None:
    if mine is None or ref is None:
        out.missing.append(f"{label} not measured")
        return
    if mine <= 0 or ref <= 0 or abs(mine / ref - 1) < 0.02:
        return
    higher = mine > ref
    factor = max(mine, ref) / min(mine, ref)
    better = higher == METRICS[metric].higher_is_better
    word = "higher" if higher else "lower"
    text = f"{factor:.1f}× {word} {label} ({fmt_metric(metric, mine)} vs {fmt_metric(metric, ref)})"
    (out.gains if better else out.costs).append(text)


def tradeoffs(results: RunResults) -> list[TradeOff]:
    """One trade-off per candidate that ran, against the best-quality candidate."""
    ref = reference_candidate(results)
    ref_rows = {r.task: r for r in _ok_rows(results, ref)} if ref else {}
    out = []
    for cand in results.candidates:
        name = cand["name"]
        rows = _ok_rows(results, name)
        t = TradeOff(name, ref)
        if not rows or ref is None or name == ref:
            out.append(t)
            continue
        for r in rows:
            ref_row = ref_rows.get(r.task)
            metric = main_quality(r.metrics)
            if ref_row is None or metric is None:
                continue
            ref_m = ref_row.metrics
            pair = results.scores.get((name, r.task), []), results.scores.get((ref_row.candidate, r.task), [])
            _quality_change(metric, r, ref_row, pair, t)
            for m in PER_TASK:
                _ratio_change(f"{m} on {r.task}", m, r.metrics.get(m), ref_m.get(m), t)
        for m in PER_CANDIDATE:
            mine = [v for r in rows if (v := r.metrics.get(m)) is not None]
            theirs = [v for r in ref_rows.values() if (v := r.metrics.get(m)) is not None]
            _ratio_change(m, m, max(mine) if mine else None, max(theirs) if theirs else None, t)
        out.append(t)
    return out


def _load1(raw: Any) -> float | None:
    data = json.loads(raw) if isinstance(raw, str) else raw
    if isinstance(data, dict) and data.get("loadavg"):
        return float(data["loadavg"][0])
    return None


def noise_flags(results: RunResults) -> list[str]:
    """Reasons to distrust some figures: a busy machine, a peak memory that could not be reset,
    percentiles from few requests."""
    flags = []
    run = results.run
    hw = json.loads(run.get("hardware_json") or "{}")
    cpus = hw.get("usable_cpus") or hw.get("logical_cpus")
    threads = run.get("threads")
    where = [("the run started", run.get("load_before_json")), ("the run ended", run.get("load_after_json"))]
    where += [(f"{c['name']} ended", c.get("load_after_json")) for c in results.candidates]
    for label, raw in where:
        load = _load1(raw)
        if load is not None and cpus and load > cpus:
            flags.append(f"Busy machine when {label}: 1-minute load {load:.2f} on {cpus} CPUs with {threads} "
                         "threads for smallfit; latency figures may be inflated.")
    for r in results.rows:
        if r.info.peak_rss_since_start:
            flags.append(f"{r.candidate} · {r.task}: peak memory is the peak since the process started "
                         f"({r.info.peak_rss_source}).")
    few = sorted({len_ for r in results.rows if (len_ := int(r.info.latency_pass_prompts))
                  and len_ < 20})
    if few:
        flags.append(f"p95 latencies of scoring tasks come from {', '.join(map(str, few))} requests: the p95 of so few "
                     "is close to their maximum; raise latency_prompts for a steadier figure.")
    return flags
