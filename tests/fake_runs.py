"""Build stored runs without a model: records written through the real Store into real SQLite.

The figures are computed from the per-sample scores and raw timings with smallfit's own
aggregates, so a stored run looks exactly like one the runner wrote.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from smallfit import scoring
from smallfit.metrics import efficiency_from_timings
from smallfit.records import RequestTiming, SampleResult, TaskResult
from smallfit.store import Store

HARDWARE = {"cpu_model": "Test CPU @ 3.0GHz", "cpu_flags": ["avx2", "fma"], "logical_cpus": 2, "usable_cpus": 2,
            "ram_bytes": 8e9, "os": "Linux-test", "machine": "x86_64", "python": "3.11.2", "hostname": "box"}


@dataclass
class FakeCandidate:
    """A candidate's shape: its size, memory, how many of n it gets right, and its base latency."""

    name: str
    size_bytes: int
    peak_rss_bytes: int
    correct: int  # of n examples (multiple choice and generation)
    latency_s: float  # base end-to-end latency per request
    bpb: float = 1.0  # bits per byte of the perplexity task
    failed_task: str | None = None  # this task ends in an error
    broken: bool = False  # the candidate fails to load


@dataclass
class FakeRun:
    """A run's settings."""

    candidates: list[FakeCandidate]
    budget: list[str] = field(default_factory=lambda: ["acc>=0.5", "latency_s_p95<=1.0", "peak_rss_bytes<=1GB"])
    n: int = 40
    tasks: tuple[str, ...] = ("quartz", "largest-country")


def _timings(cand: FakeCandidate, phase: str, n: int) -> list[RequestTiming]:
    out = []
    for i in range(n):
        jitter = 1.0 + 0.04 * ((i * 7) % 11)  # deterministic spread
        ttft = cand.latency_s * 0.2 * jitter
        latency = cand.latency_s * jitter
        out.append(RequestTiming(i, phase, 20 + i, 16, ttft, latency, ()))
    return out


def _quality(names: tuple[str, ...], scores: list[dict[str, float]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name in names:
        values = [s[name] for s in scores]
        out[name], out[f"{name}_stderr"] = scoring.mean(values), scoring.stderr_of_mean(values)
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = scoring.bootstrap_ci(
            [(v,) for v in values], lambda rows: scoring.mean([r[0] for r in rows]), resamples=200)
    return out


def task_result(cand: FakeCandidate, task: str, n: int) -> TaskResult:
    """A finished task for ``cand``: per-sample scores, raw timings and their aggregates."""
    if task == "gsm8k-bpb":
        scores = [{"logprob": -cand.bpb * 100 * 0.6931 * (1 + 0.05 * ((i % 5) - 2)), "bytes": 100.0}
                  for i in range(n)]
        nll = [-s["logprob"] for s in scores]
        r, se = scoring.ratio_and_stderr(nll, [s["bytes"] for s in scores])
        quality: dict[str, float | None] = {
            "bits_per_byte": scoring.nats_to_bits(r), "bits_per_byte_stderr": scoring.nats_to_bits(se),
            "bits_per_byte_ci_low": scoring.nats_to_bits(r - 1.96 * se),
            "bits_per_byte_ci_high": scoring.nats_to_bits(r + 1.96 * se)}
        samples = [SampleResult(i, f"s{i}", f"text {i}", "", "", s) for i, s in enumerate(scores)]
        timings = [RequestTiming(i, "quality", 30, 0, None, 0.05) for i in range(n)] + _timings(cand, "latency", 8)
    elif task == "largest-country":
        scores = [{"exact_match": float(i < cand.correct), "f1": float(i < cand.correct)} for i in range(n)]
        quality = _quality(("exact_match", "f1"), scores)
        samples = [SampleResult(i, f"s{i}", f"Which is largest? {i}", "Russia", "Russia" if s["f1"] else "Chad", s)
                   for i, s in enumerate(scores)]
        timings = _timings(cand, "quality", n)
    else:
        scores = [{"acc": float(i < cand.correct), "acc_norm": float(i < cand.correct - 2)} for i in range(n)]
        quality = _quality(("acc", "acc_norm"), scores)
        samples = [SampleResult(i, f"s{i}", f"Question {i}?", "A", "A" if s["acc"] else "B", s)
                   for i, s in enumerate(scores)]
        timings = [RequestTiming(i, "quality", None, 0, None, 0.02) for i in range(n)] + _timings(cand, "latency", 8)
    metrics = {**quality, **efficiency_from_timings(timings), "load_s": cand.size_bytes / 2e8,
               "peak_rss_bytes": float(cand.peak_rss_bytes), "model_size_bytes": float(cand.size_bytes)}
    info = {"kind": "test", "n_samples": n, "peak_rss_source": "VmHWM",
            "latency_pass_prompts": 0 if task == "largest-country" else 8}
    return TaskResult(task, metrics, samples, timings, info)


def build_run(store: Store, spec: FakeRun) -> str:
    """Write a whole run through ``store`` and return its id."""
    run_spec = {"candidates": [{"model": "smollm2-135m", "name": c.name} for c in spec.candidates], "tasks": list(spec.tasks),
                "budget": spec.budget}
    run_id = store.create_run(json.dumps(run_spec), {"smallfit": "0.1.0", "llama-cpp-python": "0.3.36"}, HARDWARE,
                              2, {"at": 0, "loadavg": [0.4, 0.3, 0.2]}, {t: t for t in spec.tasks})
    for pos, cand in enumerate(spec.candidates):
        store.add_candidate(run_id, cand.name, pos, cand.name, "llamacpp")
        if cand.broken:
            store.update_candidate(run_id, cand.name, status="error", error="worker killed by SIGKILL (out of memory?)")
            for task in spec.tasks:
                store.save_task_error(run_id, cand.name, task, "worker killed by SIGKILL (out of memory?)")
            continue
        store.update_candidate(run_id, cand.name, status="done", model_size_bytes=cand.size_bytes,
                               load_s=cand.size_bytes / 2e8, load_before_json={"loadavg": [0.5, 0.4, 0.3]},
                               load_after_json={"loadavg": [1.1, 0.6, 0.4]})
        for task in spec.tasks:
            if task == cand.failed_task:
                store.save_task_error(run_id, cand.name, task, "RuntimeError: llama_decode returned -1")
            else:
                store.save_task_result(run_id, cand.name, task_result(cand, task, spec.n))
    store.mark_run(run_id, "finished", {"at": 1, "loadavg": [1.2, 0.7, 0.5]})
    return run_id


def demo_candidates() -> list[FakeCandidate]:
    """Small and quick but weak; middling; one worse than middling on both; big, slow and good."""
    return [
        FakeCandidate("tiny-135m", 98_000_000, 300_000_000, 14, 0.35, bpb=1.08),
        FakeCandidate("mid-270m", 253_000_000, 520_000_000, 22, 0.7, bpb=0.96),
        FakeCandidate("slow-360m", 360_000_000, 700_000_000, 18, 1.0, bpb=1.01),
        FakeCandidate("big-1b", 900_000_000, 1_400_000_000, 33, 1.6, bpb=0.82),
    ]
