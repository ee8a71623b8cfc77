"""Measuring one candidate x task inside its worker, as small steps: select the examples, warm up,
run the task's requests, time generation on the same prompts until the timing rule is met,
read memory, energy and contention, and derive the figures. Probes and a sweep variant's
fidelity figures are steps of the same kind. Nothing here knows about processes or pipes.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import is_dataclass, replace
from typing import Any, cast

from smallfit.backends.base import Backend, BackendConfig, ConcurrentBackend, DeviceMemory
from smallfit.contract import Job, Progress, TaskStarted, WorkerEvent
from smallfit.errors import SmallfitError
from smallfit.judge.evidence import interval_methods
from smallfit.metrics import EMBED_PHASE, efficiency_from_timings, is_timed
from smallfit.probes.energy import DEFAULT_CPU_WATTS_PER_CORE, EnergyMeter, EnergyReading, nvml_energy_reader
from smallfit.probes.figures import derived_figures
from smallfit.probes.load import Contention
from smallfit.probes.memory import peak_rss_bytes, reset_peak_rss
from smallfit.probes.scaling import context_scaling, load_curve, steady_energy
from smallfit.records import GenerationRequest, RequestTiming, SampleResult, TaskInfo, TaskResult
from smallfit.signals import SIGNALS
from smallfit.tasks import get_task
from smallfit.tasks.base import Task, in_chat
from smallfit.tasks.embedding import embed_timing

Emit = Callable[[WorkerEvent], None]
MAX_TIMED_REQUESTS = 200
# An embedding request takes milliseconds: room for the 10-second rule to be met.
MAX_TIMED_EMBEDS = 2000


def select(samples: list[Any], limit: int | None, sample: int | None, seed: int, default: int) -> list[Any]:
    """The examples a task runs on: the first ``limit``, a seeded random ``sample`` (kept in file
    order), or the task's default number from the start."""
    if sample is not None:
        if sample >= len(samples):
            return samples
        keep = sorted(random.Random(seed).sample(range(len(samples)), sample))
        return [samples[i] for i in keep]
    return samples[: limit or default]


def task_samples(backend: Backend, task: Task, job: Job) -> list[Any]:
    """The task's examples for this run, in the model's chat template where the run asks for it."""
    s = job.settings
    samples = select(list(task.load()), s.limit, s.sample, s.seed, task.default_limit)
    if task.kind.requires != "embedding" and (task.chat if task.chat is not None else s.chat):
        samples = [in_chat(x, backend.chat_prompt) for x in samples]
    return samples


def task_prompts(backend: Backend, task: Task, job: Job) -> list[str]:
    """The prompts a task ran on, as the model saw them."""
    return [task.kind.prompt_of(s) for s in task_samples(backend, task, job)]


def check_fit(backend: Backend, task: Task, job: Job) -> None:
    """A one-line error when the model cannot run the task at all: an encoder on a task that
    scores or generates text, or a model without embeddings on an embedding task."""
    need, caps, who = task.kind.requires, backend.capabilities, job.model.name
    if need == "embedding" and not caps.embedding:
        raise SmallfitError(f"{who} has no embeddings (not an encoder): {task.name} is an embedding task; "
                            "run it on an encoder such as minilm-l6")
    if caps.embedding and not getattr(caps, need, False):
        raise SmallfitError(f"{who} is an encoder: it runs embedding tasks only ({task.name} needs {need})")


def run_task(backend: Backend, task: Task, job: Job, load_s: float, emit: Emit,
             load_info: dict[str, Any], bandwidth: dict[str, Any], weights_bytes: int | None) -> TaskResult:
    """Warm up, run the task's requests, time generation on the same prompts (and, for a backend
    that serves concurrent requests, at each concurrency level), and aggregate."""
    check_fit(backend, task, job)
    samples = task_samples(backend, task, job)
    if not samples:
        raise SmallfitError(f"task {task.name} has no samples")
    kind, s = task.kind, job.settings
    emit(TaskStarted(task.name, len(samples)))
    for x in samples[: s.warmup]:  # untimed: caches, lazy allocations, page faults
        kind.run(backend, [x], lambda _n: None)
    peak_resettable = reset_peak_rss()
    device = cast(DeviceMemory, backend) if backend.capabilities.device_memory else None
    if device is not None:
        device.reset_peak_device_memory()
    contention = Contention()
    contention.start()
    device_name = str(load_info.get("device", "cpu"))  # where the model runs does not change after load
    meter = EnergyMeter(s.cpu_watts_per_core or DEFAULT_CPU_WATTS_PER_CORE, _gpu_reader(device_name))
    details: dict[str, Any] = {}
    results, timings, latency_prompts = _run_and_time(backend, task, job, samples, meter, emit, details)
    energy = _own_energy(meter.stop(), job, device_name)
    busy = contention.stop()
    concurrency = _concurrency_pass(backend, [kind.prompt_of(x) for x in samples[: s.latency_prompts]],
                                    s.latency_max_tokens)
    peak, peak_source = peak_rss_bytes()
    served = job.model.serves
    size = weights_bytes if weights_bytes is not None else job.model.size_bytes
    metrics: dict[str, float | None] = {**kind.aggregate(results), **efficiency_from_timings(timings)}
    metrics.update(load_s=load_s, peak_rss_bytes=None if served else float(peak),
                   model_size_bytes=None if size is None else float(size))
    vram = device.peak_device_memory_bytes() if device is not None else None
    metrics["peak_vram_bytes"] = float(vram) if vram is not None else None
    labels = derived_figures(metrics, timings, energy, s.prices, _device_bandwidth(bandwidth, device_name, backend))
    embeds = kind.requires == "embedding"
    info = TaskInfo(
        kind=kind.name, n_samples=len(samples), limit=s.limit, sample=s.sample, seed=s.seed if s.sample else None,
        source=task.source, warmup_requests=s.warmup, timed_requests=int(metrics.get("timed_requests") or 0),
        chat_template=not embeds and (task.chat if task.chat is not None else s.chat),
        latency_pass_prompts=latency_prompts,
        latency_pass_max_tokens=None if kind.generates or embeds else s.latency_max_tokens,
        timing_min_requests=s.min_requests(task.name), timing_min_s=s.timing_min_s,
        peak_rss_source="not measured: the model runs in the server's process" if served else peak_source,
        peak_rss_since_start=not served and not peak_resettable,
        contention=busy, noisy=busy.get("noisy"), labels=labels, intervals=interval_methods(metrics),
        concurrency=concurrency.get("concurrency"), concurrency_error=concurrency.get("concurrency_error"),
        backend={k: v for k, v in backend.info().items() if load_info.get(k) != v}, details=details,
        signals=[n for n in SIGNALS if all(n in r.signals for r in results)],
        signals_missing=_signals_missing(backend, task),
    )
    return TaskResult(task.name, metrics, results, timings, info)


def _signals_missing(backend: Backend, task: Task) -> str | None:
    """Why a generation task stored no token log-probability signals, where it did not."""
    if task.kind.generates and not backend.capabilities.token_logprobs:
        return (f"the {backend.info().get('library', 'model')} backend gives no token log-probabilities, so "
                "logprob_mean/logprob_min/logprob_p10 were not stored")
    return None


def _run_and_time(backend: Backend, task: Task, job: Job, samples: list[Any], meter: EnergyMeter,
                  emit: Emit, details: dict[str, Any]) -> tuple[list[SampleResult], list[RequestTiming], int]:
    """The task's own requests, then the timing pass; the results, timings and latency-pass prompts.
    A timing pass that fails after the quality pass keeps the quality results: the error goes into
    ``details["timing_error"]`` and the timings are those taken before it."""
    kind, s = task.kind, job.settings
    progress: Callable[[int], None] = lambda n: emit(Progress(task.name, n))  # noqa: E731
    if kind.generates:  # the task's own generation requests are timed
        meter.start()
        results, timings = kind.run(backend, samples, progress)
        more: list[RequestTiming] = []
        _keep_going(details, lambda: more.extend(
            timing_pass(job, task.name, samples, timings, lambda chunk: kind.run(backend, chunk, lambda _n: None)[1])))
        return results, timings + more, 0
    results, timings = kind.run(backend, samples, progress)
    if kind.requires == "embedding":  # single texts, one request each, cycling through all the task's texts
        meter.start()
        texts = [kind.prompt_of(x) for x in samples]
        _keep_going(details, lambda: timings.extend(timing_pass(
            job, task.name, texts, [], lambda chunk: [embed_timing(backend, t) for t in chunk], MAX_TIMED_EMBEDS)))
        return results, timings, len(samples)
    if not backend.capabilities.generation:
        meter.start()
        return results, timings, 0
    prompts = fitting_prompts(backend, [kind.prompt_of(x) for x in samples[: s.latency_prompts]],
                              s.latency_max_tokens, details)

    def latency_pass() -> None:
        warm = distinct(prompts[0], -1) if job.model.serves else prompts[0]  # not the first timed prompt
        backend.generate([GenerationRequest(warm, s.latency_max_tokens, ignore_eos=True)])  # warm-up
        meter.start()
        timings.extend(timing_pass(job, task.name, prompts, [],
                                   lambda chunk: fixed_length(backend, chunk, s.latency_max_tokens)))

    _keep_going(details, latency_pass)
    if not meter.started:
        meter.start()
    return results, timings, len(prompts)


def _keep_going(details: dict[str, Any], step: Callable[[], None]) -> None:
    """Run a timing step after the quality pass; its failure is recorded, not fatal to the task."""
    try:
        step()
    except SmallfitError as exc:
        details["timing_error"] = f"the timing pass failed after the quality pass: {exc}"


def fitting_prompts(backend: Backend, prompts: list[str], max_tokens: int, details: dict[str, Any]) -> list[str]:
    """The latency pass's prompts, each cut (its start kept) so that it and ``max_tokens`` fit the
    backend's context; how many were cut goes into ``details``. Unchanged where the backend states
    no context size or cannot count tokens."""
    context = backend.info().get("context_size")
    tokenize = getattr(backend, "tokenize", None)
    room = context - max_tokens - 1 if isinstance(context, int) else 0  # one token of slack for BOS
    if tokenize is None or room < 1:
        return prompts
    out = []
    for prompt in prompts:
        for _ in range(8):  # characters per token vary: shrink until it fits
            ids = tokenize(prompt)
            if ids is None or len(ids) <= room:
                break
            prompt = prompt[: max(1, int(len(prompt) * room / len(ids) * 0.95))]
        out.append(prompt)
    cut = sum(a != b for a, b in zip(out, prompts, strict=True))
    if cut:
        details["timing_prompts_truncated"] = cut
        details["timing_prompts_note"] = (f"{cut} latency-pass prompt(s) cut to their first {room} tokens or fewer "
                                          f"to fit the {context}-token context with {max_tokens} generated tokens")
    return out


def _own_energy(energy: EnergyReading, job: Job, device: str = "cpu") -> EnergyReading:
    """A served model's energy is not this process's CPU time: no estimate from the client. A GPU
    candidate's energy is NVML's or nothing: the CPU's figure would omit the GPU."""
    if device.startswith("cuda") and not energy.source.startswith("NVML"):
        return EnergyReading(None, "unavailable", f"the model runs on {device} and NVML's energy counter is not "
                             "readable (install nvidia-ml-py); the CPU's figure would leave the GPU out",
                             energy.seconds)
    if job.model.serves and energy.method == "estimated":
        return EnergyReading(None, "unavailable", "the model runs in the server's process; the CPU-time estimate "
                             "would count only smallfit's client (RAPL or NVML would measure it)", energy.seconds)
    return energy


def _device_bandwidth(bandwidth: dict[str, Any], device: str, backend: Backend) -> dict[str, Any]:
    """The memory bandwidth the weights are read at: the host's for a CPU candidate; a GPU
    candidate's only where its backend states one (``device_bandwidth_bytes_s``)."""
    if device == "cpu" or not device:
        return bandwidth
    stated = backend.info().get("device_bandwidth_bytes_s")
    if isinstance(stated, (int, float)) and stated > 0:
        return {"bytes_per_s": float(stated), "method": f"{device}'s bandwidth as its backend states it"}
    return {"reason": f"the model runs on {device}, whose memory bandwidth is not known (host memory's is not "
                      "its ceiling)"}


def timing_pass(job: Job, task: str, items: Sequence[Any], done: Sequence[RequestTiming],
                run: Callable[[list[Any]], list[RequestTiming]], cap: int = MAX_TIMED_REQUESTS) -> list[RequestTiming]:
    """More timed requests on the same prompts, cycling through them, until at least
    ``timing_min_requests`` requests and ``timing_min_s`` seconds of them are timed (as
    optimum-benchmark's rule), at most ``cap`` requests (or the budget's percentile need, if more)
    and at most ``timing_max_s`` seconds. Embedding requests keep their own phase."""
    s = job.settings
    timed = [t for t in done if is_timed(t)]
    count, seconds = len(timed), sum(t.latency_s for t in timed)
    extra: list[RequestTiming] = []
    # A server may keep a prompt cache that a request cannot switch off (llama-cpp-python's
    # reuses the longest prefix it shares with the previous prompt): every timed request to a
    # served model starts with its own number, so none is timed from a cached prompt.
    fresh = distinct if job.model.serves else (lambda item, _i: item)
    wanted = s.min_requests(task)
    cap = max(cap, wanted)  # a percentile check may need more than the usual cap
    i = 0
    while ((count < wanted or seconds < s.timing_min_s) and count < cap and i < cap
           and seconds < max(s.timing_max_s, s.timing_min_s)):
        for t in run([fresh(items[i % len(items)], i)]):
            phase = EMBED_PHASE if t.phase == EMBED_PHASE else "latency"
            extra.append(RequestTiming(len(extra), phase, t.n_prompt_tokens, t.n_output_tokens, t.ttft_s,
                                       t.latency_s, t.token_times_s))
            if is_timed(t):
                count, seconds = count + 1, seconds + t.latency_s
        i += 1
    return extra


def distinct(item: Any, i: int) -> Any:
    """A prompt (or a generation sample) that starts with its request number, so that no server
    finds it in its prompt cache; other items are returned as they are."""
    if isinstance(item, str):
        return f"[{i}] {item}"
    prompt = getattr(item, "prompt", None)
    if is_dataclass(item) and not isinstance(item, type) and isinstance(prompt, str):
        return replace(item, prompt=f"[{i}] {prompt}")
    return item


def fixed_length(backend: Backend, prompts: list[str], max_tokens: int) -> list[RequestTiming]:
    """Fixed-length timed generation (end of text ignored), as perf tools time decoding."""
    requests = [GenerationRequest(p, max_tokens, ignore_eos=True) for p in prompts]
    return [RequestTiming.of(i, "latency", c) for i, c in enumerate(backend.generate(requests))]


def _gpu_reader(device: str) -> Callable[[], int] | None:
    if not device.startswith("cuda"):
        return None
    index = int(device.split(":")[1]) if ":" in device else 0
    return nvml_energy_reader(index)


def _concurrency_pass(backend: Backend, prompts: list[str], max_tokens: int) -> dict[str, Any]:
    """Per-level throughput and latency on the task's prompts, for backends that serve several
    requests at once; {} for the others. A failure is recorded, not fatal to the task."""
    caps = backend.capabilities
    if not caps.concurrency or not caps.generation or not prompts:
        return {}
    requests = [GenerationRequest(p, max_tokens, ignore_eos=True) for p in prompts]
    try:
        return {"concurrency": cast(ConcurrentBackend, backend).measure_concurrency(requests)}
    except SmallfitError as exc:
        return {"concurrency": None, "concurrency_error": str(exc)}


def run_probe(backend: Backend, name: str, job: Job) -> TaskResult:
    """A candidate-level probe, on the prompts of the run's first task."""
    if not backend.capabilities.generation:
        raise SmallfitError(f"the {name} probe times generation; {job.model.name} does not generate")
    s = job.settings
    task = get_task(s.first_task)
    samples = select(list(task.load()), s.limit, s.sample, s.seed, task.default_limit)
    prompts = [task.kind.prompt_of(x) for x in samples[: max(8, s.latency_prompts)]]
    if name == "load-curve":
        return load_curve(backend, prompts, s.latency_max_tokens)
    if name == "context":
        text = "\n\n".join(task.kind.prompt_of(x) for x in samples)
        return context_scaling(backend, text, s.max_context, s.memory_budget_bytes)
    meter = EnergyMeter(s.cpu_watts_per_core or DEFAULT_CPU_WATTS_PER_CORE,
                        _gpu_reader(str(backend.info().get("device", "cpu"))))
    return steady_energy(backend, prompts[0], max(s.timing_min_s, 1.0), meter, s.latency_max_tokens)


def add_divergence(backend: Backend, task: Task, job: Job, cfg: BackendConfig, result: TaskResult) -> None:
    """A sweep variant's KL divergence from the reference (or an encoder's cosine), into the task's
    metrics; a failure leaves the figures None with the reason as their label."""
    from dataclasses import asdict

    from smallfit.sweep.divergence import kl_metrics

    assert job.sweep is not None
    try:
        kl = kl_metrics(backend, asdict(job.sweep), cfg, task_prompts(backend, task, job))
    except SmallfitError as exc:
        encoder = backend.capabilities.embedding and not backend.capabilities.loglikelihood
        names = ("embedding_cosine", "embedding_cosine_min") if encoder else ("kl_divergence", "kl_divergence_p95")
        kl = {**dict.fromkeys(names), "label": f"not measured: {exc}"}
    label = kl.pop("label")
    for name in kl:
        result.info.labels[name] = label
    result.metrics.update(kl)
    result.info.sweep_variant, result.info.sweep_reference = job.sweep.variant, job.sweep.reference
