"""Wall time of the bundled default run (`smallfit run` with no arguments), end to end.

Target (issue 2): under 5 minutes on 2 cores. Runs the real CLI in a subprocess with a fresh
database, records the machine load before and after (the machine is shared), and prints the
figures plus per-candidate x task timings from the stored results.

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
    print(f"threads {threads} ({json.loads(hardware).get('threads_chosen_by')})")
    return wall, rows


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
    print(f"default run wall time: median {statistics.median(walls):.1f} s over {len(walls)} run(s) "
          f"(target < 300 s): {'MET' if statistics.median(walls) < 300 else 'NOT MET'}")


if __name__ == "__main__":
    main()
