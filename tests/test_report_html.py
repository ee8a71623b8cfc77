"""The HTML report: rendered from the store only, self-contained, and checked in real headless Chromium."""

import re
import shutil
import subprocess

import pytest

from smallfit.report.html import render
from smallfit.results import collect
from smallfit.store import Store
from tests.fake_runs import FakeCandidate, FakeRun, build_run, demo_candidates

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _page(tmp_path, spec):
    store = Store.open(tmp_path / "r.db")
    return render(collect(store, build_run(store, spec)))


def test_report_has_every_section_and_nothing_from_the_network(tmp_path):
    html = _page(tmp_path, FakeRun(demo_candidates(), tasks=("quartz", "largest-country", "gsm8k-bpb"),
                                   budget=["acc>=0.5", "latency_s_p95<=1.0", "peak_rss_bytes<=1GB"]))
    for heading in ("Budget and verdict", "Pareto frontiers", "Trade-offs", "All figures", "Machine and conditions",
                    "Noise flags", "Definitions"):
        assert heading in html
    assert html.count("<svg") == 6  # quality against p95 latency and against peak memory, for 3 tasks
    assert "slow-360m (dominated)" in html and "uncertain" in html and "more examples would likely decide" in html
    assert "Test CPU @ 3.0GHz" in html and "llama-cpp-python" in html
    assert "<script" not in html and not re.search(r'(src|href)="', html) and "@import" not in html
    assert "https://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "decode_tok_s" in html and "Wilson" in html  # definitions and how intervals are made


def test_failed_candidate_and_no_budget_render_what_exists(tmp_path):
    cands = [FakeCandidate("ok", 100, 10**8, 20, 0.2), FakeCandidate("half", 200, 10**8, 30, 0.3, failed_task="quartz"),
             FakeCandidate("dead", 300, 10**8, 0, 0.1, broken=True)]
    html = _page(tmp_path, FakeRun(cands, budget=[]))
    assert "No budget declared" in html and "there is no verdict" in html
    assert "llama_decode returned -1" in html and "worker killed by SIGKILL" in html
    assert "dead not plotted: failed: worker killed" in html and "this candidate has no finished task" in html
    assert "<svg" in html


def test_report_command_and_unknown_run(cli, tmp_path):
    store = Store.open(cli.db)
    build_run(store, FakeRun(demo_candidates()))
    store.close()
    out = tmp_path / "r.html"
    cli("report", "-o", str(out), check=True)
    assert out.read_text().startswith("<!DOCTYPE html>")
    proc = cli("report", "nope", "-o", str(out))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "no run matching 'nope'" in proc.stderr


def _chromium(tmp_path, *args):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_in_headless_chromium(tmp_path):
    page = tmp_path / "report.html"
    page.write_text(_page(tmp_path, FakeRun(demo_candidates())), encoding="utf-8")
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<svg") == 4 and 'class="point dominated"' in dom.stdout
    assert "Uncaught" not in dom.stderr
    shot = tmp_path / "report.png"
    proc = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,3000", page.as_uri())
    assert proc.returncode == 0 and "Uncaught" not in proc.stderr
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a blank page is a few kB
