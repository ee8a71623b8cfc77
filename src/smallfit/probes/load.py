"""Machine load around each measurement: the machine may be shared, so load is recorded, not assumed."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from smallfit.probes.hardware import usable_cpus


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies over all CPUs from /proc/stat, or None where it is not readable."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        values = [int(v) for v in fields]
    except (OSError, ValueError, IndexError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - idle, total


def busy_cpus(interval_s: float = 0.5) -> float | None:
    """How many CPUs other processes kept busy during a short sleep (this process is idle)."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(interval_s)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return None
    fraction = (second[0] - first[0]) / (second[1] - first[1])
    return fraction * (os.cpu_count() or 1)


def machine_load() -> dict[str, Any]:
    """Load averages (1, 5, 15 min) and the time they were read."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return {"at": time.time(), "loadavg": None}
    return {"at": time.time(), "loadavg": [round(one, 2), round(five, 2), round(fifteen, 2)]}


def default_threads() -> tuple[int, dict[str, Any]]:
    """Threads for a CPU backend: the usable CPUs minus those other processes keep busy now,
    at least 1, and how that was decided.

    Busy CPUs are measured over half a second from /proc/stat rather than read from the load
    average, which lags by minutes behind a job that just ended. llama.cpp's threads wait on each
    other, so one thread on a core another process holds slows every token down.
    """
    cpus = usable_cpus()
    busy = busy_cpus()
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except OSError:
            busy = 0.0
    threads = max(1, cpus - round(busy))
    return threads, {"usable_cpus": cpus, "busy_cpus": round(busy, 2), "threads": threads}
