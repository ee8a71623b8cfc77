"""Pareto frontiers of stored runs, and the 'smallfit pareto' command."""

import pytest

from smallfit.errors import SmallfitError
from smallfit.report.pareto import frontiers
from smallfit.results import collect
from smallfit.store import Store
from tests.fake_runs import FakeCandidate, FakeRun, build_run, demo_candidates


@pytest.fixture
def run(tmp_path):
    store = Store.open(tmp_path / "r.db")
    cands = [*demo_candidates(), FakeCandidate("crashy", 10, 10, 0, 0.1, failed_task="quartz")]
    return collect(store, build_run(store, FakeRun(cands)))


def test_frontier_marks_the_dominated_and_the_missing(run):
    (quartz,) = frontiers(run, "latency_s_p95", "quality", task="quartz")
    assert quartz.y == "acc"  # 'quality' is the task's main quality metric
    status = {p.candidate: p.dominated_by for p in quartz.points}
    # slow-360m is slower and less accurate than mid-270m; the others trade speed for accuracy
    assert status == {"tiny-135m": (), "mid-270m": (), "slow-360m": ("mid-270m",), "big-1b": ()}
    assert quartz.missing["crashy"].startswith("failed:")
    # decode speed: higher is better on x
    (country,) = frontiers(run, "decode_tok_s", "exact_match", task="largest-country")
    assert {p.candidate for p in country.points if not p.dominated} == {"tiny-135m", "mid-270m", "big-1b", "crashy"}


def test_bad_axes_and_tasks_say_what_exists(run):
    with pytest.raises(SmallfitError, match="unknown metric 'speed'"):
        frontiers(run, "speed", "acc")
    with pytest.raises(SmallfitError, match="no task 'nope'; its tasks: quartz, largest-country"):
        frontiers(run, "latency_s_p95", "acc", task="nope")
    with pytest.raises(SmallfitError, match="no candidate with both latency_s_p95 and bits_per_byte.*figures it has"):
        frontiers(run, "latency_s_p95", "bits_per_byte")


def test_pareto_command(cli):
    store = Store.open(cli.db)
    build_run(store, FakeRun(demo_candidates()))
    store.close()
    proc = cli("pareto", "--x", "peak_rss_bytes", "--y", "acc", "--task", "quartz", check=True)
    assert "dominated by mid-270m" in proc.stdout and "on the frontier" in proc.stdout
    bad = cli("pareto", "--x", "latency_s_p95", "--y", "bits_per_byte")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "no candidate with both" in bad.stderr
