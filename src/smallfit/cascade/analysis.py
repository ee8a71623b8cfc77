"""A cascade from stored runs, end to end: split the matched examples into a calibration and a
held-out part, choose the threshold on the first, report every figure on the second with paired
bootstrap intervals, beside each model alone, a random router and the oracle."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from smallfit.cascade import curves
from smallfit.cascade.choose import Bounds, bounds, choose, confident, parse
from smallfit.cascade.curves import Estimate, estimate, resample_weights
from smallfit.cascade.data import COSTS, CascadeData
from smallfit.cascade.replay import Arrays, all_thresholds, per_request, replay
from smallfit.errors import SmallfitError
from smallfit.judge.budget import Check
from smallfit.signals import CHOICE_SIGNALS, SIGNALS, TOKEN_SIGNALS

Array = NDArray[np.float64]
MIN_SPLIT = 10  # examples each split needs: fewer cannot choose a threshold or check one
CHAIN_GRID = 11  # per-stage thresholds tried for a chain of three or more models: signal deciles


@dataclass(frozen=True)
class Options:
    """How to replay: the signal, what a request costs, the split, the budget or fixed thresholds."""

    signal: str | None = None
    cost: str = "seconds"
    calibration_share: float = 0.5
    seed: int = 0
    budget: str | None = None
    thresholds: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Point:
    """Figures at one set of thresholds on the held-out split, each with its interval."""

    thresholds: tuple[float, ...]
    figures: dict[str, Estimate]
    quality_share: Estimate | None = None
    """The cascade's quality as a share of the last (largest) model's alone, paired bootstrap."""
    cost_share: Estimate | None = None
    """The cascade's mean cost per request as a share of the last model's alone (the run's --cost)."""


@dataclass(frozen=True)
class CheckResult:
    """One budget check on the held-out split at the chosen thresholds."""

    check: str
    value: float | None
    low: float | None
    high: float | None
    passed: bool


@dataclass(frozen=True)
class Chosen:
    """The thresholds chosen on the calibration split, and how they fare on the held-out one."""

    point: Point
    met_on_calibration: bool
    candidates: int
    checks: list[CheckResult]
    met_on_heldout: bool
    budget: str
    singles: dict[str, bool] = field(default_factory=dict)
    """Each model alone: does it meet the budget with confidence on the held-out split?"""


@dataclass(frozen=True)
class SignalSummary:
    """A signal's deferral figures and calibration on the held-out split."""

    name: str
    apgr: Estimate
    cpt50: Estimate
    cpt80: Estimate
    ece: Estimate
    brier: Estimate


@dataclass(frozen=True)
class CurveSeries:
    """Held-out points for the plots: share sent on, quality, mean cost per request."""

    share: list[float]
    quality: list[float]
    cost: list[float]


@dataclass
class Analysis:
    """Everything the cascade's reports show."""

    task: str
    metric: str
    models: list[str]
    runs: list[str]
    signal: str
    cost: str
    n: int
    n_calibration: int
    n_heldout: int
    singles: dict[str, dict[str, Estimate]]
    peak_rss_bytes: float | None
    energy_label: str
    summaries: list[SignalSummary] = field(default_factory=list)
    oracle: SignalSummary | None = None
    curve: CurveSeries | None = None
    oracle_curve: CurveSeries | None = None
    random_curve: CurveSeries | None = None
    fixed: Point | None = None
    chosen: Chosen | None = None


def _arrays(data: CascadeData, signal: str) -> Arrays:
    stages = data.stages
    energy = [s.energy_j for s in stages]
    cost = [s.cost_usd for s in stages]
    return Arrays([s.quality for s in stages], [s.signals[signal] for s in stages[:-1]],
                  [s.latency_s for s in stages],
                  None if any(e is None for e in energy) else [e for e in energy if e is not None],
                  None if any(c is None for c in cost) else [c for c in cost if c is not None])


def pick_signal(data: CascadeData, wanted: str | None) -> str:
    """The deferral signal: the one asked for, else prob (choices) or logprob_p10 (generation);
    a one-line error when a stage that defers lacks it."""
    first = data.stages[0]
    name = wanted or next((s for s in ("prob", "logprob_p10") if s in first.signals), None)
    if wanted is not None and wanted not in SIGNALS:
        raise SmallfitError(f"unknown --signal {wanted!r}: use one of {', '.join(SIGNALS)}")
    for stage in data.stages[:-1]:
        if name is None or name not in stage.signals:
            have = ", ".join(stage.signals) or "none"
            why = f" ({stage.signals_missing})" if stage.signals_missing else ""
            raise SmallfitError(f"{stage.name} has no {name or 'confidence'} signal on {data.task}{why}; it stored: "
                                f"{have}. Pick one with --signal, or run it on a backend that gives token "
                                "log-probabilities (llamacpp, transformers, onnx)")
    assert name is not None
    return name


def check_threshold(signal: str, t: float) -> None:
    """A one-line error for a threshold outside the range the signal takes."""
    if signal in CHOICE_SIGNALS and not 0.0 <= t <= 1.0:
        raise SmallfitError(f"threshold {t:g} is outside {signal}'s range [0, 1]; pass one between 0 and 1")
    if signal in TOKEN_SIGNALS and not (t <= 0.0 or math.isinf(t)):
        raise SmallfitError(f"threshold {t:g} is outside {signal}'s range (a log-probability, at most 0); "
                            "pass a negative number such as -1.5")


def split(n: int, share: float, seed: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Calibration and held-out example indices: a seeded shuffle, ``share`` of it to calibration."""
    if not 0.0 < share < 1.0:
        raise SmallfitError(f"--calibration-share must be between 0 and 1 (got {share:g})")
    order = np.random.default_rng(seed).permutation(n)
    k = int(round(share * n))
    if k < MIN_SPLIT or n - k < MIN_SPLIT:
        raise SmallfitError(f"{n} matched examples give a calibration split of {k} and a held-out split of {n - k}; "
                            f"each needs at least {MIN_SPLIT} to choose and check a threshold: run on more "
                            "examples (--sample/--limit) or change --calibration-share")
    return np.sort(order[:k]), np.sort(order[k:])


def _figure_names(a: Arrays, metric: str, peak: float | None = None) -> set[str]:
    names = {metric, "deferred_share", "seconds_per_request", "latency_s", "latency_s_p95"}
    if peak is not None:
        names.add("peak_rss_bytes")
    if a.energy_j is not None:
        names.add("energy_j_per_request")
    if a.cost_usd is not None:
        names.add("cost_usd_per_request")
    return names


def _point(b: Bounds, row: int, thresholds: tuple[float, ...]) -> Point:
    return Point(thresholds, {k: Estimate(float(b.value[k][row]), _finite(b.low[k][row]), _finite(b.high[k][row]))
                              for k in b.value})


def _with_shares(point: Point, held: Arrays, cost: str, seed: int) -> Point:
    """``point`` with its quality and cost as shares of the last model's alone."""
    per = per_request(held, np.array([point.thresholds]))
    costs = {"seconds": (per.latency_s, held.latency_s), "joules": (per.energy_j, held.energy_j),
             "dollars": (per.cost_usd, held.cost_usd)}[cost]
    mine, alone = costs
    if mine is None or alone is None:
        return point
    weights = resample_weights(held.n, seed=seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = (weights @ per.quality[0]) / (weights @ held.quality[-1])
        c = (weights @ mine[0]) / (weights @ alone[-1])
    return replace(point, quality_share=estimate(np.where(np.isfinite(q), q, np.nan)),
                   cost_share=estimate(np.where(np.isfinite(c), c, np.nan)))


def _meets(checks: list[Check], figures: dict[str, Estimate]) -> bool:
    """Whether figures with intervals meet every check with confidence (a model alone defers
    nothing: its deferred share is 0)."""
    for c in checks:
        if c.metric == "deferred_share":
            if not c.passes(0.0):
                return False
            continue
        e = figures.get(c.metric)
        if e is None or e.value is None:
            return False
        bound = e.high if c.op in ("<", "<=") else e.low
        if bound is None or not c.passes(bound):
            return False
    return True


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _singles(data: CascadeData, a: Arrays, peak: list[float | None]) -> dict[str, dict[str, Estimate]]:
    """Each model alone on the held-out split: a cascade whose first stage is that model and
    never defers."""
    out = {}
    zero = np.zeros(a.n)
    for j, stage in enumerate(data.stages):
        alone = Arrays([a.quality[j], zero], [np.full(a.n, np.inf)], [a.latency_s[j], zero],
                       None if a.energy_j is None else [a.energy_j[j], zero],
                       None if a.cost_usd is None else [a.cost_usd[j], zero])
        names = _figure_names(alone, data.metric, peak[j]) - {"deferred_share"}
        out[stage.name] = _point(bounds(alone, np.array([0.0]), data.metric, peak[j], names), 0, ()).figures
    return out


def analyse(data: CascadeData, opts: Options) -> Analysis:
    """The cascade's figures on the held-out split (see the module's docstring)."""
    if opts.cost not in COSTS:
        raise SmallfitError(f"unknown --cost {opts.cost!r}: use seconds, joules or dollars")
    signal = pick_signal(data, opts.signal)
    full = _arrays(data, signal)
    if opts.cost != "seconds" and full.cost_usd is None:
        raise SmallfitError(f"--cost {opts.cost} needs every model's energy, which was not measured "
                            f"({data.energy_label}); use --cost seconds")
    cal_idx, held_idx = split(data.n, opts.calibration_share, opts.seed)
    cal, held = full.take(cal_idx), full.take(held_idx)
    peaks = [s.peak_rss_bytes for s in data.stages]
    pair_peak = None if any(p is None for p in peaks) else float(sum(p for p in peaks if p is not None))
    result = Analysis(data.task, data.metric, [s.name for s in data.stages], sorted({s.run_id for s in data.stages}),
                      signal, opts.cost, data.n, len(cal_idx), len(held_idx), _singles(data, held, peaks),
                      pair_peak, data.energy_label)
    if len(data.stages) == 2:
        _pair_curves(result, data, cal, held, held_idx, opts)
    if opts.thresholds is not None:
        if len(opts.thresholds) != len(data.stages) - 1:
            raise SmallfitError(f"--threshold takes one value per deferring stage ({len(data.stages) - 1} for "
                                f"{len(data.stages)} models), got {len(opts.thresholds)}")
        for t in opts.thresholds:
            check_threshold(signal, t)
        names = _figure_names(held, data.metric, pair_peak)
        b = bounds(held, np.array([opts.thresholds]), data.metric, pair_peak, names, opts.seed)
        result.fixed = _with_shares(_point(b, 0, opts.thresholds), held, opts.cost, opts.seed)
    if opts.budget:
        result.chosen = _choose(data, cal, held, pair_peak, opts)
        checks = parse(opts.budget, data.metric, data.task)
        result.chosen.singles.update({name: _meets(checks, figs) for name, figs in result.singles.items()})
    elif len(data.stages) > 2 and opts.thresholds is None:
        raise SmallfitError(f"a chain of {len(data.stages)} models needs thresholds per stage: pass --threshold "
                            "T1,T2,... or --budget to choose them")
    return result


def _grid(data: CascadeData, cal: Arrays) -> Array:
    """Threshold rows to try: every distinct calibration threshold of a pair; per-stage signal
    deciles (and +inf) for a chain."""
    if len(cal.signal) == 1:
        return all_thresholds(cal.signal[0])[:, None]
    per_stage = [np.unique(np.append(np.quantile(s, np.linspace(0, 1, CHAIN_GRID)), np.inf)) for s in cal.signal]
    return np.array(list(itertools.product(*per_stage)))


def _choose(data: CascadeData, cal: Arrays, held: Arrays, peak: float | None, opts: Options) -> Chosen:
    assert opts.budget is not None
    checks: list[Check] = parse(opts.budget, data.metric, data.task)
    wanted = {c.metric for c in checks} | _figure_names(cal, data.metric, peak)
    grid = _grid(data, cal)
    cal_b = bounds(cal, grid, data.metric, peak, wanted, opts.seed)
    cost_name = {"seconds": "seconds_per_request", "joules": "energy_j_per_request",
                 "dollars": "cost_usd_per_request"}[opts.cost]
    pick = choose(checks, cal_b, cal_b.value[cost_name], cal_b.value[data.metric])
    row = tuple(float(t) for t in grid[pick.row])
    held_b = bounds(held, np.array([row]), data.metric, peak, wanted, opts.seed)
    results = []
    for c in checks:
        bound = held_b.high[c.metric][0] if c.op in ("<", "<=") else held_b.low[c.metric][0]
        results.append(CheckResult(str(c), float(held_b.value[c.metric][0]), _finite(held_b.low[c.metric][0]),
                                   _finite(held_b.high[c.metric][0]), bool(c.passes(float(bound)))))
    met = bool(confident(checks, held_b)[0])
    point = _with_shares(_point(held_b, 0, row), held, opts.cost, opts.seed)
    return Chosen(point, pick.met, pick.candidates, results, met, opts.budget)


def _pair_curves(result: Analysis, data: CascadeData, cal: Arrays, held: Arrays, held_idx: NDArray[np.int64],
                 opts: Options) -> None:
    """APGR, CPT and calibration of every stored signal, and the plotted curves, on held-out."""
    small, large = held.quality
    weights = resample_weights(held.n, seed=opts.seed)
    stage = data.stages[0]
    for name in stage.signals:
        sig = stage.signals[name][held_idx]
        c = curves.curve(small, large, sig, weights)
        conf = curves.confidence(name, sig)
        result.summaries.append(SignalSummary(
            name, estimate(curves.apgr(c)), estimate(curves.cpt(c, 0.5)), estimate(curves.cpt(c, 0.8)),
            estimate(curves.ece(conf, small, weights)), estimate(curves.brier(conf, small, weights))))
    oc = curves.oracle_curve(small, large, weights)
    nan = Estimate(None, None, None)
    result.oracle = SignalSummary("oracle", estimate(curves.apgr(oc)), estimate(curves.cpt(oc, 0.5)),
                                  estimate(curves.cpt(oc, 0.8)), nan, nan)
    held_costs = [held.latency_s, held.energy_j, held.cost_usd][COSTS.index(opts.cost)]
    assert held_costs is not None
    cost_small, cost_large = (float(x.mean()) for x in held_costs)
    fig = replay(held, all_thresholds(cal.signal[0]))
    costs = fig.cost(opts.cost)
    assert costs is not None
    result.curve = CurveSeries(fig.deferred_share.tolist(), fig.quality.tolist(), costs.tolist())
    order = np.argsort(small - large, kind="stable")
    shares = np.arange(held.n + 1) / held.n
    gain = np.concatenate([[0.0], np.cumsum((large - small)[order])]) / held.n
    deferred_cost = np.concatenate([[0.0], np.cumsum(held_costs[1][order])]) / held.n
    result.oracle_curve = CurveSeries(shares.tolist(), (small.mean() + gain).tolist(),
                                      (cost_small + deferred_cost).tolist())
    ends = np.array([0.0, 1.0])
    result.random_curve = CurveSeries(ends.tolist(), (small.mean() + ends * (large.mean() - small.mean())).tolist(),
                                      (cost_small + ends * cost_large).tolist())
