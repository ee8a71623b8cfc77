"""Build what a candidate's backend builds at load (an ONNX export, its int8 copy) before the
candidate's worker starts, in a process of its own: the export's time and memory (torch, the
fp32 weights) are then not counted as the candidate's load time and peak memory, which are
measured on the cached result as a user would run it.

``python -m smallfit.prepare``: a JSON job on stdin (backend, model_path, threads, options),
one JSON line on stdout: ``{"seconds": S}`` or ``{"error": "one line"}``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from smallfit.errors import SmallfitError

# Backends that export or quantize at load, and when a model needs it.
BUILDS_AT_LOAD = {"onnx"}


def needs_preparing(backend: str, model_path: Path | None, options: dict[str, Any]) -> bool:
    """True when loading would build files: an ONNX candidate that is not a plain .onnx run as is."""
    if backend not in BUILDS_AT_LOAD or model_path is None:
        return False
    given = model_path.suffix.lower() == ".onnx" or (model_path.is_dir() and any(model_path.glob("*.onnx")))
    return not given or options.get("quantize", "none") != "none"


def prepare(backend: str, model_path: Path, threads: int, options: dict[str, Any]) -> float:
    """Load (so build and cache) the model in a child process; seconds taken, or a one-line error."""
    job = json.dumps({"backend": backend, "model_path": str(model_path), "threads": threads, "options": options})
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "smallfit.prepare"], input=job, capture_output=True, text=True,
                          check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    answer: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    if "seconds" in answer:
        return time.perf_counter() - t0
    if answer.get("error"):
        raise SmallfitError(str(answer["error"]))
    tail = " | ".join(proc.stderr.strip().splitlines()[-2:])
    raise SmallfitError(f"preparing {model_path.name} for {backend} failed (exit code {proc.returncode}): {tail}")


def main() -> int:
    """Entry point of the preparing process."""
    from smallfit.backends.base import BackendConfig, load_backend

    job = json.loads(sys.stdin.read())
    fd = os.dup(1)  # keep fd 1 for the answer: native libraries may print to stdout
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        t0 = time.perf_counter()
        try:
            load_backend(job["backend"], BackendConfig(model_path=Path(job["model_path"]), threads=job.get("threads"),
                                                       options=job.get("options") or {})).close()
        except SmallfitError as exc:
            out.write(json.dumps({"error": str(exc)}) + "\n")
            return 1
        out.write(json.dumps({"seconds": time.perf_counter() - t0}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
