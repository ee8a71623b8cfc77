"""The cascade backend: several models loaded in one process, a request answered by the first
whose confidence signal reaches its threshold (the last always answers), run live.

Scoring (multiple choice, classification): requests that share a context are one question; the
first model scores all questions of a call at once, the ones whose ``prob`` (or the signal the
cascade names) falls below its threshold go to the next model, and so on; each question's
log-likelihoods are those of the model that answered it. Generation: the first model generates
with token log-probabilities, and a request whose signal (default ``logprob_p10``) falls
below the threshold is generated again by the next (a positive threshold is a probability:
the signal's exponential is compared with it; one at most 0 a log-probability); the answer,
its tokens and their times are the answering model's, its times counted from the start of the
whole request, so the latency of a deferred request includes every model it passed through.
Perplexity has no answer to defer: the last (largest) model scores the text. Question grouping
needs one shared context per question: partial-evaluation tasks (a context per choice,
WinoGrande) never defer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from smallfit.backends.base import Backend, BackendConfig, Capabilities
from smallfit.backends.registry import BackendSpec, get_backend
from smallfit.errors import SmallfitError
from smallfit.records import (
    Completion,
    GenerationRequest,
    Loglikelihood,
    LoglikelihoodRequest,
    RollingLoglikelihood,
    RollingRequest,
)
from smallfit.signals import CHOICE_SIGNALS, TOKEN_SIGNALS, choice_signals, token_signals


class CascadeBackend:
    """Loaded members, smallest first, and the thresholds between them."""

    def __init__(self, config: BackendConfig) -> None:
        from smallfit.cascade.live import read

        data = read(config.model_path)
        self.thresholds: list[float] = [float(t) for t in data["thresholds"]]
        self.signal: str | None = data.get("signal") or config.options.get("signal")
        self.names = [str(s["name"]) for s in data["stages"]]
        self.members: list[Backend] = []
        try:
            for stage in data["stages"]:
                member_cfg = BackendConfig(model_path=Path(stage["location"]), threads=config.threads,
                                           context_size=config.context_size, batch_size=config.batch_size,
                                           seed=config.seed, options=dict(stage.get("options") or {}))
                try:
                    self.members.append(get_backend(stage["backend"]).load(member_cfg))
                except SmallfitError as exc:
                    raise SmallfitError(f"cascade member {stage['name']} did not load: {exc}") from None
        except BaseException:
            self.close()
            raise
        caps = [m.capabilities for m in self.members]
        self.capabilities = Capabilities(
            loglikelihood=all(c.loglikelihood for c in caps), generation=all(c.generation for c in caps),
            streaming=True, token_logprobs=all(c.token_logprobs for c in caps))
        self.answered = [0] * len(self.members)
        self.sizes = [int(s["size_bytes"]) for s in data["stages"]]

    def _threshold_signal(self, kinds: tuple[str, ...], default: str) -> str:
        if self.signal is None:
            return default
        if self.signal not in kinds:
            raise SmallfitError(f"the cascade defers on {self.signal}, which this task kind does not give "
                                f"({', '.join(kinds)}); set the signal in the candidate's options")
        return self.signal

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[Loglikelihood]:
        """Each question scored by the first model sure enough of its answer."""
        groups: list[list[int]] = []
        for i, r in enumerate(requests):
            if groups and requests[groups[-1][0]].context == r.context:
                groups[-1].append(i)
            else:
                groups.append([i])
        signal = self._threshold_signal(CHOICE_SIGNALS, "prob")
        out: list[Loglikelihood | None] = [None] * len(requests)
        pending = list(range(len(groups)))
        for j, member in enumerate(self.members):
            idx = [i for g in pending for i in groups[g]]
            scored = dict(zip(idx, member.loglikelihood([requests[i] for i in idx]), strict=True))
            onward = []
            for g in pending:
                logprobs = [scored[i].logprob for i in groups[g]]
                last = j == len(self.members) - 1
                if not last and choice_signals(logprobs)[signal] < self.thresholds[j]:
                    onward.append(g)
                    continue
                for i in groups[g]:
                    out[i] = scored[i]
                self.answered[j] += 1
            pending = onward
            if not pending:
                break
        return [o for o in out if o is not None]

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest]) -> list[RollingLoglikelihood]:
        """A whole text has no answer to defer: the last (largest) model scores it."""
        return self.members[-1].loglikelihood_rolling(requests)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """Each request generated by the first model sure enough of its text."""
        signal = self._threshold_signal(TOKEN_SIGNALS, "logprob_p10")
        return [self._generate_one(r, signal) for r in requests]

    def _generate_one(self, req: GenerationRequest, signal: str) -> Completion:
        t0 = time.perf_counter()
        for j, member in enumerate(self.members):
            last = j == len(self.members) - 1
            start = time.perf_counter() - t0
            (c,) = member.generate([replace(req, logprobs=req.logprobs or not last)])
            if not last:
                if c.token_logprobs is None:
                    raise SmallfitError(f"cascade member {self.names[j]} gives no token log-probabilities; "
                                        "a generating cascade needs them to defer")
                sure = _as_threshold_scale(token_signals(c.token_logprobs)[signal], self.thresholds[j])
                if sure < self.thresholds[j]:
                    continue
            self.answered[j] += 1
            times = tuple(start + t for t in c.token_times_s)
            return replace(c, ttft_s=times[0] if times else None, latency_s=start + c.latency_s, token_times_s=times,
                           token_logprobs=c.token_logprobs if req.logprobs else None)
        raise AssertionError("the last member always answers")

    def chat_prompt(self, user_message: str) -> str:
        """Each member has its own template: a cascade takes prompts as they are."""
        raise SmallfitError("a cascade's models have chat templates of their own; run the cascade without --chat")

    def info(self) -> dict[str, Any]:
        """The members' settings, the thresholds and how many requests each member answered."""
        return {"library": "smallfit cascade", "members": self.names, "thresholds": self.thresholds,
                "signal": self.signal, "answered_by_member": dict(zip(self.names, self.answered, strict=True)),
                "member_info": [m.info() for m in self.members], "model_size_bytes": sum(self.sizes),
                "context_size": min(int(m.info().get("context_size") or 2048) for m in self.members)}

    def close(self) -> None:
        """Release every member."""
        for m in self.members:
            m.close()
        self.members = []


def _as_threshold_scale(logprob: float, threshold: float) -> float:
    """A token log-probability statistic on its threshold's scale: as it is against a threshold
    of at most 0 (a log-probability), as a probability (its exponential) against a positive one,
    so that ``@0.9`` means the same confidence for a generating task as for a classifying one."""
    return math.exp(logprob) if threshold > 0 else logprob


def check_model(location: str, options: Mapping[str, Any]) -> None:
    """Before any work: every member parses and its files or packages are there."""
    from smallfit.cascade.live import check_members

    check_members(location)


def example(folder: Path) -> str:
    """A cascade of the llama.cpp backend's example model with itself, for the contract test."""
    import json

    llamacpp = get_backend("llamacpp")
    assert llamacpp.example is not None
    model = Path(llamacpp.example(folder))
    stage = {"backend": "llamacpp", "location": str(model), "size_bytes": model.stat().st_size, "options": {}}
    path = folder / "example.cascade"
    path.write_text(json.dumps({"stages": [{**stage, "name": "first"}, {**stage, "name": "second"}],
                                "thresholds": [0.5], "signal": None}), encoding="utf-8")
    return str(path)


BACKEND = BackendSpec(
    name="cascade", load=CascadeBackend, formats=("cascade",), default_for=("cascade",), check_model=check_model,
    example=example,
    description="a cascade of other models (cascade:SMALL,LARGE@T): the small one answers, a larger one takes "
                "the requests it is unsure of, live",
)
