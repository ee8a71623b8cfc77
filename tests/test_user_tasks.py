"""The user's own data as a task: task files over JSONL and CSV, and every bad input."""

import json
from pathlib import Path

import pytest

from smallfit.errors import SmallfitError
from smallfit.measure import select
from smallfit.tasks import get_task
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


MC_JSONL = """
kind = "multiple_choice"
data = "d.jsonl"
template = "{q}"
choices_field = "choices"
answer_field = "answer"
"""
NUMERIC = ["0.7", "0.8", "0.9", "1"]


def _gold(tmp_path: Path, answer, choices=NUMERIC, answer_type: str | None = None) -> int:
    toml = MC_JSONL + (f'answer_type = "{answer_type}"\n' if answer_type else "")
    path = _write(tmp_path, toml, {"d.jsonl": _jsonl({"q": "x", "choices": choices, "answer": answer})})
    (sample,) = get_task(str(path)).load()
    return sample.gold


def _gold_error(tmp_path: Path, answer, choices=NUMERIC, answer_type: str | None = None) -> str:
    with pytest.raises(SmallfitError) as info:
        _gold(tmp_path, answer, choices, answer_type)
    message = str(info.value)
    assert "\n" not in message and f"{tmp_path / 'd.jsonl'}:1: " in message and "(field 'answer')" in message
    return message


def test_a_json_integer_is_an_index_even_when_a_choice_reads_the_same(tmp_path):
    # the case: "answer": 1 means "0.8", not the choice whose text is "1"
    assert _gold(tmp_path, 1) == 1
    assert _gold(tmp_path, 3) == 3 and _gold(tmp_path, 0.0) == 0  # a whole JSON number is an index too
    assert "the answer 4 is not an index of the 4 choices (0 to 3)" in _gold_error(tmp_path, 4)
    assert "not an index" in _gold_error(tmp_path, -1)


def test_a_string_is_a_text_an_index_or_a_letter_and_two_readings_are_an_error(tmp_path):
    assert _gold(tmp_path, "0.9") == 2  # text only
    assert _gold(tmp_path, " 1 ", choices=["no", "yes"]) == 1  # digits, no such text: an index
    assert _gold(tmp_path, "b", choices=["x", "y", "z"]) == 1  # a letter
    assert _gold(tmp_path, "A", choices=["A", "B"]) == 0  # text and letter agree
    message = _gold_error(tmp_path, "1")  # the text "1" is choice 3, index 1 is "0.8"
    assert "the answer '1' is ambiguous: choice 3 ('1') by its text, choice 1 ('0.8') by its index" in message
    assert message.endswith('set answer_type = "text" or "index" in the task file')
    message = _gold_error(tmp_path, "B", choices=["B", "A"])
    assert "choice 0 ('B') by its text, choice 1 ('A') by its letter" in message and '"text" or "letter"' in message
    assert "is not among the choices ['0.7', '0.8', '0.9', '1']" in _gold_error(tmp_path, "0.75")


def test_answer_type_settles_every_answer_one_way(tmp_path):
    assert _gold(tmp_path, "1", answer_type="text") == 3
    assert _gold(tmp_path, "1", answer_type="index") == 1
    assert _gold(tmp_path, 1, answer_type="text") == 3  # a number matched by its text
    assert _gold(tmp_path, 0.8, answer_type="text") == 1
    assert _gold(tmp_path, "B", choices=["B", "A"], answer_type="letter") == 1
    assert 'not a single letter, as answer_type = "letter" requires' in _gold_error(tmp_path, 1, answer_type="letter")
    assert 'not a 0-based index, as answer_type = "index" requires' in _gold_error(tmp_path, "0.8", answer_type="index")
    assert "not an index of the 4 choices" in _gold_error(tmp_path, "9", answer_type="index")
    assert "is not among the choices" in _gold_error(tmp_path, 9, answer_type="text")


def test_answers_that_are_no_index_and_no_text(tmp_path):
    assert "is a number but not a whole one" in _gold_error(tmp_path, 0.8)
    assert "is neither text nor a number" in _gold_error(tmp_path, True)
    assert "is neither text nor a number" in _gold_error(tmp_path, None)
    assert "not a letter of the 2 choices (A to B)" in _gold_error(tmp_path, "C", choices=["x", "y"],
                                                                   answer_type="letter")


def test_csv_answers_are_strings_read_the_same_way(tmp_path):
    toml = """
kind = "multiple_choice"
data = "q.csv"
template = "{q}"
choices_fields = ["a", "b", "c"]
answer_field = "answer"
"""
    csv = "q,a,b,c,answer\nFirst?,2,3,4,1\nSecond?,1,2,3,2\n"
    path = _write(tmp_path, toml, {"q.csv": csv})
    with pytest.raises(SmallfitError) as info:  # row 3: "2" is the text of choice 1 and index 2
        get_task(str(path)).load()
    assert str(info.value).startswith(f"{tmp_path / 'q.csv'}:3: the answer '2' is ambiguous")
    assert "answer_type" in str(info.value)
    path.write_text(toml + 'answer_type = "index"\n', encoding="utf-8")
    assert [s.gold for s in get_task(str(path)).load()] == [1, 2]
    path.write_text(toml + 'answer_type = "text"\n', encoding="utf-8")
    with pytest.raises(SmallfitError, match=r"q\.csv:2: the answer '1' is not among the choices \['2', '3', '4'\]"):
        get_task(str(path)).load()


def test_fewshot_answers_are_checked_in_their_own_file(tmp_path):
    path = _write(tmp_path, MC_JSONL + 'fewshot = 1\nfewshot_data = "shots.jsonl"\n', {
        "d.jsonl": _jsonl({"q": "x", "choices": NUMERIC, "answer": 1}),
        "shots.jsonl": _jsonl({"q": "y", "choices": NUMERIC, "answer": "1"})})
    with pytest.raises(SmallfitError, match=r"shots\.jsonl:1: the answer '1' is ambiguous"):
        get_task(str(path)).load()


def test_answer_type_only_where_there_are_choices(tmp_path):
    path = _write(tmp_path, 'kind = "generation"\ndata = "g.jsonl"\ntemplate = "{q}"\nanswer_field = "a"\n'
                  'answer_type = "text"\n', {"g.jsonl": _jsonl({"q": "2+2?", "a": "4"})})
    with pytest.raises(SmallfitError, match="answer_type picks one of the choices; a generation task has none"):
        get_task(str(path)).load()
    path.write_text(MC_JSONL + 'answer_type = "number"\n', encoding="utf-8")
    with pytest.raises(SmallfitError, match="answer_type: Input should be 'index', 'text' or 'letter'"):
        get_task(str(path)).load()


def test_embedding_labels_without_a_list_are_the_answers_text(tmp_path):
    # labels come from train_data in order of appearance: "1" then "0"; a data row's 1 is the
    # label "1" (index 0), not index 1 (the label "0")
    toml = ('kind = "embedding_classification"\ndata = "d.jsonl"\ntemplate = "{t}"\nanswer_field = "y"\n'
            'train_data = "train.jsonl"\n')
    path = _write(tmp_path, toml, {"d.jsonl": _jsonl({"t": "a", "y": 1}, {"t": "b", "y": "0"}),
                                   "train.jsonl": _jsonl({"t": "x", "y": 1}, {"t": "z", "y": 0})})
    task = get_task(str(path))
    assert [s.gold for s in task.load()] == [0, 1] and task.kind.label_set().labels == ("1", "0")
    path.write_text(toml + 'answer_type = "index"\n', encoding="utf-8")
    with pytest.raises(SmallfitError, match='answer_type = "index" needs labels'):
        get_task(str(path)).load()


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
    (b'{"text": "ok", "label": "bug"}\n{"text": "x", "label": "refund"}\n',
     "d.jsonl:2: the answer 'refund' is not among"),
    (b'{"body": "no text field", "label": "bug"}\n',
     "d.jsonl:1: the template names field {text}, which this row lacks"),
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
