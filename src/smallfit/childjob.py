"""One job in a child process: a JSON job on stdin, one JSON answer line on stdout.

Used for work that must stay out of a candidate's measured process and must not take the run
down when it crashes: building a sweep's GGUF variant (:mod:`smallfit.sweep.quantize`) and building an
ONNX export (:mod:`smallfit.prepare`). Failures come back as one-line :class:`SmallfitError`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from smallfit.errors import SmallfitError


def run_child(module: str, job: dict[str, Any], what: str) -> dict[str, Any]:
    """Run ``python -m MODULE`` on ``job``; its answer, or a one-line error (``what`` failed...)."""
    proc = subprocess.run([sys.executable, "-m", module], input=json.dumps(job), capture_output=True, text=True,
                          check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    answer: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    if answer.get("error"):
        raise SmallfitError(str(answer["error"]))
    if answer and proc.returncode == 0:
        return answer
    tail = " | ".join(proc.stderr.strip().splitlines()[-2:])
    raise SmallfitError(f"{what} failed (exit code {proc.returncode}): {tail}")


def serve_child(work: Callable[[dict[str, Any]], dict[str, Any]], what: Callable[[dict[str, Any]], str]) -> int:
    """The child's side: read the job, run ``work``, write its answer (or the error) as one line.

    fd 1 is kept for the answer and everything else printed goes to stderr (native libraries
    such as llama.cpp log to stdout)."""
    job = json.loads(sys.stdin.read())
    fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        try:
            answer = work(job)
        except SmallfitError as exc:
            out.write(json.dumps({"error": str(exc)}) + "\n")
            return 1
        except (OSError, ValueError, KeyError) as exc:
            out.write(json.dumps({"error": f"{what(job)} failed: {type(exc).__name__}: {exc}"}) + "\n")
            return 1
        out.write(json.dumps(answer) + "\n")
    return 0
