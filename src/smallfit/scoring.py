"""Pure scoring and aggregation functions: no I/O, no model, hand-checkable in tests."""

from __future__ import annotations

import functools
import math
import random
import re
import string
from collections.abc import Callable, Sequence

_LN2 = math.log(2.0)


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; raises on an empty sequence, since a mean of nothing is not 0."""
    if not values:
        raise ValueError("mean of an empty sequence")
    return math.fsum(values) / len(values)


def sample_stdev(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1 in the denominator), 0.0 for fewer than two values."""
    n = len(values)
    if n < 2:
        return 0.0
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (n - 1))


def stderr_of_mean(values: Sequence[float]) -> float:
    """Standard error of the mean, ``sample_stdev / sqrt(n)``, as lm-evaluation-harness computes it."""
    return sample_stdev(values) / math.sqrt(len(values)) if values else math.nan


def ratio_and_stderr(numerators: Sequence[float], denominators: Sequence[float]) -> tuple[float, float]:
    """Ratio of sums ``R = sum(a) / sum(b)`` and its standard error by the delta method.

    Used for corpus-level figures such as bits per byte, where each document contributes a
    numerator (negative log-likelihood) and a denominator (bytes):
    ``SE(R) = sqrt(sum((a_i - R b_i)^2) / (n (n - 1))) / mean(b)``.
    """
    n = len(numerators)
    if n == 0 or n != len(denominators):
        raise ValueError("ratio needs equal, non-empty sequences")
    total_b = math.fsum(denominators)
    if total_b <= 0:
        raise ValueError("ratio denominator must be positive")
    r = math.fsum(numerators) / total_b
    if n < 2:
        return r, 0.0
    resid = math.fsum((a - r * b) ** 2 for a, b in zip(numerators, denominators, strict=True))
    se = math.sqrt(resid / (n * (n - 1))) / (total_b / n)
    return r, se


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks.

    This is NumPy's default ("linear", Hyndman & Fan type 7): rank ``h = (n - 1) q / 100``,
    value ``x[floor h] + (h - floor h) (x[floor h + 1] - x[floor h])`` over the sorted values.
    """
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError("q must be within [0, 100]")
    xs = sorted(values)
    h = (len(xs) - 1) * q / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


# --- multiple choice -------------------------------------------------------------------------

def argmax(values: Sequence[float]) -> int:
    """Index of the largest value, as ``numpy.argmax``: the first one wins a tie, and the first
    NaN wins outright."""
    best = 0
    for i, v in enumerate(values):
        if math.isnan(v):
            return i
        if v > values[best]:
            best = i
    return best


def _per_unit(logprob: float, units: int) -> float:
    # numpy's float division, as lm-eval's ``lls / completion_len``: an empty choice gives
    # -inf (never chosen) for a negative log-likelihood and NaN (chosen) for 0, not an error.
    if units:
        return logprob / units
    return math.nan if logprob == 0 else math.copysign(math.inf, logprob)


def multiple_choice_scores(logprobs: Sequence[float], choices: Sequence[str], gold: int) -> dict[str, float]:
    """``acc``, ``acc_norm`` and ``acc_bytes`` for one question, as lm-evaluation-harness 0.4
    defines them (``process_results`` of a ``multiple_choice`` task).

    ``choices`` are the choice texts *without* the target delimiter that precedes each one in
    the scored continuation (lm-eval's ``doc_to_choice``). ``acc`` is 1 when the choice with the
    highest log-likelihood is the gold one; ``acc_norm`` first divides each log-likelihood by
    the length of its choice in characters (``len(choice)``), ``acc_bytes`` by its length in
    UTF-8 bytes.
    """
    chars = [_per_unit(lp, len(c)) for lp, c in zip(logprobs, choices, strict=True)]
    utf8 = [_per_unit(lp, len(c.encode("utf-8"))) for lp, c in zip(logprobs, choices, strict=True)]
    return {
        "acc": float(argmax(logprobs) == gold),
        "acc_norm": float(argmax(chars) == gold),
        "acc_bytes": float(argmax(utf8) == gold),
    }


# --- generation ------------------------------------------------------------------------------

_NUMBER = re.compile(r"-?[\d,]*\.?\d+")
_PUNCT_TABLE = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Normalisation before exact match: lower case, drop punctuation and articles, fold spaces."""
    text = text.lower().translate(_PUNCT_TABLE)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def extract_number(text: str, which: str = "first") -> str | None:
    """Extract a number from generated text, without thousands separators and trailing ``.0``.

    ``which="first"`` takes the first number (the answer to a prompt that ends in "Answer:");
    ``"last"`` takes the last one (a worked solution ending in its result).
    """
    found = _NUMBER.findall(text)
    if not found:
        return None
    raw = found[0] if which == "first" else found[-1]
    return canonical_number(raw)


def canonical_number(raw: str) -> str:
    """``"1,234.50"`` -> ``"1234.5"``, ``"7.0"`` -> ``"7"``: one spelling per number."""
    s = raw.replace(",", "").strip()
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    if s in ("", "-"):
        return raw
    if s.startswith("-0") and s.strip("-0") == "":
        return "0"
    return s


def exact_match(prediction: str | None, target: str) -> float:
    """1.0 when the normalised prediction equals the normalised target, else 0.0."""
    if prediction is None:
        return 0.0
    return float(normalize_answer(prediction) == normalize_answer(target))


def token_f1(prediction: str | None, target: str) -> float:
    """SQuAD-style F1 between the normalised prediction and target, over their word multisets."""
    if prediction is None:
        return 0.0
    pred, gold = normalize_answer(prediction).split(), normalize_answer(target).split()
    if not pred or not gold:
        return float(pred == gold)
    common = 0
    remaining = list(gold)
    for word in pred:
        if word in remaining:
            remaining.remove(word)
            common += 1
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


# --- classification by embedding ---------------------------------------------------------------

def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two vectors; 0.0 when either is all zeros."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm > 0 else 0.0


def mean_vector(vectors: Sequence[Sequence[float]]) -> list[float]:
    """Component-wise mean of equal-length vectors (a label's prototype)."""
    if not vectors:
        raise ValueError("mean of no vectors")
    return [sum(col) / len(vectors) for col in zip(*vectors, strict=True)]


def macro_f1(pairs: Sequence[tuple[int, int]]) -> float:
    """Unweighted mean over labels of F1 = 2TP / (2TP + FP + FN), from (gold, predicted) label
    pairs, over the labels that occur as gold or predicted (scikit-learn's
    ``f1_score(average="macro")`` with its default labels)."""
    if not pairs:
        raise ValueError("macro F1 of no examples")
    labels = {g for g, _ in pairs} | {p for _, p in pairs}
    total = 0.0
    for label in labels:
        tp = sum(g == label and p == label for g, p in pairs)
        wrong = sum((g == label) != (p == label) for g, p in pairs)  # FP + FN
        total += 2 * tp / (2 * tp + wrong)
    return total / len(labels)


# --- uncertainty -----------------------------------------------------------------------------

def bootstrap_replicates(
    rows: Sequence[tuple[float, ...]],
    statistic: Callable[[Sequence[tuple[float, ...]]], float],
    resamples: int = 1000,
    seed: int = 0,
) -> list[float]:
    """``statistic`` of ``resamples`` draws of ``rows`` (examples) with replacement, with a
    seeded generator so the replicates are reproducible."""
    if not rows:
        raise ValueError("bootstrap of an empty sequence")
    rng = random.Random(seed)
    n = len(rows)
    return [statistic([rows[rng.randrange(n)] for _ in range(n)]) for _ in range(resamples)]


def bootstrap_ci(
    rows: Sequence[tuple[float, ...]],
    statistic: Callable[[Sequence[tuple[float, ...]]], float],
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Expanded percentile bootstrap confidence interval of ``statistic`` over ``rows`` (examples).

    Rows are resampled with replacement ``resamples`` times with a seeded generator, so the
    interval is reproducible; the bounds are the ``a`` and ``1 - a`` percentiles of the
    replicates, ``a = expanded_alpha(n, level)`` (0.0085 at n = 10, 0.0238 at n = 100).
    """
    stats = bootstrap_replicates(rows, statistic, resamples, seed)
    alpha = expanded_alpha(len(rows), level)
    return percentile(stats, 100 * alpha), percentile(stats, 100 * (1 - alpha))


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function ``I_x(a, b)`` for ``0 <= x <= 1``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(x: float, df: int) -> float:
    """P(T <= x) for Student's t with ``df`` degrees of freedom, through the incomplete beta
    function: the upper tail beyond ``|x|`` is ``I_{df/(df+x²)}(df/2, 1/2) / 2``."""
    if df < 1:
        raise ValueError("t distribution needs df >= 1")
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + x * x))
    return 1.0 - tail if x >= 0 else tail


@functools.lru_cache(maxsize=256)
def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_cdf`)."""
    if df < 1 or not 0.0 < p < 1.0:
        raise ValueError("t quantile needs df >= 1 and 0 < p < 1")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def ratio_t_interval(numerators: Sequence[float], denominators: Sequence[float],
                     level: float = 0.95) -> tuple[float, float, float] | None:
    """A ratio of sums ``R = sum(a) / sum(b)`` (a rate: tokens over seconds) and its ``level``
    interval ``R ± t_{(1+level)/2, n−1} · SE(R)``, SE by the delta method
    (:func:`ratio_and_stderr`); None with fewer than two pairs.

    Chosen over a bootstrap of the rate by simulation (``benchmarks/coverage.py``): 94-95% at
    n = 10 to 200 for per-request times with a coefficient of variation up to 0.47, where the
    expanded percentile bootstrap gave 91.4-93.5%.
    """
    n = len(numerators)
    if n < 2:
        return None
    r, se = ratio_and_stderr(numerators, denominators)
    half = t_quantile(0.5 + level / 2, n - 1) * se
    return r, r - half, r + half


def expanded_alpha(n: int, level: float = 0.95) -> float:
    """The tail share of an *expanded* percentile bootstrap (Hesterberg 2015, "What teachers
    should know about the bootstrap", §5.1): ``Φ(−√(n/(n−1)) · t_{(1+level)/2, n−1})``.

    A plain percentile bootstrap of a mean is too narrow at small n (its spread is the plug-in
    ``√((n−1)/n)`` s.e. and it uses z where t is due: 91% rather than 95% at n = 10); widening
    the tails this way restores the coverage that ``benchmarks/coverage.py`` checks.
    """
    tail = (1.0 - level) / 2.0
    if n < 2:
        return tail
    z = math.sqrt(n / (n - 1)) * t_quantile(1.0 - tail, n - 1)
    return 0.5 * (1.0 + math.erf(-z / math.sqrt(2.0)))


def binomial_pmfs(n: int, p: float) -> list[float]:
    """P(B = k) for k = 0..n, B ~ Binomial(n, p), in log space so large n does not overflow."""
    if p <= 0.0 or p >= 1.0:
        return [1.0 if k == (0 if p <= 0.0 else n) else 0.0 for k in range(n + 1)]
    lp, lq = math.log(p), math.log1p(-p)
    return [math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * lp + (n - k) * lq)
            for k in range(n + 1)]


def order_statistic_ranks(n: int, q: float, level: float = 0.95) -> tuple[int | None, int | None]:
    """1-based ranks ``(l, u)`` of the sorted sample whose values bound the population
    ``q``-quantile (``0 < q < 1``) with at least ``level`` confidence, each side missing with
    probability at most ``(1 − level)/2``; no assumption on the distribution.

    The number B of observations below the quantile is Binomial(n, q): ``x_(l) ≤ ξ_q`` unless
    ``B < l`` and ``x_(u) ≥ ξ_q`` unless ``B ≥ u``. ``l`` is the largest rank with
    ``P(B < l) ≤ tail``, ``u`` the smallest with ``P(B ≥ u) ≤ tail``; None where no rank
    qualifies (too few observations: that side is open).
    """
    if n < 1 or not 0.0 < q < 1.0:
        raise ValueError("order-statistic interval needs n >= 1 and 0 < q < 1")
    tail = (1.0 - level) / 2.0
    pmf = binomial_pmfs(n, q)
    low: int | None = None
    below = 0.0  # P(B < l)
    for rank in range(1, n + 1):
        below += pmf[rank - 1]
        if below > tail:
            break
        low = rank
    high: int | None = None
    above = 0.0  # P(B >= u)
    for rank in range(n, 0, -1):
        above += pmf[rank]
        if above > tail:
            break
        high = rank
    return low, high


def requests_to_bound(q: float, level: float = 0.95) -> int:
    """The fewest observations for which the ``q``-quantile has a finite upper bound at
    ``level``: the sample maximum bounds it once ``q^n ≤ (1 − level)/2`` (72 for the p95,
    36 for the p90, 367 for the p99, 6 for the median at 95%)."""
    return math.ceil(math.log((1.0 - level) / 2.0) / math.log(q) - 1e-12)


def quantile_interval(values: Sequence[float], q: float, level: float = 0.95) -> tuple[float | None, float | None]:
    """The distribution-free interval of the population ``q``-quantile from ``values``
    (:func:`order_statistic_ranks`): ``(x_(l), x_(u))``, None on a side too few values bound."""
    xs = sorted(values)
    low, high = order_statistic_ranks(len(xs), q, level)
    return (None if low is None else xs[low - 1]), (None if high is None else xs[high - 1])


# --- perplexity ------------------------------------------------------------------------------

def count_words(text: str) -> int:
    r"""Words exactly as lm-evaluation-harness counts them for word perplexity: the pieces of
    ``re.split(r"\s+", text)``, so leading or trailing whitespace adds an empty piece."""
    return len(re.split(r"\s+", text))


def bits_per_byte(total_logprob: float, total_bytes: int) -> float:
    """``-sum(log p) / (bytes * ln 2)``: bits the model needs per UTF-8 byte of the text."""
    return -total_logprob / (total_bytes * _LN2)


def nats_to_bits(nats: float) -> float:
    """Convert natural-log units to bits."""
    return nats / _LN2
