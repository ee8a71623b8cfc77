"""The HTML report: rendered from the store only, self-contained, and checked in real headless Chromium."""

import re
import shutil
import subprocess

import pytest

from smallfit.report.html import render
from smallfit.results import collect
from smallfit.store import Store
from tests.toy_runs import Toy, make_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _page(demo_run):
    db, run_id = demo_run
    return render(collect(Store.open(db), run_id))


def test_report_has_every_section_and_nothing_from_the_network(demo_run):
    html = _page(demo_run)
    for heading in ("Budget and verdict", "Pareto frontiers", "Trade-offs", "All figures", "Machine and conditions",
                    "Noise flags", "Definitions"):
        assert heading in html
    assert html.count("<svg") == 4  # quality against p95 latency and against peak memory, for 2 tasks
    assert "slow (not distinguishable)" in html and 'class="error-bar y"' in html
    assert "uncertain" in html and "more examples would decide it with 80% power" in html
    assert "worker killed by SIGKILL" in html and "smallfit-toy" in html
    assert "<script" not in html and not re.search(r'(src|href)="', html) and "@import" not in html
    assert "https://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "decode_tok_s" in html and "Clopper–Pearson" in html  # definitions and how intervals are made


def test_failed_candidate_and_no_budget_render_what_exists(tmp_path):
    toys = [Toy("ok", 5, 1.0), Toy("dead", 5, 1.0, options=(("fail", "load"),))]
    db = tmp_path / "r.db"
    html = render(collect(Store.open(db), make_run(db, tmp_path, toys, n=6)))
    assert "No budget declared" in html and "there is no verdict" in html
    assert "refused to load" in html
    assert "dead not plotted: failed: toy model" in html and "this candidate has no finished task" in html
    assert "<svg" in html


def test_report_command_and_unknown_run(cli, tmp_path, demo_run):
    shutil.copy(demo_run[0], cli.db)
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
def test_report_in_headless_chromium(tmp_path, demo_run):
    page = tmp_path / "report.html"
    page.write_text(_page(demo_run), encoding="utf-8")
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<svg") == 4 and 'class="point indistinct"' in dom.stdout
    assert "Uncaught" not in dom.stderr
    shot = tmp_path / "report.png"
    proc = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,3000", page.as_uri())
    assert proc.returncode == 0 and "Uncaught" not in proc.stderr
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a blank page is a few kB
