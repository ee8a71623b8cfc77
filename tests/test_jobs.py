"""Jobs in the store, on the local executor: toy models through the real runner, worker
processes and SQLite. Each candidate x task is a job row with its content hash, state, attempts,
node and that node's hardware fingerprint; a resume runs only unfinished jobs; a job whose hash
already has a result is not run again."""

import json
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

from smallfit import jobs
from smallfit.contract import ResolvedModel, Settings
from smallfit.store import Store
from tests.toy_runs import Toy, make_run, needs_toy, write_model, write_tasks

pytestmark = needs_toy
REPO = Path(__file__).resolve().parents[1]


def _jobs(db: Path, run_id: str) -> dict[tuple[str, str], sqlite3.Row]:
    store = Store.open(db)
    return {(r["candidate"], r["task"]): r for r in jobs.jobs(store, run_id)}


def test_a_run_is_stored_as_jobs_with_hash_state_attempts_node_and_fingerprint(tmp_path):
    crashy = Toy("crashy", knows=3, delay_ms=1.0, options=(("crash", "generate"),))
    run_id = make_run(tmp_path / "r.db", tmp_path, [Toy("a", 3, 1.0), Toy("b", 5, 1.0, pad_bytes=10), crashy], n=6,
                      quick=True)
    rows = _jobs(tmp_path / "r.db", run_id)
    assert len(rows) == 6  # three candidates x two tasks, in plan order
    assert [r["position"] for r in rows.values()] == list(range(6))
    run = Store.open(tmp_path / "r.db").run(run_id)
    for cand in ("a", "b"):
        for task in ("words", "capitals"):
            row = rows[(cand, task)]
            assert row["state"] == "done" and row["attempts"] == 1 and row["error"] is None
            assert row["node"].startswith("local:") and len(row["hash"]) == 64
            assert json.loads(row["hardware_json"])["cpu_model"] == json.loads(run["hardware_json"])["cpu_model"]
            assert row["hardware_id"] == jobs.hardware_id(json.loads(run["hardware_json"]))
            (attempt,) = json.loads(row["attempts_json"])
            assert attempt["outcome"] == "done" and attempt["started_at"] <= attempt["finished_at"]
    hashes = {r["hash"] for r in rows.values()}
    assert len(hashes) == 6  # another model or another task: another hash
    failed = [r for (c, _), r in rows.items() if c == "crashy"]
    assert any(r["state"] == "failed" and "worker killed by SIGKILL" in r["error"] for r in failed)


def test_a_worker_stopped_by_an_illegal_instruction_is_named_with_the_rebuild_command(tmp_path):
    lacks = Toy("lacks", knows=3, delay_ms=1.0, options=(("crash", "sigill"),))
    run_id = make_run(tmp_path / "r.db", tmp_path, [Toy("a", 3, 1.0), lacks], n=4, quick=True)
    rows = _jobs(tmp_path / "r.db", run_id)
    (error,) = {r["error"] for (c, _), r in rows.items() if c == "lacks" and r["state"] == "failed"}
    assert error.startswith("worker killed by SIGILL (an instruction this CPU lacks")
    assert "pip install --force-reinstall --no-cache-dir --no-deps llama-cpp-python" in error
    assert all(r["state"] == "done" for (c, _), r in rows.items() if c == "a")


def test_the_job_hash_follows_what_runs_and_nothing_else():
    model = ResolvedModel("m", "m.gguf", "llamacpp", "file", "gguf", "/x/m.gguf", sha256="a" * 64)
    shape = {"threads": None, "context_size": 2048, "batch_size": 512}
    base = jobs.job_hash(model, {}, shape, "t" * 64, Settings())
    renamed = ResolvedModel("other-name", "./elsewhere.gguf", "llamacpp", "file", "gguf", "/y/m.gguf", sha256="a" * 64)
    assert jobs.job_hash(renamed, {}, shape, "t" * 64, Settings()) == base  # same content, other name and path
    changed = [jobs.job_hash(ResolvedModel("m", "m", "llamacpp", "file", "gguf", "/x/m.gguf", sha256="b" * 64), {},
                             shape, "t" * 64, Settings()),
               jobs.job_hash(model, {"dtype": "float16"}, shape, "t" * 64, Settings()),
               jobs.job_hash(model, {}, {**shape, "threads": 2}, "t" * 64, Settings()),
               jobs.job_hash(model, {}, shape, "u" * 64, Settings()),
               jobs.job_hash(model, {}, shape, "t" * 64, Settings(limit=5))]
    assert base not in changed and len(set(changed)) == len(changed)


def test_task_digest_changes_with_the_examples(tmp_path):
    words = write_tasks(tmp_path, 4)[0]
    first = jobs.task_digest(words)
    assert first == jobs.task_digest(words)
    write_tasks(tmp_path, 5)  # one more example in the same file
    assert jobs.task_digest(words) != first


def test_resume_reruns_only_unfinished_jobs(cli, tmp_path):
    run_id = make_run(tmp_path / "r.db", tmp_path, [Toy("a", 3, 1.0), Toy("b", 4, 1.0, pad_bytes=5)], n=6,
                      quick=True)
    db = sqlite3.connect(tmp_path / "r.db", isolation_level=None)
    before = dict(((c, t), f) for c, t, f in db.execute("SELECT candidate, task, finished_at FROM task_results"))
    for table in ("task_results", "metrics", "samples", "timings"):  # as if the driver died during b x capitals
        db.execute(f"DELETE FROM {table} WHERE candidate = 'b' AND task = 'capitals'")
    db.execute("UPDATE jobs SET state = 'running' WHERE candidate = 'b' AND task = 'capitals'")
    db.execute("UPDATE runs SET status = 'interrupted'")
    db.close()
    cli("run", "--resume", run_id, "--db", str(tmp_path / "r.db"), check=True)
    rows = _jobs(tmp_path / "r.db", run_id)
    assert all(r["state"] == "done" for r in rows.values())
    assert rows[("b", "capitals")]["attempts"] == 2 and rows[("a", "words")]["attempts"] == 1
    after = dict(((c, t), f) for c, t, f in sqlite3.connect(tmp_path / "r.db").execute(
        "SELECT candidate, task, finished_at FROM task_results"))
    assert {k: v for k, v in after.items() if k != ("b", "capitals")} == {k: v for k, v in before.items()
                                                                          if k != ("b", "capitals")}
    assert after[("b", "capitals")] > before[("b", "capitals")]


def test_a_job_whose_hash_has_a_result_is_not_run_again(tmp_path):
    """The same model content under two names, the same task and settings: one job runs, the
    other gets its result (every figure and example) without loading anything."""
    model = write_model(tmp_path, Toy("m", 3, 1.0), 6)
    twin = tmp_path / "twin.toy"
    twin.write_bytes(model.read_bytes())
    tasks = write_tasks(tmp_path, 6)
    from smallfit.runner import execute, start_run
    from smallfit.spec import build_spec

    spec = build_spec({"candidates": [{"model": str(model), "name": "first"}, {"model": str(twin), "name": "twin"}],
                       "tasks": tasks[:1], "threads": 1, "quick": True}, "test")
    store = Store.open(tmp_path / "r.db")
    run_id = start_run(spec, store)
    execute(store, run_id)
    rows = _jobs(tmp_path / "r.db", run_id)
    first, copy = rows[("first", "words")], rows[("twin", "words")]
    assert first["hash"] == copy["hash"] and copy["state"] == "done" and copy["attempts"] == 0
    assert json.loads(copy["attempts_json"])[0]["reused_from"] == "first x words"
    assert store.metrics(run_id, "first", "words") == store.metrics(run_id, "twin", "words")
    assert store.sample_count(run_id, "twin", "words") == store.sample_count(run_id, "first", "words") == 6


def test_old_databases_gain_the_jobs_table_and_read_as_before(tmp_path):
    old = tmp_path / "old.db"
    shutil.copy(REPO / "tests" / "data" / "schema2.db", old)
    store = Store.open(old)
    assert store.schema_version() == len(__import__("smallfit.store").store.MIGRATIONS)
    run_id = str(store.run()["id"])
    assert jobs.jobs(store, run_id) == []  # a run from before jobs existed has none, and reads as before
    from smallfit.results import collect

    assert collect(store, run_id).rows


@pytest.mark.parametrize(("args", "fragment"), [
    (["--executor", "slurm"], "unknown --executor 'slurm': choose from local, ray"),
    (["--address", "127.0.0.1:6379"], "--address is where a Ray cluster listens; use it with --executor ray"),
    (["--retries", "-1"], "--retries must be 0 or more"),
    (["--retries", "1"], "--retries and --job-timeout-s apply to jobs on a cluster; use them with --executor ray"),
    (["--job-timeout-s", "0"], "--job-timeout-s must be more than 0"),
])
def test_executor_options_are_checked(cli, tmp_path, args, fragment):
    model = write_model(tmp_path, Toy("m", 2, 1.0), 4)
    proc = cli("run", "-m", str(model), "-t", write_tasks(tmp_path, 4)[0], "--quick", *args)
    assert proc.returncode == 2 and fragment in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not cli.db.exists() or not sqlite3.connect(cli.db).execute("SELECT * FROM runs").fetchall()


def test_a_hardware_class_asked_of_this_machine_is_one_line(cli, tmp_path):
    model = write_model(tmp_path, Toy("m", 2, 1.0), 4)
    spec = tmp_path / "spec.toml"
    spec.write_text(f'tasks = ["{write_tasks(tmp_path, 4)[0]}"]\nquick = true\n'
                    f'[[candidates]]\nmodel = "{model}"\nhardware = "gpu"\n')
    proc = cli("run", str(spec))
    assert proc.returncode == 2 and "hardware = 'gpu' picks the nodes of a Ray cluster" in proc.stderr
    assert not sqlite3.connect(cli.db).execute("SELECT * FROM runs").fetchall()


def test_executor_ray_without_the_extra_is_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what Python does for a package that is not installed
    model = write_model(tmp_path, Toy("m", 2, 1.0), 4)
    proc = cli("run", "-m", str(model), "-t", write_tasks(tmp_path, 4)[0], "--executor", "ray")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "error: the Ray library is not installed; install it with: pip install " \
                                  "'smallfit[ray]'"
    assert not sqlite3.connect(cli.db).execute("SELECT * FROM runs").fetchall()


def test_version_skew_names_what_differs():
    from smallfit.executors.ray import version_skew

    driver = {"smallfit": "0.1.0", "ray": "2.60.0", "python": "3.11.7"}
    assert version_skew(dict(driver), driver) == ""
    node = {**driver, "ray": "2.59.0", "python": "3.12.1"}
    assert version_skew(node, driver) == "Ray 2.59.0, Python 3.12.1 where the driver runs Ray 2.60.0, Python 3.11.7"
