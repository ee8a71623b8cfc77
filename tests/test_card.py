"""The model card: its model-index YAML parses and carries the quality results."""

import pytest
import yaml

from smallfit.errors import SmallfitError
from smallfit.report.card import model_card, to_yaml
from smallfit.results import collect
from smallfit.store import Store
from tests.fake_runs import FakeCandidate, FakeRun, build_run, demo_candidates


def _front_matter(card):
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_yaml_emitter_round_trips_awkward_strings():
    data = {"a": [{"b": 'quote " colon: # hash ± ü', "c": 0.25, "d": None, "e": True}, {"f": []}], "g": "- x"}
    assert yaml.safe_load("\n".join(to_yaml(data))) == data


def test_card_has_model_index_efficiency_hardware_and_verdict(tmp_path):
    store = Store.open(tmp_path / "r.db")
    run_id = build_run(store, FakeRun(demo_candidates()))
    card = model_card(collect(store, run_id), "mid-270m")
    (entry,) = _front_matter(card)["model-index"]
    assert entry["name"] == "mid-270m"
    by_dataset = {r["dataset"]["name"]: r for r in entry["results"]}
    assert set(by_dataset) == {"quartz", "largest-country"}
    acc = next(m for m in by_dataset["quartz"]["metrics"] if m["type"] == "acc")
    assert acc["value"] == pytest.approx(22 / 40) and "n=40" in acc["name"]
    assert {"type", "name"} <= by_dataset["quartz"]["task"].keys()
    assert "| quartz |" in card and "520.00 MB" in card and "Test CPU @ 3.0GHz" in card
    assert "## Verdict: uncertain" in card and "more examples would likely decide" in card


def test_card_of_failed_or_unknown_candidate(tmp_path):
    store = Store.open(tmp_path / "r.db")
    run_id = build_run(store, FakeRun([FakeCandidate("dead", 1, 1, 0, 0.1, broken=True)], budget=[]))
    card = model_card(collect(store, run_id), "dead")
    assert _front_matter(card)["model-index"][0]["results"] == [] and "error: worker killed" in card
    with pytest.raises(SmallfitError, match="no candidate 'nope'; its candidates: dead"):
        model_card(collect(store, run_id), "nope")
