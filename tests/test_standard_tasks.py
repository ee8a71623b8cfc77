"""Standard tasks read local copies in their hub schema and build lm-eval's exact prompts."""

import json
import sqlite3

import pytest

from smallfit.errors import SmallfitError
from smallfit.tasks import get_task
from smallfit.tasks.standard import (
    gsm8k_extract,
    gsm8k_target,
    hellaswag_preprocess,
    wikitext_detokenize,
)
from tests.conftest import needs_models


def _local(tmp_path, name, *rows):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_arc_easy(tmp_path):
    path = _local(tmp_path, "arc", {"id": "Q1", "question": "Which gas do plants absorb?",
                                    "choices": {"text": ["oxygen", "carbon dioxide"], "label": ["A", "B"]},
                                    "answerKey": "B"})
    task = get_task(f"arc_easy={path}")
    (s,) = task.load()
    assert task.name == "arc_easy" and task.kind.quality_metrics == ("acc", "acc_norm", "acc_bytes")
    assert (s.id, s.context, s.choices, s.gold) == (
        "Q1", "Question: Which gas do plants absorb?\nAnswer:", (" oxygen", " carbon dioxide"), 1)
    assert s.choice_texts() == ("oxygen", "carbon dioxide")  # what acc_norm measures, as lm-eval's doc_to_choice


def test_hellaswag_query_and_endings(tmp_path):
    row = {"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow.",
           "ctx_b": "then", "endings": [", the man adds wax [title] to it.", ", the man leaves."], "label": "1"}
    (s,) = get_task(f"hellaswag={_local(tmp_path, 'hs', row)}").load()
    assert s.context == "Removing ice from car: Then, the man writes over the snow. Then"
    assert s.choices == (" , the man adds wax. to it.", " , the man leaves.") and s.gold == 1
    assert hellaswag_preprocess(" a [step] b  c ") == "a b c"


def test_winogrande_partial_evaluation(tmp_path):
    row = {"sentence": "Sarah was a better surgeon than Maria so _ got the harder cases.",
           "option1": "Sarah", "option2": "Maria", "answer": "1"}
    (s,) = get_task(f"winogrande={_local(tmp_path, 'wg', row)}").load()
    assert s.contexts == ("Sarah was a better surgeon than Maria so Sarah",
                          "Sarah was a better surgeon than Maria so Maria")
    assert s.choices == (" got the harder cases.",) * 2 and s.gold == 0


def test_boolq_piqa_sciq_mmlu(tmp_path):
    (b,) = get_task(f"boolq={_local(tmp_path, 'b', {'passage': 'P.', 'question': 'is it', 'label': 1})}").load()
    assert (b.context, b.choices, b.gold) == ("P.\nQuestion: is it?\nAnswer:", (" no", " yes"), 1)
    (p,) = get_task(f"piqa={_local(tmp_path, 'p', {'goal': 'G', 'sol1': 'x', 'sol2': 'y', 'label': 0})}").load()
    assert (p.context, p.choices, p.gold) == ("Question: G\nAnswer:", (" x", " y"), 0)
    sciq = {"support": "  Support.", "question": "Q?", "distractor1": "a", "distractor2": "b", "distractor3": "c",
            "correct_answer": "d"}
    (q,) = get_task(f"sciq={_local(tmp_path, 's', sciq)}").load()
    assert (q.context, q.choices[-1], q.gold) == ("Support.\nQuestion: Q?\nAnswer:", " d", 3)
    mmlu = {"question": " What is 2+2? ", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"],
            "answer": 1}
    (m,) = get_task(f"mmlu={_local(tmp_path, 'm', mmlu)}").load()
    assert m.context == ("The following are multiple choice questions (with answers) about elementary mathematics."
                         "\n\nWhat is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:")
    assert m.choices == (" A", " B", " C", " D") and m.gold == 1
    assert m.choice_texts() == ("A", "B", "C", "D")


def test_lambada_and_wikitext(tmp_path):
    (lam,) = get_task(f"lambada_openai={_local(tmp_path, 'l', {'text': 'the cat sat on the mat'})}").load()
    assert (lam.context, lam.continuation) == ("the cat sat on the", " mat")
    page = " = Valkyria = \n Senjō no Valkyria 3 : Unrecorded Chronicles ( Japanese ) @-@ game \n"
    (w,) = get_task(f"wikitext={_local(tmp_path, 'w', {'page': page})}").load()
    assert w.text == wikitext_detokenize(page) and w.count_text == page
    assert wikitext_detokenize("a 3 @,@ 000 b ( c ) , d") == "a 3,000 b (c), d"


def test_gsm8k_answer_handling():
    assert gsm8k_target("She pays 2 * 3 = <<2*3=6>>6.\n#### 1,236") == "1236"
    assert gsm8k_extract("so the answer is 18.\n#### 18") == "18"
    assert gsm8k_extract("The answer is 18.") is None  # strict match needs the #### marker


@needs_models
def test_gsm8k_reads_the_bundled_test_split_with_five_shots():
    samples = get_task("gsm8k").load()
    assert len(samples) == 1319
    first = samples[0]
    assert first.prompt.count("Question:") == 6 and first.prompt.endswith("\nAnswer:")
    assert first.answer == "18"


def test_missing_columns_and_offline_hub(tmp_path, monkeypatch):
    with pytest.raises(SmallfitError, match="task arc_easy, row 1: missing or malformed field"):
        get_task(f"arc_easy={_local(tmp_path, 'bad', {'question': 'no choices'})}").load()
    with pytest.raises(SmallfitError, match="data file not found"):
        get_task(f"piqa={tmp_path / 'absent.jsonl'}").load()
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # as if not installed
    with pytest.raises(SmallfitError, match="needs the datasets library.*--task NAME=PATH"):
        get_task("arc_easy").load()


@needs_models
@pytest.mark.models
def test_winogrande_and_lambada_run_end_to_end(cli, tmp_path):
    wg = _local(tmp_path, "wg", *[{"sentence": f"The trophy did not fit in the suitcase because _ was too big {i}.",
                                   "option1": "the trophy", "option2": "the suitcase", "answer": "1"}
                                  for i in range(3)])
    lam = _local(tmp_path, "lam", {"text": "He opened the door and walked into the room"},
                 {"text": "The capital of France is Paris"})
    cli("run", "-m", "smollm2-135m", "-t", f"winogrande={wg}", "-t", f"lambada_openai={lam}", check=True)
    rows = {r["task"]: r["metrics"] for r in json.loads(cli("results", "--format", "json", check=True).stdout)}
    assert set(rows) == {"winogrande", "lambada_openai"}
    assert 0 <= rows["winogrande"]["acc"] <= 1 and rows["lambada_openai"]["perplexity"] > 1
    n = sqlite3.connect(cli.db).execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    assert n == 5
