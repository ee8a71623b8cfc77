"""Budget parsing and verdicts."""

import pytest

from smallfit.judge.budget import Check, parse_budget
from smallfit.errors import SmallfitError
from smallfit.judge.evidence import Interval
from smallfit.judge.verdict import Row, judge, smallest_passing


def test_parse_budget_with_units_and_task_scope():
    checks = parse_budget("acc>=0.40, latency_s_p95<=300ms,peak_rss_bytes<=1.5GB, quartz:acc_norm>0.5")
    assert checks[0] == Check("acc", ">=", 0.40)
    assert checks[1].threshold == pytest.approx(0.3)
    assert checks[2].threshold == 1.5e9
    assert checks[3] == Check("acc_norm", ">", 0.5, task="quartz")
    assert parse_budget(["peak_rss_bytes<=1GiB"])[0].threshold == 2**30
    assert parse_budget("peak_rss_bytes<=1.5e9")[0].threshold == 1.5e9


@pytest.mark.parametrize("text, fragment", [
    ("acc=>0.4", "malformed budget check"),
    ("accuracy>=0.4", "unknown metric 'accuracy'"),
    ("latency_s<=3parsecs", "unknown unit"),
    ("acc>=", "malformed"),
    (" , ", "budget is empty"),
])
def test_bad_budgets_name_the_problem(text, fragment):
    with pytest.raises(SmallfitError, match=fragment):
        parse_budget(text)


def test_judge_pass_fail_error_and_smallest():
    checks = parse_budget("acc>=0.5,latency_s_p95<=1")
    rows = [
        Row("small", "t", {"acc": 0.6, "latency_s_p95": 0.5}),
        Row("big", "t", {"acc": 0.9, "latency_s_p95": 0.9}),
        Row("slow", "t", {"acc": 0.9, "latency_s_p95": 2.0}),
        Row("broken", "t", {}, error="worker killed by SIGKILL"),
        Row("unmeasured", "t", {"acc": 0.9, "latency_s_p95": None}),
    ]
    v = judge(checks, rows)
    assert {k: x.verdict for k, x in v.items()} == {
        "small": "pass", "big": "pass", "slow": "fail", "broken": "error", "unmeasured": "fail"}
    assert [c.reason for c in v["unmeasured"].checks if not c.passed] == ["not measured"]
    assert smallest_passing(v, {"small": 100, "big": 50, "slow": 10}) == "big"


def test_no_budget_gives_none_and_missing_metric_fails():
    rows = [Row("a", "ppl", {"bits_per_byte": 1.0})]
    assert judge([], rows)["a"].verdict == "none"
    v = judge(parse_budget("acc>=0.1"), rows)["a"]
    assert v.verdict == "fail" and "no task" in v.checks[0].reason


def _iv(low, high, n=100, unit="examples"):
    return Interval(low, high, n, "wilson", unit)


def test_interval_decides_pass_fail_or_uncertain():
    checks = parse_budget("acc>=0.5,latency_s_p95<=1,peak_rss_bytes<=1GB")
    rows = [
        Row("sure", "t", {"acc": 0.62, "latency_s_p95": 0.5, "peak_rss_bytes": 5e8},
            intervals={"acc": _iv(0.52, 0.71), "latency_s_p95": _iv(0.4, 0.6, 8, "requests")}),
        Row("close", "t", {"acc": 0.52, "latency_s_p95": 0.5, "peak_rss_bytes": 5e8},
            intervals={"acc": _iv(0.42, 0.62), "latency_s_p95": _iv(0.4, 0.6, 8, "requests")}),
        Row("slow", "t", {"acc": 0.52, "latency_s_p95": 1.5, "peak_rss_bytes": 5e8},
            intervals={"acc": _iv(0.42, 0.62), "latency_s_p95": _iv(1.2, 1.9, 8, "requests")}),
        Row("fat", "t", {"acc": 0.9, "latency_s_p95": 0.5, "peak_rss_bytes": 2e9}),  # no intervals: plain
    ]
    v = judge(checks, rows)
    assert {k: x.verdict for k, x in v.items()} == {
        "sure": "pass", "close": "uncertain", "slow": "fail", "fat": "fail"}
    (acc,) = [c for c in v["close"].checks if c.metric == "acc"]
    assert (acc.outcome, acc.passed, acc.low, acc.high, acc.n) == ("uncertain", False, 0.42, 0.62, 100)
    # se = 0.2 / (2 · 1.96); n_needed = 100 (1.96 se / 0.02)² = 100 · 5² = 2500: 2400 more
    assert acc.needed == 2400 and "2400 more examples" in acc.reason
    (lat,) = [c for c in v["slow"].checks if c.metric == "latency_s_p95"]
    assert lat.outcome == "fail" and lat.needed is None
    (mem,) = [c for c in v["fat"].checks if c.metric == "peak_rss_bytes"]
    assert (mem.outcome, mem.low, mem.n) == ("fail", None, None)
    # only a pass with confidence counts for the answer
    assert smallest_passing(v, {"sure": 300, "close": 100, "slow": 50, "fat": 10}) == "sure"
    assert smallest_passing(judge(checks, rows[1:2]), {"close": 100}) is None
