"""Machine load around each measurement: the machine may be shared, so load is recorded, not assumed."""

from __future__ import annotations

import os
import resource
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


NOISY_OTHER_CPUS = 0.5  # other processes keeping half a core busy on average
NOISY_STEAL_PCT = 5.0


def _proc_stat() -> tuple[float, float, float] | None:
    """(busy, steal, total) seconds over all CPUs since boot, from /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / tick, steal / tick, sum(values) / tick


class Contention:
    """How busy the rest of the machine was during a span: CPU seconds other processes used
    (all CPU busy time minus this process's own), and time stolen by a hypervisor."""

    def __init__(self) -> None:
        self._start: tuple[float, tuple[float, float, float] | None, float] | None = None

    def start(self) -> None:
        """Take the starting snapshot."""
        self._start = (time.perf_counter(), _proc_stat(), process_cpu_seconds())

    def stop(self) -> dict[str, Any]:
        """``others_busy_cpus``, ``steal_pct`` and the ``noisy`` flag for the span."""
        assert self._start is not None
        t0, stat0, own0 = self._start
        wall = time.perf_counter() - t0
        stat1, own1 = _proc_stat(), process_cpu_seconds()
        if stat0 is None or stat1 is None or wall <= 0:
            return {"others_busy_cpus": None, "steal_pct": None, "noisy": None, "reason": "/proc/stat unreadable"}
        busy, steal, total = (b - a for a, b in zip(stat0, stat1, strict=True))
        others = max(0.0, (busy - (own1 - own0)) / wall)
        steal_pct = 100 * steal / total if total > 0 else 0.0
        return {"others_busy_cpus": round(others, 3), "steal_pct": round(steal_pct, 2), "wall_s": round(wall, 3),
                "noisy": others > NOISY_OTHER_CPUS or steal_pct > NOISY_STEAL_PCT}


def process_cpu_seconds() -> float:
    """User + system CPU time of this process, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
