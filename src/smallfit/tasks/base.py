"""Task kinds: how samples become requests, and how results become scores and metrics.

A :class:`Task` pairs a data loader with a kind. Each kind turns its samples into the backend's
batched requests, scores every sample, and aggregates the quality metrics with their standard
errors. The kinds time every request they send, so efficiency is measured on the same prompts
as quality.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from smallfit import scoring, signals
from smallfit.backends.base import Backend
from smallfit.records import (
    GenerationRequest,
    LoglikelihoodRequest,
    RequestTiming,
    RollingRequest,
    SampleResult,
)

Progress = Callable[[int], None]  # called with the number of samples finished so far
CHUNK = 8  # generation requests per backend call: small enough for a lively progress bar
SCORE_CHUNK = 32  # scored samples per backend call: enough for a backend to batch, one timing each


@dataclass(frozen=True)
class MultipleChoiceSample:
    """A question: the context, the choices as scored (continuations) and the gold index.

    Each continuation is ``target_delimiter + choice text``, as lm-eval builds its requests;
    :meth:`choice_texts` gives the texts without the delimiter, which ``acc_norm`` and
    ``acc_bytes`` measure. With ``contexts`` (one per choice), choice ``i`` is scored as
    ``contexts[i]`` followed by ``choices[i]``: lm-eval's "partial evaluation" (WinoGrande),
    where the options fill a blank in the context and the rest of the sentence is scored under each.
    """

    id: str
    context: str
    choices: tuple[str, ...]
    gold: int
    contexts: tuple[str, ...] = ()
    target_delimiter: str = " "

    def choice_texts(self) -> tuple[str, ...]:
        """The choices without the leading target delimiter (lm-eval's ``doc_to_choice``)."""
        return tuple(c.removeprefix(self.target_delimiter) for c in self.choices)


@dataclass(frozen=True)
class ContinuationSample:
    """A context and the one continuation that should follow it (LAMBADA's last word)."""

    id: str
    context: str
    continuation: str


@dataclass(frozen=True)
class GenerationSample:
    """A prompt and its reference answer."""

    id: str
    prompt: str
    answer: str


@dataclass(frozen=True)
class TextSample:
    """A document to score for perplexity; words and bytes are counted on ``count_text`` when
    given (lm-eval's wikitext scores the detokenised page but counts the original)."""

    id: str
    text: str
    count_text: str | None = None


Sample = MultipleChoiceSample | GenerationSample | TextSample | ContinuationSample


class TaskKind(Protocol):
    """How one kind of task talks to a backend and scores what comes back."""

    @property
    def name(self) -> str:
        """The kind's name, e.g. ``multiple_choice``."""
        ...

    @property
    def generates(self) -> bool:
        """True if the quality requests are generations (they carry their own timings)."""
        ...

    @property
    def requires(self) -> str:
        """The backend capability its requests need (a :class:`Capabilities` field:
        ``loglikelihood``, ``generation`` or ``embedding``)."""
        ...

    @property
    def quality_metrics(self) -> tuple[str, ...]:
        """The quality metrics this kind reports, primary first."""
        ...

    def run(self, backend: Backend, samples: Sequence[Any], progress: Progress) -> tuple[list[SampleResult],
                                                                                         list[RequestTiming]]:
        """Score every sample; return per-sample results and per-request timings."""
        ...

    def aggregate(self, results: Sequence[SampleResult]) -> dict[str, float | None]:
        """Quality metrics over all samples, each with its ``_stderr``."""
        ...

    def prompt_of(self, sample: Any) -> str:
        """The prompt a latency pass sends for this sample."""
        ...


def _mean_metrics(results: Sequence[SampleResult], names: Sequence[str]) -> dict[str, float | None]:
    """Means with their standard errors and 95% intervals: Clopper–Pearson (exact) for a share of
    examples scored 0 or 1 (the interval the verdict uses), a bootstrap over examples otherwise."""
    from smallfit.judge.stats import share_interval

    out: dict[str, float | None] = {}
    for name in names:
        values = [r.scores[name] for r in results]
        out[name] = scoring.mean(values)
        out[f"{name}_stderr"] = scoring.stderr_of_mean(values)
        if values and all(v in (0.0, 1.0) for v in values):
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = share_interval(scoring.mean(values), len(values))
        else:
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = scoring.bootstrap_ci(
                [(v,) for v in values], lambda rows: scoring.mean([r[0] for r in rows]))
    return out


@dataclass(frozen=True)
class MultipleChoice:
    """Pick the choice whose continuation the model finds most likely (``acc``), also per
    character (``acc_norm``) and per UTF-8 byte (``acc_bytes``) of the choice."""

    name: str = "multiple_choice"
    generates: bool = False
    requires: str = "loglikelihood"
    quality_metrics: tuple[str, ...] = ("acc", "acc_norm", "acc_bytes")

    def run(self, backend: Backend, samples: Sequence[MultipleChoiceSample],
            progress: Progress) -> tuple[list[SampleResult], list[RequestTiming]]:
        results, timings = [], []
        for lo in range(0, len(samples), SCORE_CHUNK):
            chunk = samples[lo : lo + SCORE_CHUNK]
            requests = [LoglikelihoodRequest(s.contexts[k] if s.contexts else s.context, c)
                        for s in chunk for k, c in enumerate(s.choices)]
            t0 = time.perf_counter()
            lls = iter(backend.loglikelihood(requests))  # one call: the backend may batch them all
            elapsed = time.perf_counter() - t0
            timings.append(RequestTiming(lo // SCORE_CHUNK, "quality", None, 0, None, elapsed))
            sizes = [_scored_chars(s) for s in chunk]
            for j, s in enumerate(chunk):
                logprobs = [next(lls).logprob for _ in s.choices]
                scores = scoring.multiple_choice_scores(logprobs, s.choice_texts(), s.gold)
                scores.update({f"logprob_{k}": lp for k, lp in enumerate(logprobs)})  # kept for inspection
                pred = s.choices[scoring.argmax(logprobs)]
                results.append(SampleResult(lo + j, s.id, s.context, s.choices[s.gold], pred, scores,
                                            signals.choice_signals(logprobs), elapsed * sizes[j] / sum(sizes)))
            progress(lo + len(chunk))
        return results, timings

    def aggregate(self, results: Sequence[SampleResult]) -> dict[str, float | None]:
        return _mean_metrics(results, self.quality_metrics)

    def prompt_of(self, sample: MultipleChoiceSample) -> str:
        return sample.context


def _scored_chars(s: MultipleChoiceSample) -> int:
    """What a question costs to score, in characters: its context once (a backend evaluates a
    shared context once) and each choice (each contexts' own, for partial evaluation). A scoring
    call's seconds are shared among its questions in proportion to these: a question's own time
    is not separable inside a batched call."""
    contexts = sum(len(c) for c in s.contexts) if s.contexts else len(s.context)
    return max(1, contexts + sum(len(c) for c in s.choices))


@dataclass(frozen=True)
class Generation:
    """Generate greedily, extract the answer, and score it by exact match."""

    max_tokens: int = 32
    stop: tuple[str, ...] = ("\n",)
    extract: Callable[[str], str | None] = field(default=lambda text: text.strip())
    name: str = "generation"
    generates: bool = True
    requires: str = "generation"
    quality_metrics: tuple[str, ...] = ("exact_match", "f1")

    def run(self, backend: Backend, samples: Sequence[GenerationSample],
            progress: Progress) -> tuple[list[SampleResult], list[RequestTiming]]:
        results, timings = [], []
        for lo in range(0, len(samples), CHUNK):
            chunk = samples[lo : lo + CHUNK]
            wants = backend.capabilities.token_logprobs
            reqs = [GenerationRequest(s.prompt, self.max_tokens, self.stop, logprobs=wants) for s in chunk]
            for j, (s, c) in enumerate(zip(chunk, backend.generate(reqs), strict=True)):
                i = lo + j
                answer = self.extract(c.text)
                scores = {"exact_match": scoring.exact_match(answer, s.answer), "f1": scoring.token_f1(answer,
                                                                                                       s.answer)}
                results.append(SampleResult(i, s.id, s.prompt, s.answer, c.text, scores,
                                            signals.token_signals(c.token_logprobs), c.latency_s))
                timings.append(RequestTiming.of(i, "quality", c))
            progress(lo + len(chunk))
        return results, timings

    def aggregate(self, results: Sequence[SampleResult]) -> dict[str, float | None]:
        return _mean_metrics(results, self.quality_metrics)

    def prompt_of(self, sample: GenerationSample) -> str:
        return sample.prompt


@dataclass(frozen=True)
class Perplexity:
    """Score whole texts: bits per byte, word and byte perplexity, over the corpus."""

    name: str = "perplexity"
    generates: bool = False
    requires: str = "loglikelihood"
    quality_metrics: tuple[str, ...] = ("bits_per_byte", "word_perplexity", "byte_perplexity")

    def run(self, backend: Backend, samples: Sequence[TextSample], progress: Progress) -> tuple[list[SampleResult],
                                                                                                list[RequestTiming]]:
        results, timings = [], []
        for lo in range(0, len(samples), SCORE_CHUNK):
            chunk = samples[lo : lo + SCORE_CHUNK]
            t0 = time.perf_counter()
            scored = backend.loglikelihood_rolling([RollingRequest(s.text) for s in chunk])
            elapsed = time.perf_counter() - t0
            timings.append(RequestTiming(lo // SCORE_CHUNK, "quality", sum(r.n_tokens for r in scored), 0, None,
                                         elapsed))
            for j, (s, r) in enumerate(zip(chunk, scored, strict=True)):
                counted = s.text if s.count_text is None else s.count_text
                n_bytes, n_words = len(counted.encode("utf-8")), scoring.count_words(counted)
                scores = {"logprob": r.logprob, "bytes": float(n_bytes), "words": float(n_words),
                          "tokens": float(r.n_tokens), "bits_per_byte": scoring.bits_per_byte(r.logprob, n_bytes)}
                results.append(SampleResult(lo + j, s.id, s.text, "", "", scores))
            progress(lo + len(chunk))
        return results, timings

    def aggregate(self, results: Sequence[SampleResult]) -> dict[str, float | None]:
        rows = [(-r.scores["logprob"], r.scores["bytes"], r.scores["words"]) for r in results]
        nll, n_bytes, n_words = ([row[i] for row in rows] for i in range(3))
        nats_per_byte, se_byte = scoring.ratio_and_stderr(nll, n_bytes)
        nats_per_word, se_word = scoring.ratio_and_stderr(nll, n_words)
        out: dict[str, float | None] = {
            "bits_per_byte": scoring.nats_to_bits(nats_per_byte),
            "bits_per_byte_stderr": scoring.nats_to_bits(se_byte),
            # delta method: d/dR exp(R) = exp(R)
            "word_perplexity": math.exp(nats_per_word),
            "word_perplexity_stderr": math.exp(nats_per_word) * se_word,
            "byte_perplexity": math.exp(nats_per_byte),
            "byte_perplexity_stderr": math.exp(nats_per_byte) * se_byte,
        }
        stats = {
            "bits_per_byte": lambda d: scoring.nats_to_bits(sum(r[0] for r in d) / sum(r[1] for r in d)),
            "word_perplexity": lambda d: math.exp(sum(r[0] for r in d) / max(1.0, sum(r[2] for r in d))),
            "byte_perplexity": lambda d: math.exp(sum(r[0] for r in d) / sum(r[1] for r in d)),
        }
        for name, stat in stats.items():
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = scoring.bootstrap_ci(rows, stat)
        return out

    def prompt_of(self, sample: TextSample) -> str:
        return sample.text


@dataclass(frozen=True)
class Continuation:
    """Score one expected continuation per context: ``acc`` when it is the greedy one,
    ``perplexity`` = exp(-mean log-likelihood), as lm-eval's LAMBADA."""

    name: str = "continuation"
    generates: bool = False
    requires: str = "loglikelihood"
    quality_metrics: tuple[str, ...] = ("acc", "perplexity")

    def run(self, backend: Backend, samples: Sequence[ContinuationSample],
            progress: Progress) -> tuple[list[SampleResult], list[RequestTiming]]:
        results, timings = [], []
        for lo in range(0, len(samples), SCORE_CHUNK):
            chunk = samples[lo : lo + SCORE_CHUNK]
            t0 = time.perf_counter()
            lls = backend.loglikelihood([LoglikelihoodRequest(s.context, s.continuation) for s in chunk])
            timings.append(RequestTiming(lo // SCORE_CHUNK, "quality", None, 0, None, time.perf_counter() - t0))
            for j, (s, ll) in enumerate(zip(chunk, lls, strict=True)):
                scores = {"acc": float(ll.is_greedy), "logprob": ll.logprob}
                results.append(SampleResult(lo + j, s.id, s.context, s.continuation, "", scores))
            progress(lo + len(chunk))
        return results, timings

    def aggregate(self, results: Sequence[SampleResult]) -> dict[str, float | None]:
        out = _mean_metrics(results, ("acc",))
        nll = [-r.scores["logprob"] for r in results]
        mean_nll = scoring.mean(nll)
        out["perplexity"] = math.exp(mean_nll)
        out["perplexity_stderr"] = math.exp(mean_nll) * scoring.stderr_of_mean(nll)  # delta method
        out["perplexity_ci_low"], out["perplexity_ci_high"] = scoring.bootstrap_ci(
            [(v,) for v in nll], lambda rows: math.exp(scoring.mean([r[0] for r in rows])))
        return out

    def prompt_of(self, sample: ContinuationSample) -> str:
        return sample.context


@dataclass(frozen=True)
class Task:
    """A named task: where its samples come from and which kind scores them."""

    name: str
    description: str
    kind: TaskKind
    load: Callable[[], Sequence[Any]]
    source: str
    default_limit: int = 50
    chat: bool | None = None  # wrap prompts in the model's chat template; None: the run's setting


def in_chat(sample: Any, render: Callable[[str], str]) -> Any:
    """A sample whose prompt is one user turn of a chat template; continuations lose the
    leading delimiter, since the assistant's turn starts fresh (as lm-eval does)."""
    if isinstance(sample, MultipleChoiceSample):
        return replace(sample, context=render(sample.context), choices=tuple(c.lstrip() for c in sample.choices),
                       contexts=tuple(render(c) for c in sample.contexts), target_delimiter="")
    if isinstance(sample, GenerationSample):
        return replace(sample, prompt=render(sample.prompt))
    if isinstance(sample, ContinuationSample):
        return replace(sample, context=render(sample.context), continuation=sample.continuation.lstrip())
    return sample  # perplexity scores raw text
