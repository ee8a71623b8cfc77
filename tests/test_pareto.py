"""Pareto frontiers of a real stored run (toy models through the real runner), and 'smallfit pareto'."""

import shutil

import pytest

from smallfit.errors import SmallfitError
from smallfit.report.pareto import frontiers
from smallfit.results import collect
from smallfit.store import Store


@pytest.fixture
def run(demo_run):
    db, run_id = demo_run
    return collect(Store.open(db), run_id)


def test_frontier_marks_the_dominated_and_the_missing(run):
    (words,) = frontiers(run, "latency_s_p95", "quality", task="words")
    assert words.y == "acc"  # 'quality' is the task's main quality metric
    status = {p.candidate: p.dominated_by for p in words.points}
    # slow knows fewer answers than mid and is slower: dominated; the others trade speed for accuracy
    assert status["slow"] == ("mid",) and status["tiny"] == () and status["mid"] == () and status["big"] == ()
    assert words.missing["crashy"].startswith("failed:")
    (caps,) = frontiers(run, "decode_tok_s", "exact_match", task="capitals")  # higher is better on x
    assert {p.candidate for p in caps.points if not p.dominated} >= {"tiny", "big"}


def test_bad_axes_and_tasks_say_what_exists(run):
    with pytest.raises(SmallfitError, match="unknown metric 'speed'"):
        frontiers(run, "speed", "acc")
    with pytest.raises(SmallfitError, match="no task 'nope'; its tasks: words, capitals"):
        frontiers(run, "latency_s_p95", "acc", task="nope")
    with pytest.raises(SmallfitError, match="no candidate with both latency_s_p95 and bits_per_byte.*figures it has"):
        frontiers(run, "latency_s_p95", "bits_per_byte")


def test_pareto_command(cli, demo_run):
    shutil.copy(demo_run[0], cli.db)
    proc = cli("pareto", "--x", "latency_s_p95", "--y", "acc", "--task", "words", check=True)
    assert "dominated by mid" in proc.stdout and "on the frontier" in proc.stdout
    bad = cli("pareto", "--x", "latency_s_p95", "--y", "bits_per_byte")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "no candidate with both" in bad.stderr
