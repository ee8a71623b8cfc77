"""Per-example confidence signals: hand-computed values, and what a real toy run stores."""

import json
import math
import sqlite3

import pytest

from smallfit.signals import as_probability, choice_signals, quantile, token_signals
from tests.toy_runs import Toy, make_run, needs_toy


def test_choice_signals_by_hand():
    # log-likelihoods ln 0.6, ln 0.3, ln 0.1 (already normalised) and the same shifted by a constant
    for shift in (0.0, -7.5):
        s = choice_signals([math.log(0.6) + shift, math.log(0.3) + shift, math.log(0.1) + shift])
        assert s["prob"] == pytest.approx(0.6) and s["margin"] == pytest.approx(0.3)
    # the chosen answer is the highest, wherever it stands; two equal choices have no margin
    assert choice_signals([-3.0, -1.0])["prob"] == pytest.approx(1 / (1 + math.exp(-2)))
    assert choice_signals([-2.0, -2.0]) == {"prob": 0.5, "margin": 0.0}
    assert choice_signals([-4.0]) == {"prob": 1.0, "margin": 1.0}


def test_token_signals_by_hand():
    s = token_signals([-0.1, -2.0, -0.5, -0.2, -1.0])
    assert s["logprob_mean"] == pytest.approx(-0.76) and s["logprob_min"] == -2.0
    # sorted: -2.0, -1.0, -0.5, -0.2, -0.1; 10% of 4 = 0.4 of the way from -2.0 to -1.0
    assert s["logprob_p10"] == pytest.approx(-1.6)
    assert quantile([1.0, 2.0, 3.0], 0.5) == 2.0
    assert token_signals(None) == {}  # the backend gave none: no signal, not a made-up one
    assert token_signals(()) == {"logprob_mean": 0.0, "logprob_min": 0.0, "logprob_p10": 0.0}
    assert as_probability("logprob_mean", math.log(0.25)) == pytest.approx(0.25)
    assert as_probability("margin", 0.4) == 0.4


@needs_toy
def test_a_run_stores_signals_and_seconds_per_example(tmp_path):
    """A real toy run: the examples a model knows carry a high signal, the guesses a lower one,
    for multiple choice (prob, margin) and generation (token log-probabilities)."""
    run_id = make_run(tmp_path / "r.db", tmp_path, [Toy("m", knows=4, delay_ms=0.2)], n=12)
    conn = sqlite3.connect(tmp_path / "r.db")
    conn.row_factory = sqlite3.Row
    rows = conn.execute("SELECT * FROM samples WHERE run_id = ? ORDER BY task, idx", (run_id,)).fetchall()
    words = [r for r in rows if r["task"] == "words"]
    caps = [r for r in rows if r["task"] == "capitals"]
    sig = [json.loads(r["signals_json"]) for r in words]
    assert all(set(s) == {"prob", "margin"} for s in sig)
    assert min(s["prob"] for s in sig[:4]) > 0.99 > max(s["prob"] for s in sig[4:])  # known vs guessed
    assert all(r["latency_s"] is not None and r["latency_s"] > 0 for r in rows)
    # the scoring call's seconds are shared among its examples, in proportion to what each scored
    (call,) = conn.execute("SELECT latency_s FROM timings WHERE run_id = ? AND candidate = 'm' AND task = 'words'"
                           " AND phase = 'quality'", (run_id,)).fetchall()
    assert sum(r["latency_s"] for r in words) == pytest.approx(call[0])
    shares = [r["latency_s"] / call[0] for r in words]
    assert shares[0] < shares[-1]  # question 0 is a few characters shorter than question 11
    assert shares[0] / shares[-1] > 0.9  # and only a few

    gen = [json.loads(r["signals_json"]) for r in caps]
    assert all(set(s) == {"logprob_mean", "logprob_min", "logprob_p10"} for s in gen)
    assert min(s["logprob_mean"] for s in gen[:4]) > max(s["logprob_mean"] for s in gen[4:])
    infos = {r["task"]: json.loads(r["info_json"]) for r in conn.execute(
        "SELECT task, info_json FROM task_results WHERE run_id = ?", (run_id,))}
    assert infos["words"]["signals"] == ["prob", "margin"] and infos["words"]["signals_missing"] is None
    assert infos["capitals"]["signals"] == ["logprob_mean", "logprob_min", "logprob_p10"]
