"""One greedy-decode loop for the in-process backends that compute next-token logits
(transformers, ONNX Runtime), timed as the llama.cpp backend's: a token is timestamped once its
id is known (after a device sync), before any text is made of it, and text is made from a short
window of recent tokens, never by decoding the whole output again, so the time between tokens is
the model's. A backend supplies a :class:`GreedyModel`; logits are anything with ``argmax()``
and index assignment, so no tensor library is imported here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, SupportsInt, TypeVar

from smallfit.errors import SmallfitError
from smallfit.records import Completion, GenerationRequest

State = TypeVar("State")
INCOMPLETE = "\ufffd"  # what a decode gives for the bytes of a character not yet complete


class Logits(Protocol):
    """Next-token logits over the vocabulary, 1-D (a numpy array, a torch tensor)."""

    def argmax(self) -> SupportsInt: ...

    def __setitem__(self, index: Any, value: float, /) -> None: ...


def _no_sync() -> None:
    return None


@dataclass(frozen=True)
class GreedyModel(Generic[State]):
    """What the loop needs from a backend.

    The loop owns the logits it is given: with ``ignore_eos`` it writes ``-inf`` into them.
    """

    prefill: Callable[[Sequence[int]], tuple[State, Logits]]
    """The prompt's ids from an empty cache: the state to go on from, the next token's logits."""
    step: Callable[[State, int, int], tuple[State, Logits]]
    """(state, token, its position): the next state and the logits of the token after it."""
    decode: Callable[[Sequence[int]], str]
    """Token ids to text, as the tokenizer's own decode (special tokens left out)."""
    eos_ids: frozenset[int]
    """Tokens that end the text; never chosen under ``ignore_eos``."""
    context_size: int
    """Prompt and output tokens together may not exceed this."""
    sync: Callable[[], None] = _no_sync
    """Waits until the device has finished (CUDA); called before each token is timestamped."""
    logprob: Callable[[Any, int], float] | None = None
    """log-softmax of the logits at a token (the chosen token's log-probability), for requests
    that ask for ``logprobs``; None where the backend does not give them."""


class IncrementalDetokenizer:
    """Text of a growing token sequence with a bounded decode per token (as vLLM's detokenizer).

    The text is ``frozen + decode(ids[prefix:])``. The window ``ids[prefix:]`` holds the tokens
    of the last step that added complete text (``ids[prefix:read]``, whose text was ``stable``),
    the context a tokenizer needs (SentencePiece strips a text's leading space; a character may
    span byte tokens), and the tokens since. Once the window's text is complete (no U+FFFD at
    its end) it slides: the text before its last complete step is frozen, never decoded again.

    Byte fallback turns a whole run of byte tokens into U+FFFD once one of them is invalid, and
    the run may reach before the window: where the stable text turned into U+FFFD, the text is
    decoded from the start once (only broken UTF-8, or an end in mid-character, does that).
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._frozen: list[str] = []
        self.frozen_chars = 0
        """Characters of the text before the window."""
        self._prefix = self._read = 0
        self._window = ""  # decode(ids[prefix:])
        self._stable = ""  # decode(ids[prefix:read])

    def add(self, token: int) -> int:
        """Append one token (one decode of the window, one more when it slides); returns the
        first character of the text that it may have changed."""
        changed = self.frozen_chars
        self._ids.append(token)
        self._window = self._decode(self._ids[self._prefix :])
        if self._window.endswith(INCOMPLETE):
            return changed  # the window grows until the character is complete
        if self._rewritten():
            self._frozen, self.frozen_chars, changed = [], 0, 0
            self._prefix, self._window = 0, self._decode(self._ids)
        newest = self._decode(self._ids[self._read :])
        if not newest:
            return changed  # no text yet (a special token): the window keeps its context
        if self._window.endswith(newest):
            keep = self._window[: len(self._window) - len(newest)]
            self._frozen.append(keep)
            self.frozen_chars += len(keep)
            self._prefix, self._window = self._read, newest
        # else the new tokens changed the text before them: the window keeps its start
        self._read, self._stable = len(self._ids), self._window
        return changed

    def _rewritten(self) -> bool:
        """Whether the decode turned text of the window's earlier tokens into U+FFFD."""
        same = len(os.path.commonprefix([self._window, self._stable]))
        return same < len(self._stable) and self._window[same : same + 1] == INCOMPLETE

    @property
    def text(self) -> str:
        """The text so far; it ends in U+FFFD while the last character is incomplete."""
        if self._window.endswith(INCOMPLETE) and self._rewritten():
            whole: str = self._decode(self._ids)  # see the class's note on rewrites
            return whole
        return self.since(0)

    def since(self, start: int) -> str:
        """The windowed text from ``start`` (at most ``frozen_chars``), joining only the frozen
        pieces after it; the same as ``text[start:]`` but while a rewrite is incomplete."""
        parts, at = [self._window], self.frozen_chars
        for piece in reversed(self._frozen):
            if at <= start:
                break
            parts.append(piece)
            at -= len(piece)
        return "".join(reversed(parts))[start - at :]


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest stop sequence in ``text`` starts; None when there is none."""
    hits = [i for s in stops if s and (i := text.find(s)) >= 0]
    return min(hits) if hits else None


def generate(model: GreedyModel[State], req: GenerationRequest, prompt: Sequence[int],
             t0: float) -> Completion:
    """Greedy generation for ``req`` from ``prompt``'s ids; times are seconds from ``t0``.

    Ends at an end-of-text token (not an output token), at a stop sequence (the text is cut
    before it, the token that completed it counted), or after ``max_tokens`` or the context.
    """
    room = model.context_size - len(prompt)
    if room <= 0:
        raise SmallfitError(f"prompt of {len(prompt)} tokens leaves no room in the "
                            f"{model.context_size}-token context")
    limit = min(req.max_tokens, room)
    banned = sorted(model.eos_ids) if req.ignore_eos else []
    keep = max([len(s) - 1 for s in req.stop if s], default=0)
    detok = IncrementalDetokenizer(model.decode)
    times: list[float] = []
    logprobs: list[float] = []
    finish, cut = "length", None
    state, logits = model.prefill(prompt)
    while len(times) < limit:
        if banned:
            logits[banned] = -float("inf")
        tok = int(logits.argmax())
        model.sync()
        if tok in model.eos_ids:
            finish = "eos"
            break
        times.append(time.perf_counter() - t0)
        if req.logprobs and model.logprob is not None:  # after the timestamp, as llama.cpp's backend
            logprobs.append(model.logprob(logits, tok))
        # a stop sequence not found before must end in what this token changed
        start = max(0, detok.add(tok) - keep)
        hit = first_stop(detok.since(start), req.stop) if req.stop else None
        if hit is not None:
            finish, cut = "stop", start + hit
            break
        if len(times) < limit:  # no step for a token that will not be used
            state, logits = model.step(state, tok, len(prompt) + len(times) - 1)
    text = detok.text if cut is None else detok.since(0)[:cut]
    return Completion(text=text, n_prompt_tokens=len(prompt), n_output_tokens=len(times),
                      ttft_s=times[0] if times else None,
                      latency_s=times[-1] if times else time.perf_counter() - t0,
                      token_times_s=tuple(times), finish_reason=finish,
                      token_logprobs=tuple(logprobs) if req.logprobs and model.logprob is not None else None)
