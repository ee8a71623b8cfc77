"""Parse a budget: ``"acc>=0.40, latency_s_p95<=300ms, peak_rss_bytes<=1.5GB"``.

Each comma-separated check is ``[TASK:]METRIC OP VALUE`` with OP one of ``>= <= > <``.
VALUE is a number, optionally with a unit suffix: ``ms``/``s`` for times and
``KB MB GB`` (powers of 1000) or ``KiB MiB GiB`` (powers of 1024) for bytes. The value is
checked against the metric's unit (:data:`smallfit.metrics.METRICS`), so that a check that
could never fail or never pass is an error naming the likely intent: a unit of the wrong kind,
a bare time too long to be seconds, a bare byte count too small or not whole, a proportion
outside [0, 1].
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from smallfit.errors import SmallfitError
from smallfit.metrics import METRICS, QUALITY_SUFFIXES, known_metric

_CHECK = re.compile(
    r"^\s*(?:(?P<task>[A-Za-z0-9_.\-]+):)?(?P<metric>[A-Za-z_][A-Za-z0-9_]*)\s*"
    r"(?P<op>>=|<=|>|<)\s*(?P<value>[-+0-9.eE]+)\s*(?P<unit>[A-Za-z]*)\s*$"
)
_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_BYTE_UNITS = {
    "b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
    "kib": 2.0**10, "mib": 2.0**20, "gib": 2.0**30, "tib": 2.0**40,
}
_UNITS = {"": 1.0, **_TIME_UNITS, **_BYTE_UNITS}

# The longest time, in seconds, that a bare number (no unit) may give for each time metric
# (percentiles share their base's): above it the number far more likely means milliseconds.
# Anything is accepted with a unit ("90s"), so these can be tight.
BARE_SECONDS_MAX = {"tpot_s": 1.0, "itl_s": 1.0, "ttft_s": 10.0, "latency_s": 60.0, "load_s": 600.0}
# The smallest bare number accepted as bytes (1 MB): a smaller one is a size in MB or GB with
# its unit left off; "512B" says bytes on purpose.
BARE_BYTES_MIN = 1_000_000
OPS = (">=", "<=", ">", "<")


@dataclass(frozen=True)
class Check:
    """One budget check: ``metric op threshold``, optionally limited to one task."""

    metric: str
    op: str
    threshold: float
    task: str | None = None

    def __str__(self) -> str:
        scope = f"{self.task}:" if self.task else ""
        return f"{scope}{self.metric}{self.op}{self.threshold:g}"

    def passes(self, value: float) -> bool:
        """Whether ``value`` meets this check."""
        if self.op == ">=":
            return value >= self.threshold
        if self.op == "<=":
            return value <= self.threshold
        if self.op == ">":
            return value > self.threshold
        return value < self.threshold


def parse_check(text: str) -> Check:
    """Parse one check; raise :class:`SmallfitError` naming the problem and the fix."""
    m = _CHECK.match(text)
    if not m:
        raise SmallfitError(
            f"malformed budget check {text.strip()!r}: write METRIC OP VALUE, e.g. 'acc>=0.4' "
            "or 'latency_s_p95<=300ms' (OP is one of >= <= > <)"
        )
    metric, unit = m["metric"], m["unit"].lower()
    if not known_metric(metric):
        raise SmallfitError(
            f"budget names unknown metric {metric!r}: run 'smallfit metrics' to list the metrics"
        )
    if unit not in _UNITS:
        raise SmallfitError(
            f"budget check {text.strip()!r} has unknown unit {m['unit']!r}: use ms, s, MB, GB, MiB or GiB"
        )
    try:
        number = float(m["value"])
    except ValueError:
        raise SmallfitError(f"budget check {text.strip()!r}: {m['value']!r} is not a number") from None
    value = number * _UNITS[unit]
    _check_unit(m, metric, unit, number, value)
    return Check(metric=metric, op=m["op"], threshold=value, task=m["task"])


def _base_unit(metric: str) -> str:
    """The unit of a metric, of its base for a quality metric's ``_stderr``/``_ci_*`` sibling."""
    for suffix in QUALITY_SUFFIXES:
        if metric.endswith(suffix) and metric[: -len(suffix)] in METRICS:
            return METRICS[metric[: -len(suffix)]].unit
    return METRICS[metric].unit


def _check_unit(m: re.Match[str], metric: str, unit: str, number: float, value: float) -> None:
    """Raise when the value cannot be what the check means in the metric's unit."""
    shown, written, scope = re.sub(r"\s+", "", m.group(0)), m["value"], f"{m['task']}:" if m["task"] else ""
    kind = _base_unit(metric)
    is_time, is_bytes = kind == "s", kind in ("bytes", "bytes/s")
    if (unit in _TIME_UNITS and not is_time) or (unit in _BYTE_UNITS and not is_bytes):
        what = "time" if unit in _TIME_UNITS else "bytes"
        fits = ("in seconds: use s or ms" if is_time else f"in {kind}: use B, KB, MB, GB, KiB, MiB or GiB" if is_bytes
                else "a proportion, written without a unit" if kind == "fraction"
                else f"in {kind}, written without a unit" if kind else "written without a unit")
        raise SmallfitError(f"budget check {shown}: {m['unit']} is a unit of {what}, but {metric} is {fits}")
    if kind == "fraction":
        if not 0.0 <= value <= 1.0:
            hint = (f"did you mean {scope}{metric}{m['op']}{_percent_as_fraction(value)}?" if 1.0 < value <= 100.0
                    else "it must lie in [0, 1]")
            raise SmallfitError(f"budget check {shown}: {metric} is a proportion; {hint}")
    elif (is_time or is_bytes) and value < 0:
        raise SmallfitError(f"budget check {shown}: {metric} cannot be negative")
    elif is_time and not unit:
        limit = BARE_SECONDS_MAX.get(re.sub(r"_p\d\d$", "", metric), BARE_SECONDS_MAX["latency_s"])
        if value > limit:
            raise SmallfitError(
                f"budget check {shown}: {metric} is in seconds, and a bare {written} is more than the {limit:g} s "
                f"it takes without a unit; did you mean {scope}{metric}{m['op']}{written}ms? "
                f"(write {written}s if you mean seconds)")
    elif is_bytes and unit in ("", "b"):
        likely = "GB" if number < 100 else "MB"  # 1.5 is a size in GB; 800 one in MB
        if not number.is_integer():
            raise SmallfitError(
                f"budget check {shown}: {metric} is in {kind}, and {written} is not a whole number of bytes; "
                f"did you mean {scope}{metric}{m['op']}{written}{likely}?")
        if not unit and value < BARE_BYTES_MIN:
            raise SmallfitError(
                f"budget check {shown}: {metric} is in {kind}, and a bare {written} is under the 1 MB it takes "
                f"without a unit; did you mean {scope}{metric}{m['op']}{written}{likely}? "
                f"(write {written}B if you mean bytes)")


def _percent_as_fraction(value: float) -> str:
    """40 -> "0.40", 45.5 -> "0.455": a percentage as the proportion, at least two decimals."""
    text = f"{value / 100:.6f}".rstrip("0")
    decimals = len(text.split(".")[1])
    return text + "0" * max(0, 2 - decimals)


def parse_budget(spec: str | Iterable[str] | None) -> list[Check]:
    """Parse a comma-separated budget string, or a list of check strings (as in a TOML spec)."""
    if spec is None:
        return []
    parts = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in s.split(",")]
    parts = [p for p in parts if p.strip()]
    if not parts:
        raise SmallfitError("the budget is empty: give checks like 'acc>=0.4,latency_s_p95<=2'")
    return [parse_check(p) for p in parts]
