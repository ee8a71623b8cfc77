"""smallfit against lm-evaluation-harness: same model, same data, same requests, one run.

Both load the same weights (SmolLM2-135M-Instruct dequantised from the bundled GGUF into a
safetensors folder) on the CPU with the same thread count, and score, in one run of each:

- three multiple-choice tasks built from local data (the first N questions of evals-registry
  folders: QuaRTz, two short choices; LogiQA, long passages and four multi-token choices of
  different lengths; CISSP study questions, four choices);
- a rolling-perplexity task: documents made of 1 to 12 LogiQA passages, short ones beside long
  ones (up to about 1,800 tokens: one window of SmolLM2's 8192-token training context, the
  window both lm-eval and smallfit's transformers backend use; how longer documents are cut into
  windows is checked against lm-eval's rule in tests/test_rolling.py).

Printed per task: per-request log-likelihood differences (target |difference| <= 1e-3), acc,
acc_norm (log-likelihood / len(choice) in characters) and acc_bytes of each (target:
identical), and for the rolling task the per-document perplexity's relative difference
(target <= 1e-3). lm-eval runs from its own virtual environment (not a smallfit dependency):

    .venv/bin/python benchmarks/vs_lm_eval.py [--n 100] [--docs 20] [--lm-eval-venv PATH]
"""

from __future__ import annotations

import argparse
import json
import math
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
SETUP = ("python3 -m venv {venv} && {venv}/bin/pip install torch==2.13.0 && "
         "{venv}/bin/pip install lm-eval==0.4.13 transformers==5.24.0 accelerate")
MC_TASKS = ("quartz", "logiqa", "cissp-study-questions")
METRICS = ("acc", "acc_norm", "acc_bytes")

MC_YAML = """task: {name}
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
  - metric: acc_bytes
"""

ROLLING_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""

MC_TOML = """name = "{name}"
kind = "multiple_choice"
data = "{data}"
template = "Question: {{question}}\\nAnswer:"
choices_field = "choices"
answer_field = "gold"
limit = 100000
"""

ROLLING_TOML = """name = "{name}"
kind = "perplexity"
data = "{data}"
template = "{{text}}"
limit = 100000
"""

SPEC = """tasks = [{tasks}]
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


def _name(folder: str) -> str:
    return "sf_" + folder.replace("-", "_")


def build_inputs(n: int, docs: int, threads: int, batch: int) -> tuple[Path, Path, Path, list[str]]:
    """The data (JSONL), the lm-eval task folder, the smallfit spec, the task names; the weights."""
    from smallfit.backends.hf import gguf_to_safetensors
    from smallfit.models import parse_model_ref, resolve_model
    from smallfit.tasks.builtin import evals_multiple_choice

    OUT.mkdir(parents=True, exist_ok=True)
    tasks = OUT / "lm_eval_tasks"
    tasks.mkdir(exist_ok=True)
    folder = gguf_to_safetensors(resolve_model(parse_model_ref("smollm2-135m")))
    names, tomls = [], []
    for evals_folder in MC_TASKS:
        name, data = _name(evals_folder), OUT / f"{_name(evals_folder)}.jsonl"
        with data.open("w") as fh:
            for i, s in enumerate(evals_multiple_choice(evals_folder)[:n]):
                question = s.context.removeprefix("Question: ").removesuffix("\nAnswer:")
                fh.write(json.dumps({"id": i, "question": question, "choices": [c.strip() for c in s.choices],
                                     "gold": s.gold}) + "\n")
        names.append(name)
    passages = [s.context.removeprefix("Question: ").removesuffix("\nAnswer:")
                for s in evals_multiple_choice("logiqa")[n : n + docs * 12]]
    rolling, data = "sf_rolling", OUT / "sf_rolling.jsonl"
    with data.open("w") as fh:
        at = 0
        for i in range(docs):
            k = 1 + (i * 11) // max(1, docs - 1)  # 1 to 12 passages: short to about 1,800 tokens
            fh.write(json.dumps({"id": i, "text": "\n\n".join(passages[at : at + k])}) + "\n")
            at += k
    names.append(rolling)
    for name in names:
        data = OUT / f"{name}.jsonl"
        yaml, toml = (ROLLING_YAML, ROLLING_TOML) if name == rolling else (MC_YAML, MC_TOML)
        (tasks / f"{name}.yaml").write_text(yaml.format(name=name, data=data))
        (OUT / f"{name}.toml").write_text(toml.format(name=name, data=data))
        tomls.append(f'"{OUT / f"{name}.toml"}"')
    spec = OUT / "spec.toml"
    spec.write_text(SPEC.format(tasks=", ".join(tomls), threads=threads, folder=folder, batch=batch))
    return folder, tasks, spec, names


def run_lm_eval(venv: Path, folder: Path, tasks: Path, names: list[str], threads: int, batch: int,
                out: Path) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [str(venv / "bin" / "lm_eval"), "--model", "hf",
           "--model_args", f"pretrained={folder},dtype=float32", "--tasks", ",".join(names),
           "--include_path", str(tasks), "--batch_size", str(batch), "--device", "cpu",
           "--output_path", str(out), "--log_samples"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"lm-eval failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def run_smallfit(spec: Path, db: Path) -> float:
    db.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "smallfit", "run", str(spec), "--db", str(db)],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        sys.exit(f"smallfit failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def lm_eval_rows(out: Path, name: str) -> dict[int, dict[str, object]]:
    """Per document: its log-likelihoods (one per choice, or the document's) and its metrics."""
    samples = max(out.rglob(f"samples_{name}_*.jsonl"), key=lambda p: p.stat().st_mtime)
    rows: dict[int, dict[str, object]] = {}
    for line in samples.read_text().splitlines():
        row = json.loads(line)
        resps = row["resps"]
        lls = [float(r[0][0] if isinstance(r[0], list) else r[0]) for r in resps]
        rows[int(row["doc"]["id"])] = {"ll": lls, **{m: float(row[m]) for m in METRICS if m in row}}
    return rows


def smallfit_rows(db: Path, name: str) -> dict[int, dict[str, object]]:
    with sqlite3.connect(db) as conn:
        found = conn.execute("SELECT sample_id, idx, scores_json FROM samples WHERE task = ?", (name,)).fetchall()
    rows: dict[int, dict[str, object]] = {}
    for _sample_id, idx, scores_json in found:
        scores = json.loads(scores_json)
        n_choices = sum(k.startswith("logprob_") for k in scores)
        lls = [scores[f"logprob_{k}"] for k in range(n_choices)] if n_choices else [scores["logprob"]]
        rows[int(idx)] = {"ll": lls, **{m: float(scores[m]) for m in METRICS if m in scores}, "tokens": scores.get(
            "tokens")}
    return rows


def compare(name: str, lm: dict[int, dict[str, object]], sf: dict[int, dict[str, object]]) -> bool:
    diffs = [abs(x - y) for doc in lm for x, y in zip(lm[doc]["ll"], sf[doc]["ll"], strict=True)]  # type: ignore[call-overload]
    ok = max(diffs) <= 1e-3
    line = (f"{name}: {len(lm)} docs, {len(diffs)} requests; |log-likelihood difference| max {max(diffs):.2e}, "
            f"mean {statistics.fmean(diffs):.2e} ({'MET' if ok else 'NOT MET'})")
    if name == "sf_rolling":
        # per-document perplexity exp(-ll / tokens): its relative difference is |exp(d/tokens) - 1|
        rel = [abs(math.expm1((lm[d]["ll"][0] - sf[d]["ll"][0]) / float(sf[d]["tokens"] or 1)))  # type: ignore[index, arg-type]
               for d in lm]
        ok = max(rel) <= 1e-3
        print(f"{line}; per-document perplexity relative difference max {max(rel):.2e} "
              f"({'MET' if ok else 'NOT MET'}); longest document {max(float(sf[d]['tokens'] or 0) for d in sf):.0f} "
              "tokens")
        return ok
    parts = []
    for m in METRICS:
        a = statistics.fmean(float(lm[d][m]) for d in lm)  # type: ignore[arg-type]
        b = statistics.fmean(float(sf[d][m]) for d in sf)  # type: ignore[arg-type]
        per_doc_same = all(lm[d][m] == sf[d][m] for d in lm)
        ok = ok and per_doc_same
        parts.append(f"{m} lm-eval {a:.4f} vs smallfit {b:.4f} ({'identical' if per_doc_same else 'DIFFERENT'})")
    print(f"{line}; " + "; ".join(parts))
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description="smallfit vs lm-evaluation-harness")
    parser.add_argument("--n", type=int, default=100, help="questions per multiple-choice task (default 100)")
    parser.add_argument("--docs", type=int, default=20, help="documents of the rolling task (default 20)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8, help="batch size of both (default 8)")
    parser.add_argument("--lm-eval-venv", type=Path, default=LMEVAL_VENV, help=f"default {LMEVAL_VENV}")
    args = parser.parse_args()
    venv = args.lm_eval_venv
    if not (venv / "bin" / "lm_eval").exists():
        sys.exit(f"lm-eval's environment is missing; create it with:\n  {SETUP.format(venv=venv)}")
    folder, tasks, spec, names = build_inputs(args.n, args.docs, args.threads, args.batch_size)
    lm_wall = run_lm_eval(venv, folder, tasks, names, args.threads, args.batch_size, OUT / "lm_eval_out")
    sf_wall = run_smallfit(spec, OUT / "smallfit.db")
    print(f"threads {args.threads}, batch {args.batch_size}, wall lm-eval {lm_wall:.1f} s, smallfit {sf_wall:.1f} s "
          f"(model load included), cpus {os.cpu_count()}")
    met = [compare(name, lm_eval_rows(OUT / "lm_eval_out", name), smallfit_rows(OUT / "smallfit.db", name))
           for name in names]
    print("all targets MET" if all(met) else "some targets NOT MET")


if __name__ == "__main__":
    main()
