"""Comparing two stored runs, and exporting a run as CSV or Parquet."""

import csv
import importlib.util

import pytest

from smallfit.errors import SmallfitError
from smallfit.report.compare import MCNEMAR, PAIRED_TIMING, UNTESTED, Z_TEST, compare_runs, quality_test
from smallfit.report.export import export
from smallfit.results import ResultRow
from smallfit.store import Store
from tests.toy_runs import Toy, make_run


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two")
    db = folder / "r.db"
    a = make_run(db, folder / "a", [Toy("m", 0, 1.0, wrong=30), Toy("x", 10, 1.0)], n=40)
    b = make_run(db, folder / "b", [Toy("m", 36, 12.0)], n=40)  # about 48 ms more per latency request
    return Store.open(db), a, b


def test_compare_tests_each_figure_with_the_right_test(two_runs):
    store, a, b = two_runs
    changes = {(c.candidate, c.task, c.metric): c for c in compare_runs(store, a, b)}
    acc = changes[("m", "words", "acc")]  # the same 40 questions: paired; A right on 5 guesses, B on 38
    assert acc.test.startswith(MCNEMAR) and "0 right only in A, 33 only in B" in acc.test
    assert acc.b - acc.a > 0.5 and acc.p == pytest.approx(2 * 0.5**33) and acc.low is None
    lat = changes[("m", "words", "latency_s")]  # the same 4 latency prompts: paired by prompt
    assert lat.test.startswith(PAIRED_TIMING) and lat.diff > 0 and lat.low > 0 and lat.p < 0.05
    mem = changes[("m", "words", "peak_rss_bytes")]
    assert mem.test == UNTESTED and mem.p is None
    assert {c.candidate for c in changes.values()} == {"m"}  # x is only in run A


def test_compare_one_candidate_across_names_and_bad_names(two_runs):
    store, a, b = two_runs
    assert {c.candidate for c in compare_runs(store, a, b, "x", "m")} == {"x → m"}
    with pytest.raises(SmallfitError, match="run B has no candidate 'x'"):
        compare_runs(store, a, b, "m", "x")
    other = make_run(store.path, store.path.parent / "z", [Toy("z", 1, 1.0)], n=4)
    with pytest.raises(SmallfitError, match="no candidate name in common.*--candidate-a"):
        compare_runs(store, a, other)
    # 4 of run A's 40 questions: stated, and tested unpaired
    mixed = {(c.task, c.metric): c for c in compare_runs(store, a, other, "x", "z")}
    assert mixed[("words", "acc")].test == f"{Z_TEST}, unpaired: example sets differ, 4 shared of 40 and 4"


def test_quality_test_needs_a_shared_example():
    row = ResultRow("m", "t", {"acc": 0.5, "acc_stderr": 0.1}, "none", None)
    one = [(("q1", "p1"), {"acc": 1.0}), (("q2", "p2"), {"acc": 0.0})]
    other = [(("q3", "p3"), {"acc": 1.0}), (("q4", "p4"), {"acc": 0.0})]
    with pytest.raises(SmallfitError, match="t: the two sides scored no example in common"):
        quality_test("acc", 0.5, 0.5, row, row, one, other)
    low, high, p, test = quality_test("acc", 0.5, 0.5, row, row, one, [(("q1", "p1"), {"acc": 0.0}),
                                                                       (("q2", "p2"), {"acc": 1.0})])
    assert (low, high, p) == (None, None, 1.0) and test.startswith(MCNEMAR)  # one discordant each way
    f1 = [(("q1", "p1"), {"f1": 0.2}), (("q2", "p2"), {"f1": 0.4}), (("q3", "p3"), {"f1": 0.6})]
    up = [(k, {"f1": v["f1"] + 0.1}) for k, v in f1]
    low, high, p, test = quality_test("f1", 0.4, 0.5, row, row, f1, up)
    assert test.startswith("paired t") and low == pytest.approx(0.1) == high  # every pair moved 0.1


def test_csv_exports(two_runs, tmp_path):
    store, a, _ = two_runs
    out = tmp_path / "c.csv"
    assert export(store, a, "candidates", "csv", out) == 4  # two candidates x two tasks
    rows = list(csv.DictReader(out.open()))
    stored = store.metrics(a, "m", "words")["acc"]
    assert rows[0]["candidate"] == "m" and float(rows[0]["acc"]) == pytest.approx(stored)
    assert rows[0]["verdict"] == "none"
    assert export(store, a, "samples", "csv", out) == 2 * (40 + 28)  # words and capitals (30 rows, 2 few-shot)
    rows = list(csv.DictReader(out.open()))
    assert set(rows[0]) >= {"candidate", "task", "prompt", "prediction", "acc", "acc_norm"}
    with pytest.raises(SmallfitError, match="unknown --format 'xlsx'"):
        export(store, a, "samples", "xlsx", out)


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow is installed")
def test_parquet_without_pyarrow_names_the_extra(two_runs, tmp_path):
    store, a, _ = two_runs
    with pytest.raises(SmallfitError, match=r"pip install 'smallfit\[parquet\]'"):
        export(store, a, "candidates", "parquet", tmp_path / "c.parquet")


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="pyarrow not installed (smallfit[parquet])")
def test_parquet_export(two_runs, tmp_path):
    import pyarrow.parquet as pq

    store, a, _ = two_runs
    export(store, a, "samples", "parquet", tmp_path / "s.parquet")
    assert pq.read_table(tmp_path / "s.parquet").num_rows == 2 * (40 + 28)


def test_compare_and_export_commands(cli, tmp_path, two_runs):
    import shutil

    store, a, b = two_runs
    shutil.copy(store.path, cli.db)
    proc = cli("compare", a, b, check=True)
    assert "McNemar" in proc.stdout and "bootstrap" in proc.stdout and "latency_s_p95" in proc.stdout
    cli("export", a, "--what", "samples", "-o", str(tmp_path / "s.csv"), check=True)
    assert (tmp_path / "s.csv").read_text().startswith("run_id,candidate,task,index")
    bad = cli("export", a, "--what", "everything", "-o", str(tmp_path / "s.csv"))
    assert bad.returncode == 2 and "unknown --what 'everything'" in bad.stderr and "Traceback" not in bad.stderr


def test_tradeoff_cards_pair_quality_by_example(demo_run):
    import dataclasses

    from smallfit.judge.stats import mcnemar_exact_p
    from smallfit.report.tradeoff import tradeoffs
    from smallfit.results import collect

    res = collect(Store.open(demo_run[0]), demo_run[1])
    cards = {t.candidate: t for t in tradeoffs(res)}
    assert cards["tiny"].reference == "big"
    (line,) = [c for c in cards["tiny"].costs if c.startswith("words: acc")]
    # by hand from the stored scores: the examples only one of the two got right, and their exact test
    ref = dict(res.scores[("big", "words")])
    mine = dict(res.scores[("tiny", "words")])
    only_big = sum(ref[k]["acc"] > mine[k]["acc"] for k in ref)
    only_tiny = sum(mine[k]["acc"] > ref[k]["acc"] for k in ref)
    assert only_big > only_tiny
    assert f"{MCNEMAR} (20; {only_big} right only in big, {only_tiny} only in tiny)" in line
    assert f"p = {mcnemar_exact_p(only_big, only_tiny):.3f}" in line and Z_TEST not in line
    # example sets that differ are stated and tested unpaired; none in common: said, untested
    fewer = dataclasses.replace(res, scores={**res.scores, ("tiny", "words"): res.scores[("tiny", "words")][1:]})
    (line,) = [c for c in tradeoffs(fewer)[0].costs if c.startswith("words: acc")]
    assert f"{Z_TEST}, unpaired: example sets differ, 19 shared of 20 and 19" in line
    other = [(("elsewhere", p), s) for (_, p), s in res.scores[("tiny", "words")]]
    apart = dataclasses.replace(res, scores={**res.scores, ("tiny", "words"): other})
    (line,) = [c for c in tradeoffs(apart)[0].costs if c.startswith("words: acc")]
    assert "untested: no example in common" in line and "p =" not in line
