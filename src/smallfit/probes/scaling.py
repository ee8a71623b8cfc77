"""Probes run once per candidate: the load curve, context scaling, and steady-state energy.

Each returns a TaskResult named ``probe:<name>`` so it is stored, resumed and exported like a
task; its raw measurements go to the timings table (phase ``load-curve``, ``context`` or
``energy``). A figure a backend cannot measure is None with the reason in ``info``.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from itertools import pairwise
from typing import cast

from smallfit.backends.base import Backend, BatchingBackend
from smallfit.probes.energy import EnergyMeter
from smallfit.probes.figures import energy_figures
from smallfit.probes.memory import peak_rss_bytes, reset_peak_rss
from smallfit.records import GenerationRequest, RequestTiming, TaskInfo, TaskResult

PROBES = ("load-curve", "context", "energy")
BATCH_SIZES = (1, 2, 4, 8)
CONTEXT_LENGTHS = (128, 512, 2048, 8192, 32768, 131072)
KNEE_GAIN = 0.10  # a doubling that adds less than 10 % throughput is past the knee


def knee(throughputs: dict[int, float]) -> int | None:
    """The batch size after which doubling it adds less than ``KNEE_GAIN`` throughput."""
    sizes = sorted(throughputs)
    for small, big in pairwise(sizes):
        if throughputs[big] < throughputs[small] * (1 + KNEE_GAIN):
            return small
    return sizes[-1] if sizes else None


def _unsupported(name: str, backend: Backend) -> TaskResult:
    reason = f"the {type(backend).__name__} cannot run this probe (it needs batched decoding)"
    return TaskResult(f"probe:{name}", {}, [], [], TaskInfo(kind="probe", unsupported=reason))


def load_curve(backend: Backend, prompts: Sequence[str], max_tokens: int) -> TaskResult:
    """Throughput and latency against the number of sequences decoded together."""
    if not backend.capabilities.batching:
        return _unsupported("load-curve", backend)
    gen = cast(BatchingBackend, backend).generate_together
    gen(list(prompts[:1]), 4)  # warm-up
    metrics: dict[str, float | None] = {}
    timings: list[RequestTiming] = []
    rates: dict[int, float] = {}
    for size in BATCH_SIZES:
        batch = [prompts[i % len(prompts)] for i in range(size)]
        done = gen(batch, max_tokens)
        wall = max(c.latency_s for c in done)
        rates[size] = sum(c.n_output_tokens for c in done) / wall
        metrics[f"throughput_tok_s_at_{size}"] = rates[size]
        metrics[f"latency_s_at_{size}"] = statistics.median(c.latency_s for c in done)
        metrics[f"ttft_s_at_{size}"] = statistics.median(c.ttft_s or 0.0 for c in done)
        timings += [RequestTiming.of(size * 100 + i, "load-curve", c) for i, c in enumerate(done)]
    best = knee(rates)
    metrics["knee_batch_size"] = float(best) if best else None
    rule = f"the batch size after which doubling adds less than {KNEE_GAIN:.0%} throughput"
    return TaskResult("probe:load-curve", metrics, [], timings, TaskInfo(kind="probe", details={
        "batch_sizes": list(BATCH_SIZES), "max_tokens": max_tokens, "knee_rule": rule}))


def context_scaling(backend: Backend, text: str, max_context: int, memory_budget: float | None) -> TaskResult:
    """TTFT, prefill tokens/s and peak memory against prompt length, each in a fresh context."""
    if not backend.capabilities.batching:
        return _unsupported("context", backend)
    batching = cast(BatchingBackend, backend)
    limit = min(max_context, int(batching.context_train()))
    tokenize = batching.tokenize
    tokens: list[int] = tokenize(text)
    while len(tokens) < limit:
        tokens = tokens + tokens[1:]
    metrics: dict[str, float | None] = {}
    timings: list[RequestTiming] = []
    skipped = {}
    fits: list[int] = []
    for length in CONTEXT_LENGTHS:
        if length > limit:
            skipped[str(length)] = f"longer than the limit of {limit} tokens (model context or max_context)"
            continue
        reset_peak_rss()
        seconds = batching.prefill_seconds(tokens[:length])
        peak, _ = peak_rss_bytes()
        metrics[f"ttft_s_at_{length}"] = seconds
        metrics[f"prefill_tok_s_at_{length}"] = length / seconds
        metrics[f"peak_rss_bytes_at_{length}"] = float(peak)
        timings.append(RequestTiming(length, "context", length, 1, seconds, seconds, (seconds,)))
        if memory_budget is None or peak <= memory_budget:
            fits.append(length)
    metrics["max_context_tokens_measured"] = float(max(int(t.index) for t in timings)) if timings else None
    metrics["max_context_within_memory_budget"] = float(max(fits)) if fits and memory_budget is not None else None
    info = TaskInfo(kind="probe", memory_budget_bytes=memory_budget,
                    details={"lengths": [t.index for t in timings], "skipped": skipped, "limit": limit})
    return TaskResult("probe:context", metrics, [], timings, info)


def steady_energy(backend: Backend, prompt: str, seconds: float, meter: EnergyMeter, max_tokens: int) -> TaskResult:
    """Energy per output token over at least ``seconds`` of steady fixed-length decoding."""
    backend.generate([GenerationRequest(prompt, 4, ignore_eos=True)])  # warm-up
    timings: list[RequestTiming] = []
    meter.start()
    elapsed = 0.0
    while elapsed < seconds and len(timings) < 500:
        (c,) = backend.generate([GenerationRequest(prompt, max_tokens, ignore_eos=True)])
        timings.append(RequestTiming.of(len(timings), "energy", c))
        elapsed += c.latency_s
    reading = meter.stop()
    metrics: dict[str, float | None] = {}
    labels = energy_figures(metrics, timings, reading)  # the one place energy figures are derived
    tokens = sum(t.n_output_tokens for t in timings)
    return TaskResult("probe:energy", metrics, [], timings, TaskInfo(
        kind="probe", labels=labels, details={"seconds": reading.seconds, "tokens": tokens}))
