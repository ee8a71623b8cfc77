"""Build what a candidate's backend builds at load (an ONNX export, its int8 copy) before the
candidate's worker starts, in a process of its own: the export's time and memory (torch, the
fp32 weights) are then not counted as the candidate's load time and peak memory, which are
measured on the cached result as a user would run it.

``python -m smallfit.prepare``: a JSON job on stdin (backend, model_path, threads, options),
one JSON line on stdout: ``{"seconds": S}`` or ``{"error": "one line"}``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from smallfit.childjob import run_child, serve_child


def prepare(backend: str, model_path: Path, threads: int, options: dict[str, Any]) -> float:
    """Load (so build and cache) the model in a child process; seconds taken, or a one-line error."""
    t0 = time.perf_counter()
    run_child("smallfit.prepare", {"backend": backend, "model_path": str(model_path), "threads": threads,
                                   "options": options}, f"preparing {model_path.name} for {backend}")
    return time.perf_counter() - t0


def _load_and_close(job: dict[str, Any]) -> dict[str, Any]:
    from smallfit.backends.base import BackendConfig, load_backend

    t0 = time.perf_counter()
    load_backend(job["backend"], BackendConfig(model_path=Path(job["model_path"]), threads=job.get("threads"),
                                               options=job.get("options") or {})).close()
    return {"seconds": time.perf_counter() - t0}


def main() -> int:
    """Entry point of the preparing process (see :mod:`smallfit.childjob`)."""
    return serve_child(_load_and_close, lambda job: f"preparing {Path(job['model_path']).name} for {job['backend']}")


if __name__ == "__main__":
    sys.exit(main())
