"""Plain typed records that flow from backends through tasks and the runner to the store.

Everything here is a frozen dataclass of builtins, so it serialises to JSON with
``dataclasses.asdict`` and crosses the process boundary between the runner and a candidate's
worker unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LoglikelihoodRequest:
    """Score ``continuation`` given ``context``: log P(continuation | context)."""

    context: str
    continuation: str


@dataclass(frozen=True)
class Loglikelihood:
    """Result of a :class:`LoglikelihoodRequest`.

    ``logprob`` is the sum of the continuation tokens' natural-log probabilities;
    ``is_greedy`` is true when every continuation token was the model's argmax.
    """

    logprob: float
    is_greedy: bool
    n_tokens: int


@dataclass(frozen=True)
class RollingRequest:
    """Score a whole text (perplexity): the sum of log-probabilities of all its tokens."""

    text: str


@dataclass(frozen=True)
class RollingLoglikelihood:
    """Result of a :class:`RollingRequest`: natural-log probability of every token of the text."""

    logprob: float
    n_tokens: int


@dataclass(frozen=True)
class GenerationRequest:
    """Greedy generation from ``prompt`` until a stop sequence, end of text or ``max_tokens``.

    With ``ignore_eos`` the end-of-text token is never chosen (the best other token is), so the
    request yields exactly ``max_tokens`` tokens, as perf tools time decoding.
    """

    prompt: str
    max_tokens: int = 32
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # keep generating past end-of-text: a fixed-length timing request


@dataclass(frozen=True)
class Completion:
    """Generated text with timings taken where the tokens are produced.

    Times are seconds from the moment the backend received the request (monotonic clock).
    ``token_times_s[i]`` is when output token ``i`` became available; ``ttft_s`` equals
    ``token_times_s[0]``. Token counts come from the model's own tokenizer. A server backend
    timestamps streamed chunks (usually one token each; its ``info()`` says how counts were
    made) and may not know the prompt's token count (``None``).
    """

    text: str
    n_prompt_tokens: int | None
    n_output_tokens: int
    ttft_s: float | None
    latency_s: float
    token_times_s: tuple[float, ...]
    finish_reason: str  # "stop", "length" or "eos"


@dataclass(frozen=True)
class RequestTiming:
    """One timed request, kept raw in the store; every efficiency aggregate derives from these."""

    index: int
    phase: str  # "quality": the task's own requests; "latency": the latency pass on its prompts
    n_prompt_tokens: int | None  # None where not counted (scoring requests)
    n_output_tokens: int
    ttft_s: float | None
    latency_s: float
    token_times_s: tuple[float, ...] = ()

    @classmethod
    def of(cls, index: int, phase: str, completion: Completion) -> RequestTiming:
        """The timing record of a generated completion."""
        c = completion
        return cls(index, phase, c.n_prompt_tokens, c.n_output_tokens, c.ttft_s, c.latency_s, c.token_times_s)


@dataclass(frozen=True)
class SampleResult:
    """One scored example: what was asked, what was expected, what the model gave, its scores."""

    index: int
    sample_id: str
    prompt: str
    target: str
    prediction: str
    scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskResult:
    """Everything one candidate produced on one task.

    ``metrics`` is the flat map exported by ``smallfit results --format json``: quality metrics
    with ``_stderr`` siblings and efficiency metrics; a figure that was not measured is ``None``.
    """

    task: str
    metrics: dict[str, float | None]
    samples: list[SampleResult]
    timings: list[RequestTiming]
    info: dict[str, Any] = field(default_factory=dict)
