"""The user's own data as a task: task files over JSONL and CSV, and every bad input."""

import json
from pathlib import Path

import pytest

from smallfit.errors import SmallfitError
from smallfit.tasks import get_task
from smallfit.worker import select
from tests.conftest import needs_models

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, toml: str, data: dict[str, str | bytes]) -> Path:
    for name, content in data.items():
        target = tmp_path / name
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")
    path = tmp_path / "task.toml"
    path.write_text(toml, encoding="utf-8")
    return path


def _jsonl(*rows: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


CLASSIFY = """
kind = "classification"
data = "d.jsonl"
template = "Ticket: {text}\\nCategory:"
labels = ["billing", "bug"]
answer_field = "label"
fewshot = 1
fewshot_data = "shots.jsonl"
"""


def test_classification_with_fewshot_renders_like_lm_eval(tmp_path):
    path = _write(tmp_path, CLASSIFY, {
        "d.jsonl": _jsonl({"text": "charged twice", "label": "billing"}, {"text": "crash", "label": 1}),
        "shots.jsonl": _jsonl({"text": "refund please", "label": "billing"}),
    })
    task = get_task(str(path))
    assert task.name == "task" and task.kind.name == "multiple_choice"
    first, second = task.load()
    assert first.context == "Ticket: refund please\nCategory: billing\n\nTicket: charged twice\nCategory:"
    assert first.choices == (" billing", " bug") and first.gold == 0
    assert first.choice_texts() == ("billing", "bug")  # acc_norm's lengths: without the delimiter
    assert second.gold == 1  # an index works as the answer too


def test_bundled_examples_load():
    tickets = get_task(str(REPO / "examples" / "tickets.toml"))
    samples = tickets.load()
    assert len(samples) == 40 and samples[0].context.count("Category:") == 5
    capitals = get_task(str(REPO / "examples" / "capitals.toml"))
    caps = capitals.load()
    assert len(caps) == 28  # 30 rows, the first two are the few-shot examples
    assert caps[0].prompt.startswith("Q: What is the capital of France?\nA: Paris\n\n")
    assert caps[0].answer == "Rome"


def test_csv_multiple_choice_with_letter_answers(tmp_path):
    path = _write(tmp_path, """
kind = "multiple_choice"
data = "q.csv"
template = "{question}"
choices_fields = ["a", "b", "c"]
answer_field = "answer"
""", {"q.csv": "question,a,b,c,answer\nSky colour?,green,blue,red,B\n"})
    (s,) = get_task(str(path)).load()
    assert s.choices == (" green", " blue", " red") and s.gold == 1


def test_generation_and_perplexity_kinds(tmp_path):
    path = _write(tmp_path, """
kind = "generation"
data = "g.jsonl"
template = "Q: {q}\\nA:"
answer_field = "a"
extract = "first_number"
max_tokens = 5
""", {"g.jsonl": _jsonl({"q": "2+2?", "a": "4"})})
    task = get_task(str(path))
    assert task.kind.extract(" 4 apples") == "4" and task.kind.max_tokens == 5
    (path.parent / "p.toml").write_text('kind = "perplexity"\ndata = "g.jsonl"\ntemplate = "{q} {a}"\n')
    (doc,) = get_task(str(path.parent / "p.toml")).load()
    assert doc.text == "2+2? 4"


@pytest.mark.parametrize("toml, data, fragment", [
    ('kind = "classification"\ndata = "d.jsonl"\ntemplate = "{text}"\nanswer_field = "label"\n',
     {"d.jsonl": _jsonl({"text": "x", "label": "a"})}, "a classification task needs labels"),
    ('kind = "generation"\ntemplate = "{text}"\nanswer_field = "a"\n', {}, "data: Field required"),
    ('kind = "generation"\ndata = "d.jsonl"\ntemplate = "{text}"\nanswer_field = "a"\ncolour = 1\n',
     {"d.jsonl": ""}, "colour: Extra inputs are not permitted"),
    ('kind = "translation"\ndata = "d.jsonl"\ntemplate = "{t}"\n', {"d.jsonl": ""}, "kind: Input should be"),
    ('kind = "generation"\ndata = "nope.jsonl"\ntemplate = "{t}"\nanswer_field = "a"\n', {}, "data file not found"),
])
def test_bad_task_files(tmp_path, toml, data, fragment):
    path = _write(tmp_path, toml, data)
    with pytest.raises(SmallfitError, match=fragment):
        get_task(str(path)).load()


@pytest.mark.parametrize("data, fragment", [
    (b"", "has no rows"),
    (b'{"text": "ok", "label": "bug"}\n{"text": "caf\xe9", "label": "bug"}\n', "not UTF-8"),
    (b'{"text": "ok", "label": "bug"}\n{"text": "x", "label": "refund"}\n', "d.jsonl:2: the answer 'refund' is not among"),
    (b'{"body": "no text field", "label": "bug"}\n', "d.jsonl:1: the template names field {text}, which this row lacks"),
    (b'{"text": "x", "label": "bug"}\nnot json\n', "d.jsonl:2: not valid JSON"),
])
def test_bad_data_names_file_line_and_field(tmp_path, data, fragment):
    toml = CLASSIFY.replace("fewshot = 1\nfewshot_data = \"shots.jsonl\"\n", "")
    path = _write(tmp_path, toml, {"d.jsonl": data})
    with pytest.raises(SmallfitError, match=fragment):
        get_task(str(path)).load()


def test_fewshot_larger_than_its_source(tmp_path):
    path = _write(tmp_path, CLASSIFY.replace("fewshot = 1", "fewshot = 5"), {
        "d.jsonl": _jsonl({"text": "x", "label": "bug"}), "shots.jsonl": _jsonl({"text": "y", "label": "bug"})})
    with pytest.raises(SmallfitError, match="fewshot = 5 but the few-shot source has only 1 rows"):
        get_task(str(path)).load()


def test_select_first_n_or_a_seeded_sample():
    rows = list(range(100))
    assert select(rows, 3, None, 0, 50) == [0, 1, 2]
    assert select(rows, None, None, 0, 5) == [0, 1, 2, 3, 4]
    a, b = select(rows, None, 10, 7, 50), select(rows, None, 10, 7, 50)
    assert a == b and a == sorted(a) and len(set(a)) == 10 and a != list(range(10))
    assert select(rows, None, 10, 8, 50) != a
    assert select(rows, None, 500, 0, 50) == rows


@needs_models
def test_evals_registry_adapter():
    samples = get_task("evals:quartz").load()
    assert len(samples) == 3860 and samples[0].choices == (" increases", " decreases")
    with pytest.raises(SmallfitError, match="not a lettered multiple-choice sample"):
        get_task("evals:largest_country").load()
