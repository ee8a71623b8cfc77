"""The run loop: each candidate in its own worker process, results into the store as they come.

The runner prints nothing; it reports progress through ``on_event`` callbacks so that the CLI,
a test or a web app can each show it their own way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from smallfit.errors import SmallfitError
from smallfit.metrics import EFFICIENCY_METRICS, FIDELITY_METRICS, QUALITY_SUFFIXES
from smallfit.models import locate_model, weights_size
from smallfit.prepare import needs_preparing, prepare
from smallfit.probes.hardware import fingerprint, library_versions
from smallfit.probes.load import default_threads, machine_load
from smallfit.records import RequestTiming, SampleResult, TaskResult
from smallfit.spec import CandidateSpec, RunSpec
from smallfit.store import Store, run_tasks
from smallfit.tasks import get_task


@dataclass(frozen=True)
class Event:
    """Progress of a run: ``kind`` is one of run_started, candidate_skipped, candidate_started,
    preparing (a sweep variant is being built), loaded, task_started, progress, task_done, task_error, candidate_done, candidate_error."""

    kind: str
    candidate: str | None = None
    task: str | None = None
    done: int = 0
    total: int = 0
    message: str = ""


OnEvent = Callable[[Event], None]


def start_run(spec: RunSpec, store: Store) -> str:
    """Validate the tasks, record a new run with its fingerprint, and return its id."""
    produced = set(EFFICIENCY_METRICS) | (set(FIDELITY_METRICS) if spec.quantize else set())
    names: dict[str, str] = {}
    for task_ref in spec.tasks:
        task = get_task(task_ref)
        if not task.load():  # read the data now: bad data is bad input, before anything runs
            raise SmallfitError(f"task {task.name} has no examples")
        if task.name in names.values():
            raise SmallfitError(f"two tasks are named {task.name!r}; give one of them another name")
        names[task_ref] = task.name
        for metric in task.kind.quality_metrics:
            produced |= {metric, *(metric + suffix for suffix in QUALITY_SUFFIXES)}
    for check in spec.checks():
        if check.metric not in produced:
            raise SmallfitError(f"budget check {check} names {check.metric!r}, which no task of this run reports "
                                f"(tasks: {', '.join(names.values())}); drop the check or add a task that reports it")
        if check.task is not None and check.task not in names.values():
            raise SmallfitError(f"budget check {check} names task {check.task!r}, which is not in this run")
    for probe in spec.probes:
        names[f"probe:{probe}"] = f"probe:{probe}"
    hardware = fingerprint()
    if spec.threads:
        threads = spec.threads
        hardware["threads_chosen_by"] = "user"
    else:
        threads, hardware["threads_chosen_by"] = default_threads()
    run_id = store.create_run(spec.model_dump_json(), library_versions(), hardware, threads, machine_load(), names)
    for i, cand in enumerate(spec.candidates):
        ref = cand.ref()
        store.add_candidate(run_id, ref.name, i, cand.model, ref.backend)
    return run_id


def execute(store: Store, run_id: str, on_event: OnEvent = lambda e: None) -> None:
    """Run every candidate x task of the run that is not already stored as done."""
    run = store.run(run_id)
    spec = RunSpec.model_validate_json(run["spec_json"])
    done = store.done_tasks(run_id)
    tasks = run_tasks(run)
    store.mark_run(run_id, "running")
    on_event(Event("run_started", message=run_id))
    try:
        for cand in spec.candidates:
            name = cand.ref().name
            pending = [ref for ref, task in tasks.items() if (name, task) not in done]
            if not pending:
                on_event(Event("candidate_skipped", name, total=len(tasks)))
                continue
            _run_candidate(store, run_id, spec, cand, {ref: tasks[ref] for ref in pending}, int(run["threads"]),
                           on_event)
    except KeyboardInterrupt:
        for row in store.candidates(run_id):
            if row["status"] == "running":
                store.update_candidate(run_id, row["name"], status="interrupted", finished_at=time.time())
        store.mark_run(run_id, "interrupted", machine_load())
        raise
    store.mark_run(run_id, "finished", machine_load())


def _run_candidate(store: Store, run_id: str, spec: RunSpec, cand: CandidateSpec, tasks: dict[str, str],
                   threads: int, on_event: OnEvent) -> None:
    """Run the candidate's pending tasks (reference -> name) in a worker and store the outcome."""
    ref = cand.ref()
    on_event(Event("candidate_started", ref.name, total=len(tasks)))
    store.update_candidate(run_id, ref.name, status="running", started_at=time.time(), error=None,
                           load_before_json=machine_load())
    sweep: dict[str, Any] | None = None
    try:
        path, size = locate_model(ref)  # a served model has neither file nor size
        if cand.variant and path is not None:
            on_event(Event("preparing", ref.name, message=f"the {cand.variant} variant"))
            path, sweep = _prepare_variant(path, cand.variant, cand.threads or threads)
            size = weights_size(path)
    except SmallfitError as exc:
        _fail_candidate(store, run_id, ref.name, list(tasks.values()), str(exc), on_event)
        return
    prepare_s = None
    if path is not None and needs_preparing(ref.backend, path, cand.options):
        on_event(Event("preparing", ref.name, message="its ONNX export"))
        try:
            prepare_s = prepare(ref.backend, path, cand.threads or threads, cand.options)
        except SmallfitError as exc:
            _fail_candidate(store, run_id, ref.name, list(tasks.values()), str(exc), on_event)
            return
    store.update_candidate(run_id, ref.name, model_path=str(path) if path else ref.location, model_size_bytes=size)
    job = {
        "candidate": ref.name, "backend": ref.backend, "model_path": str(path) if path else "",
        "location": "" if path else ref.location, "options": cand.options,
        "model_size_bytes": size, "threads": cand.threads or threads, "context_size": cand.context_size,
        "batch_size": cand.batch_size, "tasks": list(tasks.items()), "limit": spec.limit, "sample": spec.sample, "seed": spec.seed, "chat": spec.chat,
        "timing_min_requests": spec.timing_rule()[0], "timing_min_s": spec.timing_rule()[1],
        "prices": spec.prices.model_dump(), "max_context": spec.max_context,
        "memory_budget_bytes": spec.memory_budget_bytes(), "first_task": spec.tasks[0], "warmup": spec.warmup,
        "latency_prompts": spec.latency_prompts, "latency_max_tokens": spec.latency_max_tokens,
        "sweep": sweep, "prepare_s": prepare_s,
    }
    outcome = _Worker(store, run_id, ref.name, on_event).run(job)
    finished = store.done_tasks(run_id)
    missing = [t for t in tasks.values() if (ref.name, t) not in finished and t not in outcome.task_errors]
    error = outcome.fatal
    if error is None and missing:
        error = outcome.exit_reason or "worker ended before finishing its tasks"
    for t in missing:
        store.save_task_error(run_id, ref.name, t, error or "not run")
    status = "error" if error or outcome.task_errors else "done"
    loaded_size = (outcome.info or {}).get("model_size_bytes")  # the file the backend ran (an export)
    store.update_candidate(run_id, ref.name, status=status, error=error, load_s=outcome.load_s,
                           model_size_bytes=loaded_size or size,
                           process_peak_rss_bytes=outcome.peak_rss_bytes, backend_info_json=outcome.info,
                           load_after_json=machine_load(), finished_at=time.time())
    if error:
        on_event(Event("candidate_error", ref.name, message=error))
    else:
        on_event(Event("candidate_done", ref.name, message=status))


def _prepare_variant(source: Path, variant: str, threads: int) -> tuple[Path, dict[str, Any]]:
    """Build (or find cached) a sweep variant of ``source``; its file and the worker's sweep settings."""
    from smallfit import quantize

    path = quantize.prepare_variant(source, variant, threads) if quantize.is_gguf_variant(variant) else source
    return path, quantize.sweep_settings(source, variant)


def _fail_candidate(store: Store, run_id: str, name: str, tasks: list[str], error: str, on_event: OnEvent) -> None:
    for t in tasks:
        store.save_task_error(run_id, name, t, error)
    store.update_candidate(run_id, name, status="error", error=error, finished_at=time.time())
    on_event(Event("candidate_error", name, message=error))


@dataclass
class _Outcome:
    load_s: float | None = None
    info: dict[str, Any] | None = None
    fatal: str | None = None
    exit_reason: str | None = None
    peak_rss_bytes: int | None = None
    task_errors: dict[str, str] = field(default_factory=dict)


class _Worker:
    """Drives one worker process and stores what it streams back."""

    def __init__(self, store: Store, run_id: str, candidate: str, on_event: OnEvent) -> None:
        self.store, self.run_id, self.candidate, self.on_event = store, run_id, candidate, on_event
        self.outcome = _Outcome()

    def run(self, job: dict[str, Any]) -> _Outcome:
        with tempfile.TemporaryFile() as stderr:
            proc = subprocess.Popen([sys.executable, "-m", "smallfit.worker"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=stderr, text=True, encoding="utf-8")
            try:
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(json.dumps(job))
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
            ev = json.loads(line)
        except json.JSONDecodeError:
            return
        kind, name = ev.get("event"), self.candidate
        if kind == "loaded":
            self.outcome.load_s, self.outcome.info = ev["load_s"], ev["info"]
            self.on_event(Event("loaded", name, message=f"{ev['load_s']:.2f}s"))
        elif kind == "task_started":
            self.on_event(Event("task_started", name, ev["task"], total=ev["total"]))
        elif kind == "progress":
            self.on_event(Event("progress", name, ev["task"], done=ev["done"]))
        elif kind == "task_done":
            result = _task_result(ev["result"])
            self.store.save_task_result(self.run_id, name, result)
            self.on_event(Event("task_done", name, result.task))
        elif kind == "task_error":
            self.outcome.task_errors[ev["task"]] = ev["error"]
            self.store.save_task_error(self.run_id, name, ev["task"], ev["error"])
            self.on_event(Event("task_error", name, ev["task"], message=ev["error"]))
        elif kind == "error":
            self.outcome.fatal = ev["error"]


def _task_result(data: dict[str, Any]) -> TaskResult:
    return TaskResult(
        task=data["task"], metrics=data["metrics"], info=data["info"],
        samples=[SampleResult(**s) for s in data["samples"]],
        timings=[RequestTiming(**{**t, "token_times_s": tuple(t["token_times_s"])}) for t in data["timings"]],
    )


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
