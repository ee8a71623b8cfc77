"""One model on every backend, one run, one table: llama.cpp in process, transformers (the GGUF
dequantised to fp32), ONNX Runtime (exported from those fp32 weights) and llama-cpp-python's
OpenAI-compatible server on 127.0.0.1 serving the same GGUF.

Prints smallfit's own tables, then per candidate x task the primary quality figure with its
95% interval, p50/p95 latency, TTFT, decode speed, peak RSS and model size, and the machine
load before and after (the machine is shared).

    .venv/bin/python benchmarks/backends_table.py [--model gemma3-270m] [--limit 20] [--threads 1]
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import llama_server  # noqa: E402 - the tests' loopback server starter

TASKS = ["quartz", str(ROOT / "examples" / "capitals.toml")]


def main() -> None:
    parser = argparse.ArgumentParser(description="one model on llama.cpp, transformers, ONNX Runtime and a server")
    parser.add_argument("--model", default="gemma3-270m", help="bundled alias or .gguf file (default gemma3-270m)")
    parser.add_argument("--limit", type=int, default=20, help="examples per task (default 20)")
    parser.add_argument("--threads", type=int, default=1, help="threads per candidate (default 1)")
    parser.add_argument("--quick", action="store_true", help="shorter timing passes")
    args = parser.parse_args()

    from smallfit.models import parse_model_ref, resolve_model

    gguf = resolve_model(parse_model_ref(args.model))
    load_before = os.getloadavg()
    with llama_server(gguf) as url, tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "backends.db"
        cmd = [sys.executable, "-m", "smallfit", "run", "--db", str(db), "--limit", str(args.limit),
               "--threads", str(args.threads),
               "-m", f"llamacpp={args.model}", "-m", f"transformers={args.model}@transformers",
               "-m", f"onnx={args.model}@onnx", "-m", f"server={url}"]
        for task in TASKS:
            cmd += ["-t", task]
        if args.quick:
            cmd.append("--quick")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        print(proc.stdout)
        if proc.returncode != 0:
            sys.exit(f"smallfit run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        rows = json.loads(subprocess.run([sys.executable, "-m", "smallfit", "results", "--format", "json",
                                          "--db", str(db)], capture_output=True, text=True, check=True).stdout)
    load_after = os.getloadavg()
    print(f"{'candidate':<13} {'task':<10} {'quality (95% CI)':<28} {'p50 s':>7} {'p95 s':>7} {'TTFT s':>7} "
          f"{'tok/s':>7} {'RSS MB':>7} {'size MB':>8}")
    for r in rows:
        m = r["metrics"]
        if r.get("error"):
            print(f"{r['candidate']:<13} {r['task']:<10} error: {r['error']}")
            continue
        metric = "acc" if m.get("acc") is not None else "exact_match"
        low, high = m.get(metric + "_ci_low") or 0, m.get(metric + "_ci_high") or 0
        quality = f"{metric} {m[metric]:.3f} ({low:.3f}-{high:.3f})"

        def fmt(name: str, scale: float = 1.0, digits: int = 3, m: dict[str, float | None] = m) -> str:
            value = m.get(name)
            return "-" if value is None else f"{value / scale:.{digits}f}"

        print(f"{r['candidate']:<13} {r['task']:<10} {quality:<28} {fmt('latency_s'):>7} {fmt('latency_s_p95'):>7} "
              f"{fmt('ttft_s'):>7} {fmt('decode_tok_s', digits=1):>7} {fmt('peak_rss_bytes', 1e6, 0):>7} "
              f"{fmt('model_size_bytes', 1e6, 0):>8}")
    print(f"\nwall {wall:.1f} s, threads {args.threads}, loadavg before {load_before[0]:.2f} after {load_after[0]:.2f}")


if __name__ == "__main__":
    main()
