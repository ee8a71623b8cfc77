"""Tasks: task kinds and the built-in task registry."""

from __future__ import annotations

from smallfit.errors import SmallfitError
from smallfit.tasks.base import Task
from smallfit.tasks.builtin import BUILTIN


def get_task(name: str) -> Task:
    """The built-in task called ``name``; a one-line error lists the choices otherwise."""
    factory = BUILTIN.get(name)
    if factory is None:
        raise SmallfitError(f"unknown task {name!r}: choose one of {', '.join(sorted(BUILTIN))} "
                            "(see 'smallfit tasks')")
    return factory()


__all__ = ["BUILTIN", "Task", "get_task"]
