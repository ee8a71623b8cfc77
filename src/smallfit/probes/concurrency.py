"""Throughput and latency with several requests in flight, for backends that serve them (the
``concurrency`` capability): the same requests once per concurrency level, on threads."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from smallfit.errors import SmallfitError
from smallfit.records import Completion, GenerationRequest
from smallfit.scoring import percentile


@dataclass(frozen=True)
class ConcurrencyLevel:
    """The same requests run with ``concurrency`` of them in flight at a time."""

    concurrency: int
    n_requests: int
    wall_s: float
    requests_per_s: float
    output_tok_s: float  # Σ output tokens (counted as info's output_tokens_counted_by says) / wall time
    latency_s: float
    latency_s_p95: float
    ttft_s: float | None
    ttft_s_p95: float | None



def measure_concurrency(generate_one: Callable[[GenerationRequest], Completion],
                        requests: Sequence[GenerationRequest], levels: Sequence[int]) -> list[ConcurrencyLevel]:
    """Run ``requests`` once per level with ``level`` of them in flight (threads); per-level
    throughput (requests and output tokens per wall second) and latency percentiles."""
    if not requests:
        raise SmallfitError("the concurrency pass needs at least one request")
    out = []
    for level in levels:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=level, thread_name_prefix=f"smallfit-c{level}") as pool:
            done = list(pool.map(generate_one, requests))
        wall = time.perf_counter() - t0
        ttfts = [c.ttft_s for c in done if c.ttft_s is not None]
        out.append(ConcurrencyLevel(
            concurrency=level, n_requests=len(done), wall_s=wall, requests_per_s=len(done) / wall,
            output_tok_s=sum(c.n_output_tokens for c in done) / wall,
            latency_s=percentile([c.latency_s for c in done], 50),
            latency_s_p95=percentile([c.latency_s for c in done], 95),
            ttft_s=percentile(ttfts, 50) if ttfts else None, ttft_s_p95=percentile(ttfts, 95) if ttfts else None))
    return out
