"""Rolling perplexity windows as lm-evaluation-harness builds them (hand-computed windows)."""

from __future__ import annotations

import pytest

from smallfit.backends.rolling import rolling_windows


def test_windows_of_three_as_lm_eval():
    # lm-eval, max_seq_len 3, context_len 1: P 0 1 -> 0 1 2; then 1 2 3 4 -> 3 4 5 with input 2 3 4 ...
    assert rolling_windows(list(range(9)), -1, 3) == [([-1], [0, 1, 2]), ([2], [3, 4, 5]), ([5], [6, 7, 8])]


def test_the_last_window_is_read_with_a_full_window_of_context():
    # 9 tokens, windows of 4: the last token is predicted from the 4 tokens before it, not from one
    windows = rolling_windows(list(range(9)), -1, 4)
    assert windows == [([-1], [0, 1, 2, 3]), ([3], [4, 5, 6, 7]), ([4, 5, 6, 7], [8])]
    for ctx, targets in windows:
        assert len(ctx) + len(targets) - 1 <= 4


@pytest.mark.parametrize(("n", "size"), [(1, 1), (5, 1), (7, 7), (8, 7), (100, 9)])
def test_every_token_is_predicted_once_in_order(n, size):
    windows = rolling_windows(list(range(n)), -1, size)
    assert [t for _, targets in windows for t in targets] == list(range(n))
    for ctx, targets in windows[1:]:
        assert ctx[-1] == targets[0] - 1  # each window's context ends just before its targets
        assert len(ctx) + len(targets) - 1 == min(size, targets[-1])


def test_empty_text_has_no_window():
    assert rolling_windows([], 0, 4) == []
    with pytest.raises(ValueError):
        rolling_windows([1], 0, 0)
