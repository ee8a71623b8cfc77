"""Tasks: task kinds, the built-in tasks, evals-registry adapters and the user's task files."""

from __future__ import annotations

from pathlib import Path

from smallfit.errors import SmallfitError
from smallfit.tasks.base import Task
from smallfit.tasks.builtin import BUILTIN, evals_task
from smallfit.tasks.standard import STANDARD, is_standard, standard_task
from smallfit.tasks.user import is_task_file, load_task_file


def get_task(ref: str) -> Task:
    """Resolve a --task value: a built-in name, ``evals:FOLDER``, or a path to a task file."""
    if is_task_file(ref):
        return load_task_file(Path(ref))
    if ref.startswith("evals:"):
        return evals_task(ref.removeprefix("evals:"))
    if is_standard(ref):
        name, _, local = ref.partition("=")
        return standard_task(name, local or None)
    factory = BUILTIN.get(ref)
    if factory is None:
        raise SmallfitError(f"unknown task {ref!r}: choose one of {', '.join(sorted({**BUILTIN, **STANDARD}))}, "
                            "evals:FOLDER, or a task file ending in .toml (see 'smallfit tasks')")
    return factory()


__all__ = ["BUILTIN", "STANDARD", "Task", "get_task"]
