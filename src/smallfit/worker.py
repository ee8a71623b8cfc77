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
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from smallfit.backends.base import Backend, BackendConfig, ConcurrentBackend, load_backend
from smallfit.cost import Prices, usd_per_mtok
from smallfit.errors import SmallfitError
from smallfit.metrics import EMBED_PHASE, efficiency_from_timings, is_timed, timed_requests
from smallfit.probes.bandwidth import decode_roofline_tok_s, machine_bandwidth
from smallfit.probes.energy import (
    DEFAULT_CPU_WATTS_PER_CORE,
    EnergyMeter,
    EnergyReading,
    nvml_energy_reader,
)
from smallfit.probes.hardware import fingerprint
from smallfit.probes.load import Contention
from smallfit.probes.memory import peak_rss_bytes, reset_peak_rss
from smallfit.probes.scaling import context_scaling, load_curve, steady_energy
from smallfit.records import GenerationRequest, RequestTiming, TaskResult
from smallfit.tasks import get_task
from smallfit.tasks.base import Task, in_chat
from smallfit.tasks.embedding import embed_timing


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
    """Warm up, run the task's requests, time generation on the same prompts (and, for a backend
    that serves concurrent requests, at each concurrency level), and aggregate."""
    _check_fit(backend, task, job)
    samples = select(list(task.load()), job.get("limit"), job.get("sample"), job.get("seed", 0), task.default_limit)
    if not samples:
        raise SmallfitError(f"task {task.name} has no samples")
    kind = task.kind
    embeds = kind.requires == "embedding"
    chat = not embeds and (task.chat if task.chat is not None else bool(job.get("chat")))
    if chat:
        samples = [in_chat(s, backend.chat_prompt) for s in samples]
    emit("task_started", task=task.name, total=len(samples))
    for s in samples[: job.get("warmup", 1)]:  # untimed: caches, lazy allocations, page faults
        kind.run(backend, [s], lambda _n: None)
    peak_resettable = reset_peak_rss()
    if hasattr(backend, "reset_peak_device_memory"):
        backend.reset_peak_device_memory()
    contention = Contention()
    contention.start()
    meter = EnergyMeter(job.get("prices", {}).get("cpu_watts_per_core", DEFAULT_CPU_WATTS_PER_CORE), _gpu_reader(backend))
    progress = lambda n: emit("progress", task=task.name, done=n)
    if kind.generates:
        meter.start()
        results, timings = kind.run(backend, samples, progress)
        timings += _timing_pass(backend, job, samples, timings,
                                lambda chunk: kind.run(backend, chunk, lambda _n: None)[1])
    else:
        results, timings = kind.run(backend, samples, progress)
        prompts = [kind.prompt_of(s) for s in samples[: job["latency_prompts"]]]
        if backend.capabilities.generation:  # warm-up of the latency pass, untimed
            backend.generate([GenerationRequest(prompts[0], job["latency_max_tokens"], ignore_eos=True)])
        meter.start()
        if embeds:  # single texts, one request each, cycling through all the task's texts
            texts = [kind.prompt_of(s) for s in samples]
            timings += _timing_pass(backend, job, texts, [], lambda chunk: [embed_timing(backend, t) for t in chunk],
                                    MAX_TIMED_EMBEDS)
        elif backend.capabilities.generation:
            timings += _timing_pass(backend, job, prompts, [], lambda chunk: _fixed_length(backend, chunk, job))
    energy = meter.stop()
    served = bool(job.get("location"))  # the model runs in a server's process, not this one
    if served and energy.method == "estimated":  # this process's CPU time is the client's, not the model's
        energy = EnergyReading(None, "unavailable", "the model runs in the server's process; the "
                               "CPU-time estimate would count only smallfit's client (RAPL or NVML would measure it)",
                               energy.seconds)
    busy = contention.stop()
    concurrency = _concurrency_pass(backend, [kind.prompt_of(s) for s in samples[: job["latency_prompts"]]],
                                    job["latency_max_tokens"])
    peak, peak_source = peak_rss_bytes()
    metrics: dict[str, float | None] = {**kind.aggregate(results), **efficiency_from_timings(timings)}
    size = job.get("model_size_bytes")
    metrics.update(load_s=load_s, peak_rss_bytes=None if served else float(peak),
                   model_size_bytes=None if size is None else float(size))
    vram = backend.peak_device_memory_bytes() if hasattr(backend, "peak_device_memory_bytes") else None
    metrics["peak_vram_bytes"] = float(vram) if vram is not None else None
    labels = _energy_cost_roofline(metrics, timings, energy, job)
    n_timed = int(metrics.get("timed_requests") or 0)
    info = {
        "kind": kind.name, "n_samples": len(samples), "limit": job.get("limit"), "sample": job.get("sample"),
        "seed": job.get("seed", 0) if job.get("sample") else None, "source": task.source,
        "warmup_requests": job.get("warmup", 1), "timed_requests": n_timed, "chat_template": chat,
        "latency_pass_prompts": 0 if kind.generates else len(samples) if embeds else min(len(samples), job["latency_prompts"]),
        "latency_pass_max_tokens": None if kind.generates or embeds else job["latency_max_tokens"],
        "timing_rule": {"min_requests": job["timing_min_requests"], "min_s": job["timing_min_s"]},
        "peak_rss_source": "not measured: the model runs in the server's process" if served
        else peak_source if peak_resettable else f"{peak_source} (since process start)",
        "contention": busy, "noisy": busy.get("noisy"), "labels": labels,
        **concurrency,
    }
    changed = {k: v for k, v in backend.info().items() if (load_info or {}).get(k) != v}
    if changed:  # counters a backend keeps while it runs (a server's retries), as of this task's end
        info["backend"] = changed
    return TaskResult(task.name, metrics, results, timings, info)


def _check_fit(backend: Backend, task: Task, job: dict[str, Any]) -> None:
    """A one-line error when the model cannot run the task at all: an encoder on a task that
    scores or generates text, or a model without embeddings on an embedding task."""
    need, caps = task.kind.requires, backend.capabilities
    who = job.get("candidate") or "this model"
    if need == "embedding" and not caps.embedding:
        raise SmallfitError(f"{who} has no embeddings (not an encoder): {task.name} is an embedding task; "
                            "run it on an encoder such as minilm-l6")
    if caps.embedding and not getattr(caps, need, False):
        raise SmallfitError(f"{who} is an encoder: it runs embedding tasks only ({task.name} needs {need})")


def run_probe(backend: Backend, name: str, job: dict[str, Any]) -> TaskResult:
    """A candidate-level probe, on the prompts of the run's first task."""
    if not backend.capabilities.generation:
        raise SmallfitError(f"the {name} probe times generation; {job.get('candidate') or 'this model'} does not generate")
    task = get_task(job["first_task"])
    samples = select(list(task.load()), job.get("limit"), job.get("sample"), job.get("seed", 0), task.default_limit)
    prompts = [task.kind.prompt_of(s) for s in samples[: max(8, job["latency_prompts"])]]
    if name == "load-curve":
        return load_curve(backend, prompts, job["latency_max_tokens"])
    if name == "context":
        text = "\n\n".join(task.kind.prompt_of(s) for s in samples)
        return context_scaling(backend, text, job["max_context"], job.get("memory_budget_bytes"))
    watts = job.get("prices", {}).get("cpu_watts_per_core", DEFAULT_CPU_WATTS_PER_CORE)
    return steady_energy(backend, prompts[0], max(job["timing_min_s"], 1.0), EnergyMeter(watts, _gpu_reader(backend)),
                         job["latency_max_tokens"])


MAX_TIMED_REQUESTS = 200
# An embedding request takes milliseconds: room for the 10-second rule to be met.
MAX_TIMED_EMBEDS = 2000


def _timing_pass(backend: Backend, job: dict[str, Any], items: Sequence[Any], done: Sequence[RequestTiming],
                 run: Callable[[list[Any]], list[RequestTiming]], cap: int = MAX_TIMED_REQUESTS) -> list[RequestTiming]:
    """More timed requests on the same prompts, cycling through them, until at least
    ``timing_min_requests`` requests and ``timing_min_s`` seconds of them are timed (as
    optimum-benchmark's rule), at most ``cap``. Embedding requests keep their own phase."""
    timed = [t for t in done if is_timed(t)]
    count, seconds = len(timed), sum(t.latency_s for t in timed)
    extra: list[RequestTiming] = []
    i = 0
    while (count < job["timing_min_requests"] or seconds < job["timing_min_s"]) and count < cap:
        for t in run([items[i % len(items)]]):
            phase = EMBED_PHASE if t.phase == EMBED_PHASE else "latency"
            extra.append(RequestTiming(len(extra), phase, t.n_prompt_tokens, t.n_output_tokens, t.ttft_s,
                                       t.latency_s, t.token_times_s))
            if is_timed(t):
                count, seconds = count + 1, seconds + t.latency_s
        i += 1
        if i >= cap:
            break
    return extra


def _fixed_length(backend: Backend, prompts: list[str], job: dict[str, Any]) -> list[RequestTiming]:
    requests = [GenerationRequest(p, job["latency_max_tokens"], ignore_eos=True) for p in prompts]
    return [RequestTiming.of(i, "latency", c) for i, c in enumerate(backend.generate(requests))]


def _gpu_reader(backend: Backend) -> Callable[[], int] | None:
    device = str(backend.info().get("device", "cpu"))
    if not device.startswith("cuda"):
        return None
    index = int(device.split(":")[1]) if ":" in device else 0
    return nvml_energy_reader(index)


def _energy_cost_roofline(metrics: dict[str, float | None], timings: Sequence[RequestTiming], energy: EnergyReading,
                          job: dict[str, Any]) -> dict[str, str]:
    """Energy per token and request, cost per million tokens, and the decode roofline; each
    figure's label (measured or estimated, and from what) goes into the returned map."""
    timed = timed_requests(timings)
    encoder = any(t.phase == EMBED_PHASE for t in timed)  # no output tokens, no decode
    labels: dict[str, str] = {}
    out_tokens = sum(t.n_output_tokens for t in timed)
    if energy.joules is not None and timed:
        metrics["energy_j"] = energy.joules
        metrics["energy_j_per_token"] = energy.joules / out_tokens if out_tokens else None
        metrics["energy_j_per_request"] = energy.joules / len(timed)
        metrics["power_w"] = energy.joules / energy.seconds if energy.seconds > 0 else None
    else:
        metrics.update(energy_j=None, energy_j_per_token=None, energy_j_per_request=None, power_w=None)
    for key in ("energy_j", "energy_j_per_token", "energy_j_per_request", "power_w"):
        labels[key] = f"{energy.method}: {energy.source}"
    try:
        prices = Prices.model_validate(job.get("prices") or {})
    except ValueError as exc:
        prices, reason = None, f"not computed: bad price ({exc})"
    if prices is not None:
        watts = metrics.get("power_w")
        metrics["cost_usd_per_mtok_out"] = usd_per_mtok(metrics.get("decode_tok_s"), watts, prices)
        rate_in = metrics.get("input_tok_s") if encoder else metrics.get("prefill_tok_s")
        metrics["cost_usd_per_mtok_in"] = usd_per_mtok(rate_in, watts, prices)
        reason = (f"estimated: hardware {prices.hardware_usd_per_s() * 3600:.4g} $/h, electricity "
                  f"{prices.electricity_usd_per_kwh:g} $/kWh, power from energy_j ({energy.method})")
    labels["cost_usd_per_mtok_out"] = labels["cost_usd_per_mtok_in"] = reason
    bandwidth = job.get("bandwidth") or {}
    bw, size = bandwidth.get("bytes_per_s"), metrics.get("model_size_bytes")
    metrics["memory_bandwidth_bytes_s"] = bw
    if bw and size and not encoder:
        ceiling = decode_roofline_tok_s(bw, size)
        metrics["decode_roofline_tok_s"] = ceiling
        decode = metrics.get("decode_tok_s")
        metrics["decode_roofline_pct"] = 100 * decode / ceiling if decode else None
    else:
        metrics["decode_roofline_tok_s"] = metrics["decode_roofline_pct"] = None
    labels["memory_bandwidth_bytes_s"] = f"measured: {bandwidth.get('method', 'not measured')}"
    labels["decode_roofline_pct"] = "estimated: assumes every weight byte is read once per token"
    return labels


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


def task_prompts(backend: Backend, task: Task, job: dict[str, Any]) -> list[str]:
    """The prompts a task ran on, as the model saw them (chat template applied when used)."""
    samples = select(list(task.load()), job.get("limit"), job.get("sample"), job.get("seed", 0), task.default_limit)
    if task.chat if task.chat is not None else bool(job.get("chat")):
        samples = [in_chat(s, backend.chat_prompt) for s in samples]
    return [task.kind.prompt_of(s) for s in samples]


def _add_divergence(backend: Backend, task: Task, job: dict[str, Any], cfg: BackendConfig,
                    result: TaskResult) -> None:
    """A sweep variant's KL divergence from the reference, into the task's metrics; a failure
    leaves the figures None with the reason as their label, the task's other figures kept."""
    from smallfit.divergence import kl_metrics

    labels = result.info.setdefault("labels", {})
    try:
        kl = kl_metrics(backend, job["sweep"], cfg, task_prompts(backend, task, job))
    except SmallfitError as exc:
        encoder = getattr(backend.capabilities, "embedding", False) and not backend.capabilities.loglikelihood
        names = ("embedding_cosine", "embedding_cosine_min") if encoder else ("kl_divergence", "kl_divergence_p95")
        kl = {**dict.fromkeys(names), "label": f"not measured: {exc}"}
    label = kl.pop("label")
    for name in kl:
        labels[name] = label
    result.metrics.update(kl)
    result.info["sweep"] = {"variant": job["sweep"]["variant"], "reference": job["sweep"]["reference"]}


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
    if job.get("prepare_s") is not None:  # built before this process started (see smallfit.prepare)
        info["prepared_in_own_process_s"] = round(job["prepare_s"], 3)
    job["bandwidth"] = machine_bandwidth(job["threads"] or 1, str(fingerprint()["cpu_model"]))
    if info.get("model_size_bytes"):  # the weights the backend actually loaded (a converted copy)
        job["model_size_bytes"] = info["model_size_bytes"]
    emit("loaded", load_s=load_s, info=info)
    for ref, name in job["tasks"]:
        try:
            if ref.startswith("probe:"):
                emit("task_started", task=name, total=1)
                result = run_probe(backend, ref.removeprefix("probe:"), job)
                emit("progress", task=name, done=1)
            else:
                task = get_task(ref)
                result = run_task(backend, task, job, load_s, emit, info)
                if job.get("sweep"):  # after the task's measurements: this may load the reference too
                    _add_divergence(backend, task, job, cfg, result)
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
