"""Real runs in seconds: toy models (the ``toy`` backend plugin in tests/plugins/toy) driven by
the real runner, worker processes and store.

A toy model is a byte-bigram language model; its ``facts`` make it answer chosen questions right
(a log-likelihood bonus for the right choice, the right answer when generating), so a test
decides how many of ``n`` questions each candidate gets right, and its ``delay_ms`` per generated
token sets its latency. Everything else (timings, memory, energy, stored rows) is what the real
runner measures and stores.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from smallfit.runner import execute, start_run
from smallfit.spec import build_spec
from smallfit.store import Store

REPO = Path(__file__).resolve().parents[1]
needs_toy = pytest.mark.skipif(importlib.util.find_spec("smallfit_toy") is None,
                               reason="the toy backend plugin is not installed: pip install -e tests/plugins/toy")
CORPUS = "The answer is below. Question: which word is right? Answer: it is the first one. " * 8


@dataclass(frozen=True)
class Toy:
    """A toy candidate: it knows the first ``knows`` questions and capitals, is sure of the wrong
    choice of the next ``wrong`` questions, guesses the rest; ``delay_ms`` per generated token."""

    name: str
    knows: int
    delay_ms: float
    pad_bytes: int = 0  # a bigger file: model_size_bytes follows the file
    wrong: int = 0
    options: tuple[tuple[str, str], ...] = ()


def questions(n: int) -> list[dict[str, object]]:
    """``n`` two-choice questions; the right answer alternates between first and second."""
    return [{"id": f"q{i}", "question": f"Question {i}: which word is right?",
             "choices": [f"word{i}a", f"word{i}b"], "answer": i % 2} for i in range(n)]


def capitals() -> list[dict[str, str]]:
    """The example capitals task's rows (its first two are its few-shot examples)."""
    with (REPO / "examples" / "capitals.csv").open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_tasks(folder: Path, n: int) -> list[str]:
    """A multiple-choice task of ``n`` questions and the capitals generation task; their files."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "words.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions(n)), encoding="utf-8")
    (folder / "words.toml").write_text(
        'name = "words"\nkind = "multiple_choice"\ndata = "words.jsonl"\ntemplate = "{question}\\nAnswer:"\n'
        'choices_field = "choices"\nanswer_field = "answer"\n', encoding="utf-8")
    return [str(folder / "words.toml"), str(REPO / "examples" / "capitals.toml")]


def write_model(folder: Path, toy: Toy, n: int) -> Path:
    """A ``.toy`` model file for ``toy``."""
    facts = []
    for i, q in enumerate(questions(n)[: toy.knows + toy.wrong]):
        pick = q["answer"] if i < toy.knows else 1 - q["answer"]  # type: ignore[operator]
        facts.append([f"{q['question']}\nAnswer:", q["choices"][pick]])  # type: ignore[index]
    for row in capitals()[2:][: toy.knows]:
        facts.append([f"Q: What is the capital of {row['country']}?\nA:", row["capital"]])
    path = folder / f"{toy.name}.toy"
    path.write_text(json.dumps({"corpus": CORPUS, "delay_ms": toy.delay_ms, "facts": facts,
                                "padding": "x" * toy.pad_bytes}), encoding="utf-8")
    return path


def make_run(db: Path, folder: Path, toys: list[Toy], n: int = 20, budget: list[str] | None = None,
             **settings: object) -> str:
    """Run ``toys`` on the words and capitals tasks through the real runner; the run id."""
    tasks = write_tasks(folder, n)
    candidates = [{"model": str(write_model(folder, t, n)), "name": t.name, "options": dict(t.options)} for t in toys]
    spec = build_spec({"candidates": candidates, "tasks": tasks, "budget": budget or [], "threads": 1,
                       "timing_min_requests": 5, "timing_min_s": 0.2, "latency_prompts": 4,
                       "latency_max_tokens": 4, **settings}, "test")
    store = Store.open(db)
    try:
        run_id = start_run(spec, store, keep_going=True)
        execute(store, run_id)
    finally:
        store.close()
    return run_id


# Per-token delays far apart (each 4-token latency request: about 1, 10, 30 and 50 ms), so that
# the order of their latencies holds on a busy machine too; tests compare medians, not tails.
DEMO = [Toy("tiny", knows=7, delay_ms=0.2), Toy("mid", knows=12, delay_ms=2.5, pad_bytes=20_000),
        Toy("slow", knows=9, delay_ms=7.5, pad_bytes=40_000), Toy("big", knows=17, delay_ms=12.5, pad_bytes=90_000)]
DEMO_BUDGET = ["acc>=0.5", "words:latency_s_p95<=0.5", "peak_rss_bytes<=1GB"]
