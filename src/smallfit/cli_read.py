"""The commands that read stored runs (results, pareto, report, card, compare, export, runs)
and list what is built in (tasks, models, metrics). They read the store only: no model file and
no re-parse of a stored spec."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from smallfit.cli import DbOption, app, db_path, err, out
from smallfit.errors import SmallfitError


@app.command()
def runs(db: DbOption = None, limit: Annotated[int, typer.Option(min=1, help="How many runs to list.")] = 20) -> None:
    """List past runs, newest first."""
    from smallfit.report.table import runs_table
    from smallfit.store import Store

    store = Store.open(db_path(db), create=False)
    out.print(runs_table(store.runs(limit)))


@app.command()
def results(
    run_id: Annotated[str | None, typer.Argument(help="Run id or a unique prefix; default: the latest run.",
                                                    show_default=False)] = None,
    format: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
    db: DbOption = None,
) -> None:
    """Show a run's results: the comparison table, or the stable JSON export."""
    from smallfit.report.table import print_comparison
    from smallfit.results import collect, to_json
    from smallfit.store import Store

    if format not in ("table", "json"):
        raise SmallfitError(f"unknown --format {format!r}: use table or json")
    res = collect(Store.open(db_path(db), create=False), run_id)
    if format == "json":
        sys.stdout.write(to_json(res) + "\n")
    else:
        print_comparison(out, res)


RunArg = Annotated[str | None, typer.Argument(help="Run id or a unique prefix; default: the latest run.",
                                             show_default=False)]


@app.command()
def jobs(
    run_id: Annotated[str | None, typer.Argument(help="Run id or a unique prefix; default: the latest run.",
                                                    show_default=False)] = None,
    db: DbOption = None,
) -> None:
    """A run's jobs (candidate x task): state, attempts, the node that ran each and its hardware class."""
    from smallfit.jobs import jobs as job_rows
    from smallfit.report.table import jobs_table
    from smallfit.store import Store

    store = Store.open(db_path(db), create=False)
    run = store.run(run_id)
    out.print(jobs_table(str(run["id"]), job_rows(store, str(run["id"]))))


@app.command()
def pareto(
    run_id: RunArg = None,
    x: Annotated[str, typer.Option("--x", help="Figure on the x axis (see 'smallfit metrics').")] = "latency_s_p95",
    y: Annotated[str, typer.Option("--y", help="Figure on the y axis; 'quality' is each task's main "
                                   "quality metric.")] = "quality",
    task: Annotated[str | None, typer.Option("--task", "-t", help="Only this task.", show_default=False)] = None,
    db: DbOption = None,
) -> None:
    """Pareto frontier of two figures per task: which candidates no other beats on both."""
    from smallfit.report.pareto import frontiers
    from smallfit.report.table import frontier_table
    from smallfit.results import collect
    from smallfit.store import Store

    res = collect(Store.open(db_path(db), create=False), run_id)
    for f in frontiers(res, x, y, task):
        out.print(frontier_table(f))


@app.command()
def report(
    run_id: RunArg = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write.")] = Path("report.html"),
    db: DbOption = None,
) -> None:
    """Write one self-contained HTML report (plots, verdicts, trade-offs, machine) that works offline.
    A run with a live cascade candidate whose models also ran alone gets the cascade's curves too."""
    from smallfit.report.cascade import live_cascade_sections
    from smallfit.report.html import render
    from smallfit.results import collect
    from smallfit.store import Store

    store = Store.open(db_path(db), create=False)
    res = collect(store, run_id)
    page = render(res, live_cascade_sections(store, str(res.run["id"])))
    _write(output, page)
    err.print(f"report written to {output}")


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise SmallfitError(f"cannot write {path}: {exc.strerror}; pass another path with -o") from None


@app.command()
def card(
    run_id: Annotated[str, typer.Argument(help="Run id or a unique prefix.")],
    candidate: Annotated[str, typer.Argument(help="Candidate name in that run.")],
    db: DbOption = None,
) -> None:
    """Markdown for a model's README: Hugging Face model-index metadata, efficiency, hardware, verdict."""
    from smallfit.report.card import model_card
    from smallfit.results import collect
    from smallfit.store import Store

    sys.stdout.write(model_card(collect(Store.open(db_path(db), create=False), run_id), candidate))


@app.command()
def compare(
    run_a: Annotated[str, typer.Argument(help="The first run (id or unique prefix).")],
    run_b: Annotated[str, typer.Argument(help="The second run.")],
    candidate_a: Annotated[str | None, typer.Option(help="Compare this candidate of run A...",
                                                    show_default=False)] = None,
    candidate_b: Annotated[str | None, typer.Option(help="...with this candidate of run B (default: the same "
                                                    "name).", show_default=False)] = None,
    db: DbOption = None,
) -> None:
    """Each figure's change between two runs, with its significance and the test that gave it."""
    from smallfit.report.compare import changes_table, compare_runs
    from smallfit.store import Store

    store = Store.open(db_path(db), create=False)
    changes = compare_runs(store, run_a, run_b, candidate_a, candidate_b)
    out.print(changes_table(changes, str(store.run(run_a)["id"]), str(store.run(run_b)["id"])))


@app.command()
def export(
    run_id: RunArg = None,
    format: Annotated[str, typer.Option("--format", "-f", help="csv or parquet (needs smallfit[parquet]).")] = "csv",
    what: Annotated[str, typer.Option(help="candidates (one row per candidate x task) or samples.")] = "candidates",
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.")] = Path("smallfit.csv"),
    db: DbOption = None,
) -> None:
    """Export a run's figures or its scored samples as CSV or Parquet."""
    from smallfit.report.export import export as do_export
    from smallfit.store import Store

    n = do_export(Store.open(db_path(db), create=False), run_id, what, format, output)
    err.print(f"{n} {what} rows written to {output}")


@app.command()
def tasks() -> None:
    """List the built-in tasks."""
    from smallfit.tasks import BUILTIN, STANDARD, get_task

    out.print("[bold]Built on data shipped in PyPI packages[/] (work offline):")
    for name, factory in sorted(BUILTIN.items()):
        t = factory()
        out.print(f"  [bold]{name}[/] ({t.kind.name}: {', '.join(t.kind.quality_metrics)}; default "
                  f"{t.default_limit} examples): {t.description}. Data: {t.source}")
    out.print("[bold]Standard benchmarks[/] as lm-evaluation-harness defines them: from the hub through "
              "'datasets', or a local copy with NAME=PATH:")
    for name in sorted(STANDARD):
        t = get_task(name)
        out.print(f"  [bold]{name}[/] ({t.kind.name}: {', '.join(t.kind.quality_metrics)}): {t.description}. "
                  f"Data: {t.source}")
    out.print("Also [bold]evals:FOLDER[/] (a multiple-choice folder of the evals registry) and "
              "[bold]path/to/task.toml[/] (your own data, see README).")


@app.command()
def models() -> None:
    """List the bundled model aliases, the installed backends and the reference scheme."""
    from smallfit.backends.registry import registry
    from smallfit.models import ALIASES

    for a in ALIASES.values():
        out.print(f"[bold]{a.name}[/]: {a.description}. Install: {a.install}")
    out.print("[bold]Backends[/] (MODEL@NAME):")
    for spec in registry().values():
        also = f" (also @{', @'.join(spec.aliases)})" if spec.aliases else ""
        plugin = "" if spec.distribution == "smallfit" else f" [plugin: {spec.distribution}]"
        out.print(f"  [bold]{spec.name}[/]{also}: {escape(spec.description)}; runs {', '.join(spec.formats)} models"
                  f"{escape(plugin)}")
    out.print("Also: a path to a .gguf or .onnx file or a transformers folder, hf:OWNER/REPO[/FILE.gguf] (downloaded "
              "from the hub), or an OpenAI-compatible server's URL (http://HOST:PORT/v1); MODEL@BACKEND picks the "
              "backend (listed above).", markup=False)


@app.command()
def metrics() -> None:
    """Define every metric smallfit reports."""
    from smallfit.metrics import METRICS

    for m in METRICS.values():
        better = "higher" if m.higher_is_better else "lower"
        out.print(f"[bold]{m.name}[/] ({m.unit or 'ratio'}, {better} is better): {m.definition}")
    out.print("Each quality metric has a [bold]<name>_stderr[/] sibling: its standard error.")
