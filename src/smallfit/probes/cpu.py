"""The CPU features that decide how int8 matrix products are computed, and the int8 mode each
library is told to use on this CPU, so an int8 variant scores the same on every processor.

Why it matters: x86 int8 GEMMs multiply unsigned 8-bit activations by signed 8-bit weights
(u8s8). With VNNI (``avx512_vnni``, ``avx_vnni``) or AMX the products are summed straight into
32 bits. Without it (AVX2, or AVX-512 without VNNI) the kernels use ``vpmaddubsw``, which adds
pairs of products in *saturating* 16 bits: 2 x 255 x 127 = 64770 does not fit in 32767, so
ONNX Runtime's int8 graph silently clips (seen: -16.0 nats for a request fp32 scores at -0.26).
With weights in 7 bits (``reduce_range``: -64..64) a pair is at most 2 x 255 x 64 = 32640 and
never saturates, so every x86 CPU computes the same integers. ARM kernels widen to 16/32 bits
before adding and need no such care.

``SMALLFIT_CPU_FEATURES`` pretends the CPU has only the listed flags (comma or space separated,
optionally ``machine:`` first, e.g. ``x86_64:avx2,fma`` or ``aarch64:asimd``), so tests and
users can force each path on any machine.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

from smallfit.errors import SmallfitError

FEATURES_ENV = "SMALLFIT_CPU_FEATURES"
# the flags that change which int8 (and float) kernels the libraries pick
INT8_FLAGS = ("sse4_1", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
              "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd", "asimddp", "i8mm", "sve")
U8_MAX, S16_MAX = 255, 2**15 - 1


@dataclass(frozen=True)
class CpuFeatures:
    """What the int8 rules look at."""

    machine: str
    """``platform.machine()`` lower-cased (``x86_64``, ``aarch64``...), or the forced one."""
    flags: frozenset[str]
    """The CPU's flags among :data:`INT8_FLAGS` (from /proc/cpuinfo), or the forced ones."""
    forced: bool
    """True when :data:`FEATURES_ENV` set them rather than the CPU."""


@dataclass(frozen=True)
class Int8Path:
    """The int8 kernel path of this CPU and the quantization mode chosen for it."""

    name: str
    """Short name of the kernel path (``x86-vnni``, ``x86-amx``, ``x86-no-vnni``, ``arm``)."""
    onnx_reduce_range: bool
    """Quantize ONNX weights to 7 bits (-64..64) so u8s8 pair sums cannot saturate in int16."""
    torch_engines: tuple[str, ...]
    """``torch.backends.quantized.engine`` values to use, best first."""
    reason: str
    """One line saying why, recorded with the result."""


def _is_x86(machine: str) -> bool:
    return machine in ("x86_64", "amd64", "i386", "i686", "x86")


def _is_arm(machine: str) -> bool:
    return machine in ("aarch64", "arm64") or machine.startswith("armv")


def cpu_features() -> CpuFeatures:
    """This CPU's machine and int8-relevant flags, or those :data:`FEATURES_ENV` pretends."""
    forced = os.environ.get(FEATURES_ENV, "").strip()
    if forced:
        machine, _, listed_text = forced.rpartition(":")
        listed = frozenset(listed_text.replace(",", " ").split())
        return CpuFeatures(machine.strip().lower() or platform.machine().lower(), listed, True)
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags = set(value.split())
            break
    return CpuFeatures(platform.machine().lower(), frozenset(f for f in INT8_FLAGS if f in flags), False)


def int8_path(cpu: CpuFeatures | None = None) -> Int8Path:
    """The int8 kernel path of ``cpu`` (this one by default) and the mode chosen for it; a CPU
    with no known rule is refused with a one-line :class:`SmallfitError`."""
    cpu = cpu or cpu_features()
    f = cpu.flags
    if _is_x86(cpu.machine):
        # torch's fbgemm/x86 dynamic Linear quantizes activations to 7 bits (reduce_range=True
        # in torch.ao.nn.quantized.dynamic.Linear), so 2 x 127 x 128 fits in int16 on any x86
        engines = ("x86", "fbgemm")
        if "amx_int8" in f:
            return Int8Path("x86-amx", False, engines, "AMX int8 tiles accumulate u8s8 products in 32 bits")
        if "avx512_vnni" in f or "avx_vnni" in f:
            return Int8Path("x86-vnni", False, engines, "VNNI (vpdpbusd) accumulates u8s8 products in 32 bits")
        return Int8Path("x86-no-vnni", True, engines,
                        "no VNNI: u8s8 pairs add in saturating int16 (vpmaddubsw), so weights use 7 bits "
                        f"(2 x {U8_MAX} x 64 <= {S16_MAX})")
    if _is_arm(cpu.machine):
        return Int8Path("arm", False, ("qnnpack",), "ARM int8 kernels widen before adding: no int16 saturation")
    raise SmallfitError(f"int8 dynamic quantization on a {cpu.machine or 'unknown'} CPU: smallfit has no rule "
                        "for its int8 kernels, so their results could not be trusted; use an fp32 or GGUF variant")


def describe() -> dict[str, object]:
    """The features and the int8 path, in plain JSON types, for the hardware fingerprint."""
    cpu = cpu_features()
    try:
        chosen = int8_path(cpu)
        path: dict[str, object] = {"name": chosen.name, "onnx_reduce_range": chosen.onnx_reduce_range,
                                   "torch_engines": list(chosen.torch_engines), "reason": chosen.reason}
    except SmallfitError as exc:
        path = {"name": None, "reason": str(exc)}
    return {"cpu_features": sorted(cpu.flags), "cpu_features_forced": cpu.forced, "int8_kernel_path": path}
