"""Bad input: one line naming the problem and the fix, exit code 2, no traceback, nothing lost."""

import hashlib
import subprocess
import sys

import pytest

from smallfit.store import Store


def _assert_one_line_error(proc, fragment):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert fragment in lines[0]


@pytest.mark.parametrize("args, fragment", [
    (["--model", "no-such-model"], "unknown model reference 'no-such-model'"),
    (["--model", "missing/model.gguf"], "model file not found: missing/model.gguf"),
    (["--budget", "acc=>0.4"], "malformed budget check 'acc=>0.4'"),
    (["--budget", "accuracy>=0.4"], "unknown metric 'accuracy'"),
    (["--task", "quartz", "--budget", "bits_per_byte<=1"], "no task of this run reports"),
    (["--budget", "acc>=40"], "acc is a proportion; did you mean acc>=0.40?"),
    (["--budget", "latency_s_p95<=300"], "did you mean latency_s_p95<=300ms?"),
    (["--task", "nope"], "unknown task 'nope'"),
    (["--limit", "0"], "--limit must be at least 1"),
    (["--resume"], "no unfinished run"),
])
def test_bad_run_input(cli, args, fragment):
    _assert_one_line_error(cli("run", *args), fragment)


def test_bad_db_files(cli, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database " * 100)
    before = hashlib.sha256(notes.read_bytes()).hexdigest()
    _assert_one_line_error(cli("run", "--db", str(notes)), "not a usable SQLite database")
    _assert_one_line_error(cli("results", "--db", str(notes)), "not a usable SQLite database")
    assert hashlib.sha256(notes.read_bytes()).hexdigest() == before
    _assert_one_line_error(cli("run", "--db", str(tmp_path)), "is a directory")
    _assert_one_line_error(cli("results", "--db", str(tmp_path / "none.db")), "no results database")


def test_bad_input_loses_nothing_already_stored(cli):
    store = Store.open(cli.db)
    run_id = store.create_run('{"candidates": [{"model": "smollm2-135m"}], "tasks": ["quartz"]}', {}, {}, 1, {})
    store.close()
    _assert_one_line_error(cli("run", "--model", "nope"), "unknown model reference")
    _assert_one_line_error(cli("run", "--budget", "acc>>1"), "malformed budget")
    _assert_one_line_error(cli("results", "zzz"), "no run matching 'zzz'")
    assert [r["id"] for r in Store.open(cli.db).runs()] == [run_id]


def test_spec_file_errors(cli, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('tasks = ["quartz"]\ncandidates = [{model = "smollm2-135m", colour = "red"}]\n')
    _assert_one_line_error(cli("run", str(bad)), "candidates.0.colour: Extra inputs are not permitted")
    bad.write_text("tasks = [\n")
    _assert_one_line_error(cli("run", str(bad)), "invalid TOML")
    _assert_one_line_error(cli("run", str(tmp_path / "absent.toml")), "spec file not found")


def test_import_smallfit_loads_no_ml_library():
    code = ("import sys, smallfit, smallfit.cli, smallfit.runner, smallfit.tasks; "
            "heavy = {'llama_cpp', 'numpy', 'torch', 'transformers', 'onnxruntime'} & set(sys.modules); "
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_bad_task_file_data_is_exit_2_naming_file_line_and_field(cli, tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "ok", "label": "bug"}\n{"body": "x", "label": "bug"}\n')
    (tmp_path / "t.toml").write_text('kind = "classification"\ndata = "d.jsonl"\ntemplate = "{text}"\n'
                                     'labels = ["bug", "billing"]\nanswer_field = "label"\n')
    proc = cli("run", "--model", "smollm2-135m", "--task", str(tmp_path / "t.toml"))
    _assert_one_line_error(proc, "d.jsonl:2: the template names field {text}")
    assert not cli.db.exists() or not Store.open(cli.db).runs()  # nothing was started


@pytest.mark.parametrize("command", ["", "run", "runs", "results", "tasks", "models", "metrics", "pareto", "report",
                                     "card", "compare", "export"])
def test_every_help_page_renders(cli, command):
    # rich markup in help texts (a stray [/...]) would crash the help page itself
    proc = cli(*([command] if command else []), "--help")
    assert proc.returncode == 0 and "Usage" in proc.stdout, proc.stderr[-500:]


def test_models_lists_every_alias_and_the_other_references(cli):
    proc = cli("models", check=True)
    for alias in ("smollm2-135m", "gemma3-270m", "minilm-l6", "minilm-l6-int8"):
        assert alias in proc.stdout
    assert "MODEL@BACKEND" in proc.stdout
