"""A cascade's figures where people look: the terminal summary and a section of the HTML report
(the deferral curve and the cost curve as inline SVG, with each model alone, a random router, the
oracle and the chosen threshold), the cascade's verdict beside each single model's."""

from __future__ import annotations

import math
from html import escape

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from smallfit.cascade.analysis import Analysis, Point, SignalSummary
from smallfit.cascade.curves import Estimate
from smallfit.errors import SmallfitError
from smallfit.report.svg import GREY, PALETTE, Mark, Series, line_chart
from smallfit.store import Store

COST_FIGURE = {"seconds": "seconds_per_request", "joules": "energy_j_per_request", "dollars": "cost_usd_per_request"}
COST_TITLE = {"seconds": "seconds per request (mean)", "joules": "joules per request (mean, estimated)",
              "dollars": "dollars per request (mean, estimated)"}


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def _est(e: Estimate | None, fmt: str = ".3f", scale: float = 1.0, unit: str = "") -> str:
    if e is None or e.value is None:
        return "-"
    text = f"{e.value * scale:{fmt}}{unit}"
    if e.low is not None or e.high is not None:
        low = "-" if e.low is None else f"{e.low * scale:{fmt}}"
        high = "open" if e.high is None else f"{e.high * scale:{fmt}}"
        text += f" [{low}, {high}]"
    return text


def _seconds(e: Estimate | None) -> str:
    if e is None or e.value is None:
        return "-"
    return _est(e, ".0f", 1000, " ms") if e.value < 1 else _est(e, ".2f", 1, " s")


def _cost(a: Analysis, figs: dict[str, Estimate]) -> str:
    e = figs.get(COST_FIGURE[a.cost])
    if a.cost == "seconds":
        return _seconds(e)
    return _est(e, ".3g", 1, " J" if a.cost == "joules" else " $")


def _rule(a: Analysis, thresholds: tuple[float, ...]) -> str:
    return ", ".join(f"{a.signal}<{t:.4g}" for t in thresholds)


def options_rows(a: Analysis) -> list[tuple[str, dict[str, Estimate], str, Point | None]]:
    """(label, figures, budget outcome, point) for each model alone and each cascade shown."""
    chosen = a.chosen
    rows: list[tuple[str, dict[str, Estimate], str, Point | None]] = []
    for name, figs in a.singles.items():
        verdict = "" if chosen is None else ("PASS" if chosen.singles.get(name) else "FAIL")
        rows.append((f"{name} alone", figs, verdict, None))
    if a.fixed is not None:
        rows.append((f"cascade, defer when {_rule(a, a.fixed.thresholds)}", a.fixed.figures, "", a.fixed))
    if chosen is not None:
        verdict = "PASS" if chosen.met_on_heldout else "FAIL"
        rows.append((f"cascade, defer when {_rule(a, chosen.point.thresholds)} (chosen)", chosen.point.figures,
                     verdict, chosen.point))
    return rows


def _header(a: Analysis) -> str:
    return (f"Cascade on {a.task}: {' → '.join(a.models)}, a model passes a request on when its {a.signal} is below "
            f"the threshold. {a.n} matched examples (run {', '.join(a.runs)}): thresholds chosen on "
            f"{a.n_calibration} (calibration), every figure on the other {a.n_heldout} (held-out); 95% intervals "
            "by a paired bootstrap over examples (1000 resamples), latency percentiles by order statistics ('open': "
            "too few requests bound it).")


def print_cascade(console: Console, a: Analysis) -> None:
    """The terminal summary."""
    console.print(Text(_header(a)), soft_wrap=False)
    table = Table(title="Each model alone and the cascade (held-out)", title_justify="left")
    for col in ("option", a.metric, "deferred", "latency p50 / p95", COST_TITLE[a.cost].split(" (")[0],
                "share of last model's quality / cost", "budget"):
        table.add_column(col)
    for label, figs, verdict, point in options_rows(a):
        shares = "" if point is None else (f"{_est(point.quality_share, '.0%')} / {_est(point.cost_share, '.0%')}")
        table.add_row(label, _est(figs.get(a.metric)), _est(figs.get("deferred_share"), ".0%"),
                      f"{_seconds(figs.get('latency_s'))} / {_seconds(figs.get('latency_s_p95'))}",
                      _cost(a, figs), shares, verdict)
    parts: list[Table | Text] = [table]
    if a.curve is not None:
        parts.append(_curve_table(a))
    if a.summaries:
        parts.append(_signals_table(a))
    if a.chosen is not None:
        parts.append(Text(_budget_text(a)))
    if a.peak_rss_bytes is not None:
        parts.append(Text(f"Peak memory of the cascade's models: {a.peak_rss_bytes / 1e6:.1f} MB (the sum of each "
                          "model's peak in its own process: all stay loaded)."))
    console.print(Group(*parts))


def _curve_table(a: Analysis) -> Table:
    """About eleven points of the held-out deferral curve at the calibration thresholds."""
    assert a.curve is not None and a.random_curve is not None and a.oracle_curve is not None
    c, oracle = a.curve, a.oracle_curve
    table = Table(title=f"Deferral curve (held-out, at the calibration split's thresholds of {a.signal})",
                  title_justify="left")
    for col in ("deferred", a.metric, "random router", "oracle", COST_TITLE[a.cost]):
        table.add_column(col)
    seen: set[int] = set()
    r0, r1 = a.random_curve.quality
    for target in [i / 10 for i in range(11)]:
        i = min(range(len(c.share)), key=lambda k: (abs(c.share[k] - target), -c.quality[k]))
        if i in seen:
            continue
        seen.add(i)
        d = c.share[i]
        j = min(range(len(oracle.share)), key=lambda k: abs(oracle.share[k] - d))
        cost = c.cost[i] * (1000 if a.cost == "seconds" else 1)
        table.add_row(f"{d:.0%}", f"{c.quality[i]:.3f}", f"{r0 + d * (r1 - r0):.3f}",
                      f"{oracle.quality[j]:.3f}", f"{cost:.4g}{' ms' if a.cost == 'seconds' else ''}")
    return table


def _signals_table(a: Analysis) -> Table:
    table = Table(title="Signals (held-out): deferral (RouteLLM's APGR and CPT) and calibration of 'the small "
                  "model is right'", title_justify="left")
    for col in ("signal", "APGR", "CPT(50%)", "CPT(80%)", "ECE", "Brier"):
        table.add_column(col)
    rows: list[SignalSummary] = [*a.summaries, *([a.oracle] if a.oracle else [])]
    for s in rows:
        table.add_row(s.name + (" (used)" if s.name == a.signal else ""), _est(s.apgr), _est(s.cpt50, ".0%"),
                      _est(s.cpt80, ".0%"), _est(s.ece), _est(s.brier))
    table.add_row("random router", "0.500", "50%", "80%", "-", "-")
    return table


def _budget_text(a: Analysis) -> str:
    ch = a.chosen
    assert ch is not None
    rule = _rule(a, ch.point.thresholds)
    if ch.met_on_calibration:
        head = (f"Budget {ch.budget}: the cheapest threshold by {a.cost} that meets it with confidence on the "
                f"calibration split ({ch.candidates} do) is {rule}.")
    else:
        head = (f"Budget {ch.budget}: no threshold meets it with confidence on the calibration split; the closest "
                f"is {rule}.")
    checks = "; ".join(f"{c.check}: {_num(c.value)} [{_num(c.low)}, {_num(c.high) if c.high is not None else 'open'}]"
                       f" {'pass' if c.passed else 'fail'}" for c in ch.checks)
    tail = ("it meets the budget with confidence there." if ch.met_on_heldout
            else "it does not meet the budget with confidence there.")
    return f"{head} On the held-out split: {checks}; {tail}{_cheaper_alone(a)}"


def _cheaper_alone(a: Analysis) -> str:
    """A model alone that meets the budget on held-out at a lower mean cost than the cascade."""
    ch = a.chosen
    assert ch is not None
    mine = ch.point.figures.get(COST_FIGURE[a.cost])
    if mine is None or mine.value is None:
        return ""
    for name, figs in a.singles.items():
        cost = figs.get(COST_FIGURE[a.cost])
        if ch.singles.get(name) and cost is not None and cost.value is not None and cost.value < mine.value:
            return (f" But {name} alone meets it too, at {_cost(a, figs)} per request against the cascade's "
                    f"{_cost(a, ch.point.figures)}: on this task and machine the cascade does not pay.")
    return ""


# -- HTML ---------------------------------------------------------------------------------------

def _colours(a: Analysis) -> dict[str, str]:
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(a.models)}


def _charts(a: Analysis) -> str:
    assert a.curve is not None and a.random_curve is not None and a.oracle_curve is not None
    colours = _colours(a)
    chosen = a.chosen.point if a.chosen is not None else a.fixed
    curve_colour, oracle_colour = "#111827", "#059669"
    deferral = [Series(f"cascade on {a.signal} (held-out)", a.curve.share, a.curve.quality, curve_colour),
                Series("random router", a.random_curve.share, a.random_curve.quality, GREY, "6 4"),
                Series("oracle (defers where the large model gains)", a.oracle_curve.share, a.oracle_curve.quality,
                       oracle_colour, "2 3")]
    small, large = a.models
    q = {m: a.singles[m].get(a.metric, Estimate(None, None, None)) for m in a.models}
    c = {m: a.singles[m].get(COST_FIGURE[a.cost], Estimate(None, None, None)) for m in a.models}
    marks = [Mark(f"{small} alone", 0.0, q[small].value or 0.0, colours[small], q[small].low, q[small].high),
             Mark(f"{large} alone", 1.0, q[large].value or 0.0, colours[large], q[large].low, q[large].high)]
    cost_marks = [Mark(f"{m} alone", c[m].value or 0.0, q[m].value or 0.0, colours[m], q[m].low, q[m].high)
                  for m in a.models]
    if chosen is not None:
        f = chosen.figures
        e, share, cost = f[a.metric], f["deferred_share"], f.get(COST_FIGURE[a.cost])
        label = f"{'chosen' if a.chosen is not None else 'at'}: {_rule(a, chosen.thresholds)}"
        marks.append(Mark(label, share.value or 0.0, e.value or 0.0, "#dc2626", e.low, e.high))
        if cost is not None and cost.value is not None:
            cost_marks.append(Mark(label, cost.value, e.value or 0.0, "#dc2626", e.low, e.high))
    cost_series = [Series(f"cascade on {a.signal} (held-out)", a.curve.cost, a.curve.quality, curve_colour),
                   Series("random router", a.random_curve.cost, a.random_curve.quality, GREY, "6 4"),
                   Series("oracle", a.oracle_curve.cost, a.oracle_curve.quality, oracle_colour, "2 3")]
    unit_metric = "latency_s" if a.cost == "seconds" else ""
    first = line_chart(f"deferral curve on {a.task}", f"share of requests sent to {large}", a.metric,
                       deferral, marks)
    second = line_chart(f"cost curve on {a.task}", COST_TITLE[a.cost], a.metric, cost_series, cost_marks,
                        unit_metric)
    return f'<div class="grid">{first}{second}</div>'


def _h(e: Estimate | None, fmt: str = ".3f") -> str:
    return escape(_est(e, fmt))


def cascade_section(a: Analysis) -> str:
    """The HTML report's cascade section."""
    rows = []
    for label, figs, verdict, point in options_rows(a):
        shares = "" if point is None else f"{_h(point.quality_share, '.0%')} / {_h(point.cost_share, '.0%')}"
        badge = (f'<span class="badge {"pass" if verdict == "PASS" else "fail"}">{verdict}</span>' if verdict else "")
        rows.append(f"<tr><td>{escape(label)}</td><td>{_h(figs.get(a.metric))}</td>"
                    f"<td>{_h(figs.get('deferred_share'), '.0%')}</td>"
                    f"<td>{escape(_seconds(figs.get('latency_s')))} / "
                    f"{escape(_seconds(figs.get('latency_s_p95')))}</td>"
                    f"<td>{escape(_cost(a, figs))}</td><td>{shares}</td><td>{badge}</td></tr>")
    table = ("<table class=\"cascade\"><tr><th>option</th><th>" + escape(a.metric) + "</th><th>deferred</th>"
             "<th>latency p50 / p95</th><th>" + escape(COST_TITLE[a.cost]) + "</th><th>share of the last model's "
             "quality / cost</th><th>budget (held-out)</th></tr>" + "".join(rows) + "</table>")
    signals = ""
    if a.summaries:
        srows = "".join(f"<tr><td>{escape(s.name)}{' (used)' if s.name == a.signal else ''}</td><td>{_h(s.apgr)}</td>"
                        f"<td>{_h(s.cpt50, '.0%')}</td><td>{_h(s.cpt80, '.0%')}</td><td>{_h(s.ece)}</td>"
                        f"<td>{_h(s.brier)}</td></tr>" for s in [*a.summaries, *([a.oracle] if a.oracle else [])])
        signals = ("<table class=\"signals\"><tr><th>signal</th><th>APGR</th><th>CPT(50%)</th><th>CPT(80%)</th>"
                   "<th>ECE</th><th>Brier</th></tr>" + srows +
                   "<tr><td>random router</td><td>0.500</td><td>50%</td><td>80%</td><td>-</td><td>-</td></tr></table>")
    charts = _charts(a) if a.curve is not None else ""
    budget = f"<p>{escape(_budget_text(a))}</p>" if a.chosen is not None else ""
    return (f"<h2>Cascade: {escape(' → '.join(a.models))}</h2><p class=\"sub\">{escape(_header(a))}</p>"
            f"{charts}{table}{budget}{signals}")


def live_cascade_sections(store: Store, run_id: str) -> str:
    """For each live cascade candidate of a run whose members also ran alone in it, the cascade
    section of its replay on each task they all finished, at the candidate's thresholds (a positive
    threshold on a generation signal is a probability, as the live cascade reads it)."""
    from smallfit.cascade.analysis import Options, analyse, pick_signal
    from smallfit.cascade.data import load
    from smallfit.cascade.live import parse
    from smallfit.models import parse_model_ref
    from smallfit.signals import TOKEN_SIGNALS

    names = {str(c["name"]): str(c["model_ref"]) for c in store.candidates(run_id)}
    done = {(str(t["candidate"]), str(t["task"])) for t in store.task_results(run_id) if t["status"] == "done"}
    parts = []
    for ref in names.values():
        if not ref.startswith("cascade:"):
            continue
        try:
            cascade = parse(ref)
            members = [parse_model_ref(m).name for m in cascade.members]
        except SmallfitError:
            continue
        for task in sorted({t for _, t in done}):
            if not all(m in names and (m, task) in done for m in members):
                continue
            try:
                data = load(store, [run_id], members, task)
                signal = pick_signal(data, None)
                ts = tuple(math.log(t) if signal in TOKEN_SIGNALS and t > 0 else t for t in cascade.thresholds)
                parts.append(cascade_section(analyse(data, Options(thresholds=ts))))
            except SmallfitError:
                continue  # too few examples, no signal: the candidate's own figures stand alone
    return "".join(parts)
