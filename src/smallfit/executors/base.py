"""What every executor shares: the run's context (store, settings, progress callback), resolving
a candidate into its jobs, and storing what a worker says as it says it.

An executor is one method, :meth:`Executor.run`: it gets the run's context and the candidates
with their pending tasks, runs each job in a worker process (:mod:`smallfit.executors.process`)
somewhere, and stores every result through the context as soon as it arrives. ``local`` (the
default) runs them one after another on this machine; ``ray`` sends each job to a node of a Ray
cluster that has a free ``smallfit_slot``.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from smallfit import jobs
from smallfit.contract import (
    Fatal,
    Job,
    Loaded,
    Progress,
    ResolvedModel,
    Settings,
    SweepSettings,
    TaskDone,
    TaskFailed,
    TaskStarted,
    WorkerEvent,
)
from smallfit.errors import SmallfitError
from smallfit.plan import PlannedCandidate, prepare_build, resolve
from smallfit.probes.load import machine_load
from smallfit.spec import RunSpec
from smallfit.store import Store


@dataclass(frozen=True)
class Event:
    """Progress of a run: ``kind`` is one of run_started, candidate_skipped, candidate_started,
    preparing (the candidate's model is located, built or exported), loaded, task_started,
    progress, task_done, task_error, candidate_done, candidate_error, job_started, job_retry."""

    kind: str
    candidate: str | None = None
    task: str | None = None
    done: int = 0
    total: int = 0
    message: str = ""


OnEvent = Callable[[Event], None]


@dataclass
class Outcome:
    """What one worker process said about its candidate, beyond the results already stored."""

    load_s: float | None = None
    info: dict[str, Any] | None = None
    weights_bytes: int | None = None
    fatal: str | None = None
    exit_reason: str | None = None
    peak_rss_bytes: int | None = None
    task_errors: dict[str, str] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    """Task names whose results were stored."""


@dataclass(frozen=True)
class Prepared:
    """A candidate resolved and ready to run: the model, its pending tasks and their job hashes."""

    planned: PlannedCandidate
    resolved: ResolvedModel
    sweep: SweepSettings | None
    prepare_s: float | None
    tasks: dict[str, str]
    """Pending task reference -> name."""
    hashes: dict[str, str]
    """Task name -> the job's content hash."""


@dataclass
class RunContext:
    """One run as the executors see it; every write to the store goes through here."""

    store: Store
    run_id: str
    spec: RunSpec
    settings: Settings
    threads: int
    """The run's threads (chosen on this machine when the run started)."""
    on_event: OnEvent
    digests: dict[str, str] = field(default_factory=dict)

    def requested_threads(self, planned: PlannedCandidate) -> int | None:
        """Threads the spec asks for (None: each machine's own default)."""
        return planned.threads or self.spec.threads

    def prepare(self, planned: PlannedCandidate, tasks: dict[str, str], build: bool = True) -> Prepared | None:
        """Resolve a candidate (locate, download or build its model), store what it resolved to
        and its jobs' hashes, and store as done the jobs whose hash already has a result in this
        run; None (the candidate recorded as failed) when it cannot be resolved. ``build``:
        run the backend's preparation build (an export) here too."""
        name = planned.name
        threads = planned.threads or self.threads
        step: Callable[[str], None] = lambda what: self.on_event(Event("preparing", name, message=what))  # noqa: E731
        try:
            resolved, sweep = resolve(planned, threads, step)
            self.store.save_resolved(self.run_id, name, resolved)
            prepare_s = prepare_build(resolved, planned.options, threads, step) if build else None
        except SmallfitError as exc:
            self.fail_candidate(name, list(tasks.values()), str(exc))
            return None
        shape = {"threads": self.requested_threads(planned), "context_size": planned.context_size,
                 "batch_size": planned.batch_size, "hardware": planned.hardware,
                 "hardware_id": planned.hardware_id}
        hashes: dict[str, str] = {}
        for ref, task in tasks.items():
            if ref not in self.digests:
                self.digests[ref] = jobs.task_digest(ref)
            hashes[task] = jobs.job_hash(resolved, planned.options, shape, self.digests[ref], self.settings)
            jobs.set_hash(self.store, self.run_id, name, task, hashes[task])
        done = jobs.done_hashes(self.store, self.run_id)
        pending = {}
        for ref, task in tasks.items():
            if hashes[task] in done:
                jobs.copy_result(self.store, self.run_id, done[hashes[task]], (name, task))
                self.on_event(Event("task_done", name, task, message=f"same job as {' x '.join(done[hashes[task]])}"))
            else:
                pending[ref] = task
        return Prepared(planned, resolved, sweep, prepare_s, pending, hashes)

    def job(self, p: Prepared, tasks: dict[str, str], threads: int) -> Job:
        """The worker's job for some of a prepared candidate's tasks."""
        return Job(model=p.resolved, tasks=tuple(tasks.items()), settings=self.settings, threads=threads,
                   context_size=p.planned.context_size, batch_size=p.planned.batch_size, options=p.planned.options,
                   sweep=p.sweep, prepare_s=p.prepare_s)

    def handle(self, candidate: str, ev: WorkerEvent, out: Outcome) -> None:
        """Store one worker event at once and pass it on as progress."""
        match ev:
            case Loaded():
                out.load_s, out.info, out.weights_bytes = ev.load_s, ev.info, ev.weights_bytes
                self.on_event(Event("loaded", candidate, message=f"{ev.load_s:.2f}s"))
            case TaskStarted():
                self.on_event(Event("task_started", candidate, ev.task, total=ev.total))
            case Progress():
                self.on_event(Event("progress", candidate, ev.task, done=ev.done))
            case TaskDone():
                self.store.save_task_result(self.run_id, candidate, ev.result)
                jobs.end_attempt(self.store, self.run_id, candidate, ev.result.task, "done")
                out.done.add(ev.result.task)
                self.on_event(Event("task_done", candidate, ev.result.task))
            case TaskFailed():
                out.task_errors[ev.task] = ev.error
                self.store.save_task_error(self.run_id, candidate, ev.task, ev.error)
                jobs.end_attempt(self.store, self.run_id, candidate, ev.task, "failed", ev.error)
                self.on_event(Event("task_error", candidate, ev.task, message=ev.error))
            case Fatal():
                out.fatal = ev.error

    def finish_candidate(self, name: str, tasks: dict[str, str], resolved: ResolvedModel, outcome: Outcome) -> None:
        """After a candidate's worker ended: tasks it did not finish carry its error; the
        candidate's status, load time, size and peak memory are stored."""
        finished = self.store.done_tasks(self.run_id)
        missing = [t for t in tasks.values() if (name, t) not in finished and t not in outcome.task_errors]
        error = outcome.fatal
        if error is None and missing:
            error = outcome.exit_reason or "worker ended before finishing its tasks"
        for t in missing:
            self.store.save_task_error(self.run_id, name, t, error or "not run")
            jobs.end_attempt(self.store, self.run_id, name, t, "failed", error or "not run")
        status = "error" if error or outcome.task_errors else "done"
        self.store_candidate(name, resolved, outcome, status=status, error=error, finished_at=time.time())
        self.on_event(Event("candidate_error", name, message=error) if error else
                      Event("candidate_done", name, message=status))

    def store_candidate(self, name: str, resolved: ResolvedModel, outcome: Outcome, **fields: Any) -> None:
        """A candidate's figures from its worker: load time, size loaded, peak memory, backend info."""
        size = outcome.weights_bytes or resolved.size_bytes  # what the backend loaded (an export), else the file
        self.store.update_candidate(self.run_id, name, load_s=outcome.load_s, model_size_bytes=size,
                                    process_peak_rss_bytes=outcome.peak_rss_bytes, backend_info_json=outcome.info,
                                    load_after_json=machine_load(), **fields)

    def fail_candidate(self, name: str, tasks: list[str], error: str, status: str = "error") -> None:
        """A candidate that cannot run: each of its tasks and jobs failed with ``error``."""
        for t in tasks:
            self.store.save_task_error(self.run_id, name, t, error)
            jobs.fail_job(self.store, self.run_id, name, t, error)
        self.store.update_candidate(self.run_id, name, status=status, error=error, finished_at=time.time())
        self.on_event(Event("candidate_error", name, message=error))


class Executor(Protocol):
    """Where a run's jobs run."""

    name: str
    """``local`` or ``ray``: stored with the run."""

    def describe(self) -> dict[str, Any]:
        """What to store with the run so ``--resume`` can reach the same place."""
        ...

    def check(self, spec: RunSpec) -> None:
        """Before a run is recorded: can this executor run the spec? A one-line error if not."""
        ...

    def expand(self, planned: list[PlannedCandidate]) -> list[PlannedCandidate]:
        """The candidates as this executor runs them (a cluster of several hardware classes runs
        each candidate once per class)."""
        ...

    def run(self, ctx: RunContext, work: list[tuple[PlannedCandidate, dict[str, str]]]) -> None:
        """Run each candidate's pending tasks (reference -> name), storing results as they come."""
        ...


def local_node() -> str:
    """This machine as a node name: ``local:HOSTNAME``."""
    return f"local:{platform.node()}"


def with_location(job: Job, location: str, reference_path: str | None = None) -> Job:
    """The job with its model (and a sweep's reference) at paths of the machine that runs it."""
    model = replace(job.model, location=location)
    sweep = replace(job.sweep, reference_path=reference_path) if job.sweep and reference_path else job.sweep
    return replace(job, model=model, sweep=sweep)
