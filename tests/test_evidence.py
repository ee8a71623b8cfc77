"""Intervals from stored samples and raw timings, and verdicts read back from a real store."""

import json

import pytest

from smallfit.judge.evidence import quality_interval, timing_intervals
from smallfit.records import RequestTiming
from smallfit.results import collect, to_json
from smallfit.store import Store
from tests.toy_runs import Toy, make_run


def test_quality_interval_kinds():
    exact = quality_interval("acc", {"acc": 0.5}, 100)
    assert exact.method == "clopper-pearson" and exact.low == pytest.approx(0.39832, abs=1e-5)
    stored = quality_interval("f1", {"f1": 0.4, "f1_ci_low": 0.3, "f1_ci_high": 0.52}, 50)
    assert (stored.low, stored.high, stored.method) == (0.3, 0.52, "bootstrap")
    normal = quality_interval("bits_per_byte", {"bits_per_byte": 1.0, "bits_per_byte_stderr": 0.01}, 20)
    assert normal.low == pytest.approx(1 - 0.0196, abs=1e-4) and normal.method == "normal"
    assert quality_interval("acc", {"acc": None}, 10) is None
    assert quality_interval("f1", {"f1": 0.4}, 10) is None  # nothing to build an interval from


def test_timing_intervals_use_the_generation_requests_only():
    scoring_requests = [RequestTiming(i, "quality", None, 0, None, 9.0) for i in range(5)]
    generations = [RequestTiming(i, "latency", 10, 8, 0.1, 1.0) for i in range(6)]
    (iv,) = timing_intervals(scoring_requests + generations, ["latency_s_p95"]).values()
    assert (iv.low, iv.n, iv.unit) == (1.0, 6, "requests")  # the 9 s requests are not in it
    # 6 requests cannot bound a p95 from above (0.95^6 = 0.74 > 0.025): open, 72 would
    assert iv.open_above and iv.bound_n == 72 and iv.method == "order statistic (requests), open above"
    (median,) = timing_intervals(generations, ["latency_s"]).values()
    assert (median.low, median.high) == (1.0, 1.0)  # ranks 1 and 6 of 6 bound a median (coverage 96.9%)
    assert timing_intervals(scoring_requests, ["latency_s_p95"]) == {}
    assert timing_intervals(generations, ["peak_rss_bytes"]) == {}  # a single measurement


def test_stored_run_gets_interval_verdicts_and_json_fields(tmp_path):
    cands = [Toy("weak", 0, 1.0, wrong=30), Toy("close", 23, 1.0, wrong=17), Toy("strong", 36, 1.0)]
    budget = ["words:acc>=0.5", "latency_s_p95<=1"]
    run_id = make_run(tmp_path / "r.db", tmp_path, cands, n=40, budget=budget)
    res = collect(Store.open(tmp_path / "r.db"), run_id)
    # the timing pass ran the 72 requests that bound a p95: the latency checks are decided
    assert {k: v.verdict for k, v in res.verdicts.items()} == {"weak": "fail", "close": "uncertain",
                                                               "strong": "pass"}
    assert res.smallest_passing == "strong"
    (lat,) = [c for c in res.verdicts["strong"].checks if c.metric == "latency_s_p95" and c.task == "words"]
    assert lat.n is not None and lat.n >= 72 and lat.high is not None and lat.outcome == "pass"
    (acc,) = [c for c in res.verdicts["close"].checks if c.metric == "acc"]
    assert acc.n == 40 and acc.method == "clopper-pearson" and acc.low < 0.5 < acc.high and acc.needed > 0
    # within a time cap too short for 72 requests, the p95 stays open and says how many it needs
    capped = make_run(tmp_path / "c.db", tmp_path / "c", cands[1:2], n=40, budget=budget, timing_max_s=0.01)
    res = collect(Store.open(tmp_path / "c.db"), capped)
    exported = json.loads(to_json(res))
    row = next(r for r in exported if r["candidate"] == "close")
    assert row["verdict"] == "uncertain"
    check = next(c for c in row["checks"] if c["metric"] == "acc")
    assert {"low", "high", "n", "needed", "outcome"} <= check.keys() and check["needed"] == acc.needed
    lat = next(c for c in row["checks"] if c["metric"] == "latency_s_p95")
    assert lat["n"] >= 5 and lat["unit"] == "requests" and lat["outcome"] == "uncertain"
    assert lat["high"] is None and lat["needed"] == 72 - lat["n"] and "at least 72" in lat["reason"]
    assert lat["method"] == "order statistic (requests), open above"
