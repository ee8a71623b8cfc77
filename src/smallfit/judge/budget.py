"""Parse a budget: ``"acc>=0.40, latency_s_p95<=300ms, peak_rss_bytes<=1.5GB"``.

Each comma-separated check is ``[TASK:]METRIC OP VALUE`` with OP one of ``>= <= > <``.
VALUE is a number, optionally with a unit suffix: ``ms``/``s`` for times and
``KB MB GB`` (powers of 1000) or ``KiB MiB GiB`` (powers of 1024) for bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from smallfit.errors import SmallfitError
from smallfit.metrics import known_metric

_CHECK = re.compile(
    r"^\s*(?:(?P<task>[A-Za-z0-9_.\-]+):)?(?P<metric>[A-Za-z_][A-Za-z0-9_]*)\s*"
    r"(?P<op>>=|<=|>|<)\s*(?P<value>[-+0-9.eE]+)\s*(?P<unit>[A-Za-z]*)\s*$"
)
_UNITS = {
    "": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6,
    "b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
    "kib": 2.0**10, "mib": 2.0**20, "gib": 2.0**30, "tib": 2.0**40,
}
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
        value = float(m["value"]) * _UNITS[unit]
    except ValueError:
        raise SmallfitError(f"budget check {text.strip()!r}: {m['value']!r} is not a number") from None
    return Check(metric=metric, op=m["op"], threshold=value, task=m["task"])


def parse_budget(spec: str | Iterable[str] | None) -> list[Check]:
    """Parse a comma-separated budget string, or a list of check strings (as in a TOML spec)."""
    if spec is None:
        return []
    parts = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in s.split(",")]
    parts = [p for p in parts if p.strip()]
    if not parts:
        raise SmallfitError("the budget is empty: give checks like 'acc>=0.4,latency_s_p95<=2'")
    return [parse_check(p) for p in parts]
