"""smallfit against lm-evaluation-harness: same model, same data, same requests, one run.

Both load the same weights (SmolLM2-135M-Instruct dequantised from the bundled GGUF into a
safetensors folder) on the CPU with the same thread count, and score the same multiple-choice
task built from local data (the first N questions of an evals-registry multiple-choice folder:
QuaRTz by default, or --task logiqa: long passages, four multi-token options).
lm-eval runs from its own virtual environment (it is not a smallfit dependency); runs alternate
A/B and the medians are compared. Printed: per-request log-likelihood differences, accuracy of
each, and wall times with their ratio (targets: |difference| <= 1e-3, identical accuracy,
smallfit at least 3x faster). lm-eval runs at its default batch size (1) and at smallfit's (8).

    .venv/bin/python benchmarks/vs_lm_eval.py [--n 300] [--repeat 2] [--lm-eval-batch-sizes 1,8]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "vs_lm_eval"
LMEVAL_VENV = HERE / ".lmeval-venv"
SETUP = (f"python3 -m venv {LMEVAL_VENV} && {LMEVAL_VENV}/bin/pip install torch==2.13.0 && "
         f"{LMEVAL_VENV}/bin/pip install lm-eval==0.4.13 transformers==5.24.0 accelerate")

TASK_YAML = """task: sf_quartz
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
target_delimiter: " "
metric_list:
  - metric: acc
  - metric: acc_norm
"""

SMALLFIT_TASK = """name = "sf_quartz"
kind = "multiple_choice"
data = "{data}"
template = "Question: {{question}}\\nAnswer:"
choices_field = "choices"
answer_field = "gold"
limit = 100000
"""

SMALLFIT_SPEC = """tasks = ["{task}"]
threads = {threads}
warmup = 0
latency_prompts = 1
latency_max_tokens = 2
timing_min_requests = 1   # scoring is what is compared: time one generation, not 10 s of it
timing_min_s = 0

[[candidates]]
model = "{folder}@transformers"
name = "smollm2"
options = {{batch_size = {batch}}}
"""


def build_inputs(n: int, threads: int, batch: int, folder_name: str) -> tuple[Path, Path, Path]:
    """The data (JSONL), the lm-eval task folder and the smallfit spec; the shared weights."""
    from smallfit.backends.hf import gguf_to_safetensors
    from smallfit.models import parse_model_ref, resolve_model
    from smallfit.tasks.builtin import evals_multiple_choice

    OUT.mkdir(parents=True, exist_ok=True)
    folder = gguf_to_safetensors(resolve_model(parse_model_ref("smollm2-135m")))
    data = OUT / "quartz.jsonl"
    with data.open("w") as fh:
        for i, s in enumerate(evals_multiple_choice(folder_name)[:n]):
            question = s.context.removeprefix("Question: ").removesuffix("\nAnswer:")
            fh.write(json.dumps({"id": i, "question": question, "choices": [c.strip() for c in s.choices],
                                 "gold": s.gold}) + "\n")
    tasks = OUT / "lm_eval_tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "sf_quartz.yaml").write_text(TASK_YAML.format(data=data))
    (OUT / "sf_quartz.toml").write_text(SMALLFIT_TASK.format(data=data))
    spec = OUT / "spec.toml"
    spec.write_text(SMALLFIT_SPEC.format(task=OUT / "sf_quartz.toml", threads=threads, folder=folder, batch=batch))
    return folder, tasks, spec


def run_lm_eval(folder: Path, tasks: Path, threads: int, batch: int, out: Path) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [str(LMEVAL_VENV / "bin" / "lm_eval"), "--model", "hf",
           "--model_args", f"pretrained={folder},dtype=float32", "--tasks", "sf_quartz",
           "--include_path", str(tasks), "--batch_size", str(batch), "--device", "cpu",
           "--output_path", str(out), "--log_samples"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"lm-eval failed:\n{proc.stderr[-3000:]}")
    return wall


def run_smallfit(spec: Path, db: Path) -> float:
    db.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "smallfit", "run", str(spec), "--db", str(db)],
                          capture_output=True, text=True, check=False, env={**os.environ,
                                                                            "TOKENIZERS_PARALLELISM": "false"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"smallfit failed:\n{proc.stderr[-3000:]}")
    return wall


def lm_eval_scores(out: Path) -> tuple[dict[int, list[float]], float]:
    samples = max(out.rglob("samples_sf_quartz_*.jsonl"), key=lambda p: p.stat().st_mtime)
    per_doc: dict[int, list[float]] = {}
    correct = []
    for line in samples.read_text().splitlines():
        row = json.loads(line)
        per_doc[int(row["doc"]["id"])] = [float(r[0][0]) for r in row["resps"]]
        correct.append(float(row["acc"]))
    return per_doc, statistics.fmean(correct)


def smallfit_scores(db: Path) -> tuple[dict[int, list[float]], float, float]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT sample_id, scores_json FROM samples").fetchall()
        scoring = conn.execute("SELECT SUM(latency_s) FROM timings WHERE phase = 'quality'").fetchone()[0]
    per_doc, correct = {}, []
    for sample_id, scores_json in rows:
        scores = json.loads(scores_json)
        per_doc[int(sample_id)] = [scores[f"logprob_{k}"] for k in range(sum(k.startswith("logprob_") for k in scores))]
        correct.append(scores["acc"])
    return per_doc, statistics.fmean(correct), float(scoring)


def main() -> None:
    parser = argparse.ArgumentParser(description="smallfit vs lm-evaluation-harness")
    parser.add_argument("--n", type=int, default=300, help="questions (default 300)")
    parser.add_argument("--task", default="quartz", help="evals registry multiple-choice folder (default quartz; "
                        "logiqa has long passages and four multi-token options)")
    parser.add_argument("--repeat", type=int, default=2, help="alternating runs of each (default 2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8, help="smallfit's batch size (default 8)")
    parser.add_argument("--lm-eval-batch-sizes", default="1,8", help="lm-eval batch sizes (default 1 = its default, 8)")
    args = parser.parse_args()
    if not (LMEVAL_VENV / "bin" / "lm_eval").exists():
        sys.exit(f"lm-eval's environment is missing; create it with:\n  {SETUP}")
    folder, tasks, spec = build_inputs(args.n, args.threads, args.batch_size, args.task)
    lm_batches = [int(b) for b in args.lm_eval_batch_sizes.split(",")]
    lm_walls: dict[int, list[float]] = {b: [] for b in lm_batches}
    sf_walls: list[float] = []
    load_before = os.getloadavg()
    for i in range(args.repeat):  # alternate, so drift on a shared machine hits both alike
        for b in lm_batches:
            lm_walls[b].append(run_lm_eval(folder, tasks, args.threads, b, OUT / f"lm_eval_out_b{b}"))
        sf_walls.append(run_smallfit(spec, OUT / "smallfit.db"))
        print(f"round {i + 1}: " + ", ".join(f"lm-eval (batch {b}) {lm_walls[b][-1]:.1f} s" for b in lm_batches)
              + f", smallfit (batch {args.batch_size}) {sf_walls[-1]:.1f} s", flush=True)
    load_after = os.getloadavg()
    sf, sf_acc, sf_scoring = smallfit_scores(OUT / "smallfit.db")
    sf_med = statistics.median(sf_walls)
    print(f"\ntask {args.task}, questions {len(sf)}, threads {args.threads}, "
          f"loadavg before {load_before[0]:.2f} after {load_after[0]:.2f}, "
          f"cpus {os.cpu_count()}")
    for b in lm_batches:
        lm, lm_acc = lm_eval_scores(OUT / f"lm_eval_out_b{b}")
        diffs = [abs(x - y) for doc in lm for x, y in zip(lm[doc], sf[doc], strict=True)]
        lm_med = statistics.median(lm_walls[b])
        print(f"lm-eval batch {b}: {len(diffs)} requests; |log-likelihood difference| max {max(diffs):.2e}, "
              f"mean {statistics.fmean(diffs):.2e} (target <= 1e-3: {'MET' if max(diffs) <= 1e-3 else 'NOT MET'}); "
              f"accuracy lm-eval {lm_acc:.4f} vs smallfit {sf_acc:.4f} "
              f"({'identical' if lm_acc == sf_acc else 'DIFFERENT'}); "
              f"wall median {lm_med:.1f} s vs smallfit {sf_med:.1f} s -> smallfit {lm_med / sf_med:.2f}x faster "
              f"(target >= 3x: {'MET' if lm_med / sf_med >= 3 else 'NOT MET'})")
    print(f"wall time = process start to results, model load included; smallfit's own scoring time "
          f"(sum over batches): {sf_scoring:.1f} s")


if __name__ == "__main__":
    main()
