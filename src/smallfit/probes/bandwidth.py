"""Memory bandwidth, measured once per machine with a short copy benchmark, then cached.

Decoding a token reads every weight once, so ``bandwidth / bytes of weights`` is the ceiling
on decode tokens/s (the roofline); a backend's decode rate as a share of it says how close to
the memory limit it runs.
"""

from __future__ import annotations

import ctypes
import json
import platform
import threading
import time
from pathlib import Path
from typing import Any

from smallfit import cache


def copy_bandwidth_bytes_s(threads: int = 1, size: int = 128 * 2**20, repeats: int = 5) -> float:
    """Bytes moved per second (read + write) by ``threads`` threads each copying ``size`` bytes.

    ``ctypes.memmove`` releases the GIL, so the threads copy in parallel. Best of ``repeats``.
    """
    buffers = [(ctypes.create_string_buffer(size), ctypes.create_string_buffer(size)) for _ in range(threads)]
    for src, dst in buffers:  # touch every page first
        ctypes.memset(src, 1, size)
        ctypes.memset(dst, 0, size)
    best = 0.0
    for _ in range(repeats):
        workers = [threading.Thread(target=ctypes.memmove, args=(dst, src, size)) for src, dst in buffers]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - t0
        best = max(best, 2 * size * threads / elapsed)
    return best


def _measure(threads: int) -> dict[str, Any]:
    return {"bytes_per_s": copy_bandwidth_bytes_s(threads), "threads": threads, "measured_at": time.time(),
            "method": f"best of 5 memmove copies of 128 MiB per thread, {threads} thread(s)"}


def machine_bandwidth(threads: int, cpu_model: str) -> dict[str, Any]:
    """The cached figure for this machine and thread count, measured when missing."""

    def measure(out: Path) -> None:
        (out / "bandwidth.json").write_text(json.dumps(_measure(threads), indent=1))

    key = cache.key(version="bandwidth-1", params={"node": platform.node(), "cpu": cpu_model, "threads": threads})
    try:
        entry = cache.build("bandwidth", key, f"{threads}-threads", measure)
        return dict(json.loads((entry / "bandwidth.json").read_text()))
    except (OSError, ValueError):
        return _measure(threads)  # an unwritable cache only means measuring again next time


def decode_roofline_tok_s(bandwidth_bytes_s: float, weight_bytes: float) -> float:
    """The memory-bound ceiling on decode tokens/s: every weight byte read once per token."""
    if weight_bytes <= 0:
        raise ValueError("weights must have a positive size")
    return bandwidth_bytes_s / weight_bytes
