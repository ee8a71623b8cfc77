"""Efficiency aggregates from raw timings, hand-computed."""

import pytest

from smallfit.metrics import efficiency_from_timings, known_metric
from smallfit.records import RequestTiming


def test_efficiency_from_two_requests():
    timings = [
        RequestTiming(0, "quality", 10, 5, 0.1, 0.5),  # TPOT (0.5-0.1)/4 = 0.1
        RequestTiming(1, "quality", 20, 4, 0.2, 0.8),  # TPOT (0.8-0.2)/3 = 0.2
        RequestTiming(2, "quality", None, 0, None, 0.3),  # a scoring request: no tokens out
    ]
    m = efficiency_from_timings(timings)
    assert m["ttft_s"] == pytest.approx(0.15)
    assert m["ttft_s_p95"] == pytest.approx(0.1 + 0.95 * 0.1)
    assert m["tpot_s"] == pytest.approx(0.15)
    assert m["latency_s"] == pytest.approx(0.65)
    assert m["decode_tok_s"] == pytest.approx((4 + 3) / (0.4 + 0.6))
    assert m["prefill_tok_s"] == pytest.approx((10 + 20) / 0.3)


def test_single_token_requests_have_no_tpot():
    m = efficiency_from_timings([RequestTiming(0, "quality", 5, 1, 0.1, 0.1)])
    assert m["tpot_s"] is None and m["decode_tok_s"] is None
    assert m["ttft_s"] == pytest.approx(0.1)


def test_nothing_generated_is_none_not_zero():
    m = efficiency_from_timings([RequestTiming(0, "quality", None, 0, None, 0.3)])
    assert set(m.values()) == {None}


def test_known_metrics():
    assert known_metric("acc") and known_metric("acc_stderr") and known_metric("latency_s_p95")
    assert not known_metric("accuracy") and not known_metric("latency_s_stderr")
