"""Read a run back from the store: rows per candidate x task, verdicts, and the stable JSON export."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from smallfit.budget import parse_budget
from smallfit.spec import RunSpec
from smallfit.store import Store, run_tasks
from smallfit.verdict import CandidateVerdict, Row, judge, smallest_passing


@dataclass(frozen=True)
class ResultRow:
    """One candidate x task in the export."""

    candidate: str
    task: str
    metrics: dict[str, float | None]
    verdict: str
    error: str | None


@dataclass(frozen=True)
class RunResults:
    """Everything a report needs about one run, read from the store only."""

    run: dict[str, Any]
    candidates: list[dict[str, Any]]
    rows: list[ResultRow]
    verdicts: dict[str, CandidateVerdict]
    budget: list[str]
    smallest_passing: str | None


def collect(store: Store, run_id: str | None = None) -> RunResults:
    """Assemble a run's results; a candidate x task that never finished carries an error."""
    run = dict(store.run(run_id))
    run_id = str(run["id"])
    spec = RunSpec.model_validate_json(run["spec_json"])
    candidates = [dict(c) for c in store.candidates(run_id)]
    outcomes = {(t["candidate"], t["task"]): t for t in store.task_results(run_id)}
    base_rows = []
    for cand in candidates:
        for task in run_tasks(store.run(run_id)).values():
            outcome = outcomes.get((cand["name"], task))
            if outcome is None:
                error: str | None = f"not finished; continue with: smallfit run --resume {run_id}"
                metrics: dict[str, float | None] = {}
            else:
                error = outcome["error"] if outcome["status"] == "error" else None
                metrics = store.metrics(run_id, cand["name"], task)
            base_rows.append(Row(cand["name"], task, metrics, error))
    checks = parse_budget(spec.budget) if spec.budget else []
    verdicts = judge(checks, base_rows)
    rows = [ResultRow(r.candidate, r.task, dict(r.metrics), verdicts[r.candidate].verdict, r.error)
            for r in base_rows]
    sizes = {c["name"]: c["model_size_bytes"] for c in candidates}
    return RunResults(run, candidates, rows, verdicts, spec.budget, smallest_passing(verdicts, sizes))


def to_json(results: RunResults) -> str:
    """The stable export: a list of ``{candidate, task, metrics, verdict, error, checks}`` objects."""
    out = []
    for r in results.rows:
        checks = [asdict(c) for c in results.verdicts[r.candidate].checks if c.task in (r.task, "*")]
        out.append({"run_id": results.run["id"], "candidate": r.candidate, "task": r.task,
                    "metrics": r.metrics, "verdict": r.verdict, "error": r.error, "checks": checks})
    return json.dumps(out, indent=2)
