"""A candidate's own process: load the model, run its tasks, stream results to the runner.

Started by the runner as ``python -m smallfit.worker`` with a JSON job on stdin. It writes one
JSON event per line to its stdout (see ``Event`` kinds below) and nothing else there: anything a
native library prints goes to stderr. Running each candidate in its own process makes its peak
memory its own and contains a crash or an out-of-memory kill to that candidate.

Events: ``loaded`` (load_s, info), ``task_started`` (task, total), ``progress`` (task, done),
``task_done`` (result), ``task_error`` (task, error), ``error`` (error), ``done``.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from smallfit.backends.base import Backend, BackendConfig, ConcurrentBackend, load_backend
from smallfit.errors import SmallfitError
from smallfit.metrics import efficiency_from_timings
from smallfit.probes.memory import peak_rss_bytes, reset_peak_rss
from smallfit.records import GenerationRequest, RequestTiming, TaskResult
from smallfit.tasks import get_task
from smallfit.tasks.base import Task, in_chat


class Emitter:
    """Writes protocol events as JSON lines to a private copy of the original stdout."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, event: str, **fields: Any) -> None:
        self.stream.write(json.dumps({"event": event, **fields}) + "\n")
        self.stream.flush()


def _protocol_stream() -> TextIO:
    # Keep fd 1 for the protocol only: duplicate it, then point fd 1 at stderr so that native
    # libraries printing to stdout cannot corrupt the event stream.
    fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(fd, "w", buffering=1, encoding="utf-8")


def _die_with_parent() -> None:
    """End this process if the runner dies (SIGKILL, power loss of the terminal...)."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def select(samples: list[Any], limit: int | None, sample: int | None, seed: int, default: int) -> list[Any]:
    """The examples a task runs on: the first ``limit``, a seeded random ``sample`` (kept in file
    order), or the task's default number from the start."""
    if sample is not None:
        if sample >= len(samples):
            return samples
        keep = sorted(random.Random(seed).sample(range(len(samples)), sample))
        return [samples[i] for i in keep]
    return samples[: limit or default]


def run_task(backend: Backend, task: Task, job: dict[str, Any], load_s: float, emit: Emitter,
             load_info: dict[str, Any] | None = None) -> TaskResult:
    """Warm up, run the task's requests, run the latency pass if needed (and the concurrency
    pass for a backend that serves concurrent requests), and aggregate."""
    samples = select(list(task.load()), job.get("limit"), job.get("sample"), job.get("seed", 0), task.default_limit)
    if not samples:
        raise SmallfitError(f"task {task.name} has no samples")
    kind = task.kind
    chat = task.chat if task.chat is not None else bool(job.get("chat"))
    if chat:
        samples = [in_chat(s, backend.chat_prompt) for s in samples]
    emit("task_started", task=task.name, total=len(samples))
    for s in samples[: job.get("warmup", 1)]:  # untimed: caches, lazy allocations, page faults
        kind.run(backend, [s], lambda _n: None)
    peak_resettable = reset_peak_rss()
    results, timings = kind.run(backend, samples, lambda n: emit("progress", task=task.name, done=n))
    latency_n = 0
    if not kind.generates and backend.capabilities.generation:
        # Efficiency on the same prompts: generate from the task's own prompts.
        prompts = [kind.prompt_of(s) for s in samples[: job["latency_prompts"]]]
        max_tokens = job["latency_max_tokens"]
        backend.generate([GenerationRequest(prompts[0], max_tokens, ignore_eos=True)])  # warm-up
        requests = [GenerationRequest(p, max_tokens, ignore_eos=True) for p in prompts]
        for i, c in enumerate(backend.generate(requests)):
            timings.append(RequestTiming(i, "latency", c.n_prompt_tokens, c.n_output_tokens,
                                         c.ttft_s, c.latency_s, c.token_times_s))
        latency_n = len(prompts)
    concurrency = _concurrency_pass(backend, [kind.prompt_of(s) for s in samples[: job["latency_prompts"]]],
                                    job["latency_max_tokens"])
    peak, peak_source = peak_rss_bytes()
    metrics: dict[str, float | None] = {**kind.aggregate(results), **efficiency_from_timings(timings)}
    size = job.get("model_size_bytes")
    metrics.update(load_s=load_s, peak_rss_bytes=float(peak), model_size_bytes=None if size is None else float(size))
    info = {
        "kind": kind.name, "n_samples": len(samples), "limit": job.get("limit"), "sample": job.get("sample"),
        "seed": job.get("seed", 0) if job.get("sample") else None, "source": task.source,
        "warmup_requests": job.get("warmup", 1), "latency_pass_prompts": latency_n, "chat_template": chat,
        "latency_pass_max_tokens": job["latency_max_tokens"] if latency_n else None,
        "peak_rss_source": peak_source if peak_resettable else f"{peak_source} (since process start)",
        **concurrency,
    }
    changed = {k: v for k, v in backend.info().items() if (load_info or {}).get(k) != v}
    if changed:  # counters a backend keeps while it runs (a server's retries), as of this task's end
        info["backend"] = changed
    return TaskResult(task.name, metrics, results, timings, info)


def _concurrency_pass(backend: Backend, prompts: list[str], max_tokens: int) -> dict[str, Any]:
    """Per-level throughput and latency on the task's prompts, for backends that serve several
    requests at once; {} for the others. A failure is recorded, not fatal to the task."""
    if not isinstance(backend, ConcurrentBackend) or not backend.capabilities.generation or not prompts:
        return {}
    requests = [GenerationRequest(p, max_tokens, ignore_eos=True) for p in prompts]
    try:
        return {"concurrency": backend.measure_concurrency(requests)}
    except SmallfitError as exc:
        return {"concurrency": None, "concurrency_error": str(exc)}


def run_job(job: dict[str, Any], emit: Emitter) -> int:
    """Load the candidate's model and run each of its tasks; 0 if it loaded."""
    cfg = BackendConfig(model_path=Path(job["model_path"]), threads=job["threads"],
                        context_size=job["context_size"], batch_size=job["batch_size"],
                        options=job.get("options") or {}, location=job.get("location") or "")
    t0 = time.perf_counter()
    try:
        backend = load_backend(job["backend"], cfg)
    except SmallfitError as exc:
        emit("error", error=str(exc))
        return 1
    load_s = time.perf_counter() - t0
    info = backend.info()
    if info.get("model_size_bytes"):  # the weights the backend actually loaded (a converted copy)
        job["model_size_bytes"] = info["model_size_bytes"]
    emit("loaded", load_s=load_s, info=info)
    for ref, name in job["tasks"]:
        try:
            result = run_task(backend, get_task(ref), job, load_s, emit, info)
        except SmallfitError as exc:
            emit("task_error", task=name, error=str(exc))
            continue
        except Exception as exc:  # noqa: BLE001 - one task's bug must not lose the others
            emit("task_error", task=name, error=f"{type(exc).__name__}: {exc}")
            continue
        emit("task_done", result=asdict(result))
    backend.close()
    emit("done")
    return 0


def main() -> int:
    """Entry point of the worker process."""
    emit = Emitter(_protocol_stream())
    _die_with_parent()
    job = json.loads(sys.stdin.read())
    return run_job(job, emit)


if __name__ == "__main__":
    sys.exit(main())
