"""Energy of a measured span: measured where the machine exposes counters, else estimated.

Sources, in order: NVIDIA's NVML total-energy counter for a GPU candidate; Linux powercap
(Intel/AMD RAPL) counters of the domains named ``package-N``; otherwise an estimate: CPU time of this process times a
per-core power figure (``cpu_watts_per_core``, default 12 W, the user's to override). Reading
counters happens at the start and the end of a span only: measuring never busy-waits.
Every reading says whether it was measured or estimated, and from what.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from smallfit.probes.load import process_cpu_seconds

DEFAULT_CPU_WATTS_PER_CORE = 12.0
DEFAULT_WATTS_BASIS = ("the default 12 W: a typical x86 package's rated power (TDP) over its cores, e.g. 96 W over "
                       "8 cores; not measured on this machine (set prices.cpu_watts_per_core)")
POWERCAP = Path("/sys/class/powercap")


@dataclass(frozen=True)
class EnergyReading:
    """Joules over a span, or None with the reason; ``method`` is measured or estimated."""

    joules: float | None
    method: str  # "measured" | "estimated" | "unavailable"
    source: str
    seconds: float


def rapl_domains(root: Path = POWERCAP) -> list[Path]:
    """Readable RAPL package domains: those whose ``name`` file says ``package-N``. Others at the
    top level (``psys``, the whole platform) would count the packages twice; sub-domains (core,
    uncore, dram) are inside the package figure."""
    found = []
    for domain in sorted(root.glob("intel-rapl:*")):
        try:
            name = (domain / "name").read_text().strip()
            int((domain / "energy_uj").read_text())
        except (OSError, ValueError):
            continue
        if re.fullmatch(r"package-\d+", name):
            found.append(domain)
    return found


def counter_delta(before: int, after: int, wrap: int | None) -> int:
    """A monotonic counter's increase, allowing for one wrap-around at ``wrap``."""
    if after >= before:
        return after - before
    if not wrap:
        raise ValueError("counter went backwards and its range is unknown")
    return wrap - before + after


class EnergyMeter:
    """Start and stop around a span; ``gpu_energy_mj`` reads a GPU's cumulative millijoules."""

    def __init__(self, cpu_watts_per_core: float = DEFAULT_CPU_WATTS_PER_CORE,
                 gpu_energy_mj: Callable[[], int] | None = None, powercap: Path = POWERCAP) -> None:
        self.watts = cpu_watts_per_core
        self.gpu = gpu_energy_mj
        self.domains = rapl_domains(powercap)
        self._start: tuple[float, float, list[int], int | None] | None = None

    @property
    def started(self) -> bool:
        """``start`` was called."""
        return self._start is not None

    def _read_rapl(self) -> list[int]:
        return [int((d / "energy_uj").read_text()) for d in self.domains]

    def start(self) -> None:
        """Take the starting readings."""
        gpu = None
        if self.gpu is not None:
            try:
                gpu = self.gpu()
            except Exception:  # noqa: BLE001 - a GPU that disappeared gives no reading
                gpu = None
        rapl: list[int] = []
        try:
            rapl = self._read_rapl()
        except (OSError, ValueError):
            self.domains = []
        self._start = (time.perf_counter(), process_cpu_seconds(), rapl, gpu)

    def stop(self) -> EnergyReading:
        """Energy since ``start``: GPU counter, else RAPL, else the CPU-time estimate."""
        if self._start is None:
            raise RuntimeError("stop() before start()")
        t0, cpu0, rapl0, gpu0 = self._start
        seconds = time.perf_counter() - t0
        if self.gpu is not None:
            try:
                gpu1 = self.gpu()
                if gpu0 is not None:
                    return EnergyReading(counter_delta(gpu0, gpu1, None) / 1000.0, "measured",
                                         "NVML total energy of the GPU", seconds)
            except Exception as exc:  # noqa: BLE001 - a GPU that disappeared gives no reading
                return EnergyReading(None, "unavailable", f"GPU energy counter unreadable: {exc}", seconds)
        if self.domains and rapl0:
            try:
                rapl1 = self._read_rapl()
                total = 0
                for domain, a, b in zip(self.domains, rapl0, rapl1, strict=True):
                    wrap_file = domain / "max_energy_range_uj"
                    wrap = int(wrap_file.read_text()) if wrap_file.exists() else None
                    total += counter_delta(a, b, wrap)
                return EnergyReading(total / 1e6, "measured",
                                     f"RAPL package counters ({len(self.domains)}): the whole CPU package, "
                                     "other processes included", seconds)
            except (OSError, ValueError) as exc:
                reason = f"RAPL unreadable ({exc}); "
        else:
            reason = ""
        cpu_s = process_cpu_seconds() - cpu0
        basis = f" ({DEFAULT_WATTS_BASIS})" if self.watts == DEFAULT_CPU_WATTS_PER_CORE else " (set by the run)"
        return EnergyReading(cpu_s * self.watts, "estimated",
                             f"{reason}CPU time of the candidate's process ({cpu_s:.2f} s) x {self.watts:g} W per "
                             f"busy core{basis}", seconds)


def nvml_energy_reader(device_index: int = 0) -> Callable[[], int] | None:
    """A callable returning the GPU's cumulative energy in mJ, or None without NVML."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception:  # noqa: BLE001 - no driver, no device, or no energy counter
        return None
    return lambda: int(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))
