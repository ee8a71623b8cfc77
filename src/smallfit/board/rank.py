"""Boards: one per task hash and hardware class. Each row is a submitted candidate with its main
quality figure and p95 latency (95% intervals), peak memory, its place on the Pareto frontier
(beyond the intervals, as ``smallfit pareto``), its trust tiers and, given a budget, its outcome."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from smallfit.board.db import BoardDB
from smallfit.judge.budget import Check, parse_budget
from smallfit.judge.evidence import stored_interval
from smallfit.judge.verdict import FAIL, PASS, Span, apply_check, dominators, dominators_beyond
from smallfit.metrics import METRICS
from smallfit.report.pareto import Frontier, Point, main_quality

X_METRIC = "latency_s_p95"
SIGNED, ALLOWLISTED, REPRODUCED = "signed + recomputed", "allowlisted config", "reproduced"
ALIASES = {"p50": "latency_s", "p90": "latency_s_p90", "p95": "latency_s_p95", "p99": "latency_s_p99",
           "latency": "latency_s", "ttft": "ttft_s", "ram": "peak_rss_bytes", "memory": "peak_rss_bytes",
           "rss": "peak_rss_bytes", "size": "model_size_bytes", "decode": "decode_tok_s", "quality": "quality"}
_WORD = re.compile(r"(?i)(?<![A-Za-z0-9_:])(p50|p90|p95|p99|latency|ttft|ram|memory|rss|size|decode)(?![A-Za-z0-9_])")


def parse_filter(text: str, quality_metric: str | None) -> list[Check]:
    """A board's budget filter: the budget syntax (:mod:`smallfit.judge.budget`) with short names
    (``p95``, ``RAM``, ``ttft``, ``size``, ``decode``, ``quality`` for the board's main metric):
    ``acc >= 0.8, p95 <= 300 ms, RAM <= 2 GB``."""
    text = _WORD.sub(lambda m: ALIASES[m.group(1).lower()], text)
    if quality_metric:
        text = re.sub(r"(?i)(?<![A-Za-z0-9_])quality(?![A-Za-z0-9_])", quality_metric, text)
    return parse_budget(text)


@dataclass
class BoardRow:
    """One submitted candidate on a board."""

    submission_id: str
    candidate: str
    label: str
    created_at: float
    key_id: str
    config_sha256: str
    model_sha256: str | None
    quality: float | None
    quality_low: float | None
    quality_high: float | None
    p95_s: float | None
    p95_low_s: float | None
    p95_high_s: float | None
    """None: open above (too few requests bound the p95)."""
    peak_rss_bytes: float | None
    tiers: list[str]
    place: str = ""
    budget: str | None = None
    """pass, uncertain or fail (the verdict's rule: a check passes when its whole interval does)."""
    budget_notes: list[str] = field(default_factory=list)
    dominated_by: list[str] = field(default_factory=list)
    """Rows better on both axes beyond the intervals."""
    ahead_by_estimates: list[str] = field(default_factory=list)
    """Rows better on both axes by the point estimates alone."""
    metrics: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Board:
    """One board, ready for a page or the JSON API."""

    task_hash: str
    class_id: str
    hardware_class: str
    task: str
    quality_metric: str | None
    rows: list[BoardRow]
    hidden: int = 0
    """Rows the budget filter left out (they fail it)."""
    checks: list[str] = field(default_factory=list)


def _span(metric: str, metrics: dict[str, Any], info: dict[str, Any]) -> tuple[float | None, float | None,
                                                                              float | None]:
    value = metrics.get(metric)
    if value is None:
        return None, None, None
    method = (info.get("intervals") or {}).get(metric)
    iv = stored_interval(metric, {**metrics, "n_samples": float(info.get("n_samples") or 0)}, method) \
        if method else None
    if iv is None:
        return value, None, None
    return value, iv.low, (None if math.isinf(iv.high) else iv.high)


def _tiers(db: BoardDB, sub: Any, candidate: str, task: str, allowed: set[str]) -> list[str]:
    tiers = [SIGNED]
    if sub["config_sha256"] in allowed:
        tiers.append(ALLOWLISTED)
    if db.conn.execute("SELECT 1 FROM reproductions WHERE submission_id = ? AND candidate = ? AND task = ? "
                       "AND agreed = 1", (sub["id"], candidate, task)).fetchone():
        tiers.append(REPRODUCED)
    return tiers


def boards(db: BoardDB) -> list[dict[str, Any]]:
    """Every board: task hash, task name, hardware class, number of rows."""
    known = db.known_tasks()
    rows = db.conn.execute("SELECT task_hash, class_id, hardware_class, MIN(task) AS task, COUNT(*) AS n "
                           "FROM entries GROUP BY task_hash, class_id ORDER BY task, hardware_class").fetchall()
    return [{"task_hash": r["task_hash"], "class_id": r["class_id"], "hardware_class": r["hardware_class"],
             "task": known[r["task_hash"]]["name"] if r["task_hash"] in known else r["task"], "entries": r["n"],
             "url": f"/board/{r['task_hash']}/{r['class_id']}"} for r in rows]


def board(db: BoardDB, task_hash: str, class_id: str, budget: str | None = None) -> Board:
    """A board's rows with their frontier places and, given a budget filter, their outcomes."""
    found = db.conn.execute("SELECT e.*, s.created_at, s.key_id, s.config_sha256 FROM entries e JOIN submissions s "
                            "ON s.id = e.submission_id WHERE e.task_hash = ? AND e.class_id = ? "
                            "ORDER BY s.created_at, e.candidate", (task_hash, class_id)).fetchall()
    if not found:
        raise LookupError(f"no board for task hash {task_hash} on hardware class {class_id}; the boards are at /")
    allowed = db.allowed_configs()
    known = db.known_tasks()
    metrics_of = [json.loads(r["metrics_json"]) for r in found]
    quality = next((found_q for m in metrics_of if (found_q := main_quality(m))), None)
    rows = []
    for r, metrics in zip(found, metrics_of, strict=True):
        info = json.loads(r["info_json"])
        q = _span(quality, metrics, info) if quality else (None, None, None)
        p = _span(X_METRIC, metrics, info)
        sub = {"id": r["submission_id"], "config_sha256": r["config_sha256"]}
        rows.append(BoardRow(r["submission_id"], r["candidate"], f"{r['candidate']} · {r['submission_id'][:6]}",
                             r["created_at"], r["key_id"], r["config_sha256"], r["model_sha256"], *q, *p,
                             metrics.get("peak_rss_bytes"), _tiers(db, sub, r["candidate"], r["task"], allowed),
                             metrics=metrics, info=info))
    _places(rows, quality)
    name = known[task_hash]["name"] if task_hash in known else found[0]["task"]
    out = Board(task_hash, class_id, found[0]["hardware_class"], name, quality, rows)
    if budget:
        _filter(out, budget)
    better = METRICS[quality].higher_is_better if quality else True
    out.rows.sort(key=lambda r: (r.quality is None, -(r.quality or 0) if better else (r.quality or 0)))
    return out


def _places(rows: list[BoardRow], quality: str | None) -> None:
    have = [r for r in rows if r.quality is not None and r.p95_s is not None]
    for r in rows:
        if r not in have:
            r.place = "not on the plot: no " + (X_METRIC if r.p95_s is None else str(quality))
    if not have or quality is None:
        return
    spans = [(_row_span(r.p95_s, r.p95_low_s, r.p95_high_s, open_above=True),
              _row_span(r.quality, r.quality_low, r.quality_high, open_above=False)) for r in have]
    hib = METRICS[X_METRIC].higher_is_better, METRICS[quality].higher_is_better
    beyond = dominators_beyond(spans, *hib)
    plain = dominators([(x[1], y[1]) for x, y in spans], *hib)
    for r, b, d in zip(have, beyond, plain, strict=True):
        r.dominated_by = [have[j].label for j in b]
        r.ahead_by_estimates = [have[j].label for j in d]
        if b:
            r.place = "dominated by " + ", ".join(r.dominated_by)
        elif d:
            r.place = "not distinguishable from " + ", ".join(r.ahead_by_estimates)
        else:
            r.place = "on the frontier"


def _row_span(value: float | None, low: float | None, high: float | None, open_above: bool) -> Span:
    """(low, value, high) for the dominance test: a point without an interval is its own interval,
    a percentile with a lower end and no upper end reaches to infinity."""
    assert value is not None
    if low is None:
        return value, value, value
    return low, value, (math.inf if open_above else value) if high is None else high


def _filter(out: Board, budget: str) -> None:
    checks = parse_filter(budget, out.quality_metric)
    out.checks = [str(c) for c in checks]
    kept = []
    for r in out.rows:
        outcomes = []
        for c in checks:
            value = r.metrics.get(c.metric)
            if value is None:
                outcomes.append(FAIL)
                r.budget_notes.append(f"{c}: not measured")
                continue
            method = (r.info.get("intervals") or {}).get(c.metric)
            iv = stored_interval(c.metric, {**r.metrics, "n_samples": float(r.info.get("n_samples") or 0)}, method) \
                if method else None
            res = apply_check(c, out.task, float(value), iv)
            outcomes.append(res.outcome)
            if res.outcome != PASS:
                r.budget_notes.append(f"{c}: {res.outcome}" + (f" ({res.reason})" if res.reason else ""))
        r.budget = FAIL if FAIL in outcomes else (PASS if all(o == PASS for o in outcomes) else "uncertain")
        if r.budget == FAIL:
            out.hidden += 1
        else:
            kept.append(r)
    out.rows = kept


def frontier_of(b: Board) -> Frontier | None:
    """The board's rows as a :class:`~smallfit.report.pareto.Frontier` for the SVG scatter."""
    have = [r for r in b.rows if r.quality is not None and r.p95_s is not None]
    if not have or b.quality_metric is None:
        return None
    points = []
    for r in have:
        assert r.p95_s is not None and r.quality is not None
        x_high = math.inf if r.p95_high_s is None and r.p95_low_s is not None else r.p95_high_s
        points.append(Point(r.label, r.p95_s, r.quality, tuple(r.dominated_by), tuple(r.ahead_by_estimates),
                            r.p95_low_s, x_high,
                            r.quality_low, r.quality_high))
    return Frontier(b.task, X_METRIC, b.quality_metric, points, {})


