"""The backend contract as checks a plugin's own tests can import::

    from smallfit.testing import check_backend

    def test_my_backend_keeps_the_contract():
        check_backend(lambda: my_backend.load(BackendConfig(Path("model.bin"), threads=1)))

Every registered backend, built-in or a plugin's, must pass these. They check what the runner
relies on, not a model's quality: one result per request in order, batch composition never
changing a score, greedy flags that agree with generation, the timing fields of a
:class:`~smallfit.records.Completion`, stop sequences and fixed-length requests, a prompt that does
not fit ending in a one-line :class:`~smallfit.errors.SmallfitError` when generating, JSON-serialisable info, and
capabilities that match the methods present.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from smallfit.backends.base import Backend, BatchingBackend, ConcurrentBackend, DeviceMemory, missing_methods
from smallfit.errors import SmallfitError
from smallfit.records import GenerationRequest, LoglikelihoodRequest, RollingRequest

PROMPTS = ("The capital of France is", "Question: What do bees make?\nAnswer:")
PAIRS = (("The capital of France is", " Paris"), ("Question: What do bees make?\nAnswer:", " honey"),
         ("Question: Which is heavier, a feather or a brick?\nAnswer:", " a brick"),
         ("Question: Which is heavier, a feather or a brick?\nAnswer:", " a feather"))
TOO_LONG = "word " * 40_000


def check_backend(load: Callable[[], Any], tolerance_nats: float = 1e-4, max_tokens: int = 8) -> None:
    """Load a backend with ``load()`` and check the contract; an ``AssertionError`` names the broken rule.

    ``tolerance_nats`` bounds how much one request's log-likelihood may move when it is scored in
    a batch with others instead of alone (float rounding of batched kernels)."""
    backend = load()
    try:
        check_loaded(backend, tolerance_nats, max_tokens)
    finally:
        backend.close()


def check_loaded(backend: Any, tolerance_nats: float = 1e-4, max_tokens: int = 8) -> None:
    """The contract on a loaded backend (see :func:`check_backend`)."""
    assert isinstance(backend, Backend), f"{type(backend).__name__} lacks a method of the Backend protocol"
    _check_capabilities(backend)
    info = backend.info()
    assert isinstance(info, dict), "info() must return a dict"
    json.dumps(info)  # stored as JSON with the run
    caps = backend.capabilities
    if caps.loglikelihood:
        _check_loglikelihood(backend, tolerance_nats)
    if caps.generation:
        _check_generation(backend, max_tokens)
        if caps.loglikelihood:
            _check_greedy_agrees(backend)
    _check_too_long(backend)


def _check_capabilities(backend: Any) -> None:
    caps = backend.capabilities
    needs = {"batching": BatchingBackend, "concurrency": ConcurrentBackend, "device_memory": DeviceMemory}
    for name, protocol in needs.items():
        if getattr(caps, name):
            missing = missing_methods(backend, protocol)
            assert not missing, f"capabilities.{name} is declared but {', '.join(missing)} is missing"


def _check_loglikelihood(backend: Any, tolerance: float) -> None:
    requests = [LoglikelihoodRequest(c, x) for c, x in PAIRS]
    together = backend.loglikelihood(requests)
    assert len(together) == len(requests), "loglikelihood must return one result per request"
    alone = [backend.loglikelihood([r])[0] for r in requests]
    backwards = backend.loglikelihood(list(reversed(requests)))[::-1]
    for r, a, b, c in zip(requests, together, alone, backwards, strict=True):
        assert math.isfinite(a.logprob) and a.logprob <= 1e-6, f"log P({r.continuation!r}) = {a.logprob}"
        assert a.n_tokens >= 1, "a non-empty continuation has at least one token"
        for other in (b, c):
            assert abs(a.logprob - other.logprob) <= tolerance, (
                f"log P({r.continuation!r}) moved by {abs(a.logprob - other.logprob):.2e} nats with the batch's "
                f"composition or order (tolerance {tolerance:.0e})")
            assert a.n_tokens == other.n_tokens
    text = PROMPTS[0] + PAIRS[0][1]
    (rolling,) = backend.loglikelihood_rolling([RollingRequest(text)])
    assert math.isfinite(rolling.logprob) and rolling.logprob < 0 and rolling.n_tokens >= together[0].n_tokens
    assert rolling.logprob <= together[0].logprob + tolerance, "a whole text is less likely than its last words"


def _check_generation(backend: Any, max_tokens: int) -> None:
    fixed = [GenerationRequest(p, max_tokens, ignore_eos=True) for p in PROMPTS]
    completions = backend.generate(fixed)
    assert len(completions) == len(fixed), "generate must return one completion per request"
    for c in completions:
        assert c.n_output_tokens == max_tokens, f"ignore_eos must yield exactly max_tokens, got {c.n_output_tokens}"
        assert c.finish_reason == "length", f"a fixed-length request ends by length, not {c.finish_reason!r}"
        _check_timings(c)
    (first,) = backend.generate([GenerationRequest(PROMPTS[0], max_tokens)])
    _check_timings(first)
    assert first.n_output_tokens <= max_tokens and first.finish_reason in ("stop", "length", "eos")
    if first.text.strip():
        stop = first.text.strip()[:2]
        (cut,) = backend.generate([GenerationRequest(PROMPTS[0], max_tokens, stop=(stop,))])
        assert stop not in cut.text, f"the stop sequence {stop!r} must be cut from the text"
        assert cut.finish_reason == "stop", \
            f"a request cut by a stop sequence ends by 'stop', not {cut.finish_reason!r}"


def _check_timings(c: Any) -> None:
    times = list(c.token_times_s)
    if c.n_output_tokens and times:
        assert c.ttft_s == times[0], "ttft_s is the first token's time"
        assert all(b >= a for a, b in zip(times, times[1:], strict=False)), "token times never go backwards"
        assert c.latency_s >= times[-1] - 1e-9, "latency_s covers every token"
    assert c.latency_s >= 0


def _check_greedy_agrees(backend: Any) -> None:
    (c,) = backend.generate([GenerationRequest(PROMPTS[0], 2, ignore_eos=True)])
    if not c.text:
        return
    (scored,) = backend.loglikelihood([LoglikelihoodRequest(PROMPTS[0], c.text)])
    assert scored.is_greedy, f"the model's own greedy continuation {c.text!r} must score as greedy"


def _check_too_long(backend: Any) -> None:
    """A prompt the context cannot hold is a one-line SmallfitError for generation (scoring may
    truncate the context from the left, as lm-evaluation-harness does), and the backend works after it."""
    if not backend.capabilities.generation:
        return
    try:
        backend.generate([GenerationRequest(TOO_LONG, 2)])
    except SmallfitError as exc:
        assert "\n" not in str(exc), "a user-facing error is one line"
    else:
        raise AssertionError("a prompt longer than the context must raise a SmallfitError")
    if not backend.capabilities.concurrency:  # a server process may drop the next stream (its own fault)
        (c,) = backend.generate([GenerationRequest(PROMPTS[0], 2, ignore_eos=True)])
        assert c.n_output_tokens == 2, "the backend must keep working after a refused request"
