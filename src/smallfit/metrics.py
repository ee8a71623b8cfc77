"""Names and definitions of every figure smallfit reports, and the efficiency aggregates.

This table is the single source for budget validation (``smallfit run --budget``), for the
direction in which a metric is better, and for the definitions shown by ``smallfit metrics``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from smallfit.records import RequestTiming
from smallfit.scoring import percentile


@dataclass(frozen=True)
class MetricInfo:
    """A metric's name, whether higher is better, its unit, and its exact definition."""

    name: str
    higher_is_better: bool
    unit: str
    definition: str


_QUALITY = [
    MetricInfo("acc", True, "fraction", "Share of questions whose highest log-likelihood choice is the gold one."),
    MetricInfo("acc_norm", True, "fraction", "As acc, each choice's log-likelihood divided by its length in UTF-8 bytes."),
    MetricInfo("exact_match", True, "fraction", "Share of generations whose extracted, normalised answer equals the target."),
    MetricInfo("f1", True, "fraction", "Mean word-overlap F1 between the extracted, normalised answer and the target (SQuAD)."),
    MetricInfo("bits_per_byte", False, "bits/byte", "-sum(log p(token)) / (UTF-8 bytes of the texts * ln 2), over all texts."),
    MetricInfo("word_perplexity", False, "", "exp(-sum(log p(token)) / words), words = pieces of re.split(r\"\\s+\", text) as lm-eval counts them."),
    MetricInfo("perplexity", False, "", "Continuation tasks (LAMBADA): exp(-mean log-likelihood of the expected continuation)."),
    MetricInfo("byte_perplexity", False, "", "exp(-sum(log p(token)) / UTF-8 bytes), over all texts."),
]

_EFFICIENCY = [
    MetricInfo("load_s", False, "s", "Wall time to load the model into the backend, ready to run."),
    MetricInfo("ttft_s", False, "s", "Median time to first token: request start to the first output token."),
    MetricInfo("ttft_s_p95", False, "s", "95th percentile of time to first token."),
    MetricInfo("tpot_s", False, "s", "Median time per output token, (latency - TTFT) / (output tokens - 1), requests with >= 2 tokens."),
    MetricInfo("tpot_s_p95", False, "s", "95th percentile of time per output token."),
    MetricInfo("latency_s", False, "s", "Median end-to-end latency: request start to the last output token."),
    MetricInfo("latency_s_p95", False, "s", "95th percentile of end-to-end latency."),
    MetricInfo("decode_tok_s", True, "tokens/s", "Sum of (output tokens - 1) / sum of (latency - TTFT), over requests with >= 2 tokens."),
    MetricInfo("prefill_tok_s", True, "tokens/s", "Sum of prompt tokens / sum of TTFT, over all timed requests."),
    MetricInfo("peak_rss_bytes", False, "bytes", "Peak resident memory of the candidate's own process while it ran the task (Linux VmHWM)."),
    MetricInfo("model_size_bytes", False, "bytes", "Size of the model file(s) on disk."),
]

METRICS: dict[str, MetricInfo] = {m.name: m for m in _QUALITY + _EFFICIENCY}
QUALITY_METRICS: tuple[str, ...] = tuple(m.name for m in _QUALITY)
EFFICIENCY_METRICS: tuple[str, ...] = tuple(m.name for m in _EFFICIENCY)


QUALITY_SUFFIXES = ("_stderr", "_ci_low", "_ci_high")


def known_metric(name: str) -> bool:
    """True for a metric smallfit can report, including a quality metric's ``_stderr``,
    ``_ci_low`` and ``_ci_high`` (bootstrap 95% interval) siblings."""
    for suffix in QUALITY_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)] in QUALITY_METRICS
    return name in METRICS


def efficiency_from_timings(timings: Sequence[RequestTiming]) -> dict[str, float | None]:
    """Latency and throughput aggregates (p50 is the bare name) from raw generation timings.

    Only generation requests (those with a time to first token) count. A figure that cannot be
    computed from what was measured is ``None``, never 0.
    """
    gen = [t for t in timings if t.ttft_s is not None and t.n_output_tokens > 0]
    out: dict[str, float | None] = dict.fromkeys(
        ["ttft_s", "ttft_s_p95", "tpot_s", "tpot_s_p95", "latency_s", "latency_s_p95",
         "decode_tok_s", "prefill_tok_s"]
    )
    if not gen:
        return out
    ttfts = [t.ttft_s for t in gen if t.ttft_s is not None]
    lat = [t.latency_s for t in gen]
    out["ttft_s"], out["ttft_s_p95"] = percentile(ttfts, 50), percentile(ttfts, 95)
    out["latency_s"], out["latency_s_p95"] = percentile(lat, 50), percentile(lat, 95)
    multi = [t for t in gen if t.n_output_tokens >= 2 and t.ttft_s is not None]
    if multi:
        tpots = [(t.latency_s - t.ttft_s) / (t.n_output_tokens - 1) for t in multi if t.ttft_s is not None]
        out["tpot_s"], out["tpot_s_p95"] = percentile(tpots, 50), percentile(tpots, 95)
        decode_time = sum(t.latency_s - t.ttft_s for t in multi if t.ttft_s is not None)
        if decode_time > 0:
            out["decode_tok_s"] = sum(t.n_output_tokens - 1 for t in multi) / decode_time
    ttft_total = sum(ttfts)
    if ttft_total > 0 and all(t.n_prompt_tokens is not None for t in gen):  # uncounted prompts: None, not 0
        out["prefill_tok_s"] = sum(t.n_prompt_tokens or 0 for t in gen) / ttft_total
    return out
