"""Plain typed records that flow from backends through tasks and the runner to the store.

Everything here is a frozen dataclass of builtins, so it serialises to JSON with
``dataclasses.asdict`` and crosses the process boundary between the runner and a candidate's
worker unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
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
    logprobs: bool = False  # fill Completion.token_logprobs (backends with the token_logprobs capability)


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
    token_logprobs: tuple[float, ...] | None = None
    """Natural-log probability of each output token under the model, from the same greedy pass;
    None where the request did not ask for them or the backend cannot give them."""


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
    signals: dict[str, float] = field(default_factory=dict)
    """Confidence signals of the answer (:mod:`smallfit.signals`), as the backend could give them."""
    latency_s: float | None = None
    """Seconds this example's requests took: its own generation request, or its share of the
    batched scoring call it was in, in proportion to the characters it scored (scoring tasks
    score several examples per call)."""


@dataclass
class TaskInfo:
    """How a candidate x task was measured: stored with its result, read by the reports.

    Every field a report reads is declared here; a figure's label (``labels``) says whether it
    was measured or estimated, and from what. Probe-specific details go in ``details``.
    """

    kind: str = ""
    """The task kind (multiple_choice, generation, perplexity, ...) or ``probe``."""
    n_samples: int | None = None
    """Scored examples."""
    limit: int | None = None
    """``--limit``: the first N examples, when given."""
    sample: int | None = None
    """``--sample``: a seeded random N examples, when given."""
    seed: int | None = None
    """The seed of ``sample``."""
    source: str = ""
    """Where the task's data came from."""
    warmup_requests: int = 0
    """Untimed requests before the timed ones."""
    timed_requests: int = 0
    """Requests whose timings make the efficiency figures."""
    chat_template: bool = False
    """Prompts were wrapped in the model's chat template."""
    latency_pass_prompts: int = 0
    """Prompts of the fixed-length latency pass (scoring tasks; 0 where generation was timed itself)."""
    latency_pass_max_tokens: int | None = None
    """Tokens generated per latency-pass request."""
    timing_min_requests: int | None = None
    """The timing rule: at least this many timed requests..."""
    timing_min_s: float | None = None
    """...and at least this many seconds of them."""
    peak_rss_source: str = ""
    """How peak memory was read (VmHWM after a reset, ru_maxrss...), or why it was not."""
    peak_rss_since_start: bool = False
    """The peak could not be reset: it covers the whole process since it started (loading too)."""
    contention: dict[str, Any] = field(default_factory=dict)
    """Other processes' CPU use while this task was timed (see probes.load.Contention)."""
    noisy: bool | None = None
    """Other work took CPU time the timings needed: the figures are less trustworthy."""
    labels: dict[str, str] = field(default_factory=dict)
    """Metric -> ``measured: ...``, ``estimated: ...`` or ``not measured: reason``."""
    intervals: dict[str, str] = field(default_factory=dict)
    """Metric -> how its stored 95% interval (``<metric>_ci_low/_ci_high``) was made
    (``clopper-pearson``, ``wilson`` in older runs, ``bootstrap (examples)``, ``bootstrap (requests)``); the
    verdict, the report and the exports use that one interval.
    Empty for runs stored before intervals were stored once."""
    concurrency: list[dict[str, Any]] | None = None
    """Per concurrency level throughput and latency (backends with the concurrency capability)."""
    concurrency_error: str | None = None
    """Why the concurrency pass failed, when it did."""
    backend: dict[str, Any] = field(default_factory=dict)
    """Backend counters that changed while the task ran (a server's retries)."""
    sweep_variant: str | None = None
    """The quantization variant of a ``--quantize`` sweep candidate."""
    sweep_reference: str | None = None
    """The sweep's full-precision reference it was compared with."""
    unsupported: str | None = None
    """A probe this backend cannot run, and why."""
    memory_budget_bytes: float | None = None
    """The context probe's memory budget (the budget's tightest peak_rss_bytes bound)."""
    signals: list[str] = field(default_factory=list)
    """Confidence signals stored with every example (:mod:`smallfit.signals`); empty for runs
    stored before signals were."""
    signals_missing: str | None = None
    """Why a signal this task kind has was not given (a backend without token log-probabilities)."""
    details: dict[str, Any] = field(default_factory=dict)
    """Anything else a probe records (batch sizes, lengths tried, knee rule)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskInfo:
        """Read stored info, also as runs before this record stored it (unknown keys -> details)."""
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in data.items() if k in names}
        rest = {k: v for k, v in data.items() if k not in names}
        rule = rest.pop("timing_rule", None)
        if isinstance(rule, dict):
            known.setdefault("timing_min_requests", rule.get("min_requests"))
            known.setdefault("timing_min_s", rule.get("min_s"))
        sweep = rest.pop("sweep", None)
        if isinstance(sweep, dict):
            known.setdefault("sweep_variant", sweep.get("variant"))
            known.setdefault("sweep_reference", sweep.get("reference"))
        if "since process start" in str(known.get("peak_rss_source", "")):  # as stored before 0003
            known["peak_rss_since_start"] = True
        details = {**rest, **(known.pop("details", None) or {})}
        return cls(**known, details=details)


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
    info: TaskInfo = field(default_factory=TaskInfo)
