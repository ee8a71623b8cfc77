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

from smallfit.cache import cache_dir


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


def machine_bandwidth(threads: int, cpu_model: str, refresh: bool = False) -> dict[str, Any]:
    """The cached figure for this machine and thread count, measured when missing."""
    path = cache_dir() / "bandwidth.json"
    key = f"{platform.node()}|{cpu_model}|{threads}"
    cache: dict[str, Any] = {}
    if path.is_file():
        try:
            cache = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            cache = {}
    if key in cache and not refresh:
        return dict(cache[key])
    figure = {"bytes_per_s": copy_bandwidth_bytes_s(threads), "threads": threads, "measured_at": time.time(),
              "method": f"best of 5 memmove copies of 128 MiB per thread, {threads} thread(s)"}
    cache[key] = figure
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        Path(str(path) + ".tmp").write_text(json.dumps(cache, indent=1))
        Path(str(path) + ".tmp").replace(path)
    except OSError:
        pass  # an unwritable cache only means measuring again next time
    return figure


def decode_roofline_tok_s(bandwidth_bytes_s: float, weight_bytes: float) -> float:
    """The memory-bound ceiling on decode tokens/s: every weight byte read once per token."""
    if weight_bytes <= 0:
        raise ValueError("weights must have a positive size")
    return bandwidth_bytes_s / weight_bytes
