"""The runner -> worker contract: a typed :class:`Job` in, typed :data:`WorkerEvent` lines out.

The runner resolves each candidate once (:class:`ResolvedModel`: what will actually run, with
its content hash and size), stores it with the run, and hands the worker a frozen :class:`Job`.
The worker never changes its job; it answers with one JSON line per :data:`WorkerEvent`, encoded and
decoded here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter

from smallfit.records import TaskResult


@dataclass(frozen=True)
class ResolvedModel:
    """What a candidate actually ran, stored with the run so that no reader needs the model file."""

    name: str
    """The candidate's name in tables."""
    ref: str
    """The reference as the user wrote it (``smollm2-135m``, ``./m.gguf@onnx``)."""
    backend: str
    """The registered backend that runs it."""
    kind: str
    """alias, file, folder, hub, hub-repo or server."""
    format: str
    """gguf, onnx, transformers, http, or a plugin's format."""
    location: str
    """The resolved file or folder (a sweep variant's built file), or the server's URL."""
    sha256: str | None = None
    """SHA-256 of the weights' content (a folder: of its weight files in name order); None when served."""
    size_bytes: int | None = None
    """Bytes of the weights that ran (the backend may report another figure for what it loaded)."""
    variant: str | None = None
    """Quantization-sweep variant (``q8_0``, ``torch-int8``), when this candidate is one."""
    variant_source: str | None = None
    """The model the variant was made from."""
    serves: bool = False
    """The model runs in a server's process, not the worker's."""
    backend_package: str | None = None
    """The package that registered the backend, and its version (``smallfit 0.1.0``, a plugin's)."""


@dataclass(frozen=True)
class Settings:
    """Run-wide settings a worker needs to run and time its tasks."""

    limit: int | None = None
    sample: int | None = None
    seed: int = 0
    chat: bool = False
    warmup: int = 1
    latency_prompts: int = 8
    latency_max_tokens: int = 32
    timing_min_requests: int = 10
    timing_min_s: float = 10.0
    timing_max_s: float = 120.0
    """Seconds of timed requests per task, at most, when the budget's percentile checks ask for
    more requests than ``timing_min_requests`` (``timing_reason`` says which)."""
    percentile_requests: dict[str, int] = field(default_factory=dict)
    """Timed requests the budget's percentile checks need, by task name (``*``: every task)."""
    timing_reason: str = ""

    def min_requests(self, task: str) -> int:
        """Timed requests a task runs at least: the timing rule's, or its percentile checks' need."""
        need = max(self.percentile_requests.get(task, 0), self.percentile_requests.get("*", 0))
        return max(self.timing_min_requests, need)
    max_context: int = 8192
    memory_budget_bytes: float | None = None
    first_task: str = ""
    """The run's first task: the probes use its prompts."""
    cpu_watts_per_core: float | None = None
    """Per-core power of the CPU-time energy estimate (None: the documented default)."""
    prices: dict[str, float | None] = field(default_factory=dict)
    """The run's prices (see smallfit.probes.cost.Prices)."""


@dataclass(frozen=True)
class SweepSettings:
    """How a sweep variant is compared with its full-precision reference (KL divergence, cosine)."""

    variant: str
    reference: str
    reference_backend: str
    reference_path: str
    reference_options: dict[str, Any] = field(default_factory=dict)
    source: str = ""


@dataclass(frozen=True)
class Job:
    """One candidate's work: load its model once, then run these tasks. Never mutated."""

    model: ResolvedModel
    tasks: tuple[tuple[str, str], ...]
    """(task reference, task name) pairs; ``probe:NAME`` references are probes."""
    settings: Settings
    threads: int
    context_size: int = 2048
    batch_size: int = 512
    options: dict[str, Any] = field(default_factory=dict)
    sweep: SweepSettings | None = None
    prepare_s: float | None = None
    """Seconds a preparation build (an export) took in its own process before this job."""


@dataclass(frozen=True)
class Loaded:
    """The model loaded."""

    load_s: float
    info: dict[str, Any]
    """The backend's own settings and versions (free-form: each backend has its own)."""
    weights_bytes: int | None = None
    """Bytes of the weights the backend loaded, where it knows them (an export, int8 in memory)."""
    event: Literal["loaded"] = "loaded"


@dataclass(frozen=True)
class TaskStarted:
    """A task began: ``total`` examples."""

    task: str
    total: int
    event: Literal["task_started"] = "task_started"


@dataclass(frozen=True)
class Progress:
    """``done`` examples of a task are scored."""

    task: str
    done: int
    event: Literal["progress"] = "progress"


@dataclass(frozen=True)
class TaskDone:
    """A task finished: its full result, to be stored at once."""

    result: TaskResult
    event: Literal["task_done"] = "task_done"


@dataclass(frozen=True)
class TaskFailed:
    """A task failed; the worker goes on with the next one."""

    task: str
    error: str
    event: Literal["task_error"] = "task_error"


@dataclass(frozen=True)
class Fatal:
    """The candidate cannot run at all (its model did not load)."""

    error: str
    event: Literal["error"] = "error"


@dataclass(frozen=True)
class Finished:
    """The worker ran every task of its job."""

    event: Literal["done"] = "done"


WorkerEvent = Loaded | TaskStarted | Progress | TaskDone | TaskFailed | Fatal | Finished
"""Anything a worker says on its pipe."""
_EVENTS: TypeAdapter[WorkerEvent] = TypeAdapter(Annotated[WorkerEvent, Field(discriminator="event")])
_JOB: TypeAdapter[Job] = TypeAdapter(Job)


def encode_event(event: WorkerEvent) -> str:
    """One event as one JSON line (no newline)."""
    return _EVENTS.dump_json(event).decode()


def decode_event(line: str) -> WorkerEvent:
    """An event from its JSON line; ``ValueError`` for a line that is not one."""
    return _EVENTS.validate_json(line)


def encode_job(job: Job) -> str:
    """The job as JSON, for the worker's stdin."""
    return _JOB.dump_json(job).decode()


def decode_job(text: str) -> Job:
    """The job back from JSON."""
    return _JOB.validate_json(text)
