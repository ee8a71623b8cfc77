"""The same sweep on the local executor and on a 2-node Ray cluster on this machine: models x
quantizations x tasks, each run by the real CLI into one results database (the cluster is
``ray.cluster_utils.Cluster``: two raylets on this machine).

Prints, per job (candidate x task), the quality figure from each executor and whether they are
identical (they must be: the same job, the same examples, the same numbers); each run's wall
time; Ray's overhead per job (the idle time of a node's slot between the end of one of its jobs
and the start of its next, which is Ray handing the result back and dispatching the next task,
and the time from the run's start to the first job, which is connecting, checking the nodes and
resolving the models); the model loads each executor made (local loads a model once per
candidate, Ray once per job); and the timeline of the jobs on each node.

    .venv/bin/python benchmarks/cluster_sweep.py [--models smollm2-135m,gemma3-270m]
        [--quantize q8_0,q4_k_m,q4_0] [--tasks quartz,gsm8k-bpb] [--limit 8]

Each node gets one CPU and one smallfit_slot; both nodes share this machine's cores, so its
timings are not this machine's best (a real cluster has one node per machine).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(db: Path, args: list[str]) -> tuple[float, str]:
    env = {**os.environ, "SMALLFIT_DB": str(db)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "smallfit", "run", *args], env=env, capture_output=True, text=True,
                          check=False)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        sys.exit(f"smallfit run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    run_id = sqlite3.connect(db).execute("SELECT id FROM runs ORDER BY created_at DESC LIMIT 1").fetchone()[0]
    return wall, str(run_id)


def _quality(conn: sqlite3.Connection, run_id: str) -> dict[tuple[str, str], dict[str, float | None]]:
    rows = conn.execute("SELECT candidate, task, name, value FROM metrics WHERE run_id = ? AND name IN ('acc', "
                        "'acc_norm', 'exact_match', 'bits_per_byte', 'kl_divergence_mean') ORDER BY position",
                        (run_id,)).fetchall()
    out: dict[tuple[str, str], dict[str, float | None]] = {}
    for cand, task, name, value in rows:
        out.setdefault((cand, task), {})[name] = value
    return out


def _samples(conn: sqlite3.Connection, run_id: str) -> dict[tuple[str, str, int], tuple[str, str]]:
    rows = conn.execute("SELECT candidate, task, idx, prediction, scores_json FROM samples WHERE run_id = ?", (run_id,))
    return {(c, t, i): (p, s) for c, t, i, p, s in rows}


def _spans(conn: sqlite3.Connection, run_id: str) -> list[tuple[str, str, str, float, float]]:
    out = []
    for cand, task, attempts in conn.execute("SELECT candidate, task, attempts_json FROM jobs WHERE run_id = ?",
                                             (run_id,)):
        for a in json.loads(attempts):
            if "started_at" in a and "finished_at" in a:
                out.append((a["node"], cand, task, a["started_at"], a["finished_at"]))
    return sorted(out, key=lambda s: (s[0], s[3]))


def main() -> None:
    parser = argparse.ArgumentParser(description="a sweep on the local executor and on a 2-node Ray cluster")
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m")
    parser.add_argument("--quantize", default="q8_0,q4_k_m,q4_0")
    parser.add_argument("--tasks", default="quartz,gsm8k-bpb")
    parser.add_argument("--limit", type=int, default=8, help="examples per task (default 8)")
    args = parser.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    sweep = [a for m in args.models.split(",") for a in ("-m", m)] + [a for t in args.tasks.split(",")
                                                                     for a in ("-t", t)]
    sweep += ["--quantize", args.quantize, "--limit", str(args.limit), "--quick", "--threads", "1"]
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "sweep.db"
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "resources": {"smallfit_slot": 1}, "include_dashboard": False})
        cluster.add_node(num_cpus=1, resources={"smallfit_slot": 1})
        cluster.wait_for_nodes()
        try:
            local_wall, local_id = _run(db, sweep)
            ray_wall, ray_id = _run(db, [*sweep, "--executor", "ray", "--address", cluster.address])
        finally:
            cluster.shutdown()
        conn = sqlite3.connect(db)
        _report(conn, local_id, ray_id, local_wall, ray_wall, ray.__version__)


def _report(conn: sqlite3.Connection, local_id: str, ray_id: str, local_wall: float, ray_wall: float,
            ray_version: str) -> None:
    ql, qr = _quality(conn, local_id), _quality(conn, ray_id)
    same_samples = _samples(conn, local_id) == _samples(conn, ray_id)
    print(f"Ray {ray_version}; local run {local_id}, Ray run {ray_id}")
    print(f"\n{'candidate':<24} {'task':<12} {'figure':<20} {'local':>10} {'ray':>10}  identical")
    identical = True
    for key in sorted(set(ql) | set(qr)):
        for name in sorted(set(ql.get(key, {})) | set(qr.get(key, {}))):
            a, b = ql.get(key, {}).get(name), qr.get(key, {}).get(name)
            identical &= a == b
            print(f"{key[0]:<24} {key[1]:<12} {name:<20} {_num(a):>10} {_num(b):>10}  {'yes' if a == b else 'NO'}")
    jobs = conn.execute("SELECT COUNT(*), SUM(state = 'done') FROM jobs WHERE run_id = ?", (ray_id,)).fetchone()
    print(f"\nevery job's figures identical: {'yes' if identical else 'NO'}; every example's prediction and scores "
          f"identical: {'yes' if same_samples else 'NO'}; Ray jobs done: {jobs[1]} of {jobs[0]}")
    spans = _spans(conn, ray_id)
    start = conn.execute("SELECT created_at FROM runs WHERE id = ?", (ray_id,)).fetchone()[0]
    gaps = [b[3] - a[4] for a, b in zip(spans, spans[1:], strict=False) if a[0] == b[0]]
    busy = sum(s[4] - s[3] for s in spans)
    print(f"wall time: local {local_wall:.1f} s, Ray (2 nodes) {ray_wall:.1f} s")
    last = max(s[4] for s in spans)
    print(f"Ray overhead: {ray_wall - (last - start):.2f} s of the Ray run's wall time outside its jobs' window "
          f"(Python start, connecting, checking each node's versions before the run is recorded, the table after); "
          f"{min(s[3] for s in spans) - start:.2f} s from the run being recorded to its first job (resolving the "
          f"models, asking the nodes which they hold, submitting); between jobs on a node: mean {_mean(gaps):.3f} s, "
          f"max "
          f"{max(gaps, default=0):.3f} s over {len(gaps)} hand-overs; slots busy {busy:.1f} s of "
          f"{2 * (max(s[4] for s in spans) - min(s[3] for s in spans)):.1f} slot-seconds")
    candidates = conn.execute("SELECT COUNT(*) FROM candidates WHERE run_id = ? AND load_s IS NOT NULL",
                              (local_id,)).fetchone()[0]
    print(f"model loads: local {candidates} (one per candidate, for all its tasks), Ray {len(spans)} (one per job)")
    overlaps = [(a, b) for a, b in zip(spans, spans[1:], strict=False) if a[0] == b[0] and b[3] < a[4]]
    print(f"jobs overlapping on a node: {len(overlaps)}")
    print("\njob timeline (seconds from the Ray run's start):")
    for node, cand, task, t0, t1 in spans:
        print(f"  {node:<34} {t0 - start:7.2f} -> {t1 - start:7.2f}  ({t1 - t0:6.2f} s)  {cand} x {task}")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


if __name__ == "__main__":
    main()
