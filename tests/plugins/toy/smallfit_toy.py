"""A smallfit backend plugin in one file: a byte-level bigram language model.

A ``.toy`` model file is JSON: ``{"corpus": "text the model learns from", "smoothing": 0.5,
"delay_ms": 1.0, "facts": [["prompt suffix", "answer"], ...]}``. Tokens are UTF-8 bytes;
P(next byte | previous byte) comes from the corpus's bigram counts with additive smoothing, so
every score is exact, deterministic arithmetic and generation is the greedy argmax. A fact makes
the model know an answer: after a context ending in its suffix, the answer's log-likelihood gains
``FACT_BONUS`` nats and generation writes the answer first (each of its bytes at log-probability
near 0, where a bigram guess has the bigram's: the token log-probability signals tell them apart).
``delay_ms`` sleeps per generated
token, so timings are real and of a known size. Its ``options`` can make it fail at load
(``{"fail": "load"}``), kill its own process on the first generation (``{"crash": "generate"}``), or
stop there with SIGILL as a native library built for another CPU does (``{"crash": "sigill"}``):
faults the runner must survive.

smallfit finds it through the ``smallfit.backends`` entry point in this folder's pyproject.toml.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from smallfit.backends.base import BackendConfig, Capabilities
from smallfit.backends.registry import BackendSpec
from smallfit.errors import SmallfitError
from smallfit.records import (
    Completion,
    GenerationRequest,
    Loglikelihood,
    LoglikelihoodRequest,
    RollingLoglikelihood,
    RollingRequest,
)

BOS = 0  # the byte a text starts after
FACT_BONUS = 50.0


class ToyBackend:
    """A byte-bigram model loaded from a ``.toy`` file."""

    capabilities = Capabilities(loglikelihood=True, generation=True, streaming=True, token_logprobs=True)

    def __init__(self, config: BackendConfig) -> None:
        self.options = dict(config.options)
        if self.options.get("fail") == "load":
            raise SmallfitError(f"toy model {config.model_path.name} refused to load (options.fail = 'load')")
        model = _read(config.model_path)
        self.path, self.context_size = config.model_path, config.context_size
        self.delay_s = float(model.get("delay_ms", 0.0)) / 1000
        smoothing = float(model.get("smoothing", 0.5))
        counts = [[smoothing] * 256 for _ in range(256)]
        data = str(model.get("corpus", "")).encode()
        for prev, nxt in zip(bytes([BOS]) + data, data, strict=False):
            counts[prev][nxt] += 1
        self.logp = [[math.log(c / sum(row)) for c in row] for row in counts]
        self.facts = [(str(suffix), str(answer)) for suffix, answer in model.get("facts", [])]
        self.best = [max(range(256), key=lambda b, r=row: (r[b], -b)) for row in counts]

    def _score(self, prev: int, data: bytes) -> tuple[float, bool]:
        total, greedy = 0.0, True
        for b in data:
            total += self.logp[prev][b]
            greedy = greedy and self.best[prev] == b
            prev = b
        return total, greedy

    def _fact(self, context: str) -> str | None:
        return next((answer for suffix, answer in self.facts if context.rstrip().endswith(suffix.rstrip())), None)

    def _check_length(self, n: int) -> None:
        if n > self.context_size:
            raise SmallfitError(f"a request of {n} tokens does not fit the {self.context_size}-token context")

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[Loglikelihood]:
        """log P(continuation | context), byte by byte."""
        out = []
        for r in requests:
            context, continuation = r.context.encode(), r.continuation.encode()
            self._check_length(len(context) + len(continuation))
            logprob, greedy = self._score(context[-1] if context else BOS, continuation)
            if self._fact(r.context) == r.continuation.strip():
                logprob, greedy = logprob + FACT_BONUS, True
            out.append(Loglikelihood(logprob, greedy, len(continuation)))
        return out

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest]) -> list[RollingLoglikelihood]:
        """Every byte of each text, the first after the start byte."""
        out = []
        for r in requests:
            data = r.text.encode()
            out.append(RollingLoglikelihood(self._score(BOS, data)[0], len(data)))
        return out

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """Greedy bytes, timestamped as each is chosen."""
        crash = {"generate": signal.SIGKILL, "sigill": signal.SIGILL}.get(self.options.get("crash", ""))
        if crash is not None:
            os.kill(os.getpid(), crash)
        return [self._generate_one(r) for r in requests]

    def _generate_one(self, req: GenerationRequest) -> Completion:
        t0 = time.perf_counter()
        prompt = req.prompt.encode()
        self._check_length(len(prompt) + 1)
        prev, out, times, finish = prompt[-1] if prompt else BOS, bytearray(), [], "length"
        known = list(f" {self._fact(req.prompt)}\n".encode()) if self._fact(req.prompt) is not None else []
        logprobs: list[float] = []
        for _ in range(min(req.max_tokens, self.context_size - len(prompt))):
            if self.delay_s:
                time.sleep(self.delay_s)
            forced = bool(known)
            nxt = known.pop(0) if known else self.best[prev]
            # a known answer's byte is as sure as the fact bonus makes it; others are the bigram's
            logprobs.append(min(0.0, self.logp[prev][nxt] + FACT_BONUS) if forced else self.logp[prev][nxt])
            prev = nxt
            out.append(prev)
            times.append(time.perf_counter() - t0)
            text = out.decode("utf-8", "ignore")
            cut = min((text.find(s) for s in req.stop if s in text), default=-1)
            if cut >= 0:
                text, finish = text[:cut], "stop"
                break
        else:
            text = out.decode("utf-8", "ignore")
        return Completion(text, len(prompt), len(times), times[0] if times else None,
                          times[-1] if times else time.perf_counter() - t0, tuple(times), finish,
                          tuple(logprobs) if req.logprobs else None)

    def chat_prompt(self, user_message: str) -> str:
        """A plain two-turn template."""
        return f"User: {user_message}\nAssistant:"

    def info(self) -> dict[str, Any]:
        """What shapes the measurements."""
        return {"library": "smallfit-toy", "model_file": str(self.path), "context_size": self.context_size,
                "delay_ms": self.delay_s * 1000, "model_size_bytes": self.path.stat().st_size}

    def close(self) -> None:
        """Nothing to release."""


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SmallfitError(f"{path} is not a toy model (JSON with a corpus): {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("corpus"), str):
        raise SmallfitError(f"{path} is not a toy model: it needs a \"corpus\" string")
    return data


def check_model(location: str, options: Mapping[str, Any]) -> None:
    """Before any work: the file is a toy model."""
    _read(Path(location))


def example(folder: Path) -> str:
    """A small toy model, for the contract test."""
    path = folder / "example.toy"
    path.write_text(json.dumps({"corpus": "The capital of France is Paris. Bees make honey. " * 10}), encoding="utf-8")
    return str(path)


BACKEND = BackendSpec(
    name="toy", load=ToyBackend, formats=("toy",), default_for=("toy",), check_model=check_model, example=example,
    description="a deterministic byte-bigram model (.toy JSON files), for smallfit's tests",
)
