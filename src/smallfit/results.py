"""Read a run back from the store: rows per candidate x task, verdicts, and the stable JSON export."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from smallfit.judge.budget import parse_budget
from smallfit.judge.evidence import (
    Interval,
    quality_interval,
    stored_interval,
    timing_intervals,
    timings_from_rows,
)
from smallfit.judge.verdict import CandidateVerdict, Row, judge, smallest_passing
from smallfit.metrics import QUALITY_METRICS
from smallfit.records import TaskInfo
from smallfit.store import Store, run_tasks


@dataclass(frozen=True)
class ResultRow:
    """One candidate x task in the export."""

    candidate: str
    task: str
    metrics: dict[str, float | None]
    verdict: str
    error: str | None
    info: TaskInfo = field(default_factory=TaskInfo)  # how the task was run and measured
    node: str | None = None
    """The node that ran this job (``local:HOST``, or a Ray node ``IP/ID``); None before jobs were stored."""
    hardware: str | None = None
    """That node's hardware class (:func:`smallfit.jobs.hardware_id`)."""


Scores = list[tuple[tuple[str, str], dict[str, float]]]  # ((sample id, prompt), scores) in index order


@dataclass(frozen=True)
class RunResults:
    """Everything a report needs about one run, read from the store only."""

    run: dict[str, Any]
    candidates: list[dict[str, Any]]
    rows: list[ResultRow]
    verdicts: dict[str, CandidateVerdict]
    budget: list[str]
    smallest_passing: str | None
    probes: list[ResultRow] = field(default_factory=list)  # probe:<name> rows, outside the verdict
    scores: dict[tuple[str, str], Scores] = field(default_factory=dict)
    """(candidate, task) -> per-example scores, for comparisons paired by example."""
    hardware: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Hardware class -> ``{"fingerprint", "nodes", "candidates"}``: where the run's jobs ran."""
    smallest_by_hardware: dict[str, str | None] = field(default_factory=dict)
    """With several hardware classes: each class's smallest candidate that passes (then
    ``smallest_passing`` is None: a size is compared only among figures from one machine)."""

    def remote(self) -> bool:
        """Some job ran on a node other than this machine (a cluster)."""
        return any(not n.startswith("local:") for h in self.hardware.values() for n in h["nodes"])


def collect(store: Store, run_id: str | None = None) -> RunResults:
    """Assemble a run's results; a candidate x task that never finished carries an error."""
    run = dict(store.run(run_id))
    run_id = str(run["id"])
    budget = stored_budget(run)
    candidates = [dict(c) for c in store.candidates(run_id)]
    outcomes = {(t["candidate"], t["task"]): t for t in store.task_results(run_id)}
    checks = parse_budget(budget) if budget else []
    base_rows: list[Row] = []
    infos: list[TaskInfo] = []
    for cand in candidates:
        for task in run_tasks(store.run(run_id)).values():
            outcome = outcomes.get((cand["name"], task))
            if outcome is None:
                error: str | None = f"not finished; continue with: smallfit run --resume {run_id}"
                metrics: dict[str, float | None] = {}
                info = TaskInfo()
            else:
                error = outcome["error"] if outcome["status"] == "error" else None
                metrics = store.metrics(run_id, cand["name"], task)
                info = TaskInfo.from_dict(json.loads(outcome["info_json"] or "{}"))
            wanted = {c.metric for c in checks if c.task in (None, task)} if error is None else set()
            intervals = (_intervals(store, run_id, cand["name"], task, metrics, wanted, info)
                         if wanted else {})
            base_rows.append(Row(cand["name"], task, metrics, error, intervals))
            infos.append(info)
    pairs = list(zip(base_rows, infos, strict=True))
    task_pairs = [(r, i) for r, i in pairs if not r.task.startswith("probe:")]
    verdicts = judge(checks, [r for r, _ in task_pairs])
    placed = _placements(store, run_id)
    rows = [ResultRow(r.candidate, r.task, dict(r.metrics), verdicts[r.candidate].verdict, r.error, info,
                      *placed.get((r.candidate, r.task), (None, None, None))[:2]) for r, info in task_pairs]
    probes = [ResultRow(r.candidate, r.task, dict(r.metrics), verdicts[r.candidate].verdict, r.error, info,
                        *placed.get((r.candidate, r.task), (None, None, None))[:2])
              for r, info in pairs if r.task.startswith("probe:")]
    sizes = {c["name"]: c["model_size_bytes"] for c in candidates}
    hardware = _hardware(placed)
    by_hardware = {hw: smallest_passing({c: v for c, v in verdicts.items() if c in group["candidates"]}, sizes)
                   for hw, group in hardware.items()} if len(hardware) > 1 else {}
    best = smallest_passing(verdicts, sizes) if len(hardware) < 2 else None
    return RunResults(run, candidates, rows, verdicts, budget, best, probes, stored_scores(store, run_id), hardware,
                      by_hardware)


def _placements(store: Store, run_id: str) -> dict[tuple[str, str], tuple[str, str, str]]:
    """(candidate, task) -> (node, hardware class, fingerprint JSON) of each job that ran."""
    rows = store.conn.execute("SELECT candidate, task, node, hardware_id, hardware_json FROM jobs WHERE run_id = ?"
                              " AND hardware_id IS NOT NULL", (run_id,)).fetchall()
    return {(r["candidate"], r["task"]): (r["node"], r["hardware_id"], r["hardware_json"]) for r in rows}


def _hardware(placed: dict[tuple[str, str], tuple[str, str, str]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for (cand, _), (node, hw, fp) in placed.items():
        group = out.setdefault(hw, {"fingerprint": json.loads(fp or "{}"), "nodes": [], "candidates": []})
        for key, value in (("nodes", node), ("candidates", cand)):
            if value not in group[key]:
                group[key].append(value)
    return out


def stored_scores(store: Store, run_id: str) -> dict[tuple[str, str], Scores]:
    """Each candidate x task's per-example scores, keyed by (sample id, prompt), in index order."""
    out: dict[tuple[str, str], Scores] = {}
    for r in store.samples(run_id):
        out.setdefault((r["candidate"], r["task"]), []).append(((r["sample_id"], r["prompt"]),
                                                                json.loads(r["scores_json"] or "{}")))
    return out


def stored_budget(run: dict[str, Any]) -> list[str]:
    """The run's budget as stored, read as plain JSON: a stored spec is never validated again
    (that would resolve its model references against today's files)."""
    budget = json.loads(run["spec_json"]).get("budget") or []
    return [budget] if isinstance(budget, str) else [str(b) for b in budget]


def _intervals(store: Store, run_id: str, candidate: str, task: str, metrics: dict[str, float | None],
               wanted: set[str], info: TaskInfo) -> dict[str, Interval]:
    """Intervals of the figures the budget checks on this row: the ones stored with them, or for
    a run stored before that, made from its stored samples and timings."""
    if info.intervals:
        with_n = {**metrics, "n_samples": float(info.n_samples or 0)}
        found = {m: stored_interval(m, with_n, info.intervals[m]) for m in wanted if m in info.intervals}
        return {m: iv for m, iv in found.items() if iv is not None}
    n_samples = info.n_samples
    out: dict[str, Interval] = {}
    quality = [m for m in wanted if m in QUALITY_METRICS and metrics.get(m) is not None]
    if quality:
        n = store.sample_count(run_id, candidate, task) or n_samples
        for m in quality:
            interval = quality_interval(m, metrics, n)
            if interval is not None:
                out[m] = interval
    timed = sorted(m for m in wanted if metrics.get(m) is not None)
    if timed:
        out.update(timing_intervals(timings_from_rows(store.timings(run_id, candidate, task)), timed))
    return out


def to_json(results: RunResults) -> str:
    """The stable export: a list of ``{candidate, task, metrics, verdict, error, checks, labels, noisy,
    node, hardware_id}`` objects; ``labels`` says which figures were measured and which estimated,
    and from what; ``node`` and ``hardware_id`` where the job ran (null before jobs were stored)."""
    out = []
    for r in [*results.rows, *results.probes]:
        checks = [asdict(c) for c in results.verdicts[r.candidate].checks if c.task in (r.task, "*")]
        out.append({"run_id": results.run["id"], "candidate": r.candidate, "task": r.task,
                    "metrics": r.metrics, "verdict": r.verdict, "error": r.error, "checks": checks,
                    "labels": r.info.labels, "noisy": r.info.noisy, "node": r.node, "hardware_id": r.hardware})
    return json.dumps(out, indent=2)
