"""Replayed against live: a cascade's figures predicted from its models' own per-request results
(no cascade run) and the same cascade run live, on the same examples, with each side's 95%
interval and whether they agree (the intervals overlap), and how many examples got the same score.

Two ways, chosen by --mode:

* ``interleaved`` (default): one process loads the cascade (the real cascade backend, whose two
  members are the single models), and for each example times the small model alone, the large
  model alone and the live cascade one after another, the order rotating per example, so that the
  machine's load drifts over all three alike (as benchmarks/overhead.py alternates A/B). The
  replay is each example's small seconds plus, where its signal is below the threshold, its large
  seconds. Multiple-choice and classification tasks.
* ``stored``: a stored run holding SMALL, LARGE and ``cascade:SMALL,LARGE@T`` as candidates
  (``--db D [--run R]``; without ``--db`` it makes that run first, minutes with the bundled models):
  the replay from the run's stored examples against the live candidate's. Its candidates are timed
  minutes apart, so on a machine whose load swings the seconds need not agree.

    .venv/bin/python benchmarks/cascade_replay_vs_live.py [--small smollm2-135m --large gemma3-270m --threshold 0.9]
    .venv/bin/python benchmarks/cascade_replay_vs_live.py --mode stored --db D [--run R]
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

    def num(x: float) -> str:
        return f"{x * scale:.0f}" if abs(x * scale) >= 100 else f"{x * scale:.4g}"

    lo = "-" if low is None else num(low)
    hi = "open" if high is None else num(high)
    return f"{num(value)} [{lo}, {hi}]"


def _overlap(a: tuple[float, float | None, float | None], b: tuple[float, float | None, float | None]) -> bool:
    a_lo, a_hi = (a[1] if a[1] is not None else -np.inf), (a[2] if a[2] is not None else np.inf)
    b_lo, b_hi = (b[1] if b[1] is not None else -np.inf), (b[2] if b[2] is not None else np.inf)
    return bool(a_lo <= b_hi and b_lo <= a_hi)


def interleaved(small: str, large: str, threshold: float, task_ref: str, limit: int | None,
                threads: int) -> None:
    """Time the small model, the large model and the live cascade per example, interleaved."""
    import time

    from smallfit.backends.base import BackendConfig
    from smallfit.backends.cascade import CascadeBackend
    from smallfit.measure import select
    from smallfit.models import parse_model_ref, resolve_model
    from smallfit.records import LoglikelihoodRequest
    from smallfit.signals import choice_signals
    from smallfit.tasks import get_task

    task = get_task(task_ref)
    samples = select(list(task.load()), limit, None, 0, task.default_limit)
    ref = parse_model_ref(f"cascade:{small},{large}@{threshold:g}")
    cascade = CascadeBackend(BackendConfig(resolve_model(ref), threads=threads))
    alone = cascade.members
    t = {"small": [], "large": [], "live": []}  # type: dict[str, list[float]]
    q = {"small": [], "large": [], "live": []}  # type: dict[str, list[float]]
    deferred = []
    for i, s in enumerate(samples):
        reqs = [LoglikelihoodRequest(s.contexts[k] if s.contexts else s.context, c) for k, c in enumerate(s.choices)]
        order = [("small", alone[0]), ("large", alone[1]), ("live", cascade)]
        order = order[i % 3:] + order[: i % 3]
        for name, backend in order:
            t0 = time.perf_counter()
            lls = [r.logprob for r in backend.loglikelihood(reqs)]
            t[name].append(time.perf_counter() - t0)
            q[name].append(float(max(range(len(lls)), key=lls.__getitem__) == s.gold))
            if name == "small":
                deferred.append(choice_signals(lls)["prob"] < threshold)
    cascade.close()
    d = np.array(deferred)
    replay_t = np.array(t["small"]) + d * np.array(t["large"])
    replay_q = np.where(d, q["large"], q["small"])
    live_t, live_q = np.array(t["live"]), np.array(q["live"])
    weights = resample_weights(len(samples))
    print(f"{task.name}, {len(samples)} examples, {small} -> {large} deferring below prob {threshold:g}, interleaved "
          "in one process (95% intervals: bootstrap over examples for means, order statistics for percentiles)")
    _table([("quality", _mean(replay_q, weights), _mean(live_q, weights), 1.0, ""),
            ("ms per request (mean)", _mean(replay_t, weights), _mean(live_t, weights), 1000.0, " ms"),
            ("latency p50", _pct(replay_t, 0.5), _pct(live_t, 0.5), 1000.0, " ms"),
            ("latency p95", _pct(replay_t, 0.95), _pct(live_t, 0.95), 1000.0, " ms")])
    print(f"examples with the same score: {int((replay_q == live_q).sum())} of {len(samples)}; deferred: "
          f"{d.mean():.0%}; {small} alone {np.mean(t['small']) * 1000:.0f} ms, {large} alone "
          f"{np.mean(t['large']) * 1000:.0f} ms per request")


def _table(rows: list[tuple[str, tuple[float, float | None, float | None], tuple[float, float | None, float | None],
                            float, str]]) -> None:
    print(f"{'figure':28} {'replayed':32} {'live':32} agree")
    for name, rep, liv, scale, unit in rows:
        agree = "yes" if _overlap(rep, liv) else "NO"
        print(f"{name:28} {_fmt(rep, scale) + unit:32} {_fmt(liv, scale) + unit:32} {agree}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("interleaved", "stored"), default="interleaved")
    parser.add_argument("--limit", type=int, help="interleaved: the first N examples (default: the task's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--db", type=Path)
    parser.add_argument("--run")
    parser.add_argument("--small", default="smollm2-135m")
    parser.add_argument("--large", default="gemma3-270m")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--task", default=str(Path(__file__).resolve().parents[1] / "examples" / "tickets.toml"))
    parser.add_argument("--sample", type=int)
    args = parser.parse_args()
    if args.mode == "interleaved":
        interleaved(args.small, args.large, args.threshold, args.task, args.limit, args.threads)
        return
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
    _table(rows)
    same = int((replayed.quality[0] == live.quality).sum())
    deferred = float((signal < threshold).mean())
    print(f"examples with the same score: {same} of {data.n}; replayed share deferred: {deferred:.0%}")
    info = next(t["info_json"] for t in store.task_results(run_id) if t["candidate"] == live_name)
    print(f"live backend counters: {json.loads(info).get('backend', {}).get('answered_by_member')}")
    if made is not None:
        print(f"(database: {db}; rerun with --db {db} --run {run_id})")


if __name__ == "__main__":
    main()
