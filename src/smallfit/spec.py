"""RunSpec: what to run. Built from a TOML file, from CLI flags, or the bundled default.

A spec file looks like::

    tasks = ["quartz", "gsm8k-bpb"]
    budget = ["acc>=0.40", "latency_s_p95<=2.0", "peak_rss_bytes<=1.5GB"]
    limit = 20

    [[candidates]]
    model = "smollm2-135m"

    [[candidates]]
    model = "./models/my-model-q4_k_m.gguf"
    name = "mine"
    threads = 2
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from smallfit.errors import SmallfitError
from smallfit.judge.budget import Check, parse_budget
from smallfit.models import ModelRef, parse_model_ref
from smallfit.probes.cost import Prices


class CandidateSpec(BaseModel):
    """One candidate: a model reference, the backend that runs it, and its settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="bundled alias, path to a .gguf file, or hf:OWNER/REPO/FILE")
    name: str | None = Field(default=None, description="label in tables; defaults from the model")
    backend: str | None = Field(default=None, description="backend; inferred from the model file when omitted")
    threads: int | None = Field(default=None, ge=1, description="CPU threads; default: the cores free at start")
    context_size: int = Field(default=2048, ge=64, description="context window in tokens")
    batch_size: int = Field(default=512, ge=1, description="tokens evaluated per decode call (llama.cpp)")
    options: dict[str, Any] = Field(default_factory=dict, description="backend options, e.g. {dtype = \"bfloat16\"}")
    hardware: str | None = Field(default=None, min_length=1, description="--executor ray: run this candidate's jobs "
                                 "only on nodes started with this custom resource (a hardware class: gpu, pi5...)")

    def ref(self) -> ModelRef:
        """The parsed model reference, with this candidate's name and backend when given (checked
        against the registry like ``MODEL@BACKEND``)."""
        if self.backend and "@" in self.model:
            raise SmallfitError(f"{self.model!r}: give the backend once, as MODEL@BACKEND or as backend = ...")
        ref = parse_model_ref(f"{self.model}@{self.backend}" if self.backend else self.model)
        return ModelRef(ref.raw, self.name or ref.name, ref.kind, ref.location, ref.backend, ref.format)


class RunSpec(BaseModel):
    """Everything a run needs; stored with the run so it can be resumed or re-reported."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    candidates: list[CandidateSpec] = Field(min_length=1)
    tasks: list[str] = Field(min_length=1)
    budget: list[str] = Field(default_factory=list, description="checks like 'acc>=0.4'")
    limit: int | None = Field(default=None, ge=1, description="first N examples of each task")
    sample: int | None = Field(default=None, ge=1, description="a random N examples of each task (see seed)")
    seed: int = Field(default=0, description="seed of --sample's random subset")
    threads: int | None = Field(default=None, ge=1, description="default threads for every candidate")
    latency_prompts: int = Field(default=8, ge=1, description="prompts in the latency pass of scoring tasks")
    latency_max_tokens: int = Field(default=32, ge=2, description="tokens generated per latency-pass prompt")
    warmup: int = Field(default=1, ge=0, description="untimed requests before each task's timed ones")
    chat: bool = Field(default=False, description="wrap prompts in each model's chat template (tasks may override)")
    timing_min_requests: int = Field(default=10, ge=1, description="timed generation requests per task, at least")
    timing_min_s: float = Field(default=10.0, ge=0, description="seconds of timed generation per task, at least")
    timing_max_s: float = Field(default=120.0, gt=0, description="seconds of timed generation per task, at most, "
                                "when the budget's percentile checks ask for more requests than the timing rule")
    quick: bool = Field(default=False, description="fewer timed requests (3 and 1 s): for smoke tests")
    prices: Prices = Field(default_factory=Prices, description="hardware and electricity prices for cost figures")
    probes: list[str] = Field(default_factory=list, description="extra measurements: load-curve, context, energy")
    max_context: int = Field(default=8192, ge=128, description="longest prompt the context probe tries")
    quantize: list[str] = Field(default_factory=list, description="quantization sweep: each candidate becomes "
                                "its full-precision reference plus these variants (llama.cpp types q8_0, "
                                "q4_k_m...; torch-f32, torch-int8, onnx-f32, onnx-int8)")

    @field_validator("quantize", mode="before")
    @classmethod
    def _split_types(cls, value: object) -> object:
        """``"q8_0, Q4_K_M"`` or ``["q8_0,q4_0"]`` -> ``["q8_0", "q4_k_m"]``; expanded by :mod:`smallfit.plan`."""
        if isinstance(value, str | list):
            from smallfit.sweep.quantize import parse_types

            types = parse_types(value if isinstance(value, str) else [str(v) for v in value])
            if value and not types:
                raise ValueError("--quantize names no type: give e.g. --quantize q8_0,q4_k_m,q4_0")
            return types
        return value

    def percentile_requests(self) -> dict[str, tuple[int, str]]:
        """Timed requests the budget's upper-bound percentile checks need to be decided (an upper
        bound on a p95 exists from 72 requests on, see smallfit.scoring.requests_to_bound), and
        why, by the task they apply to (``*``: every task); none with ``quick``."""
        from smallfit.metrics import quantile_of
        from smallfit.scoring import requests_to_bound

        out: dict[str, tuple[int, str]] = {}
        for c in [] if self.quick else self.checks():
            q = quantile_of(c.metric)
            if q is None or c.op not in ("<=", "<"):
                continue
            n, where = requests_to_bound(q), c.task or "*"
            if n > out.get(where, (0, ""))[0]:
                out[where] = (n, f"{c} needs {n} timed requests to bound its percentile from above")
        return out

    def timing_rule(self) -> tuple[int, float]:
        """(min requests, min seconds) of timed generation per task."""
        return (3, 1.0) if self.quick else (self.timing_min_requests, self.timing_min_s)

    @field_validator("budget", mode="before")
    @classmethod
    def _split_budget(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> RunSpec:
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError("a task is listed twice")
        unknown = [p for p in self.probes if p not in ("load-curve", "context", "energy")]
        if unknown:
            raise ValueError(f"unknown probe {unknown[0]!r}: choose from load-curve, context, energy")
        if self.limit is not None and self.sample is not None:
            raise ValueError("give limit (the first N) or sample (a random N), not both")
        return self

    def checks(self) -> list[Check]:
        """The parsed budget."""
        return parse_budget(self.budget) if self.budget else []

    def memory_budget_bytes(self) -> float | None:
        """The tightest ``peak_rss_bytes`` upper bound in the budget, if any."""
        bounds = [c.threshold for c in self.checks() if c.metric == "peak_rss_bytes" and c.op in ("<=", "<")]
        return min(bounds) if bounds else None


DEFAULT_SPEC = RunSpec(
    candidates=[CandidateSpec(model="smollm2-135m"), CandidateSpec(model="gemma3-270m")],
    tasks=["gsm8k-bpb", "quartz", "largest-country"],
    budget=["bits_per_byte<=1.0", "quartz:latency_s_p95<=2.0", "peak_rss_bytes<=1.5GB"],
)


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "spec"
    return f"{where}: {err['msg']}"


def build_spec(data: dict[str, object], source: str) -> RunSpec:
    """Validate spec data; a one-line error names the source, the field and the problem."""
    try:
        spec = RunSpec.model_validate(data)
    except ValidationError as exc:
        raise SmallfitError(f"{source}: {_one_line(exc)}") from None
    spec.checks()
    return spec


def load_spec_file(path: Path) -> RunSpec:
    """Read a TOML spec file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SmallfitError(f"spec file not found: {path}") from None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as exc:
        raise SmallfitError(f"cannot read spec file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SmallfitError(f"{path}: invalid TOML ({exc})") from None
    tasks = data.get("tasks")
    if isinstance(tasks, list):  # task files are relative to the spec file
        data["tasks"] = [absolute_task_ref(t, path.parent) if isinstance(t, str) else t for t in tasks]
    return build_spec(data, str(path))


def absolute_task_ref(ref: str, base: Path) -> str:
    """Paths in a task reference (a task file, or NAME=PATH) made absolute, since a resumed run
    may start from another folder; other references unchanged."""
    if ref.endswith(".toml") and "=" not in ref:
        return str((base / ref).resolve())
    name, sep, path = ref.partition("=")
    if sep and path:
        return f"{name}={(base / Path(path).expanduser()).resolve()}"
    return ref
