"""One worker process (``python -m smallfit.worker``): start it on a :class:`~smallfit.contract.Job`,
read its events as they come, and say how it ended (exit reason, peak memory, over time).

Both executors run every job this way: the local one on this machine, the Ray one on the node
that got the job, so a job is measured the same in both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from smallfit.contract import Job, WorkerEvent, decode_event, encode_job
from smallfit.errors import LLAMA_CPP_REBUILD


@dataclass
class ProcessEnd:
    """How a worker process ended."""

    returncode: int | None = None
    peak_rss_bytes: int | None = None
    """The process's peak resident memory (ru_maxrss)."""
    exit_reason: str | None = None
    """Why it stopped, when it did not exit cleanly (killed by a signal, an exit code, over time)."""
    timed_out: bool = False
    """It ran past its time limit and was killed."""


class WorkerProcess:
    """Runs one job in its own process; iterate :meth:`events`, then read :attr:`end`."""

    def __init__(self, job: Job, timeout_s: float | None = None) -> None:
        self.job, self.timeout_s = job, timeout_s
        self.end = ProcessEnd()

    def events(self) -> Iterator[WorkerEvent]:
        """The worker's events in order; :attr:`end` is set once this is exhausted."""
        with tempfile.TemporaryFile() as stderr:
            proc = subprocess.Popen([sys.executable, "-m", "smallfit.worker"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=stderr, text=True, encoding="utf-8")
            timer = threading.Timer(self.timeout_s, self._over_time, (proc,)) if self.timeout_s else None
            try:
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(encode_job(self.job))
                proc.stdin.close()
                if timer is not None:
                    timer.start()
                for line in proc.stdout:
                    try:
                        yield decode_event(line)
                    except ValueError:
                        continue  # not a protocol line
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            finally:
                if timer is not None:
                    timer.cancel()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            self.end.returncode = proc.returncode
            self.end.peak_rss_bytes = usage.ru_maxrss * 1024
            if self.end.timed_out:
                self.end.exit_reason = f"over its time limit of {self.timeout_s:g} s (worker killed)"
            elif proc.returncode != 0:
                self.end.exit_reason = exit_reason(proc.returncode, _tail(stderr))

    def _over_time(self, proc: subprocess.Popen[str]) -> None:
        self.end.timed_out = True
        proc.kill()


def _tail(fh: IO[bytes], lines: int = 3) -> str:
    fh.seek(0)
    text = fh.read().decode("utf-8", "replace").strip().splitlines()
    return " | ".join(line.strip() for line in text[-lines:])


def exit_reason(code: int, stderr_tail: str) -> str:
    """One line: the signal or exit code that ended a worker, and the end of what it printed."""
    if code < 0:
        sig = signal.Signals(-code).name
        hint = {"SIGKILL": " (out of memory?)",
                "SIGILL": " (an instruction this CPU lacks: a native library built for another CPU, such as a "
                          f"llama.cpp wheel compiled elsewhere; rebuild it here: {LLAMA_CPP_REBUILD})"}.get(sig, "")
        reason = f"worker killed by {sig}{hint}"
    else:
        reason = f"worker exited with code {code}"
    return f"{reason}: {stderr_tail}" if stderr_tail else reason
