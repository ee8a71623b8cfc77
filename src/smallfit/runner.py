"""The run loop: plan and check everything first, record the run and its jobs (candidate x task),
then hand the pending jobs to an executor (:mod:`smallfit.executors`), results into the store
as they come.

The runner prints nothing; it reports progress through ``on_event`` callbacks so that the CLI,
a test or a web app can each show it their own way.
"""

from __future__ import annotations

import json
import time

from smallfit import jobs
from smallfit.contract import Settings
from smallfit.errors import PreflightError, SmallfitError
from smallfit.executors.base import Event, Executor, OnEvent, RunContext
from smallfit.metrics import EFFICIENCY_METRICS, FIDELITY_METRICS, QUALITY_SUFFIXES
from smallfit.plan import PlannedCandidate, plan, preflight
from smallfit.probes.hardware import fingerprint, library_versions
from smallfit.probes.load import default_threads, machine_load
from smallfit.spec import RunSpec
from smallfit.store import Store, run_tasks
from smallfit.tasks import get_task

__all__ = ["Event", "OnEvent", "check_tasks", "execute", "settings_of", "start_run"]


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


def start_run(spec: RunSpec, store: Store, keep_going: bool = False, executor: Executor | None = None) -> str:
    """Plan and check every candidate and task, record a new run, and return its id.

    Problems found before any model loads raise :class:`PreflightError` (one line each), unless
    ``keep_going``: then the candidates that passed run and the others are recorded as errors."""
    planned, problems = plan(spec)
    if executor is not None:
        planned = executor.expand(planned)
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
    store.conn.execute("UPDATE runs SET executor_json = ? WHERE id = ?",
                       (json.dumps(executor.describe() if executor else {"executor": "local"}), run_id))
    for i, p in enumerate(planned):
        store.add_candidate(run_id, p.name, i, p.model, p.backend, p.to_json())
    jobs.add_jobs(store, run_id, [(p.name, t) for p in planned for t in names.values()])
    for p in planned:
        if blocked.get(p.name):  # --keep-going: recorded now, not run (a resume checks it again)
            _block(store, run_id, p.name, list(names.values()), "; ".join(blocked[p.name]))
    return run_id


def _block(store: Store, run_id: str, name: str, tasks: list[str], error: str) -> None:
    for t in tasks:
        store.save_task_error(run_id, name, t, error)
        jobs.fail_job(store, run_id, name, t, error)
    store.update_candidate(run_id, name, status="blocked", error=error, finished_at=time.time())


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


def execute(store: Store, run_id: str, on_event: OnEvent = lambda e: None, resume: bool = False,
            executor: Executor | None = None) -> None:
    """Run every job (candidate x task) of the run that is not already stored as done, on
    ``executor`` (default: this machine, :class:`~smallfit.executors.local.LocalExecutor`); on
    ``resume``, candidates that failed the checks before the run are checked and tried again."""
    from smallfit.executors.local import LocalExecutor

    run = store.run(run_id)
    if any(not row["plan_json"] for row in store.candidates(run_id)):
        raise SmallfitError(f"run {run_id} was stored by an older smallfit that did not store its plan; "
                            "start a new run instead of resuming it")
    spec = RunSpec.model_validate_json(run["spec_json"])
    executor = executor or LocalExecutor()
    done = store.done_tasks(run_id)
    tasks = run_tasks(run)
    jobs.add_jobs(store, run_id, [(row["name"], t) for row in store.candidates(run_id) for t in tasks.values()])
    ctx = RunContext(store, run_id, spec, settings_of(spec), int(run["threads"]), on_event)
    store.mark_run(run_id, "running")
    on_event(Event("run_started", message=run_id))
    try:
        work = []
        for row in store.candidates(run_id):
            planned = PlannedCandidate.from_json(row["plan_json"])
            if row["status"] == "blocked" and not resume:
                on_event(Event("candidate_error", planned.name, message=str(row["error"])))
                continue
            if row["status"] == "blocked" and (problems := preflight([planned], spec.quantize)[planned.name]):
                ctx.fail_candidate(planned.name, list(tasks.values()), "; ".join(problems), status="blocked")
                continue
            pending = [ref for ref, task in tasks.items() if (planned.name, task) not in done]
            if not pending:
                on_event(Event("candidate_skipped", planned.name, total=len(tasks)))
                continue
            work.append((planned, {ref: tasks[ref] for ref in pending}))
        executor.run(ctx, work)
    except KeyboardInterrupt:
        for row in store.candidates(run_id):
            if row["status"] == "running":
                store.update_candidate(run_id, row["name"], status="interrupted", finished_at=time.time())
        jobs.requeue_unfinished(store, run_id, "interrupted")
        store.mark_run(run_id, "interrupted", machine_load())
        raise
    store.mark_run(run_id, "finished", machine_load())
