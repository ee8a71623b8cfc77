"""The run loop: plan and check everything first, then each candidate in its own worker process,
results into the store as they come.

The runner prints nothing; it reports progress through ``on_event`` callbacks so that the CLI,
a test or a web app can each show it their own way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from smallfit.contract import (
    Fatal,
    Job,
    Loaded,
    Progress,
    ResolvedModel,
    Settings,
    TaskDone,
    TaskFailed,
    TaskStarted,
    decode_event,
    encode_job,
)
from smallfit.errors import PreflightError, SmallfitError
from smallfit.metrics import EFFICIENCY_METRICS, FIDELITY_METRICS, QUALITY_SUFFIXES
from smallfit.plan import PlannedCandidate, plan, preflight, prepare_build, resolve
from smallfit.probes.hardware import fingerprint, library_versions
from smallfit.probes.load import default_threads, machine_load
from smallfit.spec import RunSpec
from smallfit.store import Store, run_tasks
from smallfit.tasks import get_task


@dataclass(frozen=True)
class Event:
    """Progress of a run: ``kind`` is one of run_started, candidate_skipped, candidate_started,
    preparing (the candidate's model is located, built or exported), loaded, task_started,
    progress, task_done, task_error, candidate_done, candidate_error."""

    kind: str
    candidate: str | None = None
    task: str | None = None
    done: int = 0
    total: int = 0
    message: str = ""


OnEvent = Callable[[Event], None]


def check_tasks(spec: RunSpec) -> tuple[dict[str, str], list[str]]:
    """Task reference -> name for the run, and one line per problem: a task or data file that does
    not parse, a template that does not format, a budget check no task reports."""
    produced = set(EFFICIENCY_METRICS) | (set(FIDELITY_METRICS) if spec.quantize else set())
    names: dict[str, str] = {}
    problems: list[str] = []
    for task_ref in spec.tasks:
        try:
            task = get_task(task_ref)
            samples = task.load()  # read the data now: bad data is bad input, before anything runs
            if not samples:
                raise SmallfitError(f"task {task.name} has no examples")
            try:
                task.kind.prompt_of(samples[0])
            except (KeyError, ValueError, IndexError) as exc:
                raise SmallfitError(f"task {task.name}: its prompt template does not format ({type(exc).__name__}: "
                                    f"{exc}); check the braces and field names of its template") from None
        except SmallfitError as exc:
            problems.append(str(exc))
            continue
        if task.name in names.values():
            problems.append(f"two tasks are named {task.name!r}; give one of them another name")
        names[task_ref] = task.name
        for metric in task.kind.quality_metrics:
            produced |= {metric, *(metric + suffix for suffix in QUALITY_SUFFIXES)}
    for check in spec.checks() if not problems else []:
        if check.metric not in produced:
            problems.append(f"budget check {check} names {check.metric!r}, which no task of this run reports "
                            f"(tasks: {', '.join(names.values())}); drop the check or add a task that reports it")
        elif check.task is not None and check.task not in names.values():
            problems.append(f"budget check {check} names task {check.task!r}, which is not in this run")
    return names, problems


def start_run(spec: RunSpec, store: Store, keep_going: bool = False) -> str:
    """Plan and check every candidate and task, record a new run, and return its id.

    Problems found before any model loads raise :class:`PreflightError` (one line each), unless
    ``keep_going``: then the candidates that passed run and the others are recorded as errors."""
    planned, problems = plan(spec)
    names, task_problems = check_tasks(spec)
    candidate_problems = preflight(planned, spec.quantize)
    blocked = {name: lines for name, lines in candidate_problems.items() if lines}
    problems += task_problems
    if problems or (blocked and not keep_going):
        lines = problems + [f"{name}: {line}" for name, lines in blocked.items() for line in lines]
        raise PreflightError(lines, others_can_run=not problems and len(blocked) < len(planned))
    for probe in spec.probes:
        names[f"probe:{probe}"] = f"probe:{probe}"
    hardware = fingerprint()
    if spec.threads:
        threads = spec.threads
        hardware["threads_chosen_by"] = "user"
    else:
        threads, hardware["threads_chosen_by"] = default_threads()
    run_id = store.create_run(spec.model_dump_json(), library_versions(), hardware, threads, machine_load(), names)
    for i, p in enumerate(planned):
        store.add_candidate(run_id, p.name, i, p.model, p.backend, p.to_json())
        if blocked.get(p.name):  # --keep-going: recorded now, not run (a resume checks it again)
            _fail_candidate(store, run_id, p.name, list(names.values()), "; ".join(blocked[p.name]), lambda e: None,
                            status="blocked")
    return run_id


def settings_of(spec: RunSpec) -> Settings:
    """The run-wide settings a worker needs."""
    min_requests, min_s = spec.timing_rule()
    needs = spec.percentile_requests()
    return Settings(limit=spec.limit, sample=spec.sample, seed=spec.seed, chat=spec.chat, warmup=spec.warmup,
                    latency_prompts=spec.latency_prompts, latency_max_tokens=spec.latency_max_tokens,
                    timing_min_requests=min_requests, timing_min_s=min_s, timing_max_s=spec.timing_max_s,
                    percentile_requests={task: n for task, (n, _) in needs.items()},
                    timing_reason="; ".join(why for n, why in needs.values() if n > min_requests),
                    max_context=spec.max_context,
                    memory_budget_bytes=spec.memory_budget_bytes(), first_task=spec.tasks[0],
                    cpu_watts_per_core=spec.prices.cpu_watts_per_core, prices=spec.prices.model_dump())


def execute(store: Store, run_id: str, on_event: OnEvent = lambda e: None, resume: bool = False) -> None:
    """Run every candidate x task of the run that is not already stored as done (on ``resume``,
    candidates that failed the checks before the run are checked and tried again)."""
    run = store.run(run_id)
    if any(not row["plan_json"] for row in store.candidates(run_id)):
        raise SmallfitError(f"run {run_id} was stored by an older smallfit that did not store its plan; "
                            "start a new run instead of resuming it")
    spec = RunSpec.model_validate_json(run["spec_json"])
    settings = settings_of(spec)
    done = store.done_tasks(run_id)
    tasks = run_tasks(run)
    store.mark_run(run_id, "running")
    on_event(Event("run_started", message=run_id))
    try:
        for row in store.candidates(run_id):
            planned = PlannedCandidate.from_json(row["plan_json"])
            if row["status"] == "blocked" and not resume:
                on_event(Event("candidate_error", planned.name, message=str(row["error"])))
                continue
            if row["status"] == "blocked" and (problems := preflight([planned], spec.quantize)[planned.name]):
                _fail_candidate(store, run_id, planned.name, list(tasks.values()), "; ".join(problems), on_event,
                                status="blocked")
                continue
            pending = [ref for ref, task in tasks.items() if (planned.name, task) not in done]
            if not pending:
                on_event(Event("candidate_skipped", planned.name, total=len(tasks)))
                continue
            _run_candidate(store, run_id, planned, settings, {ref: tasks[ref] for ref in pending},
                           int(run["threads"]), on_event)
    except KeyboardInterrupt:
        for row in store.candidates(run_id):
            if row["status"] == "running":
                store.update_candidate(run_id, row["name"], status="interrupted", finished_at=time.time())
        store.mark_run(run_id, "interrupted", machine_load())
        raise
    store.mark_run(run_id, "finished", machine_load())


def _run_candidate(store: Store, run_id: str, planned: PlannedCandidate, settings: Settings, tasks: dict[str, str],
                   threads: int, on_event: OnEvent) -> None:
    """Resolve the candidate, run its pending tasks (reference -> name) in a worker, store the outcome."""
    name = planned.name
    threads = planned.threads or threads
    on_event(Event("candidate_started", name, total=len(tasks)))
    store.update_candidate(run_id, name, status="running", started_at=time.time(), error=None,
                           load_before_json=machine_load())
    step: Callable[[str], None] = lambda what: on_event(Event("preparing", name, message=what))  # noqa: E731
    try:
        resolved, sweep = resolve(planned, threads, step)
        store.save_resolved(run_id, name, resolved)
        prepare_s = prepare_build(resolved, planned.options, threads, step)
    except SmallfitError as exc:
        _fail_candidate(store, run_id, name, list(tasks.values()), str(exc), on_event)
        return
    job = Job(model=resolved, tasks=tuple(tasks.items()), settings=settings, threads=threads,
              context_size=planned.context_size, batch_size=planned.batch_size, options=planned.options,
              sweep=sweep, prepare_s=prepare_s)
    outcome = _Worker(store, run_id, name, on_event).run(job)
    _finish_candidate(store, run_id, name, tasks, resolved, outcome, on_event)


def _finish_candidate(store: Store, run_id: str, name: str, tasks: dict[str, str], resolved: ResolvedModel,
                      outcome: _Outcome, on_event: OnEvent) -> None:
    finished = store.done_tasks(run_id)
    missing = [t for t in tasks.values() if (name, t) not in finished and t not in outcome.task_errors]
    error = outcome.fatal
    if error is None and missing:
        error = outcome.exit_reason or "worker ended before finishing its tasks"
    for t in missing:
        store.save_task_error(run_id, name, t, error or "not run")
    status = "error" if error or outcome.task_errors else "done"
    size = outcome.weights_bytes or resolved.size_bytes  # what the backend loaded (an export), else the file
    store.update_candidate(run_id, name, status=status, error=error, load_s=outcome.load_s, model_size_bytes=size,
                           process_peak_rss_bytes=outcome.peak_rss_bytes, backend_info_json=outcome.info,
                           load_after_json=machine_load(), finished_at=time.time())
    on_event(Event("candidate_error", name, message=error) if error else Event("candidate_done", name, message=status))


def _fail_candidate(store: Store, run_id: str, name: str, tasks: list[str], error: str, on_event: OnEvent,
                    status: str = "error") -> None:
    for t in tasks:
        store.save_task_error(run_id, name, t, error)
    store.update_candidate(run_id, name, status=status, error=error, finished_at=time.time())
    on_event(Event("candidate_error", name, message=error))


@dataclass
class _Outcome:
    load_s: float | None = None
    info: dict[str, Any] | None = None
    weights_bytes: int | None = None
    fatal: str | None = None
    exit_reason: str | None = None
    peak_rss_bytes: int | None = None
    task_errors: dict[str, str] = field(default_factory=dict)


class _Worker:
    """Drives one worker process and stores what it streams back."""

    def __init__(self, store: Store, run_id: str, candidate: str, on_event: OnEvent) -> None:
        self.store, self.run_id, self.candidate, self.on_event = store, run_id, candidate, on_event
        self.outcome = _Outcome()

    def run(self, job: Job) -> _Outcome:
        with tempfile.TemporaryFile() as stderr:
            proc = subprocess.Popen([sys.executable, "-m", "smallfit.worker"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=stderr, text=True, encoding="utf-8")
            try:
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(encode_job(job))
                proc.stdin.close()
                for line in proc.stdout:
                    self._handle(line)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            self.outcome.peak_rss_bytes = usage.ru_maxrss * 1024
            if proc.returncode != 0 and self.outcome.fatal is None:
                self.outcome.exit_reason = _exit_reason(proc.returncode, _tail(stderr))
        return self.outcome

    def _handle(self, line: str) -> None:
        try:
            ev = decode_event(line)
        except ValueError:
            return  # not a protocol line
        name, out = self.candidate, self.outcome
        match ev:
            case Loaded():
                out.load_s, out.info, out.weights_bytes = ev.load_s, ev.info, ev.weights_bytes
                self.on_event(Event("loaded", name, message=f"{ev.load_s:.2f}s"))
            case TaskStarted():
                self.on_event(Event("task_started", name, ev.task, total=ev.total))
            case Progress():
                self.on_event(Event("progress", name, ev.task, done=ev.done))
            case TaskDone():
                self.store.save_task_result(self.run_id, name, ev.result)
                self.on_event(Event("task_done", name, ev.result.task))
            case TaskFailed():
                out.task_errors[ev.task] = ev.error
                self.store.save_task_error(self.run_id, name, ev.task, ev.error)
                self.on_event(Event("task_error", name, ev.task, message=ev.error))
            case Fatal():
                out.fatal = ev.error


def _tail(fh: IO[bytes], lines: int = 3) -> str:
    fh.seek(0)
    text = fh.read().decode("utf-8", "replace").strip().splitlines()
    return " | ".join(line.strip() for line in text[-lines:])


def _exit_reason(code: int, stderr_tail: str) -> str:
    if code < 0:
        sig = signal.Signals(-code).name
        hint = " (out of memory?)" if sig == "SIGKILL" else ""
        reason = f"worker killed by {sig}{hint}"
    else:
        reason = f"worker exited with code {code}"
    return f"{reason}: {stderr_tail}" if stderr_tail else reason

