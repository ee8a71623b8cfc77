"""The user's own data as a task, with no code: a JSONL or CSV file plus a TOML task file.

A task file (``smallfit run --task my_tickets.toml``)::

    name = "tickets"                      # default: the file's stem
    kind = "classification"               # multiple_choice | classification | generation | perplexity
                                          # | embedding_classification
    data = "tickets.jsonl"                # .jsonl or .csv, relative to this file
    template = "Ticket: {text}\\nCategory:" # a plain format string over the row's fields
    labels = ["billing", "bug", "feature"] # classification: the same choices for every row
    answer_field = "label"                # the gold choice (its text, index or letter) or answer
    answer_type = "text"                  # optional: read every gold answer as "index", "text" or "letter"
    fewshot = 2                           # examples shown before each prompt
    fewshot_data = "tickets_train.jsonl"  # where they come from (default: the first rows of data)

Multiple choice takes its choices per row from ``choices_field`` (a JSON list) or
``choices_fields`` (one column each, for CSV). Generation takes ``max_tokens``, ``stop`` and
``extract`` (``strip``, ``first_line``, ``first_number``, ``last_number``). Perplexity scores
the rendered template (e.g. ``template = "{text}"``).

Embedding classification is for encoders (``minilm-l6``): each label's prototype is the mean
embedding of its rows in ``train_data`` (the template rendered over them, their label in
``answer_field``), or for a label without any, the embedding of its entry in
``label_descriptions``; each row of ``data`` gets the label with the nearest prototype
(cosine). ``labels`` is optional: by default the labels of ``train_data`` in order of first
appearance, then those of ``label_descriptions``. See ``examples/tickets_embed.toml``.
"""

from __future__ import annotations

import csv
import functools
import tomllib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from string import Formatter
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from smallfit import scoring
from smallfit.errors import SmallfitError
from smallfit.tasks.base import (
    Generation,
    GenerationSample,
    MultipleChoice,
    MultipleChoiceSample,
    Perplexity,
    Task,
    TaskKind,
    TextSample,
)
from smallfit.tasks.data import read_jsonl
from smallfit.tasks.embedding import EmbeddingClassification, EmbeddingSample, LabelSet

EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "strip": lambda text: text.strip(),
    "first_line": lambda text: (text.strip().splitlines() or [""])[0].strip(),
    "first_number": lambda text: scoring.extract_number(text, "first"),
    "last_number": lambda text: scoring.extract_number(text, "last"),
}


class TaskFile(BaseModel):
    """The fields of a task file; unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["multiple_choice", "classification", "generation", "perplexity", "embedding_classification"]
    data: str
    template: str
    name: str | None = None
    description: str = ""
    answer_field: str | None = None
    answer_type: Literal["index", "text", "letter"] | None = Field(
        default=None, description="read every gold answer one way only: a 0-based index, a choice's text, "
                                  "or a letter; by default a JSON integer is an index and a string is a "
                                  "choice's text, an index (all digits) or a letter, and two readings "
                                  "that name different choices are an error")
    choices_field: str | None = None
    choices_fields: list[str] | None = None
    labels: list[str] | None = None
    target_delimiter: str = " "
    fewshot: int = Field(default=0, ge=0)
    fewshot_data: str | None = None
    fewshot_separator: str = "\n\n"
    max_tokens: int = Field(default=32, ge=1)
    stop: list[str] = Field(default_factory=lambda: ["\n"])
    extract: Literal["strip", "first_line", "first_number", "last_number"] = "strip"
    limit: int = Field(default=1000, ge=1, description="default number of examples")
    chat_template: bool | None = Field(default=None, description="wrap prompts in the model's chat template")
    train_data: str | None = Field(default=None, description="embedding_classification: labelled rows whose "
                                   "mean embedding per label is the label's prototype")
    label_descriptions: dict[str, str] | None = Field(default=None, description="embedding_classification: "
                                                      "a text per label, embedded as the prototype of a label "
                                                      "without training rows")

    @model_validator(mode="after")
    def _fields_for_kind(self) -> TaskFile:
        if self.kind != "perplexity" and not self.answer_field:
            raise ValueError(f"a {self.kind} task needs answer_field")
        if self.kind == "classification" and not self.labels:
            raise ValueError("a classification task needs labels = [...]")
        if self.kind == "multiple_choice" and not (self.choices_field or self.choices_fields):
            raise ValueError("a multiple_choice task needs choices_field or choices_fields")
        if self.kind == "embedding_classification":
            if not (self.train_data or self.label_descriptions):
                raise ValueError("an embedding_classification task needs train_data (labelled rows) or "
                                 "label_descriptions = {label = \"text\", ...}")
            if self.fewshot or self.fewshot_data:
                raise ValueError("fewshot does not apply to embedding_classification: its labelled examples "
                                 "go in train_data")
            extra = sorted(set(self.label_descriptions or {}) - set(self.labels or self.label_descriptions or {}))
            if extra:
                raise ValueError(f"label_descriptions names {extra}, which are not among labels {self.labels}")
        elif self.train_data or self.label_descriptions:
            raise ValueError("train_data and label_descriptions are for embedding_classification tasks")
        if self.answer_type is not None and self.kind in ("generation", "perplexity"):
            raise ValueError(f"answer_type picks one of the choices; a {self.kind} task has none")
        if self.answer_type not in (None, "text") and self.kind == "embedding_classification" and not self.labels:
            raise ValueError(f"answer_type = \"{self.answer_type}\" needs labels = [...]: without them the "
                             "answers are the labels' names")
        return self


def is_task_file(ref: str) -> bool:
    """Whether a --task value names a task file rather than a built-in task."""
    return ref.endswith(".toml")


def load_task_file(path: Path) -> Task:
    """Read and validate a task file; the data itself is read when the task runs."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SmallfitError(f"task file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SmallfitError(f"cannot read task file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SmallfitError(f"{path}: invalid TOML ({exc})") from None
    try:
        spec = TaskFile.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "task"
        raise SmallfitError(f"{path}: {field}: {err['msg']}") from None
    base = path.parent
    data = (base / spec.data).resolve()
    if not data.is_file():
        raise SmallfitError(f"{path}: data file not found: {data}")
    kind: TaskKind
    load: Callable[[], Sequence[Any]] = functools.partial(_samples, spec, path, data)
    if spec.kind == "embedding_classification":
        label_set = functools.cache(functools.partial(_label_set, spec, path))  # read once, when the task runs
        kind = EmbeddingClassification(label_set)
        load = functools.partial(_embedding_samples, spec, data, label_set)
    elif spec.kind == "generation":
        kind = Generation(max_tokens=spec.max_tokens, stop=tuple(spec.stop), extract=EXTRACTORS[spec.extract])
    elif spec.kind == "perplexity":
        kind = Perplexity()
    else:
        kind = MultipleChoice()
    return Task(
        name=spec.name or path.stem, description=spec.description or f"{spec.kind} over {data.name}",
        kind=kind, load=load, source=str(data), default_limit=spec.limit,
        chat=spec.chat_template,
    )


# -- reading rows -----------------------------------------------------------------------------

def read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) for every row of a JSONL or CSV file; an empty file is an error."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = list(read_jsonl(path))
    elif suffix == ".csv":
        rows = list(_read_csv(path))
    else:
        raise SmallfitError(f"{path}: data must be .jsonl or .csv")
    if not rows:
        raise SmallfitError(f"{path}: the data file has no rows")
    return rows


def _read_csv(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            for row in reader:
                yield reader.line_num, dict(row)
    except UnicodeDecodeError as exc:
        raise SmallfitError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); re-save it as UTF-8") from None
    except csv.Error as exc:
        raise SmallfitError(f"{path}: malformed CSV ({exc})") from None


def _render(template: str, row: dict[str, Any], where: str) -> str:
    try:
        parsed = list(Formatter().parse(template))
    except ValueError as exc:  # an unbalanced brace
        raise SmallfitError(f"{where}: the template does not parse ({exc}); write a literal brace as {{{{ or }}}}") \
            from None
    for _, field, _, _ in parsed:
        if field is not None and field.split(".")[0].split("[")[0] not in row:
            raise SmallfitError(f"{where}: the template names field {{{field}}}, which this row lacks "
                                f"(fields: {', '.join(sorted(row)) or 'none'})")
    try:
        return template.format(**row)
    except (IndexError, KeyError, ValueError, AttributeError) as exc:
        raise SmallfitError(f"{where}: cannot fill the template ({exc})") from None


def _field(row: dict[str, Any], name: str, where: str) -> Any:
    if name not in row:
        raise SmallfitError(f"{where}: field {name!r} is missing (fields: {', '.join(sorted(row))})")
    return row[name]


def _choices(spec: TaskFile, row: dict[str, Any], where: str) -> list[str]:
    if spec.labels:
        return list(spec.labels)
    if spec.choices_fields:
        return [str(_field(row, f, where)) for f in spec.choices_fields]
    value = _field(row, spec.choices_field or "", where)
    if not isinstance(value, list) or len(value) < 2:
        raise SmallfitError(f"{where}: field {spec.choices_field!r} must be a list of at least two choices")
    return [str(v) for v in value]


AnswerType = Literal["index", "text", "letter"]


def _whole_number(answer: Any) -> int | None:
    """A JSON integer, or a whole JSON number such as ``1.0``; else None (``true`` is not 1)."""
    if isinstance(answer, int) and not isinstance(answer, bool):
        return answer
    if isinstance(answer, float) and answer.is_integer():
        return int(answer)
    return None


def _readings(answer: str | float, choices: Sequence[str], answer_type: AnswerType | None) -> dict[str, int | None]:
    """Each way the answer can be read, with the choice it names that way (None: no such text,
    or out of range). Without ``answer_type``, a JSON number is an index only; a string is a
    choice's text, and also an index when it is all digits and a letter when it is one letter."""
    text = str(answer).strip()
    number = _whole_number(answer)
    is_str = isinstance(answer, str)
    out: dict[str, int | None] = {}
    if answer_type == "text" or (answer_type is None and is_str):
        stripped = [c.strip() for c in choices]
        out["text"] = stripped.index(text) if text in stripped else None
    if answer_type in (None, "index") and (number is not None or (is_str and text.isascii() and text.isdigit())):
        index = number if number is not None else int(text)
        out["index"] = index if 0 <= index < len(choices) else None
    if answer_type in (None, "letter") and is_str and len(text) == 1 and text.isascii() and text.isalpha():
        index = ord(text.upper()) - ord("A")
        out["letter"] = index if index < len(choices) else None
    return out


def gold_index(answer: Any, choices: Sequence[str], where: str, field: str = "answer",
               answer_type: AnswerType | None = None) -> int:
    """The 0-based gold choice of a row, read without guessing.

    A JSON integer is an index. A string (every CSV cell is one) is matched as a choice's text,
    as a 0-based index when it is all digits, and as a letter (A, B, ...) when it is one letter;
    when two of those readings name different choices, that is an error asking for
    ``answer_type``, which makes every answer of the task be read one way only. Errors name
    ``where`` (``file:line``) and the answer's ``field``.
    """
    shown = repr(answer.strip()) if isinstance(answer, str) else repr(answer)

    def bad(problem: str, fix: str = "") -> SmallfitError:
        return SmallfitError(f"{where}: the answer {shown} {problem} (field {field!r})" + (f"; {fix}" if fix else ""))

    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise bad("is neither text nor a number", "write the choice's text, its 0-based index or its letter")
    readings = _readings(answer, choices, answer_type)
    found = {how: i for how, i in readings.items() if i is not None}
    if len(set(found.values())) > 1:
        ways = ", ".join(f"choice {i} ({choices[i].strip()!r}) by its {how}" for how, i in found.items())
        settle = " or ".join(f'"{how}"' for how in found)
        raise bad(f"is ambiguous: {ways}", f"set answer_type = {settle} in the task file")
    if found:
        return next(iter(found.values()))
    n = len(choices)
    if "text" in readings:
        raise bad(f"is not among the choices {[c.strip() for c in choices]}")
    if "index" in readings:
        raise bad(f"is not an index of the {n} choices (0 to {n - 1})")
    if "letter" in readings:
        raise bad(f"is not a letter of the {n} choices (A to {chr(ord('A') + n - 1)})")
    if answer_type is None:  # a JSON number with a fraction
        raise bad("is a number but not a whole one, so not an index",
                  "write it as a string, or set answer_type = \"text\", to match a choice's text")
    kind = "a 0-based index" if answer_type == "index" else "a single letter"
    raise bad(f"is not {kind}, as answer_type = \"{answer_type}\" requires")


def _target(spec: TaskFile, row: dict[str, Any], where: str) -> str:
    """The text a few-shot example shows after its prompt."""
    answer = _field(row, spec.answer_field or "", where)
    if spec.kind in ("multiple_choice", "classification"):
        choices = _choices(spec, row, where)
        return choices[gold_index(answer, choices, where, spec.answer_field or "", spec.answer_type)]
    return str(answer)


def _samples(spec: TaskFile, path: Path, data: Path) -> list[Any]:
    rows = read_rows(data)
    shots_source = read_rows((path.parent / spec.fewshot_data).resolve()) if spec.fewshot_data else rows
    if spec.fewshot > len(shots_source) - (0 if spec.fewshot_data else 1):
        raise SmallfitError(f"{path}: fewshot = {spec.fewshot} but the few-shot source has only "
                            f"{len(shots_source)} rows"
                            f"{'' if spec.fewshot_data else ' (and needs one left to evaluate)'}")
    shots = shots_source[: spec.fewshot]
    if not spec.fewshot_data:
        rows = rows[spec.fewshot :]  # the shots are not evaluated too
    source = data if not spec.fewshot_data else (path.parent / spec.fewshot_data)
    prefix = "".join(
        _render(spec.template, r, f"{source}:{n}") + spec.target_delimiter + _target(spec, r, f"{source}:{n}")
        + spec.fewshot_separator for n, r in shots)
    out: list[Any] = []
    for lineno, row in rows:
        where = f"{data}:{lineno}"
        prompt = prefix + _render(spec.template, row, where)
        sample_id = str(row.get("id", lineno))
        if spec.kind == "perplexity":
            out.append(TextSample(sample_id, prompt))
        elif spec.kind == "generation":
            out.append(GenerationSample(sample_id, prompt, str(_field(row, spec.answer_field or "", where))))
        else:
            choices = _choices(spec, row, where)
            gold = gold_index(_field(row, spec.answer_field or "", where), choices, where, spec.answer_field or "",
                              spec.answer_type)
            out.append(MultipleChoiceSample(sample_id, prompt, tuple(spec.target_delimiter + c for c in choices), gold,
                                            target_delimiter=spec.target_delimiter))
    return out


# -- embedding classification -----------------------------------------------------------------

def _label_set(spec: TaskFile, path: Path) -> LabelSet:
    """The labels and each one's prototype texts: its training rows, else its description."""
    train_file = (path.parent / spec.train_data).resolve() if spec.train_data else None
    if train_file is not None and not train_file.is_file():
        raise SmallfitError(f"{path}: train_data file not found: {train_file}")
    rows = read_rows(train_file) if train_file is not None else []
    descriptions = spec.label_descriptions or {}
    labels = list(spec.labels or [])
    examples: list[tuple[str, str]] = []  # (label, rendered text)
    for lineno, row in rows:
        where = f"{train_file}:{lineno}"
        answer = _field(row, spec.answer_field or "", where)
        if spec.labels:
            label = spec.labels[gold_index(answer, spec.labels, where, spec.answer_field or "", spec.answer_type)]
        else:
            label = str(answer).strip()
            if not label:
                raise SmallfitError(f"{where}: field {spec.answer_field!r} is empty")
            if label not in labels:
                labels.append(label)
        examples.append((label, _render(spec.template, row, where)))
    labels += [d for d in descriptions if d not in labels]
    if len(labels) < 2:
        raise SmallfitError(f"{path}: an embedding_classification task needs at least two labels (found {labels})")
    texts, origins = [], []
    for label in labels:
        own = tuple(text for lab, text in examples if lab == label)
        if own:
            texts.append(own)
            origins.append("train")
        elif label in descriptions:
            texts.append((descriptions[label],))
            origins.append("description")
        else:
            where = f"no rows in {train_file}" if train_file else "no training rows"
            raise SmallfitError(f"{path}: label {label!r} has {where} and no entry in label_descriptions")
    return LabelSet(tuple(labels), tuple(texts), tuple(origins))


def _embedding_samples(spec: TaskFile, data: Path, label_set: Callable[[], LabelSet]) -> list[EmbeddingSample]:
    labels = label_set().labels
    # without a labels list the labels are the training answers' texts, so answers are read as text
    answer_type = spec.answer_type if spec.labels else "text"
    out = []
    for lineno, row in read_rows(data):
        where = f"{data}:{lineno}"
        gold = gold_index(_field(row, spec.answer_field or "", where), labels, where, spec.answer_field or "",
                          answer_type)
        out.append(EmbeddingSample(str(row.get("id", lineno)), _render(spec.template, row, where), gold))
    return out
