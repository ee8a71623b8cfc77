"""A cascade's inputs from stored runs: for each model (a stage), per example, its quality score,
its confidence signals, its seconds, energy and cost, over the examples every stage scored.

Examples are matched by example id and, where the prompts can be compared (no model's chat
template wraps them), by the prompt's text; a mismatch is a one-line error.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from smallfit.errors import SmallfitError
from smallfit.probes.cost import JOULES_PER_KWH, Prices
from smallfit.records import TaskInfo
from smallfit.signals import SIGNALS
from smallfit.store import Store, run_tasks

Array = NDArray[np.float64]
# Quality metrics a cascade can take: a per-example score, higher is better.
CASCADE_QUALITY = ("acc", "exact_match", "f1", "acc_norm", "acc_bytes")
COSTS = ("seconds", "joules", "dollars")


@dataclass(frozen=True)
class Stage:
    """One model of the cascade, its per-example arrays in the matched examples' order."""

    name: str
    run_id: str
    quality: Array
    """The task's quality score of each example (``metric``; 0/1 for acc and exact_match)."""
    signals: dict[str, Array]
    """Each stored confidence signal of each example (higher: more confident)."""
    latency_s: Array
    """Seconds of each example's requests (see SampleResult.latency_s)."""
    energy_j: Array | None
    """Joules of each example: its seconds times the task's mean power; None where not measured."""
    cost_usd: Array | None
    """Dollars of each example: its seconds at the run's hardware price plus its energy at the
    electricity price; None where energy was not measured."""
    peak_rss_bytes: float | None
    """The model's peak memory on this task (its own process)."""
    signals_missing: str | None = None
    """Why a signal of this task kind was not stored (the backend could not give it)."""

    def cost(self, kind: str) -> Array | None:
        """Per-example cost in ``seconds``, ``joules`` or ``dollars``."""
        return {"seconds": self.latency_s, "joules": self.energy_j, "dollars": self.cost_usd}[kind]


@dataclass(frozen=True)
class CascadeData:
    """The stages of a cascade on one task, over the examples they all scored."""

    task: str
    metric: str
    ids: list[str]
    stages: list[Stage]
    energy_label: str

    @property
    def n(self) -> int:
        """Matched examples."""
        return len(self.ids)


def prompt_hash(prompt: str) -> str:
    """A short hash of a prompt's text."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def _find(store: Store, run_ids: list[str], name: str) -> str:
    """The run (of ``run_ids``) that has candidate ``name``."""
    found = [r for r in run_ids if any(c["name"] == name for c in store.candidates(r))]
    if not found:
        names = sorted({str(c["name"]) for r in run_ids for c in store.candidates(r)})
        raise SmallfitError(f"no candidate {name!r} in run(s) {', '.join(run_ids)} (they have: {', '.join(names)}); "
                            "name the stages with --models A,B as 'smallfit results' lists them")
    if len(found) > 1:
        raise SmallfitError(f"candidate {name!r} is in runs {' and '.join(found)}: pass only the runs that hold "
                            "the cascade's models")
    return found[0]


def default_models(store: Store, run_ids: list[str], task: str | None) -> list[str]:
    """Without --models: the two candidates of the given runs that finished the task, smaller
    file first; an error when there are not exactly two."""
    done: list[tuple[float, str]] = []
    for r in run_ids:
        finished = {(t["candidate"], t["task"]) for t in store.task_results(r) if t["status"] == "done"}
        for c in store.candidates(r):
            if task is None or (c["name"], task) in finished:
                done.append((float(c["model_size_bytes"] or 0), str(c["name"])))
    if len(done) != 2:
        raise SmallfitError(f"the run(s) have {len(done)} candidates{' on ' + task if task else ''}; name the "
                            "cascade's models, smallest first, with --models SMALL,LARGE")
    return [n for _, n in sorted(done)]


def default_task(store: Store, run_ids: list[str], models: list[str]) -> str:
    """Without --task: the one task every stage finished; an error listing them when several."""
    common: set[str] | None = None
    for m in models:
        run = _find(store, run_ids, m)
        done = {str(t["task"]) for t in store.task_results(run) if t["candidate"] == m and t["status"] == "done"
                and not str(t["task"]).startswith("probe:")}
        common = done if common is None else common & done
    tasks = sorted(common or set())
    if len(tasks) != 1:
        what = f"tasks {', '.join(tasks)}" if tasks else "no finished task in common"
        raise SmallfitError(f"{', '.join(models)} have {what}; pick one with --task")
    return tasks[0]


def _outcome(store: Store, run_id: str, name: str, task: str) -> sqlite3.Row:
    rows = [t for t in store.task_results(run_id) if t["candidate"] == name and t["task"] == task]
    if not rows or rows[0]["status"] != "done":
        tasks = ", ".join(v for v in run_tasks(store.run(run_id)).values())
        why = f"failed: {rows[0]['error']}" if rows else "has no result"
        raise SmallfitError(f"{name} on task {task!r} in run {run_id} {why}; pick a task it finished ({tasks})")
    row: sqlite3.Row = rows[0]
    return row


def _stage(store: Store, run_id: str, name: str, task: str, metric: str | None,
           prices: Prices) -> tuple[Stage, list[sqlite3.Row], TaskInfo, str]:
    outcome = _outcome(store, run_id, name, task)
    info = TaskInfo.from_dict(json.loads(outcome["info_json"] or "{}"))
    metrics = store.metrics(run_id, name, task)
    rows = store.task_samples(run_id, name, task)
    quality_name = metric or next((m for m in metrics if m in CASCADE_QUALITY), None)
    if quality_name is None or not rows or quality_name not in json.loads(rows[0]["scores_json"]):
        raise SmallfitError(f"task {task!r} ({info.kind}) has no per-example score a cascade can take "
                            f"({', '.join(CASCADE_QUALITY)}); pick a multiple-choice, classification or "
                            "generation task")
    if any(r["latency_s"] is None for r in rows):
        raise SmallfitError(f"run {run_id} stored no per-example seconds or confidence signals for {name} "
                            "(it was made before smallfit stored them); run it again to replay a cascade")
    quality = np.array([json.loads(r["scores_json"])[quality_name] for r in rows], dtype=np.float64)
    sig_rows = [json.loads(r["signals_json"] or "{}") for r in rows]
    signals = {s: np.array([g[s] for g in sig_rows], dtype=np.float64) for s in SIGNALS
               if all(s in g for g in sig_rows)}
    latency = np.array([r["latency_s"] for r in rows], dtype=np.float64)
    power = metrics.get("power_w")
    energy = latency * power if power is not None else None
    cost = (latency * prices.hardware_usd_per_s() + energy / JOULES_PER_KWH * prices.electricity_usd_per_kwh
            if energy is not None else None)
    peak = metrics.get("peak_rss_bytes")
    stage = Stage(name, run_id, quality, signals, latency, energy, cost, peak, info.signals_missing)
    return stage, rows, info, str(info.labels.get("power_w", "not measured"))


def _prices(store: Store, run_id: str) -> Prices:
    spec: dict[str, Any] = json.loads(store.run(run_id)["spec_json"])
    try:
        return Prices.model_validate(spec.get("prices") or {})
    except ValueError:
        return Prices()


def load(store: Store, run_ids: list[str], models: list[str], task: str, metric: str | None = None) -> CascadeData:
    """The stages' arrays over the examples they all scored, in the first stage's order; a
    one-line error when the examples do not match (other data, another sample)."""
    if len(models) < 2:
        raise SmallfitError(f"a cascade needs at least two models, smallest first (got {', '.join(models)}); "
                            "pass --models SMALL,LARGE")
    if len(set(models)) != len(models):
        raise SmallfitError(f"--models names a model twice ({', '.join(models)}); each stage is a different model")
    loaded = []
    for m in models:
        run = _find(store, run_ids, m)
        loaded.append(_stage(store, run, m, task, metric, _prices(store, run)))
    metric_name = metric or next(k for k in store.metrics(loaded[0][0].run_id, models[0], task) if k in CASCADE_QUALITY)
    by_prompt = not any(info.chat_template for _, _, info, _ in loaded)
    keys = [_keys(rows, by_prompt) for _, rows, _, _ in loaded]
    first = keys[0]
    stages = [loaded[0][0]]
    for (stage, _, _, _), k in zip(loaded[1:], keys[1:], strict=True):
        if sorted(k) != sorted(first) or len(set(k)) != len(k):
            shared = len(set(k) & set(first))
            raise SmallfitError(
                f"{models[0]} and {stage.name} did not score the same examples of {task} ({shared} shared of "
                f"{len(first)} and {len(k)}: other data, --limit or --sample); run both on the same task and sample")
        at = {key: i for i, key in enumerate(k)}
        stages.append(_reorder(stage, np.array([at[key] for key in first], dtype=np.int64)))
    return CascadeData(task, metric_name, [sid for sid, _ in first], stages, loaded[0][3])


def _reorder(stage: Stage, perm: NDArray[np.int64]) -> Stage:
    """The stage's arrays in another example order."""
    return replace(stage, quality=stage.quality[perm], latency_s=stage.latency_s[perm],
                   signals={k: v[perm] for k, v in stage.signals.items()},
                   energy_j=None if stage.energy_j is None else stage.energy_j[perm],
                   cost_usd=None if stage.cost_usd is None else stage.cost_usd[perm])


def _keys(rows: list[sqlite3.Row], by_prompt: bool) -> list[tuple[str, str]]:
    """(example id, prompt hash) per example; the target stands in for the prompt where a chat
    template made each model's prompt its own."""
    return [(str(r["sample_id"]), prompt_hash(str(r["prompt"])) if by_prompt else str(r["target"])) for r in rows]
