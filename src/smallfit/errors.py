"""Errors that carry a one-line message for the user (problem and fix), never a traceback."""

from __future__ import annotations

# The fix for a llama.cpp library that cannot run here (an old glibc, a wheel built for another CPU).
LLAMA_CPP_REBUILD = "pip install --force-reinstall --no-cache-dir --no-deps llama-cpp-python==0.3.36"


class SmallfitError(Exception):
    """A problem the user can fix: the CLI prints the message on one line and exits with code 2."""

    exit_code = 2


class MissingExtraError(SmallfitError):
    """An optional library is not installed; the message names the extra that installs it."""

    def __init__(self, library: str, extra: str) -> None:
        super().__init__(
            f"the {library} library is not installed; install it with: pip install 'smallfit[{extra}]'"
        )


class PreflightError(SmallfitError):
    """Problems found before any model loads: one line each, all of them at once."""

    def __init__(self, problems: list[str], others_can_run: bool = False) -> None:
        self.problems = problems
        hint = ["nothing was run: fix these, or pass --keep-going to run the candidates that passed and record "
                "the others as errors"] if others_can_run else []
        super().__init__("\n".join([*problems, *hint]))
