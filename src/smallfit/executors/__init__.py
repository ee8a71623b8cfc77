"""Where a run's jobs run: ``local`` (this machine, the default) or ``ray`` (a Ray cluster).

See :mod:`smallfit.executors.base` for the interface both keep.
"""

from __future__ import annotations

from typing import Any

from smallfit.errors import SmallfitError
from smallfit.executors.base import Executor

EXECUTORS = ("local", "ray")


def get_executor(name: str, address: str | None = None, retries: int = 2, job_timeout_s: float | None = None
                 ) -> Executor:
    """The executor called ``name``; a one-line error for an unknown one, a missing Ray, or an
    option that only the other one takes."""
    if name == "local":
        if address:
            raise SmallfitError("--address is where a Ray cluster listens; use it with --executor ray")
        from smallfit.executors.local import LocalExecutor

        return LocalExecutor()
    if name == "ray":
        from smallfit.executors.ray import RayExecutor

        return RayExecutor(address or "auto", retries, job_timeout_s)
    raise SmallfitError(f"unknown --executor {name!r}: choose from {', '.join(EXECUTORS)}")


def stored_executor(described: dict[str, Any] | None) -> Executor:
    """The executor a run was started with (``runs.executor_json``), to resume it the same way."""
    described = described or {"executor": "local"}
    return get_executor(str(described.get("executor", "local")), described.get("address"),
                        int(described.get("retries", 2)), described.get("job_timeout_s"))
