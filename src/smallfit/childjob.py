"""One protocol for work in a child process: ``python -m smallfit.childjob`` reads a JSON job
``{"call": "smallfit.MODULE:FUNCTION", "args": {...}, "what": "..."}`` on stdin, runs
``FUNCTION(**args)`` and writes one JSON line on stdout: the function's answer (a dict), or
``{"error": "one line"}``.

Every build that must stay out of the calling process (its memory, its imports, a crash) goes
through it: the cache builders (a sweep's GGUF variants, llama.cpp's conversion, ONNX exports
and their int8 copies, the transformers dequantisation of a GGUF file) and the runner's prepare
step. A cache builder run this way (:func:`child_builder`) gets the entry's temporary folder as
its ``out`` argument. Failures come back as one-line :class:`SmallfitError`.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smallfit.errors import SmallfitError


def run_child(call: str, args: dict[str, Any], what: str) -> dict[str, Any]:
    """Run ``call`` (``"smallfit.MODULE:FUNCTION"``) on ``args`` in a new process; its answer, or
    a one-line error (``what`` names the work: "WHAT failed ...")."""
    job = {"call": call, "args": args, "what": what, "parent": os.getpid()}
    proc = subprocess.run([sys.executable, "-m", "smallfit.childjob"], input=json.dumps(job), capture_output=True,
                          text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    answer: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    if answer.get("error"):
        raise SmallfitError(str(answer["error"]))
    if lines and proc.returncode == 0:
        return answer
    tail = " | ".join(line.strip() for line in proc.stderr.strip().splitlines()[-2:])
    raise SmallfitError(f"{what} failed (exit code {proc.returncode}): {tail or 'no output'}")


def child_builder(call: str, args: dict[str, Any], what: str) -> Callable[[Path], None]:
    """A builder for :func:`smallfit.cache.build` that runs ``call(out=TEMPORARY FOLDER, **args)``
    in a child process."""

    def build(out: Path) -> None:
        run_child(call, {**args, "out": str(out)}, what)

    return build


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def _end_with_parent(parent: int | None) -> None:
    """On Linux, have the kernel end this process when its parent dies: a run killed with
    SIGKILL leaves no build writing on into a temporary folder that the next build removes."""
    if parent is None or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


def serve_child() -> int:
    """The child's side: read the job, run it, write its answer (or the error) as one line.

    fd 1 is kept for the answer and everything else printed goes to stderr (native libraries
    such as llama.cpp log to stdout)."""
    job = json.loads(sys.stdin.read())
    _end_with_parent(job.get("parent"))
    what = str(job.get("what") or job.get("call"))
    fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        try:
            module, _, name = str(job["call"]).partition(":")
            if not module.startswith("smallfit."):
                raise SmallfitError(f"{what}: {module} is not a smallfit module")
            answer = getattr(importlib.import_module(module), name)(**job.get("args", {}))
        except SmallfitError as exc:
            out.write(json.dumps({"error": _first_line(exc) or f"{what} failed"}) + "\n")
            return 1
        except SystemExit as exc:  # a script run in the child (llama.cpp's converter) may exit
            if exc.code not in (0, None):
                raise  # no answer: the parent reports the exit code and the last lines of stderr
            answer = None
        except Exception as exc:  # noqa: BLE001 - builders raise many types; all are one line here
            why = ": ".join(filter(None, (type(exc).__name__, _first_line(exc))))
            out.write(json.dumps({"error": f"{what} failed: {why}"}) + "\n")
            return 1
        out.write(json.dumps(answer if isinstance(answer, dict) else {}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(serve_child())
