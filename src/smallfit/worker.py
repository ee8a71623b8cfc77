"""A candidate's own process: load the model, run its tasks, stream results to the runner.

Started by the runner as ``python -m smallfit.worker`` with a :class:`~smallfit.contract.Job` as
JSON on stdin. It writes one :mod:`~smallfit.contract` event per line to its stdout and nothing
else there: anything a native library prints goes to stderr. Running each candidate in its own
process makes its peak memory its own and contains a crash or an out-of-memory kill to that
candidate. What is measured, and how, lives in :mod:`smallfit.measure`; this module is plumbing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from smallfit.backends.base import Backend, BackendConfig, EmbeddingBackend, missing_methods
from smallfit.backends.registry import get_backend
from smallfit.contract import (
    Fatal,
    Finished,
    Job,
    Loaded,
    TaskDone,
    TaskFailed,
    TaskStarted,
    WorkerEvent,
    decode_job,
    encode_event,
)
from smallfit.errors import SmallfitError
from smallfit.measure import add_divergence, run_probe, run_task
from smallfit.probes.bandwidth import machine_bandwidth
from smallfit.probes.hardware import fingerprint
from smallfit.records import TaskResult
from smallfit.tasks import get_task


class Emitter:
    """Writes protocol events as JSON lines to a private copy of the original stdout."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, event: WorkerEvent) -> None:
        self.stream.write(encode_event(event) + "\n")
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


def run_job(job: Job, emit: Emitter) -> int:
    """Load the candidate's model and run each of its tasks; 0 if it loaded."""
    cfg = BackendConfig(model_path=Path("" if job.model.serves else job.model.location), threads=job.threads,
                        context_size=job.context_size, batch_size=job.batch_size, options=dict(job.options),
                        location=job.model.location if job.model.serves else "")
    try:
        spec = get_backend(job.model.backend)  # the registry is read before the load is timed
        t0 = time.perf_counter()
        backend = spec.load(cfg)
        load_s = time.perf_counter() - t0
        _check_protocol(backend, spec.name, spec.distribution)
    except SmallfitError as exc:
        emit(Fatal(str(exc)))
        return 1
    info = backend.info()
    info.setdefault("capabilities", asdict(backend.capabilities))  # what it declared, detected at load
    if job.prepare_s is not None:  # built before this process started (see smallfit.prepare)
        info["prepared_in_own_process_s"] = round(job.prepare_s, 3)
    size = info.get("model_size_bytes")  # the weights the backend actually loaded (a converted copy)
    loaded = Loaded(load_s, info, int(size) if isinstance(size, int | float) and size else None)
    emit(loaded)
    bandwidth = machine_bandwidth(job.threads or 1, str(fingerprint()["cpu_model"]))
    for ref, name in job.tasks:
        try:
            result = _run_one(backend, ref, name, job, cfg, emit, loaded, bandwidth)
        except SmallfitError as exc:
            emit(TaskFailed(name, str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - one task's bug must not lose the others
            emit(TaskFailed(name, f"{type(exc).__name__}: {exc}"))
            continue
        emit(TaskDone(result))
    backend.close()
    emit(Finished())
    return 0


def _check_protocol(backend: object, name: str, distribution: str) -> None:
    """A plugin's model that lacks part of its protocol (Backend, or EmbeddingBackend for an
    encoder) is this candidate's one-line error."""
    caps = getattr(backend, "capabilities", None)
    protocol = EmbeddingBackend if getattr(caps, "embedding", False) else Backend
    missing = missing_methods(backend, protocol) + ([] if caps is not None else ["capabilities"])
    if missing:
        raise SmallfitError(f"backend {name} ({distribution}) does not keep the Backend contract: it lacks "
                            f"{', '.join(missing)}; fix or uninstall the plugin")


def _run_one(backend: Backend, ref: str, name: str, job: Job, cfg: BackendConfig, emit: Emitter, loaded: Loaded,
             bandwidth: dict[str, Any]) -> TaskResult:
    if ref.startswith("probe:"):
        emit(TaskStarted(name, 1))
        return run_probe(backend, ref.removeprefix("probe:"), job)
    task = get_task(ref)
    result = run_task(backend, task, job, loaded.load_s, emit, loaded.info, bandwidth, loaded.weights_bytes)
    if job.sweep is not None:  # after the task's measurements: this may load the reference too
        add_divergence(backend, task, job, cfg, result)
    return result


def main() -> int:
    """Entry point of the worker process."""
    emit = Emitter(_protocol_stream())
    _die_with_parent()
    job = decode_job(sys.stdin.read())
    return run_job(job, emit)


if __name__ == "__main__":
    sys.exit(main())
