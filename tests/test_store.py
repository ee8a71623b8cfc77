"""The SQLite store, on real database files."""

import sqlite3

import pytest

from smallfit.errors import SmallfitError
from smallfit.records import RequestTiming, SampleResult, TaskInfo, TaskResult
from smallfit.store import SCHEMA_VERSION, Store


def _result(task="t"):
    return TaskResult(
        task=task, metrics={"acc": 0.5, "acc_stderr": 0.1, "ttft_s": None},
        samples=[SampleResult(0, "s0", "Q?", "A", "A", {"acc": 1.0}), SampleResult(1, "s1", "Q2?", "B", "A",
                                                                                   {"acc": 0.0})],
        timings=[RequestTiming(0, "latency", 7, 3, 0.1, 0.3, (0.1, 0.2, 0.3))], info=TaskInfo(n_samples=2))


def _new_run(store):
    run_id = store.create_run('{"x": 1}', {"smallfit": "0.1"}, {"cpu_model": "test"}, 2, {"loadavg": [0, 0, 0]})
    store.add_candidate(run_id, "c1", 0, "smollm2-135m", "llamacpp")
    return run_id


def test_round_trip_and_done_tasks(tmp_path):
    path = tmp_path / "r.db"
    store = Store.open(path)
    run_id = _new_run(store)
    store.save_task_result(run_id, "c1", _result("t"))
    store.save_task_error(run_id, "c1", "u", "boom")
    store.close()

    store = Store.open(path, create=False)
    assert store.schema_version() == SCHEMA_VERSION
    assert store.done_tasks(run_id) == {("c1", "t")}  # an error is not finished work
    assert store.metrics(run_id, "c1", "t") == {"acc": 0.5, "acc_stderr": 0.1, "ttft_s": None}
    (timing,) = store.timings(run_id, "c1", "t")
    assert timing["token_times_json"] == "[0.1, 0.2, 0.3]" and timing["n_prompt_tokens"] == 7
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.run(run_id[:12])["id"] == run_id  # a unique prefix finds the run


def test_saving_a_task_again_replaces_it(tmp_path):
    store = Store.open(tmp_path / "r.db")
    run_id = _new_run(store)
    store.save_task_error(run_id, "c1", "t", "first try failed")
    store.save_task_result(run_id, "c1", _result("t"))
    rows = store.task_results(run_id)
    assert [(r["task"], r["status"]) for r in rows] == [("t", "done")]
    assert store.conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 2


def test_not_a_database(tmp_path):
    bogus = tmp_path / "notes.db"
    bogus.write_text("these are my notes, not a database\n" * 50)
    with pytest.raises(SmallfitError, match="not a usable SQLite database"):
        Store.open(bogus)
    assert bogus.read_text().startswith("these are my notes")  # untouched


def test_directory_and_missing_db(tmp_path):
    with pytest.raises(SmallfitError, match="is a directory"):
        Store.open(tmp_path)
    with pytest.raises(SmallfitError, match="no results database"):
        Store.open(tmp_path / "absent.db", create=False)


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "future.db"
    Store.open(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (99, '0099_future', 0)")
    with pytest.raises(SmallfitError, match="newer smallfit"):
        Store.open(path)


def test_migrations_apply_once_to_an_old_database(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # a database from before any migration ran: empty
        conn.execute("CREATE TABLE unrelated (x)")
    store = Store.open(path)
    assert store.schema_version() == SCHEMA_VERSION
    store.close()
    store = Store.open(path)  # reopening applies nothing twice
    assert store.conn.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0] == SCHEMA_VERSION
