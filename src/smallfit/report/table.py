"""Terminal tables: the comparison of candidates, and the list of runs."""

from __future__ import annotations

import datetime as dt
import json
import math
import sqlite3
from collections.abc import Sequence
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from smallfit.judge.verdict import ERROR, FAIL, PASS, UNCERTAIN, CheckResult
from smallfit.metrics import METRICS
from smallfit.report.pareto import Frontier, Point
from smallfit.results import ResultRow, RunResults
from smallfit.store import effective_status

_VERDICT_STYLE = {PASS: "bold green", FAIL: "bold red", ERROR: "bold magenta", UNCERTAIN: "bold yellow"}


def fmt_bytes(value: float | None) -> str:
    """1.5e9 -> '1.50 GB' (powers of 1000, as in the budget's GB)."""
    if value is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} B"


def fmt_seconds(value: float | None) -> str:
    """Seconds shown in ms below 1 s."""
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def fmt_rate(value: float | None) -> str:
    """A tokens/s figure."""
    return "-" if value is None else f"{value:.1f}"


def fmt_metric(name: str, value: float | None) -> str:
    """A figure in its metric's unit: bytes as MB/GB, seconds as ms/s, shares to 3 decimals."""
    unit = METRICS[name].unit if name in METRICS else ""
    if value is None:
        return "-"
    if unit == "bytes":
        return fmt_bytes(value)
    if unit == "s":
        return fmt_seconds(value)
    if unit == "tokens/s":
        return f"{value:.1f} tok/s"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.4g}"


def quality_text(metrics: dict[str, float | None]) -> str:
    """The first quality figure with its standard error, e.g. ``acc 0.470 ± 0.050``."""
    for name, value in metrics.items():
        if name in METRICS and METRICS[name].unit in ("fraction", "bits/byte") and value is not None:
            se = metrics.get(f"{name}_stderr")
            return f"{name} {value:.3f}" + (f" ± {se:.3f}" if se is not None else "")
    return "-"


def comparison(results: RunResults) -> Group:
    """The comparison table plus the budget verdict, ready for ``Console.print``."""
    run = results.run
    table = Table(title=f"smallfit run {run['id']}", title_justify="left", header_style="bold")
    for col in ("candidate", "task", "quality ± s.e.", "latency p50/p95", "TTFT p50", "decode tok/s",
                "prefill tok/s", "peak RSS", "verdict"):
        table.add_column(col, no_wrap=True)
    for r in task_rows(results):
        m = r.metrics
        verdict = Text(r.verdict, style=_VERDICT_STYLE.get(r.verdict, ""))
        if r.error:
            table.add_row(r.candidate, r.task, Text(f"error: {r.error}", style="magenta", overflow="fold"),
                          "", "", "", "", "", verdict)
            continue
        table.add_row(r.candidate, r.task, quality_text(m),
                      f"{fmt_seconds(m.get('latency_s'))} / {fmt_seconds(m.get('latency_s_p95'))}",
                      fmt_seconds(m.get("ttft_s")), fmt_rate(m.get("decode_tok_s")), _prefill(m),
                      fmt_bytes(m.get("peak_rss_bytes")), verdict)
    table.columns[2].no_wrap = False
    extra = [t for t in (sweep_table(results), efficiency_table(results), load_curve_table(results),
                         context_table(results)) if t]
    return Group(table, *extra, *node_lines(results), *verdict_lines(results))


def node_lines(results: RunResults) -> list[Text]:
    """Where a cluster run's jobs ran: each hardware class (its fingerprint id, CPU, cores, memory)
    with its nodes and candidates; nothing for a run on this machine alone."""
    if not results.remote():
        return []
    lines = []
    for hw, group in results.hardware.items():
        fp = group["fingerprint"]
        lines.append(Text(f"Hardware {hw}: {fp.get('cpu_model') or '?'}, {fp.get('logical_cpus') or '?'} CPUs, "
                          f"{fmt_bytes(fp.get('ram_bytes'))} RAM; nodes {', '.join(group['nodes'])}; "
                          f"candidates {', '.join(group['candidates'])}"))
    return lines


def task_rows(results: RunResults) -> list[ResultRow]:
    """The candidate x task rows (the probes' rows are kept apart in ``results.probes``)."""
    return results.rows


def _label(r: ResultRow, key: str) -> str:
    label = r.info.labels.get(key, "")
    return " (meas.)" if label.startswith("measured") else " (est.)" if label.startswith("estimated") else ""


def sweep_variants(results: RunResults) -> dict[str, tuple[str, str]]:
    """Candidate name -> (quantization variant, backend), for the candidates of a ``--quantize`` sweep."""
    found = {c["name"]: (str(c["variant"]), str(c["backend"])) for c in results.candidates if c.get("variant")}
    if not found:  # a run stored before the variant column: its stored (expanded) spec, read as plain JSON
        stored = json.loads(results.run["spec_json"]).get("candidates") or []
        found = {str(c["name"]): (str(c["variant"]), str(c.get("backend") or "")) for c in stored
                 if isinstance(c, dict) and c.get("variant") and c.get("name")}
    return found


def _prefill(m: dict[str, Any]) -> str:
    """Prompt tokens/s; for an encoder, its input tokens/s (marked ``enc``)."""
    if m.get("prefill_tok_s") is None and m.get("input_tok_s") is not None:
        return f"{fmt_rate(m['input_tok_s'])} (enc)"
    return fmt_rate(m.get("prefill_tok_s"))


def fidelity_text(m: dict[str, Any]) -> str:
    """KL divergence (mean / p95) for causal LMs, embedding cosine (mean / min) for encoders."""
    for mean, tail, fmt in (("kl_divergence", "kl_divergence_p95", "{:.4f}"),
                            ("embedding_cosine", "embedding_cosine_min", "cos {:.5f}")):
        if m.get(mean) is not None:
            text = fmt.format(m[mean])
            return text + (f" / {m[tail]:.4f}" if m.get(tail) is not None else "")
    return "-"


def sweep_table(results: RunResults) -> Table | None:
    """Each sweep variant x task: size, quality, fidelity to the reference, speed, memory."""
    variants = sweep_variants(results)
    rows = [r for r in task_rows(results) if r.candidate in variants]
    if not rows:
        return None
    table = Table(title="Quantization sweep (KL: mean / p95 nats against the reference; encoders: cosine "
                  "mean / min; on the task's prompts)", title_justify="left", header_style="bold")
    for col in ("variant", "backend", "task", "size", "quality ± s.e.", "fidelity", "latency p50", "decode tok/s",
                "peak RSS"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        m = r.metrics
        backend = variants[r.candidate][1]
        if r.error:
            table.add_row(r.candidate, backend, r.task, Text(f"error: {r.error}", style="magenta", overflow="fold"),
                          "", "", "", "", "")
            continue
        table.add_row(r.candidate, backend, r.task, fmt_bytes(m.get("model_size_bytes")), quality_text(m),
                      fidelity_text(m), fmt_seconds(m.get("latency_s")), fmt_rate(m.get("decode_tok_s")),
                      fmt_bytes(m.get("peak_rss_bytes")))
    table.columns[3].no_wrap = False
    return table


def efficiency_table(results: RunResults) -> Table | None:
    """Energy, cost, inter-token latency, roofline and the noise flag of each candidate x task."""
    rows = [r for r in task_rows(results) if not r.error and r.metrics.get("energy_j") is not None]
    if not rows:
        return None
    table = Table(title="Energy, cost, inter-token latency and roofline", title_justify="left", header_style="bold")
    for col in ("candidate", "task", "energy / token", "power", "$ / 1M out", "$ / 1M in", "ITL p50 / p99",
                "% of decode roofline", "machine"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        m = r.metrics
        e_tok, watts = m.get("energy_j_per_token"), m.get("power_w")
        noisy = r.info.noisy
        table.add_row(
            r.candidate, r.task,
            "-" if e_tok is None else f"{e_tok * 1000:.1f} mJ{_label(r, 'energy_j_per_token')}",
            "-" if watts is None else f"{watts:.1f} W",
            _usd(m.get("cost_usd_per_mtok_out")) + " (est.)", _usd(m.get("cost_usd_per_mtok_in")) + " (est.)",
            f"{fmt_seconds(m.get('itl_s'))} / {fmt_seconds(m.get('itl_s_p99'))}",
            "-" if m.get("decode_roofline_pct") is None else f"{m['decode_roofline_pct']:.0f} %",
            Text("noisy", style="bold yellow") if noisy else Text("quiet" if noisy is False else "-"))
    return table


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:.3f}"


def load_curve_table(results: RunResults) -> Table | None:
    """Throughput and latency against sequences decoded together, per candidate."""
    rows = [r for r in results.probes if r.task == "probe:load-curve" and not r.error]
    if not rows:
        return None
    sizes = sorted({int(k.rsplit("_", 1)[1]) for r in rows for k in r.metrics if k.startswith("throughput_tok_s_at_")})
    table = Table(title="Load curve: tokens/s (median latency) against sequences decoded together",
                  title_justify="left", header_style="bold")
    for col in ("candidate", *(f"{n} seq" for n in sizes), "knee"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        m = r.metrics
        if r.info.unsupported:
            table.add_row(r.candidate, str(r.info.unsupported), *[""] * len(sizes))
            continue
        cells = [f"{m[f'throughput_tok_s_at_{n}']:.1f} ({fmt_seconds(m.get(f'latency_s_at_{n}'))})"
                 if m.get(f"throughput_tok_s_at_{n}") is not None else "-" for n in sizes]
        knee = m.get("knee_batch_size")
        table.add_row(r.candidate, *cells, "-" if knee is None else f"{knee:.0f} seq")
    return table


def context_table(results: RunResults) -> Table | None:
    """TTFT, prefill rate and peak memory against prompt length, per candidate."""
    rows = [r for r in results.probes if r.task == "probe:context" and not r.error]
    if not rows:
        return None
    lengths = sorted({int(k.rsplit("_", 1)[1]) for r in rows for k in r.metrics if k.startswith("ttft_s_at_")})
    table = Table(title="Context scaling: TTFT / prefill tokens/s / peak RSS against prompt tokens",
                  title_justify="left", header_style="bold")
    for col in ("candidate", *(str(n) for n in lengths), "longest within memory budget"):
        table.add_column(col)
    for r in rows:
        m = r.metrics
        if r.info.unsupported:
            table.add_row(r.candidate, str(r.info.unsupported), *[""] * len(lengths))
            continue
        cells = [f"{fmt_seconds(m.get(f'ttft_s_at_{n}'))} / {m[f'prefill_tok_s_at_{n}']:.0f} / "
                 f"{fmt_bytes(m.get(f'peak_rss_bytes_at_{n}'))}" if m.get(f"ttft_s_at_{n}") is not None else "-"
                 for n in lengths]
        best = m.get("max_context_within_memory_budget")
        table.add_row(r.candidate, *cells, "no memory budget" if r.info.memory_budget_bytes is None
                      else "-" if best is None else f"{best:.0f} tokens")
    return table


def verdict_lines(results: RunResults) -> list[Text]:
    """One line for the budget, one per candidate with the checks it failed or left undecided
    (value, 95% interval, what would decide it), and the answer."""
    if not results.budget:
        return [Text("No budget declared: pass --budget 'acc>=0.4,latency_s_p95<=2' for a verdict.", style="dim")]
    lines = [Text(f"Budget: {', '.join(results.budget)}  (a check passes when its whole 95% interval does)")]
    info = {c["name"]: c for c in results.candidates}
    for name, v in results.verdicts.items():
        open_checks = [c for c in v.checks if not c.passed]
        cand = info.get(name, {})
        line = Text(f"  {name} ({fmt_bytes(cand.get('model_size_bytes'))} on disk, "
                    f"loads in {fmt_seconds(cand.get('load_s'))}): ")
        line.append(v.verdict.upper(), style=_VERDICT_STYLE.get(v.verdict, ""))
        if open_checks:
            line.append("  " + "; ".join(check_summary(c) for c in open_checks[:4]))
        lines.append(line)
    best = results.smallest_passing
    undecided = [n for n, v in results.verdicts.items() if v.verdict == UNCERTAIN]
    if results.smallest_by_hardware:
        for hw, smallest in results.smallest_by_hardware.items():
            cpu = results.hardware[hw]["fingerprint"].get("cpu_model") or "?"
            answer = f"smallest candidate that passes with confidence: {smallest}" if smallest else \
                "no candidate passes with confidence"
            lines.append(Text(f"On hardware {hw} ({cpu}): {answer}", style="bold"))
        return lines
    if best:
        answer = f"Smallest candidate that passes with confidence: {best}"
    else:
        answer = "No candidate passes the budget with confidence"
        answer += f"; undecided: {', '.join(undecided)} (more examples or requests would decide)." if undecided else "."
    lines.append(Text(answer, style="bold"))
    return lines


def check_summary(c: CheckResult) -> str:
    """``task:metric=value [low, high] n=N (why)`` for a check that did not pass."""
    interval = (f" [{fmt_metric(c.metric, c.low)}, {high_of(c)}] n={c.n}"
                if c.low is not None else "")
    why = c.reason if c.outcome == UNCERTAIN or c.value is None else f"needs {c.check}"
    if c.outcome == UNCERTAIN:
        why = f"{c.check} uncertain: {why}"
    return f"{c.task}:{c.metric}={fmt_metric(c.metric, c.value)}{interval} ({why})"


def _with_interval(metric: str, value: float, low: float | None, high: float | None) -> str:
    if low is None or high is None:
        return fmt_metric(metric, value)
    top = "open" if math.isinf(high) else fmt_metric(metric, high)
    return f"{fmt_metric(metric, value)} [{fmt_metric(metric, low)}, {top}]"


def frontier_status(p: Point) -> tuple[str, str]:
    """(text, style) of a candidate's place on a frontier: dominated beyond the intervals, not
    distinguishable from candidates that beat it by the point estimates only, or on the frontier."""
    if p.dominated:
        return "dominated by " + ", ".join(p.dominated_by) + " (beyond the intervals)", "dim"
    if p.indistinct_from:
        return ("not distinguishable from " + ", ".join(p.indistinct_from)
                + " (worse on both by the point estimates only)"), "yellow"
    return "on the frontier", "bold green"


def frontier_table(f: Frontier) -> Table:
    """One task's Pareto frontier: each candidate's two figures with their 95% intervals, what
    dominates it beyond the intervals and what it cannot be told apart from."""
    arrow = {m: "↑" if METRICS[m].higher_is_better else "↓" for m in (f.x, f.y)}
    table = Table(title=f"{f.task}: {f.y} {arrow[f.y]} vs {f.x} {arrow[f.x]} (↑/↓: higher/lower is better; "
                  "[95% interval]; dominated = worse on both beyond the intervals)",
                  title_justify="left", header_style="bold")
    for col in ("candidate", f.y, f.x, "Pareto"):
        table.add_column(col)
    for p in sorted(f.points, key=lambda p: (p.dominated, bool(p.indistinct_from), p.x)):
        text, style = frontier_status(p)
        table.add_row(p.candidate, _with_interval(f.y, p.y, p.y_low, p.y_high),
                      _with_interval(f.x, p.x, p.x_low, p.x_high), Text(text, style=style))
    for cand, why in f.missing.items():
        table.add_row(cand, "-", "-", Text(f"not plotted: {why}", style="magenta"))
    return table


def jobs_table(run_id: str, rows: Sequence[sqlite3.Row]) -> Table:
    """The ``smallfit jobs`` listing: one row per job, its attempts' nodes and times."""
    table = Table(title=f"jobs of run {run_id}", title_justify="left", header_style="bold")
    for col in ("candidate", "task", "state", "attempts", "node", "hardware", "seconds", "error"):
        table.add_column(col, overflow="fold")
    for r in rows:
        took = (f"{r['finished_at'] - r['started_at']:.2f}" if r["started_at"] and r["finished_at"]
                and r["finished_at"] >= r["started_at"] else "")
        table.add_row(r["candidate"], r["task"], r["state"], str(r["attempts"]), r["node"] or "",
                      r["hardware_id"] or "", took, r["error"] or "")
    if not rows:
        table.caption = "no jobs stored: this run was made before smallfit stored jobs"
    return table


def runs_table(rows: Sequence[sqlite3.Row]) -> Table:
    """The ``smallfit runs`` listing."""
    table = Table(header_style="bold")
    for col in ("run", "started", "status", "candidates", "done tasks", "threads"):
        table.add_column(col)
    for r in rows:
        started = dt.datetime.fromtimestamp(r["created_at"]).strftime("%Y-%m-%d %H:%M")
        table.add_row(r["id"], started, effective_status(r), str(r["n_candidates"]), str(r["n_done"]),
                      str(r["threads"]))
    return table


def print_comparison(console: Console, results: RunResults) -> None:
    """Print the comparison and the verdict."""
    console.print(comparison(results))


def high_of(c: CheckResult) -> str:
    """The upper end of a check's interval, ``open`` for a percentile too few requests bound."""
    return "open" if c.high is None else fmt_metric(c.metric, c.high)
