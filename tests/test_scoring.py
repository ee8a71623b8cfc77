"""Pure scoring functions against hand-computed values."""

import math

import pytest

from smallfit import scoring
from smallfit.records import Loglikelihood
from smallfit.tasks.base import MultipleChoice, MultipleChoiceSample, in_chat


def test_percentile_linear_interpolation():
    assert scoring.percentile([4, 1, 3, 2], 50) == 2.5
    # rank h = 9 * 0.95 = 8.55 over 1..10 -> 9 + 0.55 * (10 - 9)
    assert scoring.percentile(list(range(1, 11)), 95) == pytest.approx(9.55)
    assert scoring.percentile([7.0], 95) == 7.0
    assert scoring.percentile([1, 2], 0) == 1 and scoring.percentile([1, 2], 100) == 2
    with pytest.raises(ValueError):
        scoring.percentile([], 50)


def test_stderr_of_mean_uses_sample_stdev():
    # mean 0.5, sample variance (4 * 0.25) / 3, stdev 0.57735, / sqrt(4)
    assert scoring.stderr_of_mean([0, 1, 1, 0]) == pytest.approx(math.sqrt(1 / 3) / 2)
    assert scoring.stderr_of_mean([1.0]) == 0.0


def test_ratio_and_stderr_delta_method():
    r, se = scoring.ratio_and_stderr([2.0, 4.0], [1.0, 1.0])
    assert r == 3.0
    # residuals (2-3, 4-3) -> sum of squares 2, / (2 * 1) -> 1, sqrt -> 1, / mean(b)=1
    assert se == pytest.approx(1.0)
    r, se = scoring.ratio_and_stderr([3.0, 3.0], [1.0, 1.0])
    assert (r, se) == (3.0, 0.0)


def test_multiple_choice_acc_and_length_normalised_acc():
    # acc picks -1 (choice 0); acc_norm: -1/1 = -1 vs -2/4 = -0.5 -> choice 1
    scores = scoring.multiple_choice_scores([-1.0, -2.0], ["a", "bbbb"], gold=1)
    assert scores == {"acc": 0.0, "acc_norm": 1.0, "acc_bytes": 1.0}


def test_acc_norm_divides_by_characters_without_the_delimiter():
    # the case: -2/2 = -1.0 vs -5/6 = -0.833 picks "abcdef" (lm-eval); dividing by the
    # bytes of " ab" and " abcdef" instead (-2/3 = -0.667 vs -5/7 = -0.714) would pick "ab"
    scores = scoring.multiple_choice_scores([-2.0, -5.0], ["ab", "abcdef"], gold=1)
    assert scores == {"acc": 0.0, "acc_norm": 1.0, "acc_bytes": 1.0}
    with_delimiter = scoring.multiple_choice_scores([-2.0, -5.0], [" ab", " abcdef"], gold=1)
    assert with_delimiter["acc_norm"] == 0.0  # why the kinds pass the texts without it


def test_acc_bytes_counts_utf8_bytes_and_acc_norm_characters():
    # "é" is one character but two bytes: by characters -1.5/1 = -1.5 < -2/2 = -1 picks "ab";
    # by bytes -1.5/2 = -0.75 > -2/2 picks "é"
    scores = scoring.multiple_choice_scores([-1.5, -2.0], ["é", "ab"], gold=0)
    assert scores == {"acc": 1.0, "acc_norm": 0.0, "acc_bytes": 1.0}


def test_empty_choice_divides_as_numpy_does():
    # lm-eval divides with numpy: -3/0 = -inf is never picked, 0/0 = NaN always is
    assert scoring.multiple_choice_scores([-3.0, -9.0], ["", "abc"], gold=1)["acc_norm"] == 1.0
    assert scoring.multiple_choice_scores([-3.0, 0.0], ["abc", ""], gold=1)["acc_norm"] == 1.0
    assert scoring.argmax([1.0, math.nan, 5.0]) == 1


class _TwoChoices:
    """Log-likelihoods -2 and -5 for the two choices of one question; keeps the requests."""

    def __init__(self):
        self.requests = []

    def loglikelihood(self, requests):
        self.requests += requests
        return [Loglikelihood(lp, False, 1) for lp in (-2.0, -5.0)]


def test_multiple_choice_kind_scores_the_texts_without_the_delimiter():
    sample = MultipleChoiceSample("q", "Q:", ("\nab", "\nabcdef"), 1, target_delimiter="\n")
    assert sample.choice_texts() == ("ab", "abcdef")
    backend = _TwoChoices()
    (result,), _ = MultipleChoice().run(backend, [sample], lambda n: None)
    assert [r.continuation for r in backend.requests] == ["\nab", "\nabcdef"]  # scored with the delimiter
    assert (result.scores["acc"], result.scores["acc_norm"], result.scores["acc_bytes"]) == (0.0, 1.0, 1.0)
    assert MultipleChoice().quality_metrics == ("acc", "acc_norm", "acc_bytes")
    chat = in_chat(sample, lambda t: t)  # the assistant's turn starts without the delimiter
    assert chat.choices == ("ab", "abcdef") and chat.choice_texts() == ("ab", "abcdef")


def test_argmax_first_wins_ties():
    assert scoring.argmax([1.0, 3.0, 3.0]) == 1


def test_normalize_and_exact_match():
    assert scoring.normalize_answer("  The Russian  Federation. ") == "russian federation"
    assert scoring.exact_match("the Russian Federation!", "Russian Federation") == 1.0
    assert scoring.exact_match("Russia", "Russian Federation") == 0.0
    assert scoring.exact_match(None, "x") == 0.0


def test_extract_number():
    assert scoring.extract_number("It costs $1,234.50 in total, not 7.") == "1234.5"
    assert scoring.extract_number("first 3 then 18.0", which="last") == "18"
    assert scoring.extract_number("no digits") is None
    assert scoring.canonical_number("-0.0") == "0"


def test_bits_per_byte_and_words():
    # log p = -8 ln 2 over 8 bytes is exactly one bit per byte
    assert scoring.bits_per_byte(-8 * math.log(2), 8) == pytest.approx(1.0)
    assert scoring.count_words("two  words") == 2
    # lm-eval's definition: re.split on whitespace keeps empty pieces at the ends
    assert scoring.count_words(" two  words\n") == 4


def test_t_cdf_matches_closed_forms():
    # 1 degree of freedom is Cauchy, 2 has F(x) = 1/2 + x / (2 √(2 + x²)); far tails included
    for x in (-3.0, 0.1, 1.0, 2.26, 40.0, 1e4):
        assert scoring.t_cdf(x, 1) == pytest.approx(0.5 + math.atan(x) / math.pi, abs=1e-13)
        assert scoring.t_cdf(x, 2) == pytest.approx(0.5 + x / (2 * math.sqrt(2 + x * x)), abs=1e-13)
    assert scoring.t_quantile(0.975, 9) == pytest.approx(2.262157, abs=1e-6)  # tables


def test_rate_interval_is_delta_method_t():
    tokens, seconds = [30.0, 30.0, 30.0, 30.0], [1.0, 2.0, 1.0, 2.0]
    r, low, high = scoring.ratio_t_interval(tokens, seconds)
    # R = 120 / 6 = 20; residuals 30 − 20 b = ±10; SE = √(400 / (4 · 3)) / 1.5
    se = math.sqrt(400 / 12) / 1.5
    t3 = 3.182446  # t_{0.975, 3}
    assert r == 20.0 and low == pytest.approx(20 - t3 * se, abs=1e-5) and high == pytest.approx(20 + t3 * se, abs=1e-5)
    assert scoring.ratio_t_interval([1.0], [1.0]) is None
