"""The Ray executor on a real Ray cluster: two nodes on this machine (``ray.cluster_utils.Cluster``),
each with one CPU and one ``smallfit_slot``, driven by the real CLI, runner, worker processes and
store. Toy models keep it fast; one test (marked ``models``) runs a bundled model. Faults are
real: a node's processes killed mid-job, a worker killed by its own model, a job over its time
limit, the driver killed with SIGKILL. Skipped when Ray is not installed (pip install
'smallfit[ray]')."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import needs_models
from tests.toy_runs import Toy, needs_toy, write_model, write_tasks

ray = pytest.importorskip("ray")
pytestmark = needs_toy


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head and one more node, one slot each; the nodes keep model copies in a temporary cache."""
    from ray.cluster_utils import Cluster

    before = os.environ.get("SMALLFIT_NODE_CACHE")
    os.environ["SMALLFIT_NODE_CACHE"] = str(tmp_path_factory.mktemp("node-cache"))
    # A dead node is noticed in about 3 s instead of Ray's default of about 30 s.
    health = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000, "health_check_timeout_ms": 1000,
              "health_check_failure_threshold": 3}
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"smallfit_slot": 1},
                                                      "include_dashboard": False, "_system_config": health})
    c.add_node(num_cpus=1, resources={"smallfit_slot": 1})
    c.wait_for_nodes()
    yield c
    c.shutdown()
    if before is None:
        os.environ.pop("SMALLFIT_NODE_CACHE", None)
    else:
        os.environ["SMALLFIT_NODE_CACHE"] = before


def _models(folder: Path, toys: list[Toy], n: int) -> list[str]:
    return [a for t in toys for a in ("-m", f"{t.name}={write_model(folder, t, n)}")]


def _spec(folder: Path, toys: list[Toy], n: int, tasks: int = 1) -> str:
    """A spec file (a toy's options reach its candidate only through one)."""
    lines = [f"tasks = {json.dumps(write_tasks(folder, n)[:tasks])}", "quick = true", "threads = 1"]
    for t in toys:
        lines += ["[[candidates]]", f'model = "{write_model(folder, t, n)}"', f'name = "{t.name}"',
                  f"options = {{{', '.join(f'{k} = {json.dumps(v)}' for k, v in t.options)}}}"]
    path = folder / "spec.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _jobs(db: Path, run_id: str | None = None) -> list[sqlite3.Row]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    run_id = run_id or conn.execute("SELECT id FROM runs ORDER BY created_at DESC LIMIT 1").fetchone()[0]
    return conn.execute("SELECT * FROM jobs WHERE run_id = ? ORDER BY position", (run_id,)).fetchall()


def _quality(db: Path, run_id: str) -> dict[tuple[str, str], object]:
    """Per job: every quality figure and every example's scores and prediction."""
    conn = sqlite3.connect(db)
    figures = conn.execute("SELECT candidate, task, name, value FROM metrics WHERE run_id = ? AND name IN"
                           " ('acc', 'acc_norm', 'exact_match', 'bits_per_byte', 'acc_stderr', 'exact_match_stderr')",
                           (run_id,)).fetchall()
    out: dict[tuple[str, str], object] = {}
    for cand, task, name, value in figures:
        out.setdefault((cand, task), {})[name] = value  # type: ignore[index]
    for cand, task, idx, pred, scores in conn.execute("SELECT candidate, task, idx, prediction, scores_json FROM"
                                                      " samples WHERE run_id = ?", (run_id,)):
        out[(cand, task, idx)] = (pred, scores)
    return out


def _run_ids(db: Path) -> list[str]:
    return [r[0] for r in sqlite3.connect(db).execute("SELECT id FROM runs ORDER BY created_at")]


def test_a_sweep_on_two_nodes_gives_the_local_executors_quality_one_job_per_node_at_a_time(cluster, cli, tmp_path):
    toys = [Toy("a", 2, 1.0), Toy("b", 5, 1.0, pad_bytes=50), Toy("c", 7, 1.0, wrong=1, pad_bytes=90)]
    args = ["run", *_models(tmp_path, toys, 8), *[a for t in write_tasks(tmp_path, 8) for a in ("-t", t)], "--quick",
            "--threads", "1"]
    cli(*args, check=True)
    proc = cli(*args, "--executor", "ray", "--address", cluster.address, check=True)
    local, remote = _run_ids(cli.db)
    assert _quality(cli.db, local) == _quality(cli.db, remote) and len(_quality(cli.db, local)) > 6
    rows = _jobs(cli.db, remote)
    assert len(rows) == 6 and all(r["state"] == "done" and r["attempts"] == 1 for r in rows)
    nodes = {r["node"] for r in rows}
    assert len(nodes) == 2 and not any(n.startswith("local:") for n in nodes)  # both nodes worked
    assert all(json.loads(r["hardware_json"])["cpu_model"] and r["hardware_id"] for r in rows)
    for node in nodes:  # the one-slot rule: on a node, each job starts after the one before ended
        spans = sorted((a["started_at"], a["finished_at"]) for r in rows for a in json.loads(r["attempts_json"])
                       if a["node"] == node)
        assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:], strict=False)), spans
    assert "a" in proc.stdout and "capitals" in proc.stdout
    run = sqlite3.connect(cli.db).execute("SELECT executor_json FROM runs WHERE id = ?", (remote,)).fetchone()[0]
    assert json.loads(run) == {"executor": "ray", "address": cluster.address, "retries": 2, "job_timeout_s": None}


def test_a_killed_worker_and_a_job_over_time_are_retried_on_the_other_node_then_failed(cluster, cli, tmp_path):
    toys = [Toy("ok", 3, 1.0), Toy("crashy", 3, 1.0, pad_bytes=10, options=(("crash", "generate"),)),
            Toy("slow", 3, 1500.0, pad_bytes=20)]
    proc = cli("run", _spec(tmp_path, toys, 6), "--executor", "ray", "--address", cluster.address, "--retries", "1",
               "--job-timeout-s", "10")
    assert proc.returncode == 0, proc.stderr
    rows = {r["candidate"]: r for r in _jobs(cli.db)}
    assert rows["ok"]["state"] == "done" and rows["ok"]["attempts"] == 1
    for name, why in (("crashy", "worker killed by SIGKILL"), ("slow", "over its time limit of 10 s")):
        row = rows[name]
        assert row["state"] == "failed" and row["attempts"] == 2, dict(row)
        assert why in row["error"] and "(attempt 2 of 2)" in row["error"]
        first, second = json.loads(row["attempts_json"])
        assert first["node"] != second["node"] and why in first["outcome"]  # tried again on the other node
    assert "trying again on another node (attempt 2 of 2)" in proc.stderr
    errors = dict(sqlite3.connect(cli.db).execute("SELECT candidate, error FROM task_results WHERE status = 'error'"))
    assert set(errors) == {"crashy", "slow"}


def test_a_driver_killed_with_sigkill_loses_no_result_and_resume_continues(cluster, cli, tmp_path):
    toys = [Toy(f"k{i}", i + 1, 20.0, pad_bytes=i) for i in range(3)]
    args = [sys.executable, "-m", "smallfit", "run", *_models(tmp_path, toys, 6), "-t", write_tasks(tmp_path, 6)[0],
            "--quick", "--threads", "1", "--executor", "ray", "--address", cluster.address]
    proc = subprocess.Popen(args, env=cli.env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, done = time.time() + 120, 0
    while time.time() < deadline and proc.poll() is None:
        try:
            done = sqlite3.connect(cli.db).execute("SELECT COUNT(*) FROM task_results WHERE status = 'done'"
                                                   ).fetchone()[0]
        except sqlite3.OperationalError:
            done = 0
        if done >= 1:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = dict(sqlite3.connect(cli.db).execute("SELECT candidate, finished_at FROM task_results WHERE status = "
                                                 "'done'").fetchall())
    assert 1 <= len(first) < 3
    resumed = cli("run", "--resume", check=True)  # the run's own executor and address, from the store
    assert "already stored, not redone" in resumed.stderr
    after = dict(sqlite3.connect(cli.db).execute("SELECT candidate, finished_at FROM task_results WHERE status = "
                                                 "'done'").fetchall())
    assert len(after) == 3 and all(after[c] == t for c, t in first.items())  # finished work kept as it was
    assert all(r["state"] == "done" for r in _jobs(cli.db))


def test_bad_cluster_input_is_one_line_and_records_nothing(cluster, cli, tmp_path):
    model = write_model(tmp_path, Toy("m", 2, 1.0), 4)
    task = write_tasks(tmp_path, 4)[0]
    proc = cli("run", "-m", str(model), "-t", task, "--executor", "ray", "--address", "127.0.0.1:1")
    assert proc.returncode == 2 and "no Ray cluster answers at 127.0.0.1:1" in proc.stderr
    spec = tmp_path / "spec.toml"
    spec.write_text(f'tasks = ["{task}"]\n[[candidates]]\nmodel = "{model}"\nname = "gpu-one"\nhardware = "gpu"\n')
    proc = cli("run", str(spec), "--executor", "ray", "--address", cluster.address)
    assert proc.returncode == 2 and "candidate gpu-one asks for hardware 'gpu' but no node" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not sqlite3.connect(cli.db).execute("SELECT * FROM runs").fetchall()


def test_a_model_reaches_a_node_by_content_hash_once_and_a_wrong_copy_is_refused(cluster, tmp_path):
    from smallfit.executors.ray_node import bundle, materialize
    from smallfit.models import weights_sha256

    model = write_model(tmp_path, Toy("shipped", 2, 1.0), 4)
    sha = weights_sha256(model)
    elsewhere = f"/nonexistent/{model.name}"  # a path no node has: the node must use the driver's copy
    ray.init(address=cluster.address)
    try:
        fetch = ray.remote(materialize).options(num_cpus=0)
        path = ray.get(fetch.remote(elsewhere, sha, [ray.put(bundle(str(model)))]))
        assert Path(path).read_bytes() == model.read_bytes() and sha in path
        assert ray.get(fetch.remote(elsewhere, sha, [])) == path  # in the node's cache: not sent again
        (tmp_path / "other").mkdir()
        other = write_model(tmp_path / "other", Toy("shipped", 3, 2.0), 4)  # same name, other content
        with pytest.raises(ray.exceptions.RayTaskError, match="fails its SHA-256 check"):
            ray.get(fetch.remote(elsewhere, weights_sha256(other), [ray.put(bundle(str(model)))]))
    finally:
        ray.shutdown()


def test_two_hardware_classes_each_run_every_candidate_and_are_never_mixed(cluster, cli, tmp_path):
    """A third node whose fingerprint differs (it reports fewer CPU features, as a machine with an
    older CPU would): each candidate runs once per class, and verdicts, frontiers and the smallest
    passing candidate stay within a class; compare follows one model across the two."""
    before = os.environ.get("SMALLFIT_CPU_FEATURES")
    os.environ["SMALLFIT_CPU_FEATURES"] = "x86_64:sse4_1"  # the new node's processes inherit it
    try:
        other = cluster.add_node(num_cpus=1, resources={"smallfit_slot": 1})
    finally:
        if before is None:
            del os.environ["SMALLFIT_CPU_FEATURES"]
        else:
            os.environ["SMALLFIT_CPU_FEATURES"] = before
    cluster.wait_for_nodes()
    try:
        toys = [Toy("a", 2, 1.0), Toy("b", 5, 1.0, pad_bytes=50)]
        proc = cli("run", *_models(tmp_path, toys, 6), "-t", write_tasks(tmp_path, 6)[0], "--quick", "--threads", "1",
                   "--budget", "acc>=0.01", "--executor", "ray", "--address", cluster.address, check=True)
    finally:
        cluster.remove_node(other)
    rows = _jobs(cli.db)
    classes = {r["hardware_id"] for r in rows}
    assert len(classes) == 2 and len(rows) == 4
    for r in rows:  # a@CLASS ran on a node of that class
        assert r["state"] == "done" and r["candidate"].split("@")[1] == r["hardware_id"][:6]
    assert [line for line in proc.stdout.splitlines() if line.startswith("On hardware")] and \
        "Smallest candidate that passes" not in proc.stdout
    assert sum(line.startswith("Hardware ") for line in proc.stdout.splitlines()) == 2
    frontiers = cli("pareto", "--x", "model_size_bytes", check=True).stdout
    assert all(f"words on {hw}" in frontiers for hw in classes)
    exported = json.loads(cli("results", "--format", "json", check=True).stdout)
    assert {e["hardware_id"] for e in exported} == classes and all(e["node"] for e in exported)
    names = sorted({r["candidate"] for r in rows if r["candidate"].startswith("a@")})
    run_id = rows[0]["run_id"]
    across = cli("compare", run_id, run_id, "--candidate-a", names[0], "--candidate-b", names[1], check=True).stdout
    assert f"{names[0]} → {names[1]}" in across and "acc" in across


def test_a_node_with_another_smallfit_version_is_named_before_anything_runs(cluster, cli, tmp_path):
    """A real version skew: a third node whose Python finds another smallfit distribution first."""
    site = tmp_path / "site"
    (site / "smallfit-0.0.1.dist-info").mkdir(parents=True)
    (site / "smallfit-0.0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: smallfit\n"
                                                                "Version: 0.0.1\n")
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), *([before] if before else [])])
    try:
        skewed = cluster.add_node(num_cpus=1, resources={"smallfit_slot": 1})
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before
    cluster.wait_for_nodes()
    try:
        proc = cli("run", "-m", str(write_model(tmp_path, Toy("m", 2, 1.0), 4)), "-t", write_tasks(tmp_path, 4)[0],
                   "--executor", "ray", "--address", cluster.address)
    finally:
        cluster.remove_node(skewed)
    from smallfit import __version__

    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: node "), line
    assert f"/{skewed.node_id[:12]} runs smallfit 0.0.1 where the driver runs smallfit {__version__}: install the " \
           "same smallfit, Ray and Python on every node" in line
    assert not sqlite3.connect(cli.db).execute("SELECT * FROM runs").fetchall()


def test_a_node_killed_mid_job_has_its_job_retried_on_another_and_the_results_are_complete(cluster, cli, tmp_path):
    """Last of the toy tests: it leaves the cluster with its head node only."""
    (victim,) = cluster.worker_nodes
    toys = [Toy(f"t{i}", i + 1, 40.0, pad_bytes=i) for i in range(3)]
    args = [sys.executable, "-m", "smallfit", "run", *_models(tmp_path, toys, 6), "-t", write_tasks(tmp_path, 6)[0],
            "--quick", "--threads", "1", "--executor", "ray", "--address", cluster.address]
    proc = subprocess.Popen(args, env=cli.env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    prefix, killed, deadline = victim.node_id[:12], None, time.time() + 120
    while killed is None and time.time() < deadline and proc.poll() is None:
        try:
            running = [r for r in _jobs(cli.db) if r["state"] == "running" and r["node"].endswith(prefix)]
        except (sqlite3.OperationalError, TypeError):  # not created yet
            running = []
        if running:
            killed = running[0]["candidate"]
            cluster.remove_node(victim, allow_graceful=False)  # the node's raylet and its workers, killed
        time.sleep(0.05)
    out, err = proc.communicate(timeout=180)
    assert killed is not None, "no job ran on the third node"
    assert proc.returncode == 0, err
    rows = {r["candidate"]: r for r in _jobs(cli.db)}
    assert all(r["state"] == "done" for r in rows.values())  # a complete result set
    first, *later = json.loads(rows[killed]["attempts_json"])
    assert first["node"].endswith(prefix) and later and not later[-1]["node"].endswith(prefix)
    assert "lost the job" in first["outcome"] or "worker" in first["outcome"]
    assert len(sqlite3.connect(cli.db).execute("SELECT * FROM task_results WHERE status = 'done'").fetchall()) == 3


@pytest.mark.models
@needs_models
def test_a_bundled_model_gives_the_same_quality_on_the_cluster_as_here(cluster, cli):
    args = ["run", "-m", "smollm2-135m", "-t", "quartz", "--limit", "8", "--quick", "--threads", "1"]
    cli(*args, check=True)
    cli(*args, "--executor", "ray", "--address", cluster.address, check=True)
    local, remote = _run_ids(cli.db)
    assert _quality(cli.db, local) == _quality(cli.db, remote)
    assert all(r["state"] == "done" for r in _jobs(cli.db, remote))
