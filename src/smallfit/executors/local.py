"""The default executor: every job on this machine, one candidate at a time, each candidate's
pending tasks in one worker process (its model loads once for all of them). One job runs at a
time, so no two timed jobs share the machine."""

from __future__ import annotations

import json
import time
from typing import Any

from smallfit import jobs
from smallfit.contract import TaskStarted
from smallfit.errors import SmallfitError
from smallfit.executors.base import Event, Outcome, RunContext, local_node
from smallfit.executors.process import WorkerProcess
from smallfit.plan import PlannedCandidate
from smallfit.probes.load import machine_load
from smallfit.spec import RunSpec


class LocalExecutor:
    """Runs jobs here, in order (see the module docstring)."""

    name = "local"

    def describe(self) -> dict[str, Any]:
        """Nothing to remember but the name."""
        return {"executor": self.name}

    def check(self, spec: RunSpec) -> None:
        """A hardware class is for a cluster's nodes: asked of this machine, it is a one-line error."""
        classes = sorted({c.hardware for c in spec.candidates if c.hardware})
        if classes:
            raise SmallfitError(f"hardware = {classes[0]!r} picks the nodes of a Ray cluster; run with --executor ray "
                                "--address ..., or drop it to run here")

    def expand(self, planned: list[PlannedCandidate]) -> list[PlannedCandidate]:
        """One machine, one hardware class: the candidates as planned."""
        return planned

    def run(self, ctx: RunContext, work: list[tuple[PlannedCandidate, dict[str, str]]]) -> None:
        """Each candidate in turn: resolve it, run its pending tasks in one worker, store the outcome."""
        fingerprint = json.loads(ctx.store.run(ctx.run_id)["hardware_json"])
        for planned, tasks in work:
            name = planned.name
            ctx.on_event(Event("candidate_started", name, total=len(tasks)))
            ctx.store.update_candidate(ctx.run_id, name, status="running", started_at=time.time(), error=None,
                                       load_before_json=machine_load())
            prepared = ctx.prepare(planned, tasks)
            if prepared is None:
                continue
            outcome = Outcome()
            if prepared.tasks:
                worker = WorkerProcess(ctx.job(prepared, prepared.tasks, planned.threads or ctx.threads))
                for ev in worker.events():
                    if isinstance(ev, TaskStarted):
                        jobs.start_attempt(ctx.store, ctx.run_id, name, ev.task, local_node(), fingerprint)
                    ctx.handle(name, ev, outcome)
                outcome.peak_rss_bytes, outcome.exit_reason = worker.end.peak_rss_bytes, worker.end.exit_reason
            ctx.finish_candidate(name, prepared.tasks, prepared.resolved, outcome)
