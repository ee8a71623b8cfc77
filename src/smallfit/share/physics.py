"""Speed a stated machine can physically reach, so a board refuses impossible figures without a
fixed cap (a cap rejects real results from fast hardware and admits fakes on slow hardware).

Bounds, from the bundle's own fingerprint and figures:

- **Decode**: generating one token reads every weight once, so ``decode_tok_s`` cannot exceed
  ``memory_bandwidth_bytes_s / model_size_bytes`` (the roofline) by more than ``SLACK``.
- **TTFT, weights**: a first token needs every weight read at least once, so each request's
  ``ttft_s >= model_size_bytes / (SLACK * memory_bandwidth_bytes_s)``.
- **TTFT, prompt length** (CPU runs): each prompt token costs at least one multiply-add per
  parameter, and a parameter takes at most 4 bytes (float32), so ``ttft_s >= n_prompt_tokens *
  2 * (model_size_bytes / 4) / (usable_cpus * PEAK_OPS_PER_CORE)``.

The weight bounds hold only for models larger than a CPU's last-level cache (a smaller model can
run from cache, where memory bandwidth does not limit it): ``MIN_BOUNDED_BYTES``.
"""

from __future__ import annotations

from typing import Any

SLACK = 2.0
"""Measured copy bandwidth understates what reads alone reach; a factor of 2 keeps real results in."""
PEAK_OPS_PER_CORE = 8e12
"""Operations per second per core, above any CPU core's int8 peak (an AMX core: about 2048 int8
operations per cycle at 3.5 GHz, 7e12)."""
MIN_BOUNDED_BYTES = 32 * 2**20
"""Weights smaller than this may sit in cache: the bandwidth bounds are not applied."""


def check_speed(result: dict[str, Any], timings: list[dict[str, Any]], hardware: dict[str, Any],
                device: str | None) -> list[str]:
    """Problems with one candidate x task's speed against the physics of its stated machine."""
    metrics = result.get("metrics") or {}
    who = f"{result.get('candidate')} · {result.get('task')}"
    size, bandwidth = metrics.get("model_size_bytes"), metrics.get("memory_bandwidth_bytes_s")
    problems: list[str] = []
    if not size or size < MIN_BOUNDED_BYTES:
        return problems
    if bandwidth:
        ceiling = SLACK * bandwidth / size
        decode = metrics.get("decode_tok_s")
        if decode is not None and decode > ceiling:
            problems.append(f"{who}: decode {decode:.1f} tok/s is above what {bandwidth / 1e9:.1f} GB/s can feed "
                            f"{size / 1e6:.0f} MB of weights ({ceiling:.1f} tok/s, {SLACK:g}x the roofline)")
        floor = size / (SLACK * bandwidth)
        fast = [t for t in timings if t.get("ttft_s") is not None and t["ttft_s"] < floor]
        if fast:
            problems.append(f"{who}: {len(fast)} request(s) state a TTFT under {floor * 1e3:.2f} ms, the time "
                            f"to read {size / 1e6:.0f} MB of weights once at {SLACK:g}x {bandwidth / 1e9:.1f} GB/s")
    cpus = hardware.get("usable_cpus") or hardware.get("logical_cpus")
    if device in (None, "", "cpu") and cpus:
        per_token = 2 * (size / 4) / (float(cpus) * PEAK_OPS_PER_CORE)
        quick = [t for t in timings if t.get("ttft_s") is not None and t.get("n_prompt_tokens")
                 and t["ttft_s"] < t["n_prompt_tokens"] * per_token]
        if quick:
            t = quick[0]
            problems.append(f"{who}: {len(quick)} request(s) state a TTFT too short for their prompt on {cpus} "
                            f"CPU cores (first: {t['n_prompt_tokens']} tokens in {t['ttft_s'] * 1e3:.3f} ms; at least "
                            f"{t['n_prompt_tokens'] * per_token * 1e3:.3f} ms)")
    return problems
