"""Budget parsing and verdicts."""

import pytest

from smallfit.errors import SmallfitError
from smallfit.judge.budget import Check, parse_budget
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


@pytest.mark.parametrize("text, message", [
    # the three: each could never fail or never pass as written
    ("latency_s_p95<=300", ("budget check latency_s_p95<=300: latency_s_p95 is in seconds, and a bare 300 is more "
                           "than the 60 s it takes without a unit; did you mean latency_s_p95<=300ms? "
                           "(write 300s if you mean seconds)")),
    ("peak_rss_bytes<=1.5", ("budget check peak_rss_bytes<=1.5: peak_rss_bytes is in bytes, and 1.5 is not a whole "
                            "number of bytes; did you mean peak_rss_bytes<=1.5GB?")),
    ("acc>=40", "budget check acc>=40: acc is a proportion; did you mean acc>=0.40?"),
])
def test_values_that_do_not_fit_the_metrics_unit(text, message):
    with pytest.raises(SmallfitError) as info:
        parse_budget(text)
    assert str(info.value) == message


@pytest.mark.parametrize("text, fragment", [
    ("quartz:acc_norm > 55", "acc_norm is a proportion; did you mean quartz:acc_norm>0.55?"),
    ("exact_match>=45.5", "did you mean exact_match>=0.455?"),
    ("f1>=250", "f1 is a proportion; it must lie in [0, 1]"),
    ("acc>=-0.1", "acc is a proportion; it must lie in [0, 1]"),
    ("acc_ci_low>=80", "did you mean acc_ci_low>=0.80?"),
    ("tpot_s<=50", "more than the 1 s it takes without a unit; did you mean tpot_s<=50ms?"),
    ("itl_s_p99<=5", "more than the 1 s"),
    ("ttft_s_p95<=200", "more than the 10 s it takes without a unit; did you mean ttft_s_p95<=200ms?"),
    ("load_s<=1000", "more than the 600 s"),
    ("latency_s<=-1s", "latency_s cannot be negative"),
    ("peak_rss_bytes<=512",
     ("a bare 512 is under the 1 MB it takes without a unit; did you mean peak_rss_bytes<=512MB? "
                            "(write 512B if you mean bytes)")),
    ("model_size_bytes<=2", "did you mean model_size_bytes<=2GB?"),
    ("peak_vram_bytes<=0.5B", "0.5 is not a whole number of bytes"),
    ("memory_bandwidth_bytes_s>=20", "memory_bandwidth_bytes_s is in bytes/s, and a bare 20 is under the 1 MB"),
    ("latency_s<=3GB", "GB is a unit of bytes, but latency_s is in seconds: use s or ms"),
    ("peak_rss_bytes<=300ms",
     "ms is a unit of time, but peak_rss_bytes is in bytes: use B, KB, MB, GB, KiB, MiB or GiB"),
    ("acc>=0.5s", "s is a unit of time, but acc is a proportion, written without a unit"),
    ("decode_tok_s>=20s", "s is a unit of time, but decode_tok_s is in tokens/s, written without a unit"),
    ("bits_per_byte<=1GB", "GB is a unit of bytes, but bits_per_byte is in bits/byte, written without a unit"),
])
def test_unit_errors_name_the_likely_intent(text, fragment):
    with pytest.raises(SmallfitError) as info:
        parse_budget(text)
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("text, threshold", [
    ("latency_s_p95<=60", 60.0),  # the longest bare latency
    ("latency_s_p95<=300s", 300.0),  # any time with its unit
    ("latency_s_p95<=300ms", 0.3),
    ("tpot_s<=1", 1.0),
    ("ttft_s<=10", 10.0),
    ("load_s<=600", 600.0),
    ("peak_rss_bytes<=1000000", 1e6),  # the smallest bare byte count
    ("peak_rss_bytes<=512B", 512.0),
    ("peak_rss_bytes<=0.5GB", 5e8),
    ("memory_bandwidth_bytes_s>=10GB", 1e10),
    ("acc>=0", 0.0),
    ("acc<=1", 1.0),
    ("acc_stderr<=0.05", 0.05),
    ("bits_per_byte<=1.2", 1.2),
    ("decode_roofline_pct>=50", 50.0),  # a percentage, not a proportion
    ("decode_tok_s>=200", 200.0),
])
def test_values_that_fit_their_unit(text, threshold):
    assert parse_budget(text)[0].threshold == pytest.approx(threshold)


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
    # se = 0.2 / (2 · 1.96); at 80% power n_needed = 100 ((1.96 + 0.8416) se / 0.02)²
    # = 100 · (5 · 2.8016 / 1.96)² = 100 · 7.147² = 5108.2: 5009 more
    assert acc.needed == 5009 and "5009 more examples would decide it with 80% power" in acc.reason
    (lat,) = [c for c in v["slow"].checks if c.metric == "latency_s_p95"]
    assert lat.outcome == "fail" and lat.needed is None
    (mem,) = [c for c in v["fat"].checks if c.metric == "peak_rss_bytes"]
    assert (mem.outcome, mem.low, mem.n) == ("fail", None, None)
    # only a pass with confidence counts for the answer
    assert smallest_passing(v, {"sure": 300, "close": 100, "slow": 50, "fat": 10}) == "sure"
    assert smallest_passing(judge(checks, rows[1:2]), {"close": 100}) is None
