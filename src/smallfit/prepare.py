"""Build what a candidate's backend builds at load (an ONNX export, its int8 copy) before the
candidate's worker starts, in a process of its own: the export's time and memory (torch, the
fp32 weights) are then not counted as the candidate's load time and peak memory, which are
measured on the cached result as a user would run it.

The child process speaks :mod:`smallfit.childjob`'s protocol, as every build does; it answers
``{"seconds": S}`` or a one-line error.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from smallfit.childjob import run_child


def prepare(backend: str, model_path: Path, threads: int, options: dict[str, Any]) -> float:
    """Load (so build and cache) the model in a child process; seconds taken, or a one-line error."""
    t0 = time.perf_counter()
    run_child("smallfit.prepare:load_and_close", {"backend": backend, "model_path": str(model_path),
                                                   "threads": threads, "options": options},
              f"preparing {model_path.name} for {backend}")
    return time.perf_counter() - t0


def load_and_close(backend: str, model_path: str, threads: int | None = None,
                   options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Child side (see :mod:`smallfit.childjob`): load the backend, so it builds what it needs."""
    from smallfit.backends.base import BackendConfig, load_backend

    t0 = time.perf_counter()
    load_backend(backend, BackendConfig(model_path=Path(model_path), threads=threads, options=options or {})).close()
    return {"seconds": time.perf_counter() - t0}
