"""Signed result bundles: keys, bundle, verify-bundle, and what a forged bundle looks like to them."""

from __future__ import annotations

import json
import os
import zipfile

import pytest

from smallfit.share import physics
from smallfit.share.bundle import MAX_BUNDLE_BYTES, read_bytes
from smallfit.share.verify import verify
from tests import bundles


@pytest.fixture
def keyed(cli, tmp_path, monkeypatch):
    """The cli fixture with a fresh signing key in SMALLFIT_KEY."""
    monkeypatch.setenv("SMALLFIT_KEY", str(tmp_path / "keys" / "signing-key.pem"))
    cli("keys", "--generate", check=True)
    return cli


@pytest.fixture
def made(keyed, demo_run, tmp_path):
    """A bundle of the demo run: its path."""
    db, run_id = demo_run
    path = tmp_path / "demo.zip"
    keyed("bundle", run_id, "-o", str(path), "--db", str(db), check=True)
    return path


def test_keys_are_private_shown_and_never_replaced(cli, tmp_path, monkeypatch):
    key = tmp_path / "k" / "key.pem"
    monkeypatch.setenv("SMALLFIT_KEY", str(key))
    missing = cli("keys")
    assert missing.returncode == 2 and "smallfit keys --generate" in missing.stderr
    made = cli("keys", "--generate", check=True)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    public = made.stdout.split("public key:")[1].split()[0]
    assert len(bytes.fromhex(public)) == 32
    assert public in cli("keys", check=True).stdout
    again = cli("keys", "--generate")
    assert again.returncode == 2 and "already exists" in again.stderr
    os.chmod(key, 0o644)
    loose = cli("keys")
    assert loose.returncode == 2 and "chmod 600" in loose.stderr


def test_bundle_of_a_run_checks_out_and_carries_everything(keyed, made, demo_run):
    result = keyed("verify-bundle", str(made))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "checks out" in result.stdout
    b = read_bytes(made.read_bytes())
    m = b.manifest
    assert m["smallfit_version"] and m["hardware"]["cpu_model"] and m["versions"]
    assert "hostname" not in m["hardware"]
    assert {c["name"] for c in m["candidates"]} == {"tiny", "mid", "slow", "big", "crashy"}
    assert all(len(c["model_sha256"]) == 64 for c in m["candidates"])
    # every stored example and request is in the bundle
    import sqlite3
    conn = sqlite3.connect(demo_run[0])
    assert len(b.samples) == conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    assert len(b.timings) == conn.execute("SELECT COUNT(*) FROM timings").fetchone()[0]
    # candidates that saw the same prompts share one task hash per task
    words = {r["task_hash"] for r in m["results"] if r["task"] == "words" and r["status"] == "done"}
    assert len(words) == 1 and m["config"]["tasks"]["words"] == list(words)
    v = verify(b)
    assert v.ok and v.recomputed > 100


def test_verify_refuses_a_changed_score(keyed, made, tmp_path):
    forged = bundles.change_score(bundles.entries(made))
    path = tmp_path / "forged.zip"
    path.write_bytes(bundles.pack(forged))
    result = keyed("verify-bundle", str(path))
    assert result.returncode == 1 and "signature does not match" in result.stdout
    # signed again by the forger's own key: the signature holds, the recomputed acc does not
    other = tmp_path / "other.pem"
    keyed("keys", "--generate", "--key", str(other), check=True)
    path.write_bytes(bundles.pack(bundles.resign(forged, other)))
    v = verify(read_bytes(path.read_bytes()))
    assert any("is stated as" in p and "acc" in p for p in v.problems), v.problems


def test_verify_refuses_a_changed_aggregate(keyed, made, tmp_path):
    other = tmp_path / "other.pem"
    keyed("keys", "--generate", "--key", str(other), check=True)
    forged = bundles.change_aggregate(bundles.entries(made))
    assert not verify(read_bytes(bundles.pack(forged))).ok
    v = verify(read_bytes(bundles.pack(bundles.resign(forged, other))))
    assert [p for p in v.problems if ": acc is stated as" in p], v.problems


@pytest.mark.parametrize("name", ["../evil.txt", "/etc/passwd", "rows/samples.jsonl"])
def test_an_entry_outside_the_four_is_refused(keyed, made, tmp_path, name):
    files = {**bundles.entries(made), name: b"x"}
    path = tmp_path / "odd.zip"
    path.write_bytes(bundles.pack(files))
    result = keyed("verify-bundle", str(path))
    assert result.returncode == 2 and "is not one of" in result.stderr


def test_a_decompression_bomb_and_an_oversized_file_are_refused(keyed, made, tmp_path):
    files = bundles.entries(made)
    bomb = tmp_path / "bomb.zip"
    bomb.write_bytes(bundles.pack({**files, "timings.jsonl": b"\n" * (50 * 2**20)}))
    assert bomb.stat().st_size < 1_000_000
    result = keyed("verify-bundle", str(bomb))
    assert result.returncode == 2 and "decompression bomb" in result.stderr
    big = tmp_path / "big.zip"
    big.write_bytes(bundles.pack(files, zipfile.ZIP_STORED) + os.urandom(MAX_BUNDLE_BYTES))
    result = keyed("verify-bundle", str(big))
    assert result.returncode == 2 and "limit" in result.stderr


def test_bad_input_is_one_line_and_exit_2(keyed, demo_run, tmp_path):
    db, _ = demo_run
    for args, words in [(("bundle", "nosuchrun", "-o", "x.zip", "--db", str(db)), "no run matching"),
                        (("verify-bundle", str(tmp_path / "missing.zip")), "cannot read"),
                        (("bundle", "x", "-o", "x.zip", "--db", str(db), "--key", str(tmp_path / "none.pem")),
                         "no signing key")]:
        result = keyed(*args)
        assert result.returncode == 2 and words in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    (tmp_path / "junk.zip").write_text("not a zip")
    junk = keyed("verify-bundle", str(tmp_path / "junk.zip"))
    assert junk.returncode == 2 and "not a smallfit bundle" in junk.stderr


def test_physics_bounds_by_bandwidth_and_prompt_length():
    # 100 MB of weights at 10 GB/s: the roofline is 100 tok/s, the bound 200 tok/s; a first token
    # reads the weights once at twice that bandwidth: at least 5 ms
    result = {"candidate": "m", "task": "t", "metrics": {"model_size_bytes": 100e6, "memory_bandwidth_bytes_s": 10e9,
                                                          "decode_tok_s": 150.0}}
    hw = {"usable_cpus": 2}
    ok = [{"ttft_s": 0.006, "n_prompt_tokens": 10}]
    assert physics.check_speed(result, ok, hw, "cpu") == []
    fast = {**result, "metrics": {**result["metrics"], "decode_tok_s": 801.6}}
    assert "above what 10.0 GB/s" in physics.check_speed(fast, ok, hw, "cpu")[0]
    assert "under 5.00 ms" in physics.check_speed(result, [{"ttft_s": 0.004, "n_prompt_tokens": 1}], hw, "cpu")[0]
    # prompt: 1e6 tokens x 2 x 25e6 parameters over 2 x 8e12 op/s: at least 3.125 s
    long = [{"ttft_s": 3.0, "n_prompt_tokens": 1_000_000}]
    assert physics.check_speed(result, [{"ttft_s": 3.2, "n_prompt_tokens": 1_000_000}], hw, "cpu") == []
    assert "too short for their prompt" in physics.check_speed(result, long, hw, "cpu")[0]
    # a faster machine (more bandwidth) makes the same 801.6 tok/s plausible: no fixed cap
    fast_hw = {**fast, "metrics": {**fast["metrics"], "memory_bandwidth_bytes_s": 50e9}}
    assert physics.check_speed(fast_hw, ok, hw, "cpu") == []
    # weights that fit in a cache are not bounded by memory bandwidth
    small = {**fast, "metrics": {**fast["metrics"], "model_size_bytes": 1e6}}
    assert physics.check_speed(small, [{"ttft_s": 1e-6, "n_prompt_tokens": 10}], hw, "cpu") == []


def test_bundle_bytes_do_not_depend_on_when_they_are_written(keyed, demo_run, tmp_path):
    db, run_id = demo_run
    a, b = tmp_path / "a.zip", tmp_path / "b.zip"
    keyed("bundle", run_id, "-o", str(a), "--db", str(db), check=True)
    keyed("bundle", run_id, "-o", str(b), "--db", str(db), check=True)
    assert a.read_bytes() == b.read_bytes()
    assert json.loads(bundles.entries(a)["manifest.json"])["run_id"] == run_id


def test_a_run_whose_figures_this_smallfit_computes_otherwise_is_not_bundled(keyed, tmp_path):
    """An old database's run (figures stored under older rules) would not verify: refused, no file."""
    import shutil

    from tests.conftest import REPO

    db = tmp_path / "old.db"
    shutil.copy(REPO / "tests" / "data" / "schema2.db", db)
    result = keyed("bundle", "2", "-o", str(tmp_path / "old.zip"), "--db", str(db))
    assert result.returncode == 2 and "cannot be bundled" in result.stderr and "run it again" in result.stderr
    assert not (tmp_path / "old.zip").exists()
