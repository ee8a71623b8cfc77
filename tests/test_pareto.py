"""Pareto frontiers of a real stored run (toy models through the real runner), and 'smallfit pareto'."""

import shutil

import pytest

from smallfit.errors import SmallfitError
from smallfit.report.pareto import frontiers
from smallfit.report.table import frontier_status
from smallfit.results import collect
from smallfit.store import Store
from tests.toy_runs import Toy, make_run, needs_toy


@pytest.fixture
def run(demo_run):
    db, run_id = demo_run
    return collect(Store.open(db), run_id)


def test_frontier_marks_the_dominated_and_the_missing(run):
    (words,) = frontiers(run, "latency_s", "quality", task="words")  # medians: their order is robust
    assert words.y == "acc"  # 'quality' is the task's main quality metric
    by_estimates = {p.candidate: p.dominated_by_estimates for p in words.points}
    # slow knows fewer answers than mid and is slower: behind mid by the point estimates; the
    # others trade speed for accuracy
    assert by_estimates == {"slow": ("mid",), "tiny": (), "mid": (), "big": ()}
    # ... but 14 of 20 against 16 of 20 is within the intervals: slow stays on the frontier, not
    # distinguishable from mid, and nothing is dominated beyond the intervals
    slow = next(p for p in words.points if p.candidate == "slow")
    assert not slow.dominated and slow.indistinct_from == ("mid",)
    assert slow.y_low is not None and slow.y_low < 0.7 < slow.y_high and slow.x_low is not None
    assert words.missing["crashy"].startswith("failed:")
    (caps,) = frontiers(run, "decode_tok_s", "exact_match", task="capitals")  # higher is better on x
    assert {p.candidate for p in caps.points if not p.dominated} >= {"tiny", "big"}


@needs_toy
def test_dominated_only_beyond_the_intervals(tmp_path):
    # 40 questions: weak gets about 5 right, close about 32, strong about 37; strong is the smallest file
    toys = [Toy("weak", 0, 0.5, pad_bytes=50_000, wrong=30), Toy("close", 30, 0.5, pad_bytes=60_000, wrong=4),
            Toy("strong", 36, 0.5)]
    res = collect(Store.open(tmp_path / "r.db"), make_run(tmp_path / "r.db", tmp_path, toys, n=40))
    (words,) = frontiers(res, "model_size_bytes", "quality", task="words")
    pts = {p.candidate: p for p in words.points}
    # weak's acc interval lies wholly below strong's and its file is bigger (a size is a point)
    assert pts["weak"].y_high < pts["strong"].y_low and pts["weak"].x > pts["strong"].x
    assert pts["weak"].dominated_by == ("strong",) == pts["weak"].dominated_by_estimates  # close is bigger
    # close is behind strong by the estimates, yet their intervals overlap: not distinguishable
    assert pts["close"].dominated_by == () and pts["close"].indistinct_from == ("strong",)
    assert pts["close"].y_high > pts["strong"].y_low and pts["close"].x_low is None  # size: no interval
    assert frontier_status(pts["close"])[0].startswith("not distinguishable from strong")
    assert frontier_status(pts["weak"])[0] == "dominated by strong (beyond the intervals)"
    assert frontier_status(pts["strong"])[0] == "on the frontier"


def test_bad_axes_and_tasks_say_what_exists(run):
    with pytest.raises(SmallfitError, match="unknown metric 'speed'"):
        frontiers(run, "speed", "acc")
    with pytest.raises(SmallfitError, match="no task 'nope'; its tasks: words, capitals"):
        frontiers(run, "latency_s_p95", "acc", task="nope")
    with pytest.raises(SmallfitError, match="no candidate with both latency_s_p95 and bits_per_byte.*figures it has"):
        frontiers(run, "latency_s_p95", "bits_per_byte")


def test_pareto_command(cli, demo_run):
    shutil.copy(demo_run[0], cli.db)
    proc = cli("pareto", "--x", "latency_s", "--y", "acc", "--task", "words", check=True)
    assert "not distinguishable from mid" in proc.stdout and "on the frontier" in proc.stdout
    bad = cli("pareto", "--x", "latency_s_p95", "--y", "bits_per_byte")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "no candidate with both" in bad.stderr
