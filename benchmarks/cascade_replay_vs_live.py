"""Replayed against live: a cascade replayed from its two models' stored examples (no inference)
and the same cascade run live as a candidate (``cascade:SMALL,LARGE@T``), on the same examples of
the same run. Prints each figure with its 95% interval on both sides and whether they agree (the
intervals overlap), and how many examples got the same score.

    .venv/bin/python benchmarks/cascade_replay_vs_live.py              # runs the three candidates first
    .venv/bin/python benchmarks/cascade_replay_vs_live.py --db D --run R   # a run that has them already

Without ``--run`` it runs SMALL, LARGE and the live cascade on the task (minutes with the bundled
models on two cores: nice it on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from smallfit.cascade.curves import estimate, resample_weights
from smallfit.cascade.data import load
from smallfit.cascade.replay import Arrays, per_request
from smallfit.scoring import quantile_interval
from smallfit.store import Store


def run_three(db: Path, small: str, large: str, threshold: float, task: str, sample: int | None) -> str:
    """SMALL, LARGE and the live cascade through the real runner; the run id."""
    from smallfit.runner import execute, start_run
    from smallfit.spec import build_spec

    live = f"cascade:{small},{large}@{threshold:g}"
    data: dict[str, object] = {"candidates": [{"model": small}, {"model": large}, {"model": live}], "tasks": [task],
                               "budget": []}
    if sample:
        data["sample"] = sample
    store = Store.open(db)
    run_id = start_run(build_spec(data, "benchmark"), store, keep_going=False)
    execute(store, run_id)
    return run_id


def _mean(x: np.ndarray, weights: np.ndarray) -> tuple[float, float | None, float | None]:
    e = estimate(weights @ x / x.size)
    return float(e.value or 0.0), e.low, e.high


def _pct(x: np.ndarray, q: float) -> tuple[float, float | None, float | None]:
    low, high = quantile_interval(x.tolist(), q)
    return float(np.quantile(x, q)), low, high


def _fmt(v: tuple[float, float | None, float | None], scale: float = 1.0) -> str:
    value, low, high = v
    lo = "-" if low is None else f"{low * scale:.4g}"
    hi = "open" if high is None else f"{high * scale:.4g}"
    return f"{value * scale:.4g} [{lo}, {hi}]"


def _overlap(a: tuple[float, float | None, float | None], b: tuple[float, float | None, float | None]) -> bool:
    a_lo, a_hi = (a[1] if a[1] is not None else -np.inf), (a[2] if a[2] is not None else np.inf)
    b_lo, b_hi = (b[1] if b[1] is not None else -np.inf), (b[2] if b[2] is not None else np.inf)
    return bool(a_lo <= b_hi and b_lo <= a_hi)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path)
    parser.add_argument("--run")
    parser.add_argument("--small", default="smollm2-135m")
    parser.add_argument("--large", default="gemma3-270m")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--task", default=str(Path(__file__).resolve().parents[1] / "examples" / "tickets.toml"))
    parser.add_argument("--sample", type=int)
    args = parser.parse_args()
    db = args.db or Path(tempfile.mkdtemp()) / "cascade.db"
    made = None if args.db else run_three(db, args.small, args.large, args.threshold, args.task, args.sample)
    store = Store.open(db)
    run_id = str(store.run(args.run or made)["id"])  # with --db and no --run: its latest run
    live_name = next(str(c["name"]) for c in store.candidates(run_id) if str(c["model_ref"]).startswith("cascade:"))
    task = next(t["task"] for t in store.task_results(run_id) if t["candidate"] == live_name)
    data = load(store, [run_id], [args.small, args.large, live_name], task)
    small, large, live = data.stages
    threshold = float(live_name.rsplit("@", 1)[1])
    signal = small.signals["prob" if "prob" in small.signals else "logprob_p10"]
    replayed = per_request(Arrays([small.quality, large.quality], [signal], [small.latency_s, large.latency_s]),
                           np.array([threshold]))
    weights = resample_weights(data.n)
    rows = [("quality", _mean(replayed.quality[0], weights), _mean(live.quality, weights), 1.0, ""),
            ("ms per request (mean)", _mean(replayed.latency_s[0], weights), _mean(live.latency_s, weights),
             1000.0, " ms"),
            ("latency p50", _pct(replayed.latency_s[0], 0.5), _pct(live.latency_s, 0.5), 1000.0, " ms"),
            ("latency p95", _pct(replayed.latency_s[0], 0.95), _pct(live.latency_s, 0.95), 1000.0, " ms")]
    print(f"run {run_id}, task {task}, {data.n} examples; replay of {args.small} -> {args.large} deferring below "
          f"{threshold:g} against the live candidate {live_name} (95% intervals: bootstrap over examples for means, "
          "order statistics for percentiles)")
    print(f"{'figure':28} {'replayed':32} {'live':32} agree")
    for name, rep, liv, scale, unit in rows:
        agree = "yes" if _overlap(rep, liv) else "NO"
        print(f"{name:28} {_fmt(rep, scale) + unit:32} {_fmt(liv, scale) + unit:32} {agree}")
    same = int((replayed.quality[0] == live.quality).sum())
    deferred = float((signal < threshold).mean())
    print(f"examples with the same score: {same} of {data.n}; replayed share deferred: {deferred:.0%}")
    info = next(t["info_json"] for t in store.task_results(run_id) if t["candidate"] == live_name)
    print(f"live backend counters: {json.loads(info).get('backend', {}).get('answered_by_member')}")
    if made is not None:
        print(f"(database: {db}; rerun with --db {db} --run {run_id})")


if __name__ == "__main__":
    main()
