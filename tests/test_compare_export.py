"""Comparing two stored runs, and exporting a run as CSV or Parquet."""

import csv
import importlib.util

import pytest

from smallfit.errors import SmallfitError
from smallfit.report.compare import BOOTSTRAP, UNTESTED, Z_TEST, compare_runs
from smallfit.report.export import export
from smallfit.store import Store
from tests.fake_runs import FakeCandidate, FakeRun, build_run


@pytest.fixture
def two_runs(tmp_path):
    store = Store.open(tmp_path / "r.db")
    a = build_run(store, FakeRun([FakeCandidate("m", 100, 10**8, 20, 0.5), FakeCandidate("x", 100, 10**8, 20, 0.5)],
                                 tasks=("quartz",)))
    b = build_run(store, FakeRun([FakeCandidate("m", 100, 9 * 10**7, 36, 1.0)], tasks=("quartz",)))
    return store, a, b


def test_compare_tests_each_figure_with_the_right_test(two_runs):
    store, a, b = two_runs
    changes = {(c.candidate, c.metric): c for c in compare_runs(store, a, b)}
    acc = changes[("m", "acc")]
    assert (acc.a, acc.b, acc.test) == (0.5, 0.9, Z_TEST) and acc.p < 0.001 and acc.low > 0
    lat = changes[("m", "latency_s_p95")]
    assert lat.test == BOOTSTRAP and lat.diff > 0 and lat.low > 0 and lat.p < 0.05  # twice as slow in run B
    mem = changes[("m", "peak_rss_bytes")]
    assert mem.test == UNTESTED and mem.p is None and mem.diff == -10**7
    assert {c.candidate for c in changes.values()} == {"m"}  # x is only in run A


def test_compare_one_candidate_across_names_and_bad_names(two_runs):
    store, a, b = two_runs
    assert {c.candidate for c in compare_runs(store, a, b, "x", "m")} == {"x → m"}
    with pytest.raises(SmallfitError, match="run B has no candidate 'x'"):
        compare_runs(store, a, b, "m", "x")
    other = build_run(store, FakeRun([FakeCandidate("z", 1, 1, 1, 0.1)], tasks=("quartz",)))
    with pytest.raises(SmallfitError, match="no candidate name in common.*--candidate-a"):
        compare_runs(store, a, other)


def test_csv_exports(two_runs, tmp_path):
    store, a, _ = two_runs
    out = tmp_path / "c.csv"
    assert export(store, a, "candidates", "csv", out) == 2
    rows = list(csv.DictReader(out.open()))
    assert rows[0]["candidate"] == "m" and float(rows[0]["acc"]) == 0.5 and rows[0]["verdict"] == "uncertain"
    assert export(store, a, "samples", "csv", out) == 80
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
    assert pq.read_table(tmp_path / "s.parquet").num_rows == 80


def test_compare_and_export_commands(cli, tmp_path):
    store = Store.open(cli.db)
    a = build_run(store, FakeRun([FakeCandidate("m", 100, 10**8, 20, 0.5)], tasks=("quartz",)))
    b = build_run(store, FakeRun([FakeCandidate("m", 100, 10**8, 30, 0.6)], tasks=("quartz",)))
    store.close()
    proc = cli("compare", a, b, check=True)
    assert "z test" in proc.stdout and "bootstrap" in proc.stdout and "latency_s_p95" in proc.stdout
    cli("export", a, "--what", "samples", "-o", str(tmp_path / "s.csv"), check=True)
    assert (tmp_path / "s.csv").read_text().startswith("run_id,candidate,task,index")
    bad = cli("export", a, "--what", "everything", "-o", str(tmp_path / "s.csv"))
    assert bad.returncode == 2 and "unknown --what 'everything'" in bad.stderr and "Traceback" not in bad.stderr
