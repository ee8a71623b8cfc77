"""The backend contract, modelled on lm-evaluation-harness's three batched methods.

A backend scores continuations (``loglikelihood``), scores whole texts
(``loglikelihood_rolling``) and generates text with timings taken where tokens are produced
(``generate``). Each takes a sequence of requests and returns one result per request, in order.
Every backend, built-in or a plugin's, is declared by a :class:`~smallfit.backends.registry.BackendSpec`
registered under the ``smallfit.backends`` entry-point group (see :mod:`smallfit.backends.registry`);
its library is imported only when a candidate uses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from smallfit.records import (
    Completion,
    GenerationRequest,
    Loglikelihood,
    LoglikelihoodRequest,
    RollingLoglikelihood,
    RollingRequest,
)


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do; the runner asks these, never the backend's name."""

    loglikelihood: bool = True
    generation: bool = True
    streaming: bool = True
    batching: bool = False  # generate_together / prefill_seconds / context_train (the load and context probes)
    embedding: bool = False  # embed(): an encoder (sentence embeddings), see EmbeddingBackend
    concurrency: bool = False  # measure_concurrency(): several requests in flight (a server), see ConcurrentBackend
    device_memory: bool = False  # reset/peak_device_memory_bytes(): peak memory on an accelerator, see DeviceMemory
    token_logprobs: bool = False  # generate() fills Completion.token_logprobs when a request asks (logprobs=True)


@dataclass(frozen=True)
class BackendConfig:
    """How to load a model. ``threads=None`` lets the backend choose; the choice is recorded.

    ``model_path`` is the local file or folder; a model served over HTTP has none (``Path()``)
    and is found at ``location`` instead (``http://HOST:PORT/v1#MODEL``).
    """

    model_path: Path
    threads: int | None = None
    context_size: int = 2048
    batch_size: int = 512
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    location: str = ""  # a served model's URL; "" for local models


@runtime_checkable
class Backend(Protocol):
    """A loaded model behind smallfit's three batched methods."""

    capabilities: Capabilities

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[Loglikelihood]:
        """log P(continuation | context) for each request."""
        ...

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest]) -> list[RollingLoglikelihood]:
        """Sum of log-probabilities of every token of each text (for perplexity)."""
        ...

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """Greedy generation with per-token timestamps."""
        ...

    def chat_prompt(self, user_message: str) -> str:
        """``user_message`` as one user turn in the model's own chat template, ready for the
        assistant's answer; raises SmallfitError when the model has no chat template."""
        ...

    def info(self) -> dict[str, Any]:
        """Settings that shape the measurements (threads, context, batch size, library version)."""
        ...

    def close(self) -> None:
        """Release the model."""
        ...


class BatchingBackend(Backend, Protocol):
    """A backend that declares ``capabilities.batching``: the load-curve and context probes."""

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids from the model's own tokenizer."""
        ...

    def generate_together(self, prompts: Sequence[str], max_tokens: int) -> list[Completion]:
        """Fixed-length greedy generation of all prompts decoded together."""
        ...

    def prefill_seconds(self, tokens: Sequence[int]) -> float:
        """Seconds to evaluate a prompt and pick its first output token, in a fresh context."""
        ...

    def context_train(self) -> int:
        """The model's training context length."""
        ...


@runtime_checkable
class EmbeddingBackend(Protocol):
    """An encoder that declares ``capabilities.embedding`` (and usually neither loglikelihood nor
    generation): embedding tasks call :meth:`embed`."""

    capabilities: Capabilities

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One sentence embedding per text, in order, pooled as the model defines (mean pooling
        over the attention mask for sentence-transformers models), and scaled to unit length
        only where it defines that too (a ``Normalize`` module in its ``modules.json``)."""
        ...

    def count_tokens(self, text: str) -> int:
        """How many tokens the model's own tokenizer makes of ``text`` (special tokens included)."""
        ...

    def info(self) -> dict[str, Any]:
        """Settings that shape the measurements."""
        ...

    def close(self) -> None:
        """Release the model."""
        ...


@runtime_checkable
class ConcurrentBackend(Protocol):
    """A backend that declares ``capabilities.concurrency`` (a server can keep several requests
    in flight): the worker runs its concurrency pass."""

    def measure_concurrency(self, requests: Sequence[GenerationRequest]) -> list[dict[str, Any]]:
        """The same requests at each concurrency level: one dict of throughput and latency
        figures per level (``concurrency``, ``requests_per_s``, ``latency_s_p95``...)."""
        ...


@runtime_checkable
class DeviceMemory(Protocol):
    """A backend that declares ``capabilities.device_memory``: peak memory on its accelerator."""

    def reset_peak_device_memory(self) -> None:
        """Start a new peak window."""
        ...

    def peak_device_memory_bytes(self) -> int | None:
        """Peak bytes allocated on the device since the last reset; None where not on one."""
        ...


def missing_methods(obj: object, protocol: type) -> list[str]:
    """The methods of ``protocol`` that ``obj`` lacks (a plugin's model checked against its contract)."""
    return [m for m, v in vars(protocol).items() if not m.startswith("_") and callable(v) and not hasattr(obj, m)]


def load_backend(name: str, config: BackendConfig) -> Backend:
    """Load the model on the registered backend ``name`` (or one of its aliases)."""
    from smallfit.backends.registry import get_backend

    backend: Backend = get_backend(name).load(config)
    return backend
