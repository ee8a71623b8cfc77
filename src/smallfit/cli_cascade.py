"""``smallfit cascade``: replay a cascade of stored models (a small one answers, a larger one takes
what it is unsure of) with no new inference, and print or write its figures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from smallfit.cli import DbOption, app, db_path, err, out
from smallfit.errors import SmallfitError


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise SmallfitError(f"--threshold {text!r} is not a number (or comma-separated numbers, one per "
                            "deferring stage)") from None


@app.command()
def cascade(
    runs: Annotated[list[str] | None, typer.Argument(
        help="Run ids (or unique prefixes) holding the models: one run of both, or one run each. Default: the "
        "latest run.", show_default=False)] = None,
    models: Annotated[str | None, typer.Option(
        "--models", help="The stages, smallest first, comma-separated: SMALL,LARGE or SMALL,MEDIUM,LARGE. Default: "
        "the two candidates of the run(s), the smaller file first.", show_default=False)] = None,
    task: Annotated[str | None, typer.Option("--task", "-t", help="The task (default: the one task every model "
                                             "finished).", show_default=False)] = None,
    signal: Annotated[str | None, typer.Option(
        help="The confidence signal a stage defers on: prob, margin (multiple choice, classification), "
        "logprob_mean, logprob_min, logprob_p10 (generation). Default: prob, or logprob_p10 for generation.",
        show_default=False)] = None,
    budget: Annotated[str | None, typer.Option(
        help="Pick the cheapest threshold that meets this with confidence, e.g. 'acc>=0.85,latency_s_p95<=800ms' "
        "(figures: the task's quality metric, deferred_share, latency_s[_p90|_p95|_p99], energy_j_per_request, "
        "cost_usd_per_request, peak_rss_bytes).", show_default=False)] = None,
    cost: Annotated[str, typer.Option(help="What 'cheapest' means: seconds, joules or dollars per request.")]
    = "seconds",
    threshold: Annotated[str | None, typer.Option(
        help="Report the cascade at these thresholds (one per deferring stage, comma-separated): a stage passes a "
        "request on when its signal is below its threshold.", show_default=False)] = None,
    calibration_share: Annotated[float, typer.Option(
        help="Share of the examples that choose the threshold; the rest (held-out) give every figure.")] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of the calibration/held-out split and the bootstrap.")] = 0,
    html: Annotated[Path | None, typer.Option(
        "--html", help="Also write the run's HTML report with the cascade's section (curves as SVG) to this file.",
        show_default=False)] = None,
    db: DbOption = None,
) -> None:
    """Replay a cascade from stored runs, no new inference: quality, share deferred, per-request latency,
    energy and cost at every threshold of a confidence signal, against each model alone, a random router
    and the oracle; APGR and CPT (RouteLLM's definitions); each signal's calibration; the cheapest threshold
    that meets a budget. Thresholds are chosen on a calibration split, figures reported on the held-out one."""
    from smallfit.cascade.analysis import Options, analyse
    from smallfit.cascade.data import default_models, default_task, load
    from smallfit.report.cascade import cascade_section, print_cascade
    from smallfit.store import Store

    store = Store.open(db_path(db), create=False)
    run_ids = [str(store.run(r)["id"]) for r in runs] if runs else [str(store.run()["id"])]
    names = [m.strip() for m in models.split(",") if m.strip()] if models else default_models(store, run_ids, task)
    task_name = task or default_task(store, run_ids, names)
    data = load(store, run_ids, names, task_name)
    opts = Options(signal=signal, cost=cost, calibration_share=calibration_share, seed=seed, budget=budget,
                   thresholds=_floats(threshold) if threshold else None)
    analysis = analyse(data, opts)
    print_cascade(out, analysis)
    if html is not None:
        from smallfit.cli_read import _write
        from smallfit.report.html import render
        from smallfit.results import collect

        _write(html, render(collect(store, data.stages[0].run_id), cascade_section(analysis)))
        err.print(f"report written to {html}")
