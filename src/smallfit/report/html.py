"""``smallfit report``: one self-contained HTML file (inline CSS and SVG, no script, no network).

Everything comes from the store through :func:`smallfit.results.collect`, so any past run can be
reported again; what is missing (a failed candidate, no budget, a figure not measured) is said.
"""

from __future__ import annotations

import datetime as dt
import json
from html import escape
from typing import Any

from smallfit.judge.verdict import CheckResult
from smallfit.metrics import METRICS
from smallfit.report.pareto import QUALITY, Frontier, task_frontier
from smallfit.report.svg import PALETTE, scatter
from smallfit.report.table import (
    fidelity_text,
    fmt_bytes,
    fmt_metric,
    fmt_rate,
    fmt_seconds,
    quality_text,
    sweep_variants,
)
from smallfit.report.tradeoff import noise_flags, tradeoffs
from smallfit.results import RunResults

PLOT_AXES = ("latency_s_p95", "peak_rss_bytes")

_CSS = """
:root{--ink:#111827;--muted:#6b7280;--line:#e5e7eb;--pass:#15803d;--fail:#b91c1c;--unc:#b45309;--err:#7e22ce}
*{box-sizing:border-box}body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--ink);background:#f3f4f6}main{max-width:1280px;margin:0 auto;padding:28px 32px 60px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:34px 0 10px;padding-bottom:6px;
border-bottom:2px solid var(--line)}h3{font-size:15px;margin:0 0 6px}
.sub{color:var(--muted);margin:0 0 14px}.answer{font-size:17px;background:#fff;border-left:5px solid var(--ink);
padding:12px 16px;border-radius:6px;margin:16px 0}
table{border-collapse:collapse;background:#fff;width:100%;font-size:14px;border-radius:6px;overflow:hidden}
th,td{padding:7px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:#f9fafb;font-weight:600}td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
.badge{display:inline-block;padding:1px 9px;border-radius:10px;font-weight:600;font-size:12px;
text-transform:uppercase;color:#fff;background:var(--muted)}.badge.pass{background:var(--pass)}
.badge.fail{background:var(--fail)}.badge.uncertain{background:var(--unc)}.badge.error{background:var(--err)}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:16px}
.card{background:#fff;border-radius:8px;padding:14px 16px;box-shadow:0 1px 2px rgba(0,0,0,.06)}
.plot{width:100%;height:auto}.plot .tick{font-size:11px;fill:#4b5563}.plot .axis{font-size:12px;fill:#374151}
.plot .label{font-size:12px;font-weight:600}.muted{color:var(--muted)}ul{margin:4px 0 0;padding-left:20px}
.gain{color:var(--pass)}.cost{color:var(--fail)}.missing{color:var(--err)}.flags li{color:#92400e}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:0}dt{font-weight:600}dd{margin:0}
code{font:13px ui-monospace,SFMono-Regular,Menlo,monospace;background:#f3f4f6;padding:0 3px;border-radius:3px}
"""


def _badge(verdict: str) -> str:
    return f'<span class="badge {escape(verdict)}">{escape(verdict)}</span>'


def _header(res: RunResults) -> str:
    run = res.run
    started = dt.datetime.fromtimestamp(run["created_at"]).strftime("%Y-%m-%d %H:%M")
    tasks = ", ".join(dict.fromkeys(r.task for r in res.rows))
    names = ", ".join(escape(c["name"]) for c in res.candidates)
    if not res.budget:
        answer = "No budget was declared for this run, so there is no verdict: the figures below stand alone."
    elif res.smallest_passing:
        answer = f"Smallest candidate that passes the budget with confidence: <b>{escape(res.smallest_passing)}</b>."
    else:
        undecided = [n for n, v in res.verdicts.items() if v.verdict == "uncertain"]
        answer = "No candidate passes the budget with confidence."
        if undecided:
            answer += (f" Undecided: <b>{escape(', '.join(undecided))}</b> "
                       "(more examples or requests would decide; see below).")
    return (f"<h1>smallfit report · run {escape(run['id'])}</h1>"
            f'<p class="sub">Started {started} · status {escape(str(run["status"]))} · candidates: {names} · '
            f"tasks: {escape(tasks)}</p><div class=\"answer\">{answer}</div>")


def _interval(c: CheckResult) -> str:
    if c.low is None:
        return '<span class="muted">single measurement</span>'
    if c.high is None:
        return f"{fmt_metric(c.metric, c.low)} – open"
    return f"{fmt_metric(c.metric, c.low)} – {fmt_metric(c.metric, c.high)}"


def _budget(res: RunResults) -> str:
    if not res.budget:
        return ("<h2>Budget</h2><p class=\"muted\">No budget declared. Run with <code>--budget 'acc&gt;=0.4,"
                "latency_s_p95&lt;=2'</code> to get a verdict.</p>")
    rows = []
    for name, v in res.verdicts.items():
        checks: list[CheckResult | None] = list(v.checks) or [None]
        for i, c in enumerate(checks):
            head = (f'<td rowspan="{len(checks)}"><b>{escape(name)}</b><br>{_badge(v.verdict)}</td>' if i == 0 else "")
            if c is None:
                err = next((r.error for r in res.rows if r.candidate == name and r.error), "")
                rows.append(f'<tr>{head}<td colspan="7" class="missing">did not run: {escape(err or "")}</td></tr>')
                continue
            note = c.reason or ("whole interval on the right side" if c.low is not None else "")
            rows.append(f"<tr>{head}<td><code>{escape(c.check)}</code></td><td>{escape(c.task)}</td>"
                        f'<td class="num">{fmt_metric(c.metric, c.value)}</td><td class="num">{_interval(c)}</td>'
                        f'<td class="num">{c.n if c.n is not None else "–"}</td><td>{_badge(c.outcome)}</td>'
                        f"<td>{escape(note)}</td></tr>")
    return (f"<h2>Budget and verdict</h2><p class=\"sub\">Budget: <code>{escape(', '.join(res.budget))}</code>. "
            "A check passes when its whole 95% interval is on the right side of the threshold, fails when the "
            "whole interval is on the wrong side, and is uncertain otherwise.</p>"
            "<table><tr><th>candidate</th><th>check</th><th>task</th><th>value</th><th>95% interval</th>"
            f"<th>n</th><th>outcome</th><th>note</th></tr>{''.join(rows)}</table>")


def _plots(res: RunResults, colours: dict[str, str]) -> str:
    cards = []
    for task in dict.fromkeys(r.task for r in res.rows):
        for axis in PLOT_AXES:
            f = task_frontier(res, task, axis, QUALITY)
            if f is None:
                cards.append(f'<div class="card"><h3>{escape(task)}: quality against {axis}</h3>'
                             '<p class="missing">Not plotted: no candidate has both figures on this task.</p></div>')
                continue
            cards.append(f'<div class="card"><h3>{escape(task)}: {escape(f.y)} against {escape(f.x)}</h3>'
                         f"{scatter(f, colours)}{_frontier_note(f)}</div>")
    return ("<h2>Pareto frontiers</h2><p class=\"sub\">Bars are 95% intervals (an arrow: open above, too few "
            "requests to bound it); memory and size have none and compare as points. A candidate is dominated only "
            "when another is better on both figures beyond the intervals (its interval's worse end at least as good "
            "as this one's better end, strictly on one): hollow grey. Filled points are on the frontier; "
            "half-filled ones are on it only because the intervals overlap: the point estimates put another "
            "candidate ahead on both figures, but they are not distinguishable. The dashed line joins the frontier "
            f"of the point estimates.</p><div class=\"grid\">{''.join(cards)}</div>")


def _frontier_note(f: Frontier) -> str:
    notes = [f"{escape(p.candidate)} is dominated by {escape(', '.join(p.dominated_by))} beyond the intervals"
             for p in f.points if p.dominated]
    notes += [f"{escape(p.candidate)} is not distinguishable from {escape(', '.join(p.indistinct_from))}"
              for p in f.points if p.indistinct_from]
    notes += [f'<span class="missing">{escape(c)} not plotted: {escape(w)}</span>' for c, w in f.missing.items()]
    return f'<p class="muted">{"; ".join(notes)}</p>' if notes else ""


def _results_table(res: RunResults) -> str:
    rows = []
    for r in res.rows:
        m = r.metrics
        if r.error:
            rows.append(f"<tr><td>{escape(r.candidate)}</td><td>{escape(r.task)}</td>"
                        f'<td colspan="6" class="missing">error: {escape(r.error)}</td></tr>')
            continue
        cells = [quality_text(m), f"{fmt_seconds(m.get('latency_s'))} / {fmt_seconds(m.get('latency_s_p95'))}",
                 fmt_seconds(m.get("ttft_s")), fmt_rate(m.get("decode_tok_s")), fmt_bytes(m.get("peak_rss_bytes")),
                 fmt_bytes(m.get("model_size_bytes"))]
        rows.append(f"<tr><td>{escape(r.candidate)}</td><td>{escape(r.task)}</td>"
                    + "".join(f'<td class="num">{escape(c)}</td>' for c in cells) + "</tr>")
    return ("<h2>All figures</h2><p class=\"sub\">“-” marks a figure that was not measured (never 0).</p>"
            "<table><tr><th>candidate</th><th>task</th><th>quality ± s.e.</th><th>latency p50 / p95</th>"
            "<th>TTFT p50</th><th>decode tok/s</th><th>peak RSS</th><th>model size</th></tr>"
            f"{''.join(rows)}</table>")


def _sweep(res: RunResults) -> str:
    """A quantization sweep's variants: backend, size, quality, fidelity to the reference, speed."""
    variants = sweep_variants(res)
    rows = []
    for r in res.rows:
        if r.candidate not in variants:
            continue
        m = r.metrics
        if r.error:
            rows.append(f"<tr><td>{escape(r.candidate)}</td><td>{escape(variants[r.candidate][1])}</td>"
                        f'<td>{escape(r.task)}</td><td colspan="6" class="missing">error: {escape(r.error)}</td></tr>')
            continue
        cells = [fmt_bytes(m.get("model_size_bytes")), quality_text(m), fidelity_text(m),
                 fmt_seconds(m.get("latency_s")),
                 fmt_rate(m.get("decode_tok_s")), fmt_bytes(m.get("peak_rss_bytes"))]
        rows.append(f"<tr><td>{escape(r.candidate)}</td><td>{escape(variants[r.candidate][1])}</td>"
                    f"<td>{escape(r.task)}</td>" + "".join(f'<td class="num">{escape(c)}</td>' for c in cells)
                    + "</tr>")
    if not rows:
        return ""
    return ("<h2>Quantization sweep</h2><p class='sub'>Fidelity to the sweep's reference on the task's prompts: KL "
            "divergence of next-token distributions (mean / p95, nats) for causal LMs, cosine similarity of "
            "embeddings (mean / min) for encoders.</p><table><tr><th>variant</th><th>backend</th><th>task</th>"
            "<th>size</th><th>quality ± s.e.</th><th>fidelity</th><th>latency p50</th><th>decode tok/s</th>"
            f"<th>peak RSS</th></tr>{''.join(rows)}</table>")


def _efficiency(res: RunResults) -> str:
    """Energy, cost, ITL, roofline and noise per candidate x task, each labelled measured or estimated."""
    rows = []
    for r in res.rows:
        m, labels = r.metrics, r.info.labels
        if r.error or m.get("energy_j") is None:
            continue
        kind = "measured" if str(labels.get("energy_j", "")).startswith("measured") else "estimated"
        e_tok = m.get("energy_j_per_token")
        cost_out, cost_in = m.get("cost_usd_per_mtok_out"), m.get("cost_usd_per_mtok_in")
        roof = m.get("decode_roofline_pct")
        noisy = r.info.noisy
        cells = ["-" if e_tok is None else f"{e_tok * 1000:.1f} mJ ({kind})",
                 "-" if m.get("power_w") is None else f"{m['power_w']:.1f} W",
                 "-" if cost_out is None else f"${cost_out:.3f} (est.)",
                 "-" if cost_in is None else f"${cost_in:.3f} (est.)",
                 f"{fmt_seconds(m.get('itl_s'))} / {fmt_seconds(m.get('itl_s_p99'))}",
                 "-" if roof is None else f"{roof:.0f} %", "noisy" if noisy else "quiet" if noisy is False else "-"]
        rows.append(f"<tr><td>{escape(r.candidate)}</td><td>{escape(r.task)}</td>"
                    + "".join(f'<td class="num">{escape(c)}</td>' for c in cells) + "</tr>")
    if not rows:
        return ""
    return ("<h2>Energy, cost and roofline</h2><p class='sub'>Energy is measured where the machine exposes "
            "counters (NVML, RAPL) and estimated otherwise (CPU time × watts per core); costs are estimates from the "
            "declared prices. A task is noisy when other processes kept more than half a core busy during it.</p>"
            "<table><tr><th>candidate</th><th>task</th><th>energy / token</th><th>power</th><th>$ / 1M out</th>"
            "<th>$ / 1M in</th><th>ITL p50 / p99</th><th>% of decode roofline</th><th>machine</th></tr>"
            f"{''.join(rows)}</table>")


def _probes(res: RunResults) -> str:
    """Every figure of the load-curve, context and energy probes."""
    if not res.probes:
        return ""
    parts = []
    for r in res.probes:
        if r.error or r.info.unsupported:
            parts.append(f"<p class='missing'>{escape(r.candidate)} · {escape(r.task)}: "
                         f"{escape(r.error or str(r.info.unsupported))}</p>")
            continue
        cells = "".join(f"<tr><td><code>{escape(k)}</code></td><td class='num'>{escape(_fmt(v))}</td></tr>"
                        for k, v in r.metrics.items())
        parts.append(f"<h3>{escape(r.candidate)} · {escape(r.task)}</h3><table>{cells}</table>")
    return "<h2>Probes</h2>" + "".join(parts)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _tradeoffs(res: RunResults) -> str:
    cards = []
    for t in tradeoffs(res):
        verdict = res.verdicts[t.candidate].verdict if t.candidate in res.verdicts else "none"
        body: list[str] = []
        if t.reference is None or not any(r.candidate == t.candidate and not r.error for r in res.rows):
            body.append('<p class="missing">Nothing to compare: this candidate has no finished task.</p>')
        elif t.candidate == t.reference:
            body.append("<p>The best-quality candidate: the others are compared with it.</p>")
        else:
            body.append(f'<p class="muted">Against {escape(t.reference)} (best quality):</p>')
            for title, items, cls in (("Gains", t.gains, "gain"), ("Trades away", t.costs, "cost"),
                                      ("Missing", t.missing, "missing")):
                if items:
                    lis = "".join(f"<li>{escape(i)}</li>" for i in items)
                    body.append(f'<b class="{cls}">{title}</b><ul class="{cls}">{lis}</ul>')
        cards.append(f'<div class="card"><h3>{escape(t.candidate)} {_badge(verdict)}</h3>{"".join(body)}</div>')
    return f"<h2>Trade-offs</h2><div class=\"grid\">{''.join(cards)}</div>"


def _kv(data: dict[str, Any]) -> str:
    items = []
    for k, v in data.items():
        text = fmt_bytes(v) if k.endswith("_bytes") and isinstance(v, int | float) else (
            ", ".join(map(str, v)) if isinstance(v, list) else str(v))
        items.append(f"<dt>{escape(k)}</dt><dd>{escape(text)}</dd>")
    return f"<dl>{''.join(items)}</dl>"


def _machine(res: RunResults) -> str:
    run = res.run
    hw = json.loads(run.get("hardware_json") or "{}")
    versions = json.loads(run.get("versions_json") or "{}")
    loads = {"threads": run.get("threads"),
             "load before the run": json.loads(run.get("load_before_json") or "{}").get("loadavg"),
             "load after the run": json.loads(run.get("load_after_json") or "{}").get("loadavg")}
    for c in res.candidates:
        for when in ("before", "after"):
            raw = json.loads(c.get(f"load_{when}_json") or "{}")
            loads[f"{c['name']}: load {when}"] = raw.get("loadavg") if isinstance(raw, dict) else None
    flags = noise_flags(res)
    flag_html = (f'<ul class="flags">{"".join(f"<li>{escape(f)}</li>" for f in flags)}</ul>' if flags
                 else '<p class="muted">No noise flags: the machine was not oversubscribed when load was read.</p>')
    nodes = "".join(f'<div class="card"><h3>Hardware class {escape(hw)}</h3><p>nodes: {escape(", ".join(g["nodes"]))}'
                    f'; candidates: {escape(", ".join(g["candidates"]))}</p>{_kv(g["fingerprint"])}</div>'
                    for hw, g in res.hardware.items()) if res.remote() else ""
    return ("<h2>Machine and conditions</h2><div class=\"grid\">" + nodes +
            f'<div class="card"><h3>Hardware</h3>{_kv(hw) if hw else "<p class=missing>not recorded</p>"}</div>'
            f'<div class="card"><h3>Versions</h3>{_kv(versions)}<h3 style="margin-top:12px">Threads and load '
            f"(1, 5, 15 min)</h3>{_kv(loads)}</div></div><h3 style=\"margin-top:16px\">Noise flags</h3>{flag_html}")


def _definitions() -> str:
    rows = "".join(f"<tr><td><code>{escape(m.name)}</code></td><td>{escape(m.unit or 'ratio')}</td>"
                   f"<td>{'higher' if m.higher_is_better else 'lower'}</td><td>{escape(m.definition)}</td></tr>"
                   for m in METRICS.values())
    rows += ("<tr><td><code>&lt;metric&gt;_stderr</code>, <code>&lt;metric&gt;_ci_low</code>, "
             "<code>&lt;metric&gt;_ci_high</code></td><td>as the metric</td><td>–</td><td>A quality metric's "
             "standard error and 95% interval (Clopper–Pearson, exact, for shares of 0/1 scores, else an "
             "expanded percentile bootstrap, 1000 resamples of the examples, seed 0).</td></tr>")
    return ("<h2>Definitions</h2><table><tr><th>metric</th><th>unit</th><th>better</th><th>definition</th></tr>"
            f"{rows}</table><p class=\"muted\">Intervals: Clopper–Pearson (exact binomial) interval for acc, "
            "acc_norm and exact_match; "
            "an expanded percentile bootstrap (1000 resamples of the examples) for other quality metrics; "
            "distribution-free order statistics of the requests for p50/p90/p95/p99 of TTFT, TPOT and latency "
            "(open above where too few requests bound the percentile: 72 for a p95); a delta-method t interval "
            "over the requests for decode, prefill and input rates; none for ITL, memory, size, load time, energy, "
            "cost and KL (point checks). 'About N more' is n × ((1.96 + 0.84) se / |value − threshold|)² − n: "
            "the count that decides the check with 80% power.</p>")


def render(res: RunResults, extra: str = "") -> str:
    """The whole report as one HTML document; ``extra`` (a cascade's section) follows the budget."""
    colours = {c["name"]: PALETTE[i % len(PALETTE)] for i, c in enumerate(res.candidates)}
    body = "".join([_header(res), _budget(res), extra, _plots(res, colours), _tradeoffs(res), _results_table(res),
                    _sweep(res), _efficiency(res), _probes(res), _machine(res), _definitions()])
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>smallfit report {escape(res.run['id'])}</title><style>{_CSS}</style></head>"
            f"<body><main>{body}</main></body></html>\n")
