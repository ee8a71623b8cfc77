"""`smallfit run` end to end: real models through real llama.cpp, a real SQLite file, real processes."""

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

pytestmark = [needs_models, pytest.mark.models]

REQUIRED = ["ttft_s", "ttft_s_p95", "tpot_s", "tpot_s_p95", "latency_s", "latency_s_p95", "decode_tok_s",
            "prefill_tok_s", "peak_rss_bytes", "model_size_bytes", "load_s", "itl_s", "itl_s_p99", "energy_j",
            "energy_j_per_token", "power_w", "cost_usd_per_mtok_out", "cost_usd_per_mtok_in",
            "memory_bandwidth_bytes_s", "decode_roofline_pct", "latency_s_p95_ci_low"]
QUALITY = {"gsm8k-bpb": ["bits_per_byte", "word_perplexity"], "quartz": ["acc", "acc_norm"],
           "largest-country": ["exact_match"]}


def _spec(tmp_path: Path, limit: int = 2, budget: str = '["bits_per_byte<=1.2", "latency_s_p95<=30"]') -> Path:
    spec = tmp_path / "spec.toml"
    spec.write_text(f"""
tasks = ["gsm8k-bpb", "quartz", "largest-country"]
budget = {budget}
limit = {limit}
threads = 1
latency_prompts = 2
latency_max_tokens = 8
quick = true

[[candidates]]
model = "smollm2-135m"

[[candidates]]
model = "gemma3-270m"
""")
    return spec


def test_run_prints_table_and_verdict_and_exports_json(cli, tmp_path):
    proc = cli("run", str(_spec(tmp_path)), check=True)
    assert "smollm2-135m" in proc.stdout and "gemma3-270m" in proc.stdout
    assert "Budget: bits_per_byte<=1.2" in proc.stdout
    assert "Smallest candidate that passes" in proc.stdout or "No candidate passes" in proc.stdout

    rows = json.loads(cli("results", "--format", "json", check=True).stdout)
    assert [(r["candidate"], r["task"]) for r in rows] == [
        (c, t) for c in ("smollm2-135m", "gemma3-270m") for t in ("gsm8k-bpb", "quartz", "largest-country")]
    for row in rows:
        # 2 examples give wide intervals: a verdict may now be 'uncertain' (pass/fail need the whole interval)
        assert row["error"] is None and row["verdict"] in ("pass", "fail", "uncertain")
        for check in row["checks"]:
            assert check["outcome"] in ("pass", "fail", "uncertain") and check["n"] is not None
        for name in REQUIRED + QUALITY[row["task"]]:
            assert row["metrics"][name] is not None, (row["candidate"], row["task"], name)
        for name in QUALITY[row["task"]]:
            assert row["metrics"][f"{name}_stderr"] is not None
        m = row["metrics"]
        assert m["ttft_s"] <= m["latency_s_p95"] and m["tpot_s"] > 0 and m["peak_rss_bytes"] > 50e6
    sizes = {r["candidate"]: r["metrics"]["model_size_bytes"] for r in rows}
    assert sizes["smollm2-135m"] < sizes["gemma3-270m"]

    # the reports of a real run, from the store only
    cli("report", "-o", str(tmp_path / "report.html"), check=True)
    page = (tmp_path / "report.html").read_text()
    assert page.count("<svg") == 6 and "gemma3-270m" in page and "llama-cpp-python" in page
    card = cli("card", rows[0]["run_id"], "gemma3-270m", check=True).stdout
    assert "model-index:" in card and '"bits_per_byte"' in card

    conn = sqlite3.connect(cli.db)
    run = conn.execute("SELECT status, hardware_json, versions_json, threads, load_before_json, load_after_json"
                       " FROM runs").fetchone()
    assert run[0] == "finished" and run[3] == 1
    assert json.loads(run[1])["cpu_model"] and json.loads(run[2])["llama-cpp-python"]
    assert json.loads(run[4])["loadavg"] and json.loads(run[5])["loadavg"]
    # quick timing rule: at least 3 timed generation requests and 1 s per candidate x task
    per_task = conn.execute("SELECT candidate, task, COUNT(*), SUM(latency_s) FROM timings WHERE ttft_s IS NOT NULL"
                            " GROUP BY candidate, task").fetchall()
    assert len(per_task) == 6 and all(n >= 3 and total >= 1.0 for _, _, n, total in per_task)
    info = json.loads(conn.execute("SELECT info_json FROM task_results WHERE task = 'quartz'").fetchone()[0])
    assert info["labels"]["energy_j"].startswith(("estimated", "measured"))
    contention = info["contention"]
    assert info["noisy"] is contention["noisy"] and isinstance(contention["others_busy_cpus"], float)
    assert (info["timing_min_requests"], info["timing_min_s"]) == (3, 1.0)
    info = json.loads(conn.execute("SELECT backend_info_json FROM candidates LIMIT 1").fetchone()[0])
    assert info["threads"] == 1 and info["context_size"] == 2048 and info["batch_size"] == 512
    assert "finished" in cli("runs", check=True).stdout


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def _has_loaded(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _start(cli, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "smallfit", "run", *args], env=cli.env, cwd=Path(cli.db).parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _done_rows(db: Path) -> dict[tuple[str, str], float]:
    if not db.exists():
        return {}
    with sqlite3.connect(db) as conn:
        try:
            rows = conn.execute("SELECT candidate, task, finished_at FROM task_results WHERE status = 'done'")
            return {(c, t): f for c, t, f in rows}
        except sqlite3.OperationalError:
            return {}


def test_killed_run_resumes_without_redoing_finished_work(cli, tmp_path):
    proc = _start(cli, str(_spec(tmp_path, limit=4)))
    deadline = time.time() + 300
    while not _done_rows(cli.db) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    workers = _children(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up, like a power cut
    proc.wait()
    before = _done_rows(cli.db)
    assert 1 <= len(before) < 6, before
    time.sleep(2)
    assert not any(_alive(w) for w in workers), "a worker outlived its runner"

    status = sqlite3.connect(cli.db).execute("SELECT status FROM runs").fetchone()[0]
    assert status == "running"  # killed: never got to say otherwise
    assert "stopped (killed)" in cli("runs", check=True).stdout
    resumed = cli("run", "--resume", check=True)
    after = _done_rows(cli.db)
    assert len(after) == 6
    for key, finished_at in before.items():
        assert after[key] == finished_at, f"{key} was redone"
    assert sqlite3.connect(cli.db).execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
    assert "smollm2-135m" in resumed.stdout and "gemma3-270m" in resumed.stdout


def test_a_crashed_candidate_is_recorded_and_the_run_goes_on(cli, tmp_path):
    proc = _start(cli, str(_spec(tmp_path, limit=3)))
    deadline = time.time() + 120
    worker = None
    # the first candidate's worker, killed once it has llama.cpp loaded: mid-way through its tasks
    # (their timing passes alone take 3 s), however fast the machine
    while worker is None and time.time() < deadline and proc.poll() is None:
        worker = next((k for k in _children(proc.pid) if _has_loaded(k, "libllama")), None)
        time.sleep(0.02)
    assert worker is not None, "no worker loaded llama.cpp"
    os.kill(worker, signal.SIGKILL)  # what the kernel's out-of-memory killer does
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    rows = json.loads(cli("results", "--format", "json", check=True).stdout)
    first = [r for r in rows if r["candidate"] == "smollm2-135m"]
    second = [r for r in rows if r["candidate"] == "gemma3-270m"]
    assert any("SIGKILL" in (r["error"] or "") for r in first)
    assert all(r["verdict"] == "error" for r in first)
    assert all(r["error"] is None for r in second)


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(cli, tmp_path):
    proc = _start(cli, str(_spec(tmp_path, limit=4)))
    deadline = time.time() + 300
    while not _done_rows(cli.db) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends to the foreground group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err and "smallfit run --resume" in err
    conn = sqlite3.connect(cli.db)
    assert conn.execute("SELECT status FROM runs").fetchone()[0] == "interrupted"
    assert conn.execute("SELECT COUNT(*) FROM candidates WHERE status = 'running'").fetchone()[0] == 0
    assert len(_done_rows(cli.db)) >= 1


def test_user_task_file_end_to_end(cli):
    repo = Path(__file__).resolve().parents[1]
    cli("run", "--model", "smollm2-135m", "--task", str(repo / "examples" / "tickets.toml"),
        "--task", str(repo / "examples" / "capitals.toml"), "--sample", "4", "--seed", "3",
        "--budget", "tickets:acc>=0.1", check=True)
    rows = {r["task"]: r for r in json.loads(cli("results", "--format", "json", check=True).stdout)}
    assert set(rows) == {"tickets", "capitals"}
    tickets, capitals = rows["tickets"]["metrics"], rows["capitals"]["metrics"]
    assert tickets["acc_ci_low"] <= tickets["acc"] <= tickets["acc_ci_high"]
    assert capitals["f1"] is not None and capitals["exact_match_stderr"] is not None
    assert tickets["ttft_s"] is not None  # the latency pass ran on the tickets' own prompts
    assert rows["tickets"]["checks"][0]["check"] == "tickets:acc>=0.1"
    conn = sqlite3.connect(cli.db)
    n = conn.execute("SELECT COUNT(*) FROM samples WHERE task = 'tickets'").fetchone()[0]
    info = json.loads(conn.execute("SELECT info_json FROM task_results WHERE task = 'tickets'").fetchone()[0])
    assert n == 4 and info["sample"] == 4 and info["seed"] == 3


def test_chat_flag_wraps_prompts_in_the_models_template(cli):
    repo = Path(__file__).resolve().parents[1]
    cli("run", "-m", "smollm2-135m", "-t", str(repo / "examples" / "capitals.toml"), "--limit", "2", "--chat",
        check=True)
    conn = sqlite3.connect(cli.db)
    prompts = [p for (p,) in conn.execute("SELECT prompt FROM samples")]
    assert len(prompts) == 2 and all(p.startswith("<|im_start|>system") for p in prompts)
    info = json.loads(conn.execute("SELECT info_json FROM task_results").fetchone()[0])
    assert info["chat_template"] is True


def test_a_run_of_a_local_gguf_file_stays_readable_after_the_file_is_deleted(cli, tmp_path):
    import shutil

    from smallfit.models import ALIASES

    model = tmp_path / "mine.gguf"
    shutil.copy(ALIASES["smollm2-135m"].locate(), model)
    cli("run", "-m", str(model), "-t", "quartz", "--limit", "3", "--quick", "--threads", "1", check=True)
    stored = json.loads(sqlite3.connect(cli.db).execute("SELECT resolved_json FROM candidates").fetchone()[0])
    assert stored["location"] == str(model) and stored["format"] == "gguf" and len(stored["sha256"]) == 64
    model.unlink()
    run_id = json.loads(cli("results", "--format", "json", check=True).stdout)[0]["run_id"]
    assert "mine" in cli("results", check=True).stdout
    cli("report", "-o", str(tmp_path / "r.html"), check=True)
    assert "model-index" in cli("card", run_id, "mine", check=True).stdout
    cli("pareto", check=True)
    cli("export", "-o", str(tmp_path / "e.csv"), check=True)
    assert "mine" in cli("compare", run_id, run_id, check=True).stdout
