"""Rolling windows over a long text, as lm-evaluation-harness builds them for perplexity.

Every token is predicted once. The first window predicts the first ``max_len`` tokens from the
prefix token (BOS, else EOS) and each other; each later window predicts the next ``max_len``
tokens (fewer for the last one) from a full window of inputs: the tokens before them, so the
last window is read with as much context as the others (lm-eval's ``get_rolling_token_windows``
with ``context_len=1`` then ``make_disjoint_window``).
"""

from __future__ import annotations

from collections.abc import Sequence

Window = tuple[list[int], list[int]]


def rolling_windows(tokens: Sequence[int], prefix_token: int, max_len: int) -> list[Window]:
    """(context, targets) pairs: ``context + targets[:-1]`` is at most ``max_len`` tokens, the
    targets of all windows are ``tokens`` in order, each exactly once."""
    if max_len < 1:
        raise ValueError("a window holds at least one token")
    toks = list(tokens)
    if not toks:
        return []
    first = min(max_len, len(toks))
    windows: list[Window] = [([prefix_token], toks[:first])]
    done = first
    while done < len(toks):
        n = min(len(toks) - done, max_len)
        end = done + n
        inputs = toks[max(0, end - max_len - 1) : end - 1]
        windows.append((inputs[: len(inputs) - n + 1], toks[done:end]))
        done = end
    return windows
