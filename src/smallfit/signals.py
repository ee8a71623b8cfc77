"""Per-example confidence signals: how sure a model was of the answer it gave, computed from the
same pass that scored it (no second run). A cascade defers an example to a larger model when the
smaller one's signal falls below a threshold (see :mod:`smallfit.cascade`).

Every signal is "higher = more confident". :func:`as_probability` maps each to [0, 1] for the
calibration figures (expected calibration error, Brier score of "the model was right").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

SIGNALS: dict[str, str] = {
    "prob": "Multiple choice and classification: the chosen answer's probability normalised over the choices, "
            "exp(ll_chosen) / sum_k exp(ll_k), ll_k each choice's summed log-likelihood.",
    "margin": "Multiple choice and classification: the chosen answer's normalised probability minus the "
              "runner-up's (0 for a single choice).",
    "logprob_mean": "Generation: mean natural-log probability of the generated tokens, from the greedy pass "
                    "itself (length-biased: long answers average over more tokens).",
    "logprob_min": "Generation: the least likely generated token's log-probability.",
    "logprob_p10": "Generation: the 10% quantile of the generated tokens' log-probabilities (linear interpolation "
                   "between order statistics), less sensitive to one odd token than the minimum.",
}
CHOICE_SIGNALS = ("prob", "margin")
TOKEN_SIGNALS = ("logprob_mean", "logprob_min", "logprob_p10")


def choice_signals(logprobs: Sequence[float]) -> dict[str, float]:
    """``prob`` and ``margin`` of the highest log-likelihood choice among ``logprobs``."""
    if not logprobs:
        return {}
    peak = max(logprobs)
    weights = sorted((math.exp(lp - peak) for lp in logprobs), reverse=True)
    total = sum(weights)
    first = weights[0] / total
    second = weights[1] / total if len(weights) > 1 else 0.0
    return {"prob": first, "margin": first - second}


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` with linear interpolation between order statistics
    (numpy's default ``linear`` method)."""
    ordered = sorted(values)
    at = q * (len(ordered) - 1)
    lo = math.floor(at)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (at - lo)


def token_signals(token_logprobs: Sequence[float] | None) -> dict[str, float]:
    """Mean, minimum and 10% quantile of a generation's token log-probabilities; {} when the
    backend gave none. A generation of no tokens is as sure as can be (0.0): nothing was chosen."""
    if token_logprobs is None:
        return {}
    if not token_logprobs:
        return dict.fromkeys(TOKEN_SIGNALS, 0.0)
    values = list(token_logprobs)
    return {"logprob_mean": sum(values) / len(values), "logprob_min": min(values),
            "logprob_p10": quantile(values, 0.10)}


def as_probability(name: str, value: float) -> float:
    """A signal on [0, 1], read as the chance that the answer is right: ``prob`` and ``margin``
    as they are, a log-probability statistic as its exponential (a token's probability)."""
    if name in TOKEN_SIGNALS:
        return math.exp(min(0.0, value))
    return min(1.0, max(0.0, value))
