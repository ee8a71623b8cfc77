"""Names and definitions of every figure smallfit reports, and the efficiency aggregates.

This table is the single source for budget validation (``smallfit run --budget``), for the
direction in which a metric is better, and for the definitions shown by ``smallfit metrics``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from smallfit.records import RequestTiming
from smallfit.scoring import percentile, quantile_interval, ratio_t_interval


@dataclass(frozen=True)
class MetricInfo:
    """A metric's name, whether higher is better, its unit, and its exact definition."""

    name: str
    higher_is_better: bool
    unit: str
    definition: str


_QUALITY = [
    MetricInfo("acc", True, "fraction", "Share of questions whose highest log-likelihood choice is the gold one "
               "(embedding classification: share of texts whose nearest label prototype by cosine is the gold label)."),
    MetricInfo("acc_norm", True, "fraction", "As acc, each choice's log-likelihood divided by the length of the "
               "choice in characters, without the target delimiter (lm-eval 0.4's len(choice))."),
    MetricInfo("acc_bytes", True, "fraction", "As acc, each choice's log-likelihood divided by the length of the "
               "choice in UTF-8 bytes, without the target delimiter (lm-eval 0.4's acc_bytes)."),
    MetricInfo("exact_match", True, "fraction",
               "Share of generations whose extracted, normalised answer equals the target."),
    MetricInfo("f1", True, "fraction",
               "Mean word-overlap F1 between the extracted, normalised answer and the target (SQuAD)."),
    MetricInfo("bits_per_byte", False, "bits/byte",
               "-sum(log p(token)) / (UTF-8 bytes of the texts * ln 2), over all texts."),
    MetricInfo("word_perplexity", False, "",
               "exp(-sum(log p(token)) / words), words = pieces of re.split(r\"\\s+\", text) as lm-eval counts them."),
    MetricInfo("perplexity", False, "",
               "Continuation tasks (LAMBADA): exp(-mean log-likelihood of the expected continuation)."),
    MetricInfo("byte_perplexity", False, "", "exp(-sum(log p(token)) / UTF-8 bytes), over all texts."),
    MetricInfo("macro_f1", True, "fraction", "Embedding classification: unweighted mean over labels of F1 = "
               "2TP / (2TP + FP + FN), labels that occur as gold or predicted; s.e. and interval by bootstrap "
               "over texts."),
]

_EFFICIENCY = [
    MetricInfo("load_s", False, "s", "Wall time to load the model into the backend, ready to run."),
    MetricInfo("ttft_s", False, "s", "Median time to first token: request start to the first output token "
               "(None for encoders, which produce no tokens)."),
    MetricInfo("ttft_s_p95", False, "s", "95th percentile of time to first token."),
    MetricInfo("tpot_s", False, "s",
               "Median time per output token, (latency - TTFT) / (output tokens - 1), requests with >= 2 tokens."),
    MetricInfo("tpot_s_p95", False, "s", "95th percentile of time per output token."),
    MetricInfo("latency_s", False, "s", "Median end-to-end latency: request start to the last output token "
               "(encoders: to the embedding of one text, one text per request)."),
    MetricInfo("latency_s_p95", False, "s", "95th percentile of end-to-end latency."),
    MetricInfo("decode_tok_s", True, "tokens/s",
               "Sum of (output tokens - 1) / sum of (latency - TTFT), over requests with >= 2 tokens."),
    MetricInfo("prefill_tok_s", True, "tokens/s", "Sum of prompt tokens / sum of TTFT, over all timed requests."),
    MetricInfo("ttft_s_p90", False, "s", "90th percentile of time to first token."),
    MetricInfo("ttft_s_p99", False, "s", "99th percentile of time to first token."),
    MetricInfo("tpot_s_p90", False, "s", "90th percentile of time per output token."),
    MetricInfo("tpot_s_p99", False, "s", "99th percentile of time per output token."),
    MetricInfo("latency_s_p90", False, "s", "90th percentile of end-to-end latency."),
    MetricInfo("latency_s_p99", False, "s", "99th percentile of end-to-end latency."),
    MetricInfo("itl_s", False, "s",
               "Median inter-token latency: every gap between consecutive output tokens, all requests pooled."),
    MetricInfo("itl_s_p90", False, "s", "90th percentile of inter-token latency."),
    MetricInfo("itl_s_p95", False, "s", "95th percentile of inter-token latency."),
    MetricInfo("itl_s_p99", False, "s", "99th percentile of inter-token latency."),
    MetricInfo("input_tok_s", True, "tokens/s", "Encoders: sum of input tokens / sum of latency, over the timed "
               "single-text embedding requests (special tokens counted, after truncation)."),
    MetricInfo("timed_requests", True, "requests", "Generation requests (encoders: single-text embedding "
               "requests) the latency figures come from."),
    MetricInfo("energy_j", False, "J", "Energy of the timed generation (encoders: embedding) requests "
               "(measured or estimated: see the row's labels)."),
    MetricInfo("energy_j_per_token", False, "J/token", "energy_j / output tokens of those requests."),
    MetricInfo("energy_j_per_request", False, "J/request", "energy_j / number of those requests."),
    MetricInfo("power_w", False, "W", "energy_j / wall time of those requests."),
    MetricInfo("cost_usd_per_mtok_out", False, "USD", "Estimated cost of 1M output tokens: (1e6 / decode_tok_s) s "
               "x (hardware $/s + power_w x electricity $/J)."),
    MetricInfo("cost_usd_per_mtok_in", False, "USD", "Estimated cost of 1M input (prompt) tokens: (1e6 / "
               "prefill_tok_s, encoders: input_tok_s) s x (hardware $/s + power_w x electricity $/J)."),
    MetricInfo("memory_bandwidth_bytes_s", True, "bytes/s",
               "Copy bandwidth of this machine with the run's threads (read + write), measured once and cached."),
    MetricInfo("decode_roofline_tok_s", True, "tokens/s",
               "Memory-bound ceiling on decode: memory_bandwidth_bytes_s / model_size_bytes."),
    MetricInfo("decode_roofline_pct", True, "%", "decode_tok_s as a percentage of decode_roofline_tok_s."),
    MetricInfo("peak_rss_bytes", False, "bytes",
               "Peak resident memory of the candidate's own process while it ran the task (Linux VmHWM)."),
    MetricInfo("peak_vram_bytes", False, "bytes",
               "GPU candidates: peak memory torch allocated on the device during the task (None on the CPU)."),
    MetricInfo("model_size_bytes", False, "bytes", "Size of the model file(s) on disk."),
]

# Quantization sweeps: how far a variant's predictions moved from the sweep's reference.
_FIDELITY = [
    MetricInfo("kl_divergence", False, "nats", "Sweep variants: mean KL(P_reference || P_variant) of the next-token "
               "distributions at the last 4 positions of the task's first 16 prompts (0 for the reference)."),
    MetricInfo("kl_divergence_p95", False, "nats", "95th percentile of those per-position KL divergences."),
    MetricInfo("embedding_cosine", True, "", "Encoder sweep variants: mean cosine similarity of the variant's and "
               "the reference's embeddings of the task's first 16 texts (1 for the reference)."),
    MetricInfo("embedding_cosine_min", True, "", "The lowest of those cosine similarities."),
]

_CASCADE = [
    MetricInfo("deferred_share", False, "fraction", "Cascades (smallfit cascade): share of requests the first model "
               "passed on to a larger one (its confidence signal below the threshold)."),
    MetricInfo("cost_usd_per_request", False, "USD", "Cascades: mean estimated cost of a request, each model it "
               "reached charged its seconds at the hardware price plus its energy at the electricity price."),
]

METRICS: dict[str, MetricInfo] = {m.name: m for m in _QUALITY + _EFFICIENCY + _FIDELITY + _CASCADE}
QUALITY_METRICS: tuple[str, ...] = tuple(m.name for m in _QUALITY)
EFFICIENCY_METRICS: tuple[str, ...] = tuple(m.name for m in _EFFICIENCY)
FIDELITY_METRICS: tuple[str, ...] = tuple(m.name for m in _FIDELITY)


QUALITY_SUFFIXES = ("_stderr", "_ci_low", "_ci_high")


def known_metric(name: str) -> bool:
    """True for a metric smallfit can report, including a quality metric's ``_stderr``,
    ``_ci_low`` and ``_ci_high`` (bootstrap 95% interval) siblings."""
    for suffix in QUALITY_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)] in QUALITY_METRICS
    return name in METRICS


_LATENCY_KEYS = ("ttft_s", "tpot_s", "latency_s", "itl_s")
EMBED_PHASE = "embed"  # a single-text embedding request (encoders); see smallfit.tasks.embedding


def is_timed(t: RequestTiming) -> bool:
    """Whether a request counts for the latency figures: a generation that produced a first
    token, or a single-text embedding request."""
    return (t.ttft_s is not None and t.n_output_tokens > 0) or t.phase == EMBED_PHASE


def timed_requests(timings: Sequence[RequestTiming]) -> list[RequestTiming]:
    """The requests the latency figures are computed from (see :func:`is_timed`)."""
    return [t for t in timings if is_timed(t)]
# Figures whose 95% interval is stored with them (the verdict, the report and the exports read it):
# percentiles by order statistics, rates by a delta-method t interval over requests.
PERCENTILE_CI_KEYS = tuple(f"{key}{suffix}" for key in ("ttft_s", "tpot_s", "latency_s")
                           for suffix in ("", "_p90", "_p95", "_p99"))
RATE_CI_KEYS = ("decode_tok_s", "prefill_tok_s", "input_tok_s")


def quantile_of(metric: str) -> float | None:
    """The quantile a percentile figure is (``latency_s`` 0.5, ``latency_s_p95`` 0.95), None for others."""
    if metric not in PERCENTILE_CI_KEYS:
        return None
    return int(metric.rsplit("_p", 1)[1]) / 100 if "_p" in metric.removesuffix("_s") else 0.5


def _percentiles(out: dict[str, float | None], name: str, values: Sequence[float]) -> None:
    if not values:
        return
    out[name] = percentile(values, 50)
    for q in (90, 95, 99):
        out[f"{name}_p{q}"] = percentile(values, q)


def _latency_figures(gen: Sequence[RequestTiming]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    _percentiles(out, "ttft_s", [t.ttft_s for t in gen if t.ttft_s is not None])
    _percentiles(out, "latency_s", [t.latency_s for t in gen])
    multi = [t for t in gen if t.n_output_tokens >= 2 and t.ttft_s is not None]
    _percentiles(out, "tpot_s", [(t.latency_s - (t.ttft_s or 0.0)) / (t.n_output_tokens - 1) for t in multi])
    gaps = [b - a for t in gen for a, b in zip(t.token_times_s, t.token_times_s[1:], strict=False)]
    _percentiles(out, "itl_s", gaps)
    out.update(_rates(gen))
    return out


def _rates(gen: Sequence[RequestTiming]) -> dict[str, float | None]:
    """Decode, prefill and input token rates: ratios of sums over requests."""
    out: dict[str, float | None] = {}
    multi = [t for t in gen if t.n_output_tokens >= 2 and t.ttft_s is not None]
    decode_time = sum(t.latency_s - (t.ttft_s or 0.0) for t in multi)
    if decode_time > 0:
        out["decode_tok_s"] = sum(t.n_output_tokens - 1 for t in multi) / decode_time
    ttft_total = sum(t.ttft_s or 0.0 for t in gen)
    if ttft_total > 0 and all(t.n_prompt_tokens is not None for t in gen):  # uncounted prompts: None, not 0
        out["prefill_tok_s"] = sum(t.n_prompt_tokens or 0 for t in gen) / ttft_total
    embeds = [t for t in gen if t.phase == EMBED_PHASE]
    embed_time = sum(t.latency_s for t in embeds)
    if embed_time > 0 and all(t.n_prompt_tokens is not None for t in embeds):
        out["input_tok_s"] = sum(t.n_prompt_tokens or 0 for t in embeds) / embed_time
    return out


def _series(gen: Sequence[RequestTiming], base: str) -> list[float]:
    """The per-request values a latency percentile is taken over (as :func:`_latency_figures`)."""
    if base == "ttft_s":
        return [t.ttft_s for t in gen if t.ttft_s is not None]
    if base == "latency_s":
        return [t.latency_s for t in gen]
    return [(t.latency_s - (t.ttft_s or 0.0)) / (t.n_output_tokens - 1)
            for t in gen if t.n_output_tokens >= 2 and t.ttft_s is not None]


def _rate_pairs(gen: Sequence[RequestTiming]) -> dict[str, tuple[list[float], list[float]]]:
    """Per-request (tokens, seconds) of each rate of :func:`_rates`, the pairs its interval is over."""
    multi = [t for t in gen if t.n_output_tokens >= 2 and t.ttft_s is not None]
    out = {"decode_tok_s": ([t.n_output_tokens - 1.0 for t in multi],
                            [t.latency_s - (t.ttft_s or 0.0) for t in multi])}
    if all(t.n_prompt_tokens is not None for t in gen):
        out["prefill_tok_s"] = ([float(t.n_prompt_tokens or 0) for t in gen], [t.ttft_s or 0.0 for t in gen])
    embeds = [t for t in gen if t.phase == EMBED_PHASE]
    if all(t.n_prompt_tokens is not None for t in embeds):
        out["input_tok_s"] = ([float(t.n_prompt_tokens or 0) for t in embeds], [t.latency_s for t in embeds])
    return {k: v for k, v in out.items() if len(v[0]) >= 2 and sum(v[1]) > 0}


def timing_intervals(gen: Sequence[RequestTiming], figures: dict[str, float | None]) -> dict[str, float | None]:
    """95% intervals of the timing figures, as ``<metric>_ci_low/_ci_high``, from timed requests.

    - p50/p90/p95/p99 of TTFT, TPOT and latency: distribution-free order statistics over the
      requests (:func:`smallfit.scoring.quantile_interval`). Where too few requests exist to
      bound the percentile from above (p95: fewer than 72), ``_ci_high`` is None (open); from
      below, ``_ci_low`` is 0 (a time is never negative).
    - decode, prefill and input rates (ratios of sums over requests): ``R ± t_{0.975, n−1} SE(R)``,
      SE by the delta method (:func:`smallfit.scoring.ratio_t_interval`), the low end at least 0.
    ITL percentiles pool gaps within requests, which are not independent: no interval (point checks).
    """
    out: dict[str, float | None] = {}
    for key in PERCENTILE_CI_KEYS:
        q = quantile_of(key)
        values = _series(gen, key[: key.index("_s") + 2])
        if figures.get(key) is None or q is None or not values:
            continue
        low, high = quantile_interval(values, q)
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = (0.0 if low is None else low), high
    for key, (tokens, seconds) in _rate_pairs(gen).items():
        interval = ratio_t_interval(tokens, seconds) if figures.get(key) is not None else None
        if interval is not None:
            out[f"{key}_ci_low"], out[f"{key}_ci_high"] = max(0.0, interval[1]), interval[2]
    return out


def efficiency_from_timings(timings: Sequence[RequestTiming],
                            intervals: bool = True) -> dict[str, float | None]:
    """Latency and throughput figures (p50 is the bare name) from raw generation timings, with
    their 95% intervals (:func:`timing_intervals`; ``intervals=False``: the figures alone).

    Only generation requests with a first token, and single-text embedding requests, count
    (:func:`is_timed`). A figure that cannot be computed from what was measured is ``None``,
    never 0: an encoder has no TTFT, TPOT or decode rate.
    """
    gen = timed_requests(timings)
    out: dict[str, float | None] = {}
    for key in _LATENCY_KEYS:
        out.update(dict.fromkeys([key, f"{key}_p90", f"{key}_p95", f"{key}_p99"]))
    out.update(dict.fromkeys(["decode_tok_s", "prefill_tok_s", "input_tok_s"]))
    out["timed_requests"] = float(len(gen)) if gen else None
    if not gen:
        return out
    out.update(_latency_figures(gen))
    if intervals:
        out.update(timing_intervals(gen, out))
    return out
