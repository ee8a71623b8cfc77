"""Multiple-choice scoring speed: smallfit on llama.cpp and on transformers against lm-eval at batch 8.

The task: 200 LogiQA questions from the evals registry (four multi-token choices each; questions
400-599, held out of benchmarks/vs_lm_eval.py's), scored by

- smallfit, llama.cpp backend, the bundled SmolLM2-135M-Instruct GGUF (Q4_1);
- smallfit, transformers backend, the same weights dequantised to float32 (batch 8);
- lm-eval 0.4.13 (``--model hf``, float32, ``--batch_size 8``) on that float32 folder;

each as one whole process (model load included), alternating between them for ``--repeat``
rounds; medians are printed with the machine's load average before and after each run (the
machine may be shared). Then the compute floor: the task's matrix-multiply work (each question's
context once, each choice's tokens, the output head only where a token is scored) divided by
the measured float32 matmul peak of this CPU (numpy and torch, ``--threads`` threads), and each
run's achieved GFLOP/s. lm-eval runs from its own environment:

    .venv/bin/python benchmarks/scoring.py [--repeat 3] [--threads 2] [--lm-eval-venv PATH]

Targets (issue 15): llama.cpp at most 1/3 of lm-eval batch 8's wall time, at least 50% of the
compute floor (achieved GFLOP/s at least half the matmul peak).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from vs_lm_eval import LMEVAL_VENV, MC_TOML, MC_YAML, SETUP  # noqa: E402

OUT = HERE / "out" / "scoring"
NAME = "sf_logiqa_heldout"

SPEC = """tasks = ["{toml}"]
threads = {threads}
warmup = 0
latency_prompts = 1
latency_max_tokens = 2
timing_min_requests = 1   # scoring is what is compared: time one generation, not 10 s of it
timing_min_s = 0

[[candidates]]
model = "{model}"
name = "{name}"
{options}
"""

PEAK = """
import sys, time
n, threads, lib = 1024, int(sys.argv[1]), sys.argv[2]
if lib == "numpy":
    import numpy as np
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.copy()
else:
    import torch
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
a @ b
best = float("inf")
for _ in range(10):
    t0 = time.perf_counter()
    a @ b
    best = min(best, time.perf_counter() - t0)
print(2 * n**3 / best / 1e9)
"""


Tokens = list[tuple[list[int], list[list[int]]]]


def build(start: int, n: int, threads: int) -> tuple[Path, Path, dict[str, Path], Tokens]:
    """Data, lm-eval task folder, one smallfit spec per backend, and the tokens (for the floor)."""
    from smallfit.backends.hf import gguf_to_safetensors
    from smallfit.models import parse_model_ref, resolve_model
    from smallfit.tasks.builtin import evals_multiple_choice

    OUT.mkdir(parents=True, exist_ok=True)
    tasks = OUT / "lm_eval_tasks"
    tasks.mkdir(exist_ok=True)
    gguf = resolve_model(parse_model_ref("smollm2-135m"))
    folder = gguf_to_safetensors(gguf)
    data = OUT / f"{NAME}.jsonl"
    samples = evals_multiple_choice("logiqa")[start : start + n]
    with data.open("w") as fh:
        for i, s in enumerate(samples):
            question = s.context.removeprefix("Question: ").removesuffix("\nAnswer:")
            fh.write(json.dumps({"id": i, "question": question, "choices": [c.strip() for c in s.choices],
                                 "gold": s.gold}) + "\n")
    (tasks / f"{NAME}.yaml").write_text(MC_YAML.format(name=NAME, data=data))
    toml = OUT / f"{NAME}.toml"
    toml.write_text(MC_TOML.format(name=NAME, data=data))
    specs = {}
    for key, model, options in (("llamacpp", str(gguf), ""), ("transformers", f"{folder}@transformers",
                                                                "options = {batch_size = 8}")):
        spec = OUT / f"spec_{key}.toml"
        spec.write_text(SPEC.format(toml=toml, threads=threads, model=model, name=key, options=options))
        specs[key] = spec
    tokens = _tokens(folder, samples)
    return folder, tasks, specs, tokens


def _tokens(folder: Path, samples: list[Any]) -> Tokens:
    """Each question's context tokens and each choice's continuation tokens (the model's tokenizer)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    out = []
    for s in samples:
        ctx = tok(s.context)["input_ids"]
        conts = [tok(s.context + c)["input_ids"][len(ctx):] for c in s.choices]
        out.append((ctx, conts))
    return out


def floor_flops(folder: Path, tokens: Tokens) -> tuple[float, int]:
    """Matrix-multiply FLOPs of the least work that scores every choice: each context once, each
    choice's tokens, attention's two products over the tokens before each, the output head at each
    scored position. Returns (FLOPs, tokens decoded)."""
    cfg = json.loads((folder / "config.json").read_text())
    d, layers, ffn = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    kv_dim = d // heads * kv
    per_token = 2 * layers * (2 * d * d + 2 * d * kv_dim + 3 * d * ffn)
    head = 2 * d * cfg["vocab_size"]
    flops, n_tok = 0.0, 0
    for ctx, conts in tokens:
        flops += len(ctx) * per_token + sum(4 * layers * d * p for p in range(1, len(ctx) + 1))
        n_tok += len(ctx)
        for cont in conts:
            flops += len(cont) * (per_token + head)
            flops += sum(4 * layers * d * (len(ctx) + j + 1) for j in range(len(cont)))
            n_tok += len(cont)
    return flops, n_tok


def matmul_peak(threads: int) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    peaks = {}
    for lib in ("numpy", "torch"):
        proc = subprocess.run([sys.executable, "-c", PEAK, str(threads), lib], env=env, capture_output=True,
                              text=True, check=False)
        if proc.returncode == 0:
            peaks[lib] = float(proc.stdout.strip())
    return peaks


def run_smallfit(spec: Path, db: Path) -> float:
    db.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "smallfit", "run", str(spec), "--db", str(db)],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        sys.exit(f"smallfit failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def run_lm_eval(venv: Path, folder: Path, tasks: Path, threads: int, out: Path) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [str(venv / "bin" / "lm_eval"), "--model", "hf", "--model_args", f"pretrained={folder},dtype=float32",
           "--tasks", NAME, "--include_path", str(tasks), "--batch_size", "8", "--device", "cpu",
           "--output_path", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"lm-eval failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="questions (default 200)")
    parser.add_argument("--start", type=int, default=400, help="first LogiQA question (default 400)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the three runs, alternating")
    parser.add_argument("--lm-eval-venv", type=Path, default=LMEVAL_VENV, help=f"default {LMEVAL_VENV}")
    args = parser.parse_args()
    if not (args.lm_eval_venv / "bin" / "lm_eval").exists():
        sys.exit(f"lm-eval's environment is missing; create it with:\n  {SETUP.format(venv=args.lm_eval_venv)}")
    folder, tasks, specs, tokens = build(args.start, args.n, args.threads)
    runs: dict[str, Callable[[], float]] = {
        "lm-eval hf batch 8": lambda: run_lm_eval(args.lm_eval_venv, folder, tasks, args.threads, OUT / "lm_eval_out"),
        "smallfit llama.cpp": lambda: run_smallfit(specs["llamacpp"], OUT / "llamacpp.db"),
        "smallfit transformers batch 8": lambda: run_smallfit(specs["transformers"], OUT / "transformers.db"),
    }
    walls: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.repeat):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for name in order:
            before = os.getloadavg()[0]
            wall = runs[name]()
            walls[name].append(wall)
            print(f"round {r + 1}: {name}: {wall:.1f} s (load average {before:.2f} -> {os.getloadavg()[0]:.2f})",
                  flush=True)
    flops, n_tok = floor_flops(folder, tokens)
    peaks = matmul_peak(args.threads)
    peak = max(peaks.values())
    floor_s = flops / (peak * 1e9)
    lm = statistics.median(walls["lm-eval hf batch 8"])
    print(f"\n{args.n} LogiQA questions x 4 choices, {n_tok} tokens, {flops / 1e12:.2f} TFLOP of matmul work; "
          f"threads {args.threads}, cpus {os.cpu_count()}")
    print("matmul peak (float32, 1024^3): " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items())
          + f"; compute floor {floor_s:.1f} s")
    for name, w in walls.items():
        med = statistics.median(w)
        achieved = flops / med / 1e9
        print(f"{name}: median {med:.1f} s over {len(w)} ({', '.join(f'{x:.1f}' for x in w)}); "
              f"{lm / med:.2f}x lm-eval's speed; {achieved:.1f} GFLOP/s achieved = {100 * achieved / peak:.0f}% "
              "of the matmul peak")
    llama = statistics.median(walls["smallfit llama.cpp"])
    ok_speed = llama <= lm / 3
    ok_floor = floor_s / llama >= 0.5
    print(f"target llama.cpp <= 1/3 of lm-eval: {llama:.1f} s vs {lm / 3:.1f} s: {'MET' if ok_speed else 'NOT MET'}; "
          f"target >= 50% of the compute floor: {100 * floor_s / llama:.0f}%: {'MET' if ok_floor else 'NOT MET'}")


if __name__ == "__main__":
    main()
