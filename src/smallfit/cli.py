"""Command line: parse, build a RunSpec, call runner / store / report. Nothing else lives here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from smallfit import __version__
from smallfit.errors import SmallfitError

if TYPE_CHECKING:
    from smallfit.executors.base import Executor
    from smallfit.spec import RunSpec

app = typer.Typer(
    help="Does this small language model do my job well enough, on the hardware and budget I actually have?",
    add_completion=False, pretty_exceptions_enable=False, no_args_is_help=False,
)
out = Console()
if not out.is_terminal:  # piped or captured: wide enough for the comparison table
    out = Console(width=150)
err = Console(stderr=True)

DbOption = Annotated[Path | None, typer.Option(
    "--db", help="Results database (SQLite). Default: $SMALLFIT_DB, else ~/.local/share/smallfit/smallfit.db.",
    show_default=False)]


def db_path(path: Path | None) -> Path:
    """The results database: --db, else the default location."""
    from smallfit.store import default_db_path

    return path or default_db_path()


class _ProgressView:
    """Renders runner events as one progress bar per candidate."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.bars: dict[str, TaskID] = {}

    def __call__(self, ev: object) -> None:
        from smallfit.runner import Event

        assert isinstance(ev, Event)
        p, name = self.progress, ev.candidate or ""
        if ev.kind == "candidate_skipped":
            p.console.print(f"[green]✓[/] {name}: all {ev.total} tasks already stored, not redone")
        elif ev.kind == "candidate_started":
            self.bars[name] = p.add_task(f"{name}: loading", total=None)
        elif ev.kind == "preparing":
            p.update(self.bars[name], description=f"{name}: preparing: {ev.message}")
        elif ev.kind == "task_started":
            p.update(self.bars[name], description=f"{name} · {ev.task}", total=ev.total, completed=0)
        elif ev.kind == "progress":
            p.update(self.bars[name], completed=ev.done)
        elif ev.kind == "job_started" and name in self.bars:
            p.update(self.bars[name], description=f"{name} · {ev.task} on {ev.message}")
        elif ev.kind == "job_retry":
            p.console.print(f"[yellow]↻[/] {escape(name)} · {escape(ev.task or '')}: {escape(ev.message)}")
        elif ev.kind == "task_error":
            p.console.print(f"[magenta]✗[/] {escape(name)} · {escape(ev.task or '')}: {escape(ev.message)}")
        elif ev.kind == "candidate_error":
            p.console.print(f"[magenta]✗[/] {escape(name)}: {escape(ev.message)}")
            if name in self.bars:
                p.update(self.bars[name], description=f"{name}: error")
        elif ev.kind == "candidate_done":
            p.update(self.bars[name], description=f"{name}: done")


@app.command()
def run(
    spec: Annotated[str | None, typer.Argument(
        help="TOML spec file. With --resume: the run id to resume (default: the latest unfinished run).",
        show_default=False)] = None,
    model: Annotated[list[str] | None, typer.Option(
        "--model", "-m", help="Candidate model, repeatable: a bundled alias (see 'smallfit models'), "
        "a .gguf or .onnx path, a transformers folder, hf:OWNER/REPO or hf:OWNER/REPO/FILE.gguf, a server URL "
        "http://HOST:PORT/v1; NAME=MODEL names it, MODEL@BACKEND picks the backend (see 'smallfit models').",
        show_default=False)] = None,
    task: Annotated[list[str] | None, typer.Option(
        "--task", "-t", help="Task, repeatable (see 'smallfit tasks').", show_default=False)] = None,
    budget: Annotated[str | None, typer.Option(
        help="Checks every candidate must meet, e.g. 'acc>=0.40,latency_s_p95<=2.0,peak_rss_bytes<=1.5GB'.",
        show_default=False)] = None,
    limit: Annotated[int | None, typer.Option(help="Use the first N examples of each task.",
                                              show_default=False)] = None,
    sample: Annotated[int | None, typer.Option(
        help="Use a random N examples of each task, reproducible with --seed.", show_default=False)] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of --sample (default 0).", show_default=False)] = None,
    probe: Annotated[str | None, typer.Option(
        help="Extra measurements per candidate, comma-separated: load-curve (throughput and latency against "
        "sequences decoded together), context (TTFT, prefill rate and memory against prompt length), energy "
        "(steady-state energy per token).", show_default=False)] = None,
    max_context: Annotated[int | None, typer.Option(
        help="Longest prompt the context probe tries (default 8192; capped at the model's context).",
        show_default=False)] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Fewer timed requests (3 and 1 s per task instead of "
                                        "10 and 10 s): for smoke tests.")] = False,
    chat: Annotated[bool | None, typer.Option(
        "--chat/--no-chat", help="Wrap prompts in each model's chat template (task files may override).",
        show_default=False)] = None,
    threads: Annotated[int | None, typer.Option(
        help="CPU threads per candidate. Default: the cores free when the run starts.", show_default=False)] = None,
    quantize: Annotated[str | None, typer.Option(
        help="Quantization sweep, e.g. q8_0,q4_k_m,q4_0,torch-int8,onnx-int8: each model (GGUF or transformers "
        "folder) becomes MODEL:f32 (full precision, the reference) plus one variant per type: llama.cpp "
        "quantizations (built once and cached), torch-f32/torch-int8 (transformers) and onnx-f32/onnx-int8 "
        "(ONNX Runtime). Each variant reports size, quality, KL divergence from the reference and speed.",
        show_default=False)] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an interrupted run; finished candidate x task results are kept.")] = False,
    timing_max_s: Annotated[float | None, typer.Option(
        "--timing-max-s", help="Seconds of timed requests per task, at most, when the budget's percentile checks "
        "need more requests than usual (a p95 needs 72 to be bounded; default 120).", show_default=False)] = None,
    keep_going: Annotated[bool, typer.Option(
        "--keep-going", help="Run the candidates that pass the checks made before any model loads, and record "
        "the others as errors (default: list the problems and stop, exit 2).")] = False,
    executor: Annotated[str | None, typer.Option(
        "--executor", help="Where jobs (candidate x task) run: local (this machine, one job at a time; the default) "
        "or ray (a Ray cluster, one timed job per node at a time: each node needs the custom resource smallfit_slot=1; "
        "pip install 'smallfit[ray]'). --resume uses the run's own unless given.", show_default=False)] = None,
    address: Annotated[str | None, typer.Option(
        "--address", help="The Ray cluster (--executor ray): auto (the cluster this machine belongs to), HOST:PORT "
        "(its GCS) or ray://HOST:PORT (Ray Client).", show_default=False)] = None,
    retries: Annotated[int | None, typer.Option(
        "--retries", help="Times a job is tried again on another eligible node after its node died, its worker "
        "was killed or it ran over --job-timeout-s (--executor ray; default 2).", show_default=False)] = None,
    job_timeout_s: Annotated[float | None, typer.Option(
        "--job-timeout-s", help="Seconds a job may run on a node before it is killed and retried "
        "(--executor ray; default: no limit).", show_default=False)] = None,
    db: DbOption = None,
) -> None:
    """Evaluate candidates on tasks (quality and efficiency on the same prompts) and give a verdict.

    With no arguments: the bundled default, SmolLM2-135M and Gemma-3-270M through llama.cpp on
    three tasks built from shipped data, against a default budget.
    """
    from smallfit import runner
    from smallfit.report.table import print_comparison
    from smallfit.results import collect
    from smallfit.store import Store

    if limit is not None and limit < 1:
        raise SmallfitError(f"--limit must be at least 1 (got {limit}); omit it to use each task's default")
    if sample is not None and sample < 1:
        raise SmallfitError(f"--sample must be at least 1 (got {sample})")
    if threads is not None and threads < 1:
        raise SmallfitError(f"--threads must be at least 1 (got {threads})")
    if retries is not None and retries < 0:
        raise SmallfitError(f"--retries must be 0 or more (got {retries})")
    if job_timeout_s is not None and job_timeout_s <= 0:
        raise SmallfitError(f"--job-timeout-s must be more than 0 (got {job_timeout_s:g})")
    if resume and (model or task or budget or limit or threads or sample or seed is not None or chat is not None
                   or probe or quick or max_context or quantize or keep_going or timing_max_s):
        raise SmallfitError("--resume continues a run with its stored settings; drop --model/--task/--budget/"
                            "--limit/--threads")
    overrides: dict[str, object] = {"limit": limit, "sample": sample, "seed": seed, "threads": threads, "chat": chat,
                                    "quick": quick or None, "max_context": max_context, "timing_max_s": timing_max_s,
                                    "probes": [p.strip() for p in probe.split(",") if p.strip()] if probe else None,
                                    "quantize": [quantize] if quantize else None}
    run_spec = None if resume else _build_spec(spec, model, task, budget, overrides)
    store = Store.open(db_path(db))
    chosen: dict[str, object] = {"executor": executor, "address": address, "retries": retries,
                                 "job_timeout_s": job_timeout_s}
    if resume:
        run_id = _resume_target(store, spec)
        where = _executor(chosen, store.run(run_id)["executor_json"])
    else:
        assert run_spec is not None
        where = _executor(chosen, None)
        where.check(run_spec)  # a cluster that cannot run the spec is bad input: nothing is recorded
        run_id = runner.start_run(run_spec, store, keep_going, where)
    err.print(f"run [bold]{run_id}[/] · results in {store.path}")
    _say_timing(store, run_id)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=err, transient=False) as progress:
            runner.execute(store, run_id, _ProgressView(progress), resume=resume, executor=where)
    except KeyboardInterrupt:
        err.print(f"\ninterrupted: finished results are stored; continue with: smallfit run --resume {run_id}",
                  soft_wrap=True)
        raise typer.Exit(130) from None
    results = collect(store, run_id)
    print_comparison(out, results)
    if all(r.error for r in results.rows):
        raise typer.Exit(1)


def _executor(chosen: dict[str, object], stored_json: str | None) -> Executor:
    """The executor from the command line, else the one the run was stored with, else local."""
    import json

    from smallfit.executors import stored_executor

    described = json.loads(stored_json) if stored_json else {"executor": "local"}
    if chosen["executor"] and chosen["executor"] != described.get("executor"):
        described = {"executor": chosen["executor"]}  # another executor: the stored one's settings do not apply
    described.update({k: v for k, v in chosen.items() if v is not None})
    if described.get("executor") == "local" and (chosen["retries"] is not None or chosen["job_timeout_s"] is not None):
        raise SmallfitError("--retries and --job-timeout-s apply to jobs on a cluster; use them with --executor ray")
    return stored_executor(described)


def _say_timing(store: object, run_id: str) -> None:
    """Say so when the budget's percentile checks make the timing pass longer than usual."""
    from smallfit.runner import settings_of
    from smallfit.spec import RunSpec
    from smallfit.store import Store

    assert isinstance(store, Store)
    settings = settings_of(RunSpec.model_validate_json(store.run(run_id)["spec_json"]))
    if settings.timing_reason:
        err.print(f"timing: {escape(settings.timing_reason)}; the timing pass runs them, at most "
                  f"{settings.timing_max_s:g} s per task (--timing-max-s changes it)", soft_wrap=True)


def _build_spec(spec: str | None, model: list[str] | None, task: list[str] | None, budget: str | None,
                overrides: dict[str, object]) -> RunSpec:
    from smallfit.spec import DEFAULT_SPEC, absolute_task_ref, build_spec, load_spec_file

    if spec:
        data = load_spec_file(Path(spec)).model_dump()
    else:
        data = DEFAULT_SPEC.model_dump()
        if task:
            data["budget"] = []  # the default budget is written for the default tasks
    if model:
        data["candidates"] = [{"model": m} for m in model]
    if task:
        data["tasks"] = [absolute_task_ref(t, Path.cwd()) for t in task]
    if budget is not None:
        data["budget"] = [budget]
    for key, value in overrides.items():
        if value is not None:
            data[key] = value
    if overrides["sample"] is not None and overrides["limit"] is None:
        data["limit"] = None  # --sample on the command line replaces a spec file's limit
    return build_spec(data, spec or "command line")


def _resume_target(store: object, run_id: str | None) -> str:
    from smallfit.store import Store

    assert isinstance(store, Store)
    if run_id:
        return str(store.run(run_id)["id"])
    row = store.latest_unfinished()
    if row is None:
        raise SmallfitError(f"no unfinished run in {store.path} to resume; start one with 'smallfit run'")
    return str(row["id"])


def _version(value: bool) -> None:
    if value:
        out.print(f"smallfit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Show the version.")] = False) -> None:
    """smallfit: quality and efficiency of small language models, on your data and hardware."""


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    import smallfit.cli_cascade  # noqa: F401 - registers the cascade command on the app
    import smallfit.cli_read  # noqa: F401 - registers the reading commands on the app
    import smallfit.cli_share  # noqa: F401 - registers the sharing commands (bundle, keys, serve...)

    try:
        app()
    except SmallfitError as exc:
        # the message is plain text: brackets in it (hf:OWNER/REPO[/FILE]) are not markup; one line per problem
        for line in str(exc).splitlines():
            err.print(Text.assemble(("error: ", "bold red"), line), highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
