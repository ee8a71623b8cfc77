"""The model card of a real stored run: its model-index YAML parses and carries the results."""

import pytest
import yaml

from smallfit.errors import SmallfitError
from smallfit.report.card import model_card, to_yaml
from smallfit.report.table import fmt_bytes
from smallfit.results import collect
from smallfit.store import Store


def _front_matter(card):
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_yaml_emitter_round_trips_awkward_strings():
    data = {"a": [{"b": 'quote " colon: # hash ± ü', "c": 0.25, "d": None, "e": True}, {"f": []}], "g": "- x"}
    assert yaml.safe_load("\n".join(to_yaml(data))) == data


def test_card_has_model_index_efficiency_hardware_and_verdict(demo_run):
    db, run_id = demo_run
    res = collect(Store.open(db), run_id)
    card = model_card(res, "slow")
    (entry,) = _front_matter(card)["model-index"]
    assert entry["name"] == "slow"
    by_dataset = {r["dataset"]["name"]: r for r in entry["results"]}
    assert set(by_dataset) == {"words", "capitals"}
    acc = next(m for m in by_dataset["words"]["metrics"] if m["type"] == "acc")
    row = next(r for r in res.rows if r.candidate == "slow" and r.task == "words")
    assert acc["value"] == pytest.approx(row.metrics["acc"]) and "n=20" in acc["name"]
    assert {"type", "name"} <= by_dataset["words"]["task"].keys()
    assert "| words |" in card and fmt_bytes(row.metrics["peak_rss_bytes"]) in card
    assert str(res.run["id"]) in card or "smallfit" in card
    assert "## Verdict: uncertain" in card and "more examples would decide it with 80% power" in card
    assert "n=72" in card  # the timing pass ran what it takes to bound a p95


def test_card_of_failed_or_unknown_candidate(demo_run):
    db, run_id = demo_run
    res = collect(Store.open(db), run_id)
    card = model_card(res, "crashy")
    assert _front_matter(card)["model-index"][0]["results"] == [] and "error: worker killed" in card
    with pytest.raises(SmallfitError, match="no candidate 'nope'; its candidates: tiny, mid, slow, big, crashy"):
        model_card(res, "nope")
