"""Wall time of the bundled default run (`smallfit run` with no arguments), end to end.

Targets: under 5 minutes on 2 cores (issue 2), under 3 minutes on the slower 2-core CPU seen, an
AVX2-only AMD EPYC (issue 15). Runs the real CLI in a subprocess with a fresh database, records
the machine load before and after (the machine is shared), and prints the figures plus, per
candidate x task, where the time went: the job's wall time, its scoring (quality pass) seconds and
its timed generation (latency pass) seconds and requests, from the stored results.

    .venv/bin/python benchmarks/default_run.py [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run(db: Path) -> tuple[float, list[dict[str, object]]]:
    env = {**os.environ, "SMALLFIT_DB": str(db)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "smallfit", "run"], env=env, capture_output=True, text=True,
                          check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"smallfit run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    print(proc.stdout)
    rows = json.loads(subprocess.run([sys.executable, "-m", "smallfit", "results", "--format", "json"], env=env,
                                     capture_output=True, text=True, check=True).stdout)
    with sqlite3.connect(db) as conn:
        threads, hardware = conn.execute("SELECT threads, hardware_json FROM runs").fetchone()
        split = conn.execute(
            "SELECT j.candidate, j.task, j.finished_at - j.started_at,"
            " (SELECT SUM(latency_s) FROM timings t WHERE t.candidate = j.candidate AND t.task = j.task"
            "  AND t.phase = 'quality'),"
            " (SELECT SUM(latency_s) FROM timings t WHERE t.candidate = j.candidate AND t.task = j.task"
            "  AND t.phase = 'latency'),"
            " (SELECT COUNT(*) FROM timings t WHERE t.candidate = j.candidate AND t.task = j.task"
            "  AND t.phase = 'latency') FROM jobs j ORDER BY j.position").fetchall()
    print(f"threads {threads} ({json.loads(hardware).get('threads_chosen_by')})")
    totals = [0.0, 0.0, 0.0]
    for cand, task, job_s, quality_s, latency_s, n_latency in split:
        quality_s, latency_s = quality_s or 0.0, latency_s or 0.0
        print(f"  {cand:>13} {task:<16} job {job_s:6.1f} s: scoring {quality_s:5.1f} s, timed generation "
              f"{latency_s:5.1f} s ({n_latency} requests), the rest {job_s - quality_s - latency_s:4.1f} s")
        totals = [totals[0] + job_s, totals[1] + quality_s, totals[2] + latency_s]
    print(f"  jobs {totals[0]:.1f} s of the {wall:.1f} s: scoring {totals[1]:.1f} s, timed generation "
          f"{totals[2]:.1f} s, the rest {totals[0] - totals[1] - totals[2]:.1f} s; outside the jobs "
          f"{wall - totals[0]:.1f} s")
    return wall, rows


def _has_avx512() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.exists() and "avx512f" in cpuinfo.read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    walls = []
    for i in range(args.repeat):
        load_before = os.getloadavg()
        with tempfile.TemporaryDirectory() as tmp:
            wall, rows = one_run(Path(tmp) / "bench.db")
        load_after = os.getloadavg()
        walls.append(wall)
        print(f"run {i + 1}: wall {wall:.1f} s; loadavg before {load_before[0]:.2f}, after {load_after[0]:.2f} "
              f"(1 min); cpus {os.cpu_count()}")
        for r in rows:
            m = r["metrics"]
            print(f"  {r['candidate']:>13} {r['task']:<16} latency p50 {m['latency_s']:.3f} s  "
                  f"decode {m['decode_tok_s']:.1f} tok/s  verdict {r['verdict']}")
    med = statistics.median(walls)
    print(f"default run wall time: median {med:.1f} s over {len(walls)} run(s); target < 300 s (issue 2): "
          f"{'MET' if med < 300 else 'NOT MET'}; target < 180 s (issue 15, on an AVX2-only CPU; this one has "
          f"{'AVX-512' if _has_avx512() else 'no AVX-512'}): "
          f"{'MET' if med < 180 else 'NOT MET'}")


if __name__ == "__main__":
    main()
