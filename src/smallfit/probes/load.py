"""Machine load around each measurement: the machine is shared, so load is recorded, not assumed."""

from __future__ import annotations

import os
import time
from typing import Any

from smallfit.probes.hardware import usable_cpus


def machine_load() -> dict[str, Any]:
    """Load averages (1, 5, 15 min) and the time they were read."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return {"at": time.time(), "loadavg": None}
    return {"at": time.time(), "loadavg": [round(one, 2), round(five, 2), round(fifteen, 2)]}


def default_threads() -> int:
    """Threads for llama.cpp: usable CPUs minus those already busy (1-minute load average,
    rounded down), at least 1. llama.cpp's threads wait on each other, so one thread on a core
    that another process holds slows every token down; fewer threads on free cores is faster."""
    cpus = usable_cpus()
    try:
        busy = int(os.getloadavg()[0])
    except OSError:
        busy = 0
    return max(1, cpus - busy)
