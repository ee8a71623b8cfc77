"""Embedding tasks, for encoders: classification by the nearest label prototype.

Each label gets a prototype vector: the mean of the embeddings of its training examples, or,
for a label without any, the embedding of its description. Each text is given the label whose
prototype has the highest cosine similarity to its own embedding. Quality is ``acc`` and
``macro_f1``; every ``embed`` call is timed (one batch per chunk of texts), and the worker's
timing pass sends single texts (:func:`embed_timing`) so that latency per request is real.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from smallfit import scoring
from smallfit.backends.base import Backend, EmbeddingBackend
from smallfit.errors import SmallfitError
from smallfit.metrics import EMBED_PHASE
from smallfit.records import RequestTiming, SampleResult
from smallfit.tasks.base import SCORE_CHUNK, Progress, _mean_metrics


@dataclass(frozen=True)
class EmbeddingSample:
    """A text to classify and the index of its gold label."""

    id: str
    text: str
    gold: int


@dataclass(frozen=True)
class LabelSet:
    """The labels and, for each, the texts whose mean embedding is its prototype: its training
    examples, or its description alone (``origins`` says which)."""

    labels: tuple[str, ...]
    texts: tuple[tuple[str, ...], ...]
    origins: tuple[str, ...]  # "train" or "description", per label


def encoder(backend: Backend | EmbeddingBackend, task: str = "an embedding task") -> EmbeddingBackend:
    """The backend as an encoder, or a one-line error when it cannot embed."""
    if not backend.capabilities.embedding:
        raise SmallfitError(f"{task} needs an encoder (a backend that embeds, e.g. minilm-l6); this model "
                            "is a causal LM without embeddings")
    return cast(EmbeddingBackend, backend)


def _timed_embed(backend: EmbeddingBackend, texts: Sequence[str], timings: list[RequestTiming]) -> list[list[float]]:
    t0 = time.perf_counter()
    vectors = backend.embed(texts)
    elapsed = time.perf_counter() - t0
    if len(vectors) != len(texts):
        raise SmallfitError(f"the backend returned {len(vectors)} embeddings for {len(texts)} texts")
    tokens = sum(backend.count_tokens(t) for t in texts)
    timings.append(RequestTiming(len(timings), "quality", tokens, 0, None, elapsed))
    return vectors


def embed_timing(backend: Backend | EmbeddingBackend, text: str, index: int = 0) -> RequestTiming:
    """One single-text embedding request, timed: its latency and input tokens (no first token,
    no output tokens)."""
    enc = encoder(backend)
    t0 = time.perf_counter()
    enc.embed([text])
    elapsed = time.perf_counter() - t0
    return RequestTiming(index, EMBED_PHASE, enc.count_tokens(text), 0, None, elapsed)


@dataclass(frozen=True)
class EmbeddingClassification:
    """Assign each text the label with the nearest prototype (cosine); ``acc`` and ``macro_f1``.

    ``label_set`` is called when the task runs (it reads the training file)."""

    label_set: Callable[[], LabelSet]
    name: str = "embedding_classification"
    generates: bool = False
    requires: str = "embedding"
    quality_metrics: tuple[str, ...] = ("acc", "macro_f1")

    def prototypes(self, backend: EmbeddingBackend, timings: list[RequestTiming]) -> tuple[LabelSet, list[list[float]]]:
        """The label set and each label's prototype vector (its texts embedded in one call)."""
        ls = self.label_set()
        flat = [t for texts in ls.texts for t in texts]
        vectors = iter(_timed_embed(backend, flat, timings))
        return ls, [scoring.mean_vector([next(vectors) for _ in texts]) for texts in ls.texts]

    def run(self, backend: Backend, samples: Sequence[EmbeddingSample],
            progress: Progress) -> tuple[list[SampleResult], list[RequestTiming]]:
        enc = encoder(backend)
        timings: list[RequestTiming] = []
        ls, protos = self.prototypes(enc, timings)
        results = []
        for lo in range(0, len(samples), SCORE_CHUNK):
            chunk = samples[lo : lo + SCORE_CHUNK]
            vectors = _timed_embed(enc, [s.text for s in chunk], timings)
            for j, (s, v) in enumerate(zip(chunk, vectors, strict=True)):
                sims = [scoring.cosine(v, p) for p in protos]
                pred = scoring.argmax(sims)
                scores = {"acc": float(pred == s.gold), "gold": float(s.gold), "pred": float(pred)}
                scores.update({f"cos_{k}": c for k, c in enumerate(sims)})  # kept for inspection
                results.append(SampleResult(lo + j, s.id, s.text, ls.labels[s.gold], ls.labels[pred], scores))
            progress(lo + len(chunk))
        return results, timings

    def aggregate(self, results: Sequence[SampleResult]) -> dict[str, float | None]:
        out = _mean_metrics(results, ("acc",))
        pairs = [(r.scores["gold"], r.scores["pred"]) for r in results]

        def stat(rows: Sequence[tuple[float, ...]]) -> float:
            return scoring.macro_f1([(int(g), int(p)) for g, p in rows])

        draws = scoring.bootstrap_replicates(pairs, stat)
        out["macro_f1"] = stat(pairs)
        out["macro_f1_stderr"] = scoring.sample_stdev(draws)  # bootstrap standard error
        out["macro_f1_ci_low"], out["macro_f1_ci_high"] = scoring.percentile(draws, 2.5), scoring.percentile(draws,
                                                                                                             97.5)
        return out

    def prompt_of(self, sample: EmbeddingSample) -> str:
        return sample.text

