"""Bundles and the board on a real run of the bundled models: the speed bounds accept genuine
llama.cpp figures, and both models reach the board with intervals, frontier places and a tier."""

from __future__ import annotations

import pytest

from smallfit.board import ingest, rank
from smallfit.board.db import BoardDB
from smallfit.share.bundle import read
from tests.conftest import needs_models
from tests.test_run import _spec

pytestmark = [needs_models, pytest.mark.models]


def test_a_real_run_bundles_verifies_and_reaches_the_board(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("SMALLFIT_KEY", str(tmp_path / "key.pem"))
    cli("keys", "--generate", check=True)
    cli("run", str(_spec(tmp_path)), check=True)
    run_id = cli("results", "--format", "json", check=True).stdout.split('"run_id": "')[1].split('"')[0]
    cli("bundle", run_id, "-o", str(tmp_path / "run.zip"), check=True)
    checked = cli("verify-bundle", str(tmp_path / "run.zip"))
    assert checked.returncode == 0 and "checks out" in checked.stdout
    b = read(tmp_path / "run.zip")
    assert {c["model_sha256"] for c in b.manifest["candidates"]} == {
        c["model_sha256"] for c in b.manifest["config"]["candidates"]}
    board = BoardDB.open(tmp_path / "board.db")
    for r in b.manifest["results"]:
        board.add_task(r["task_hash"], r["task"], r["info"]["kind"], r["n_samples"])
    accepted, recomputed = ingest.check(board, (tmp_path / "run.zip").read_bytes())  # speed bounds included
    ingest.store(board, accepted, recomputed, 1 if board.add_token("t") else 0, (tmp_path / "run.zip").read_bytes())
    for summary in rank.boards(board):
        rows = rank.board(board, summary["task_hash"], summary["class_id"]).rows
        assert {r.candidate for r in rows} == {"smollm2-135m", "gemma3-270m"}
        assert all(r.quality_low is not None and r.place and r.tiers == [rank.SIGNED] for r in rows)
    board.close()
