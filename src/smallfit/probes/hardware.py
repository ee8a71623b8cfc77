"""Hardware fingerprint and library versions, recorded with every run."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

_FLAGS = ("avx", "avx2", "avx512f", "avx512_vnni", "avx512vnni", "fma", "f16c", "amx_tile", "neon", "asimd", "sve")
_LIBRARIES = ("smallfit", "llama-cpp-python", "numpy", "pydantic", "typer", "rich")


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "flags", "Features") and key not in info:
            info[key] = value.strip()
    return info


def _mem_total_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def usable_cpus() -> int:
    """CPUs this process may run on (affinity), not just those the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def fingerprint() -> dict[str, Any]:
    """CPU model and flags, the int8 kernel path (:mod:`smallfit.probes.cpu`), core counts, memory,
    OS and Python, in plain JSON types."""
    from smallfit.probes.cpu import describe

    cpu = _cpuinfo()
    flags = set((cpu.get("flags") or cpu.get("Features") or "").split())
    return {
        "cpu_model": cpu.get("model name") or platform.processor() or platform.machine(),
        "cpu_flags": sorted(f for f in _FLAGS if f in flags),
        **describe(),  # cpu_features (those int8/float kernels depend on), int8_kernel_path
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "ram_bytes": _mem_total_bytes(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "hostname": platform.node(),
    }


def library_versions() -> dict[str, str | None]:
    """Installed versions of smallfit and the libraries that shape its figures (not imported)."""
    from smallfit.backends.registry import registry

    plugins = sorted({s.distribution for s in registry().values() if s.distribution and s.distribution != "smallfit"})
    out: dict[str, str | None] = {}
    for name in [*_LIBRARIES, *plugins]:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
