"""Requests to tokens with a Hugging Face tokenizer, shared by the backends that use one
(transformers, ONNX Runtime), so the same weights score the same on both.

As lm-evaluation-harness's HF model: trailing whitespace of a context moves to its continuation,
the continuation's tokens are those of ``tokenize(context + continuation)`` after the context's,
a text without context is predicted from the BOS token (EOS where there is none), and a rolling
text is scored in lm-eval's rolling windows of the model's own context.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from smallfit.backends.llamacpp import split_pair
from smallfit.backends.rolling import rolling_windows
from smallfit.errors import SmallfitError
from smallfit.records import (
    Loglikelihood,
    LoglikelihoodRequest,
    RollingLoglikelihood,
    RollingRequest,
)

TokenPair = tuple[list[int], list[int]]


def special_tokens(tokenizer: Any) -> tuple[bool, int]:
    """(whether the tokenizer adds BOS itself, the token that prefixes a text without context)."""
    probe = tokenizer("a", add_special_tokens=True).input_ids
    bare = tokenizer("a", add_special_tokens=False).input_ids
    bos, eot = tokenizer.bos_token_id, tokenizer.eos_token_id
    add_bos = bos is not None and len(probe) > len(bare) and probe[0] == bos
    return add_bos, bos if bos is not None else eot


class HFTokenScoring:
    """Mixin: ``tokenize``, ``detokenize``, ``chat_prompt``, ``loglikelihood`` and
    ``loglikelihood_rolling`` over the class's ``_score(pairs) -> [(logprob, is_greedy)]``. The
    class sets ``tokenizer``, ``add_bos``, ``prefix_token``, ``max_length`` and ``rolling_length``."""

    tokenizer: Any
    add_bos: bool
    prefix_token: int
    max_length: int
    rolling_length: int
    """Tokens per rolling window: the model's own context where its config states one (as lm-eval)."""

    def _score(self, pairs: Sequence[TokenPair]) -> list[tuple[float, bool]]:
        raise NotImplementedError

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids; BOS only where the tokenizer itself adds one (as lm-eval's HF model) and
        the text does not already start with it (a chat template's output may)."""
        ids: list[int] = self.tokenizer(text, add_special_tokens=False).input_ids
        bos = self.tokenizer.bos_token_id
        if add_bos and self.add_bos and not (ids and ids[0] == bos):
            return [bos, *ids]
        return ids

    def chat_prompt(self, user_message: str) -> str:
        """One user turn in the tokenizer's chat template."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise SmallfitError("this model's tokenizer has no chat template; set chat_template = false for the task")
        try:
            return str(self.tokenizer.apply_chat_template([{"role": "user", "content": user_message}],
                                                          tokenize=False, add_generation_prompt=True))
        except Exception as exc:  # noqa: BLE001 - a template is a program of its own
            raise SmallfitError(f"the model's chat template failed to render: {exc}") from None

    def detokenize(self, ids: Sequence[int]) -> str:
        """The text of token ids as generation reports it: special tokens left out."""
        text: str = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        return text

    def _last_positions(self, text: str, last_n: int) -> tuple[list[int], int]:
        """For ``next_token_logprobs``: the text's tokens (its end, if longer than the context)
        and how many of the last positions to return (``last_n``, fewer for a short text)."""
        tokens = (self.tokenize(text) or [self.prefix_token])[-self.max_length:]
        return tokens, min(last_n, len(tokens))

    def _pair(self, req: LoglikelihoodRequest) -> TokenPair:
        context, continuation = split_pair(req.context, req.continuation)
        if not context:
            return [self.prefix_token], self.tokenize(continuation, add_bos=False)
        ctx = self.tokenize(context)
        whole = self.tokenize(context + continuation)
        return ctx, whole[len(ctx):]

    def _fit(self, ctx: list[int], cont: list[int]) -> tuple[list[int], list[int]]:
        """Context and continuation cut to the context size: the continuation's end, then as
        much of the context's end as fits."""
        cont = cont[-(self.max_length - 1):] if len(cont) >= self.max_length else cont
        keep = max(1, self.max_length - len(cont))
        return ctx[-keep:], cont

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[Loglikelihood]:
        """Score continuations; a context shared by several is evaluated once."""
        pairs = [self._pair(r) for r in requests]
        scored = self._score(pairs)
        return [Loglikelihood(lp, greedy, len(cont)) for (lp, greedy), (_, cont) in zip(scored, pairs, strict=True)]

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest]) -> list[RollingLoglikelihood]:
        """lm-eval's rolling windows of the model's own context (``rolling_length``): each window
        after the first is read with a full window of the tokens before it."""
        pairs: list[TokenPair] = []
        owners: list[int] = []
        counts = []
        for i, req in enumerate(requests):
            tokens = self.tokenize(req.text, add_bos=False)
            counts.append(len(tokens))
            for window in rolling_windows(tokens, self.prefix_token, self.rolling_length):
                pairs.append(window)
                owners.append(i)
        totals = [0.0] * len(requests)
        run_length, self.max_length = self.max_length, self.rolling_length
        try:  # the scorer fits pairs to max_length: here, the model's own context
            scored = self._score(pairs)
        finally:
            self.max_length = run_length
        for owner, (lp, _) in zip(owners, scored, strict=True):
            totals[owner] += lp
        return [RollingLoglikelihood(t, n) for t, n in zip(totals, counts, strict=True)]
