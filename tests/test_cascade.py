"""Cascade replay maths against hand-computed cases, and ``smallfit cascade`` on real toy runs."""

import itertools
import shutil

import numpy as np
import pytest

from smallfit.cascade import curves
from smallfit.cascade.choose import Bounds, bounds, choose, parse
from smallfit.cascade.replay import Arrays, all_thresholds, replay
from smallfit.errors import SmallfitError
from tests.conftest import needs_models
from tests.test_report_html import CHROMIUM, _chromium
from tests.toy_runs import REPO, Toy, make_run

# Four examples: the small model gets 0 and 2 right, the large one 0, 1 and 3; the small one's
# signal is high where it is right. Seconds: small 1 each; large 10, 20, 30, 40.
SMALL = np.array([1.0, 0.0, 1.0, 0.0])
LARGE = np.array([1.0, 1.0, 0.0, 1.0])
SIGNAL = np.array([0.9, 0.2, 0.8, 0.4])
ARRAYS = Arrays([SMALL, LARGE], [SIGNAL], [np.ones(4), np.array([10.0, 20.0, 30.0, 40.0])])


def test_replay_by_hand():
    th = all_thresholds(SIGNAL)
    assert th.tolist() == [0.2, 0.4, 0.8, 0.9, np.inf]
    f = replay(ARRAYS, th)
    assert f.deferred_share.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert f.quality.tolist() == [0.5, 0.75, 1.0, 0.75, 0.75]
    # below 0.8: examples 1 and 3 deferred, per-request seconds 1, 21, 1, 41 (a sum per request)
    assert f.seconds_per_request[2] == 16.0
    assert f.latency_s[2] == pytest.approx(11.0)  # sorted 1, 1, 21, 41: rank 1.5
    assert f.latency_s_p95[2] == pytest.approx(38.0)  # rank 2.85: 21 + 0.85 * 20
    assert f.latency_s_p95[4] == pytest.approx(1 + 38.5)  # all deferred: 11, 21, 31, 41 -> 39.5


def test_chain_of_three_by_hand():
    mid = np.array([0.0, 1.0, 1.0, 0.0])
    mid_signal = np.array([0.5, 0.9, 0.1, 0.3])
    a = Arrays([SMALL, mid, LARGE], [SIGNAL, mid_signal], [np.ones(4), np.full(4, 5.0), np.full(4, 50.0)])
    # stage 1 passes on below 0.5 (examples 1 and 3); stage 2 passes on below 0.5 (example 3 only)
    f = replay(a, np.array([[0.5, 0.5]]))
    assert f.quality[0] == 1.0 and f.deferred_share[0] == 0.5
    assert f.seconds_per_request[0] == pytest.approx((1 + 6 + 1 + 56) / 4)


def _observed(values):
    return float(values[0])


def test_apgr_cpt_and_oracle_by_hand():
    w = np.ones((1, 4))
    c = curves.curve(SMALL, LARGE, SIGNAL, w)
    assert c.share[0].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    # AUC = 0.25 * (0.625 + 0.875 + 0.875 + 0.75) = 0.78125; (0.78125 - 0.5) / (0.75 - 0.5)
    assert _observed(curves.apgr(c)) == pytest.approx(1.125)
    assert _observed(curves.cpt(c, 0.5)) == pytest.approx(0.125)  # 0.625 reached a half-step in
    assert _observed(curves.cpt(c, 0.8)) == pytest.approx(0.2)  # 0.7: 0.8 of the first step
    oracle = curves.oracle_curve(SMALL, LARGE, w)
    assert oracle.share[0].tolist() == [0.0, 0.5, 0.75, 1.0]  # the two gains tie: one point
    assert oracle.quality[0].tolist() == [0.5, 1.0, 1.0, 0.75]
    assert _observed(curves.apgr(oracle)) == pytest.approx(1.375)


def test_a_random_router_recovers_half_the_gap_on_average():
    """Over every order of the examples (a signal that knows nothing), the mean APGR is exactly
    0.5 and the mean curve is the straight line between the two models."""
    w = np.ones((1, 4))
    apgrs, curves_q = [], []
    for order in itertools.permutations(range(4)):
        c = curves.curve(SMALL, LARGE, np.array(order, dtype=float), w)
        apgrs.append(_observed(curves.apgr(c)))
        curves_q.append(c.quality[0])
    assert np.mean(apgrs) == pytest.approx(0.5)
    assert np.mean(curves_q, axis=0) == pytest.approx([0.5, 0.5625, 0.625, 0.6875, 0.75])


def test_calibration_by_hand():
    w = np.ones((1, 4))
    conf = curves.confidence("prob", SIGNAL)
    assert _observed(curves.brier(conf, SMALL, w)) == pytest.approx(0.0625)  # (.01 + .04 + .04 + .16) / 4
    assert _observed(curves.ece(conf, SMALL, w)) == pytest.approx(0.225)  # (.1 + .2 + .2 + .4) / 4, one per bin
    assert curves.confidence("logprob_p10", np.array([np.log(0.5)]))[0] == pytest.approx(0.5)


def test_bootstrap_rows_are_paired_resamples():
    w = curves.resample_weights(4, resamples=50, seed=3)
    assert w[0].tolist() == [1, 1, 1, 1] and (w.sum(axis=1) == 4).all()
    est = curves.estimate(curves.apgr(curves.curve(SMALL, LARGE, SIGNAL, w)))
    assert est.value == pytest.approx(1.125)  # intervals may be None: resamples with no gap leave it undefined


def test_budget_choice_by_hand():
    checks = parse("acc>=0.7", "acc", "t")
    b = Bounds({"acc": np.array([0.5, 0.75, 1.0])}, {"acc": np.array([0.4, 0.72, 0.6])},
               {"acc": np.array([0.6, 0.8, 1.0])})
    pick = choose(checks, b, cost=np.array([1.0, 2.0, 3.0]), quality=np.array([0.5, 0.75, 1.0]))
    assert (pick.row, pick.met, pick.candidates) == (1, True, 1)  # row 2's interval reaches below 0.7
    pick = choose(parse("acc>=0.9", "acc", "t"), b, np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.75, 1.0]))
    assert (pick.row, pick.met) == (1, False)  # none: the least miss, a low end of 0.72 against 0.9
    real = bounds(ARRAYS, np.array([0.2, 0.8]), "acc", None, {"acc", "latency_s_p95"})
    assert real.value["acc"].tolist() == [0.5, 1.0]
    assert np.isinf(real.high["latency_s_p95"]).all()  # four requests cannot bound a p95 from above
    with pytest.raises(SmallfitError, match="cannot check ttft_s"):
        parse("ttft_s<=1", "acc", "t")


@pytest.fixture(scope="module")
def demo_db(demo_run, tmp_path_factory):
    db, run_id = demo_run
    copy = tmp_path_factory.mktemp("cascade") / "demo.db"
    shutil.copy(db, copy)
    return copy, run_id


def test_cascade_command_on_a_toy_run(cli, demo_db, tmp_path):
    db, run_id = demo_db
    proc = cli("cascade", run_id, "--db", str(db), "--models", "tiny,big", "--task", "words",
               "--budget", "acc>=0.6", "--html", str(tmp_path / "c.html"), check=True)
    out = proc.stdout
    assert "tiny alone" in out and "big alone" in out and "(chosen)" in out
    assert "APGR" in out and "oracle" in out and "random router" in out and "Deferral curve" in out
    assert "20 matched examples" in out and "on 10 (calibration)" in out
    page = (tmp_path / "c.html").read_text()
    assert page.count("<svg") >= 2 and "Cascade: tiny → big" in page and "deferral curve on words" in page
    chain = cli("cascade", run_id, "--db", str(db), "--models", "tiny,mid,big", "--task", "words",
                "--threshold", "0.9,0.9", check=True).stdout
    assert "tiny → mid → big" in chain and "cascade, defer when" in chain and "prob<0.9" in chain
    chosen = cli("cascade", run_id, "--db", str(db), "--models", "tiny,mid,big", "--task", "words",
                 "--budget", "acc>=0.5", check=True).stdout
    assert "(chosen)" in chosen and "Budget acc>=0.5" in chosen
    need = cli("cascade", run_id, "--db", str(db), "--models", "tiny,mid,big", "--task", "words")
    assert need.returncode == 2 and "needs thresholds per stage" in need.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--models", "tiny,big", "--task", "capitals", "--signal", "prob"], "has no prob signal on capitals"),
    (["--models", "tiny,big", "--task", "words", "--threshold", "1.5"], "outside prob's range"),
    (["--models", "tiny,nope", "--task", "words"], "no candidate 'nope'"),
    (["--models", "tiny,big", "--task", "words", "--calibration-share", "0.8"], "each needs at least 10"),
    (["--models", "tiny,big", "--task", "words", "--cost", "minutes"], "unknown --cost"),
    (["--models", "tiny,big", "--task", "words", "--budget", "ttft_s<=1"], "cannot check ttft_s"),
    (["--models", "tiny,crashy", "--task", "capitals"], "crashy on task 'capitals'"),
])
def test_bad_input_is_one_line_exit_2(cli, demo_db, args, message):
    db, run_id = demo_db
    proc = cli("cascade", run_id, "--db", str(db), *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_runs_that_scored_other_examples_do_not_match(cli, demo_db, tmp_path):
    db, run_id = demo_db
    other = make_run(db, tmp_path, [Toy("other", knows=3, delay_ms=0.2)], n=12)
    proc = cli("cascade", run_id, other, "--db", str(db), "--models", "tiny,other", "--task", "words")
    assert proc.returncode == 2 and "did not score the same examples of words (12 shared of 20 and 12" in proc.stderr


def test_a_run_from_before_signals_says_so(cli, tmp_path):
    old = tmp_path / "old.db"
    shutil.copy(REPO / "tests" / "data" / "schema2.db", old)
    proc = cli("cascade", "--db", str(old), "--models", "mine,smollm2-135m", "--task", "quartz")
    assert proc.returncode == 2 and "made before smallfit stored them" in proc.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_cascade_report_in_headless_chromium(cli, demo_db, tmp_path):
    """The run's report with the cascade's section, loaded by real Chromium: both curves drawn
    (cascade, random router, oracle), the models alone and the chosen threshold marked."""
    db, run_id = demo_db
    page = tmp_path / "cascade.html"
    cli("cascade", run_id, "--db", str(db), "--models", "tiny,big", "--task", "words", "--budget", "acc>=0.6",
        "--html", str(page), check=True)
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count('class="series"') == 6 and dom.stdout.count('class="point mark"') == 6
    assert "chosen: prob&lt;" in dom.stdout and "tiny alone" in dom.stdout and "Uncaught" not in dom.stderr
    shot = tmp_path / "cascade.png"
    proc = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,2000", page.as_uri())
    assert proc.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_live_cascade_candidate_agrees_with_its_replay(cli, tmp_path):
    """``cascade:SMALL,LARGE@T`` runs both toy models in one worker, deferring live: every example
    gets the score the replay of the two models' stored examples gives it at the same threshold."""
    from smallfit.cascade.data import load
    from smallfit.cascade.replay import Arrays, per_request
    from smallfit.store import Store
    from tests.toy_runs import write_model, write_tasks

    words = write_tasks(tmp_path, 20)[0]
    tiny, big = write_model(tmp_path, Toy("tiny", 6, 0.2), 20), write_model(tmp_path, Toy("big", 16, 0.2), 20)
    live = f"cascade:{tiny},{big}@0.9"
    cli("run", "-m", str(tiny), "-m", str(big), "-m", live, "-t", words, "--quick", "--threads", "1", check=True)
    store = Store.open(cli.db)
    run_id = str(store.run()["id"])
    data = load(store, [run_id], ["tiny", "big", live], "words")
    small, large, cascade_stage = data.stages
    replayed = per_request(Arrays([small.quality, large.quality], [small.signals["prob"]],
                                  [small.latency_s, large.latency_s]), np.array([0.9]))
    assert (replayed.quality[0] == cascade_stage.quality).all()
    assert 0 < (small.signals["prob"] < 0.9).sum() < 20  # some deferred, some not: the test can tell
    assert cascade_stage.quality.mean() > small.quality.mean()
    cand = {c["name"]: c for c in store.candidates(run_id)}[live]
    assert cand["model_size_bytes"] == tiny.stat().st_size + big.stat().st_size and cand["model_sha256"]
    # the run's own report replays the live cascade's members at its threshold, beside it
    cli("report", "-o", str(tmp_path / "r.html"), check=True)
    page = (tmp_path / "r.html").read_text()
    assert "Cascade: tiny → big" in page and "at: prob&lt;0.9" in page and "deferral curve on words" in page


@pytest.mark.parametrize(("model", "message"), [
    ("cascade:{tiny},{tmp}/nope.toy@0.9", "cascade member"),
    ("cascade:{tiny}@0.9", "at least two models"),
    ("cascade:{tiny},{tiny}", "malformed cascade reference"),
    ("cascade:{tiny},{tiny}@0.5,0.5", "need 1 threshold"),
])
def test_bad_live_cascade_is_one_line_exit_2(cli, tmp_path, model, message):
    from tests.toy_runs import write_model, write_tasks

    words = write_tasks(tmp_path, 4)[0]
    tiny = write_model(tmp_path, Toy("tiny", 2, 0.2), 4)
    proc = cli("run", "-m", model.format(tiny=tiny, tmp=tmp_path), "-t", words, "--quick")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert _stored_runs(cli.db) == 0  # refused before anything was stored


def _stored_runs(db):
    import sqlite3

    return sqlite3.connect(db).execute("SELECT COUNT(*) FROM runs").fetchone()[0] if db.exists() else 0


@pytest.mark.models
@needs_models
def test_bundled_models_cascade_live_and_replayed(cli, tmp_path):
    """The real path: SmolLM2 and Gemma-3 through llama.cpp on the ticket classifier, the live
    cascade beside them; the replay prints its figures and gives every example the live score."""
    from smallfit.cascade.data import load
    from smallfit.cascade.replay import Arrays, per_request
    from smallfit.store import Store

    live = "cascade:smollm2-135m,gemma3-270m@0.9"
    cli("run", "-m", "smollm2-135m", "-m", "gemma3-270m", "-m", live, "-t", str(REPO / "examples" / "tickets.toml"),
        "--limit", "20", "--quick", check=True)
    out = cli("cascade", "--models", "smollm2-135m,gemma3-270m", "--budget", "acc>=0.5", check=True).stdout
    assert "APGR" in out and "gemma3-270m alone" in out and "(chosen)" in out
    store = Store.open(cli.db)
    data = load(store, [str(store.run()["id"])], ["smollm2-135m", "gemma3-270m", live], "tickets")
    small, large, cascade_stage = data.stages
    replayed = per_request(Arrays([small.quality, large.quality], [small.signals["prob"]],
                                  [small.latency_s, large.latency_s]), np.array([0.9]))
    assert (replayed.quality[0] == cascade_stage.quality).all()
