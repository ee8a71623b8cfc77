"""Jobs: a run's units of work, one per candidate x task, kept in the store's ``jobs`` table.

A job is what one timed worker runs on one machine: one candidate's model on one task. Each has a
content hash of what it runs (:func:`job_hash`: the model's content hash, its backend and
options, the task and its examples, the run's settings), a state (``queued``, ``running``,
``done``, ``failed``), its attempts (each with the node, start, end and outcome), and the node
that ran it with that node's hardware fingerprint. Results themselves stay in ``task_results``:
a job is done when its result is stored, so a driver killed between the two loses nothing.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import asdict
from typing import Any

from smallfit.contract import ResolvedModel, Settings
from smallfit.store import Store

HARDWARE_FIELDS = ("cpu_model", "cpu_flags", "cpu_features", "int8_kernel_path", "logical_cpus", "ram_bytes",
                   "machine", "accelerators")
"""The fingerprint's fields that make a hardware class: two nodes that agree on these measure
alike (host name, OS and Python are not hardware)."""


def hardware_id(fingerprint: dict[str, Any]) -> str:
    """A short, stable name for a hardware class: the first 12 hex digits of the SHA-256 of the
    fingerprint's :data:`HARDWARE_FIELDS`."""
    picked = {k: fingerprint.get(k) for k in HARDWARE_FIELDS}
    return hashlib.sha256(json.dumps(picked, sort_keys=True, default=str).encode()).hexdigest()[:12]


def task_digest(ref: str) -> str:
    """SHA-256 of a task as it will run: its name, kind, default size, chat setting and every
    example it loads (a changed data file is another task)."""
    from smallfit.tasks import get_task

    if ref.startswith("probe:"):
        return hashlib.sha256(ref.encode()).hexdigest()
    task = get_task(ref)
    digest = hashlib.sha256(f"{task.name}\0{task.kind.name}\0{task.default_limit}\0{task.chat}\0".encode())
    for sample in task.load():
        digest.update(repr(sample).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def job_hash(model: ResolvedModel, options: dict[str, Any], shape: dict[str, Any], task: str,
             settings: Settings) -> str:
    """SHA-256 of everything a job's figures depend on that smallfit controls: the model's
    content (its weights' hash; a served model: its URL), backend and its package, options,
    ``shape`` (threads asked for, context and batch size), the task's digest and the settings."""
    content = {"model": model.sha256 or model.location, "backend": model.backend, "package": model.backend_package,
               "variant": model.variant, "options": options, "shape": shape, "task": task,
               "settings": asdict(settings)}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def add_jobs(store: Store, run_id: str, pairs: list[tuple[str, str]]) -> None:
    """Register a run's jobs as queued (those already registered are kept as they are)."""
    with store.transaction() as tx:
        tx.executemany("INSERT OR IGNORE INTO jobs (run_id, candidate, task, position, state) VALUES (?, ?, ?, ?,"
                       " 'queued')", [(run_id, c, t, i) for i, (c, t) in enumerate(pairs)])


def set_hash(store: Store, run_id: str, candidate: str, task: str, digest: str) -> None:
    """Store the content hash of a job once its candidate is resolved."""
    with store.transaction() as tx:
        tx.execute("UPDATE jobs SET hash = ? WHERE run_id = ? AND candidate = ? AND task = ?",
                   (digest, run_id, candidate, task))


def start_attempt(store: Store, run_id: str, candidate: str, task: str, node: str,
                  fingerprint: dict[str, Any], started_at: float | None = None) -> None:
    """A job started on ``node``: one more attempt, state running, the node and its fingerprint."""
    t0 = started_at if started_at is not None else time.time()
    with store.transaction() as tx:
        row = _row(tx, run_id, candidate, task)
        attempts = json.loads(row["attempts_json"] or "[]") if row else []
        attempts.append({"node": node, "hardware_id": hardware_id(fingerprint), "started_at": t0})
        tx.execute("UPDATE jobs SET state = 'running', attempts = attempts + 1, node = ?, hardware_id = ?,"
                   " hardware_json = ?, started_at = ?, finished_at = NULL, error = NULL, attempts_json = ?"
                   " WHERE run_id = ? AND candidate = ? AND task = ?",
                   (node, hardware_id(fingerprint), json.dumps(fingerprint, sort_keys=True, default=str), t0,
                    json.dumps(attempts), run_id, candidate, task))


def end_attempt(store: Store, run_id: str, candidate: str, task: str, state: str, error: str | None = None,
                finished_at: float | None = None) -> None:
    """The job's current attempt ended: ``state`` is done, failed, or queued (it will be retried)."""
    t1 = finished_at if finished_at is not None else time.time()
    with store.transaction() as tx:
        row = _row(tx, run_id, candidate, task)
        if row is None:
            return
        attempts = json.loads(row["attempts_json"] or "[]")
        if attempts and "finished_at" not in attempts[-1]:
            attempts[-1].update(finished_at=t1, outcome="done" if state == "done" else error or state)
        elif attempts and finished_at is not None:  # the node's own clock, heard after the result
            attempts[-1]["finished_at"] = t1
        tx.execute("UPDATE jobs SET state = ?, error = ?, finished_at = ?, attempts_json = ? WHERE run_id = ? AND"
                   " candidate = ? AND task = ?", (state, error, t1, json.dumps(attempts), run_id, candidate, task))


def fail_job(store: Store, run_id: str, candidate: str, task: str, error: str) -> None:
    """A job that will not run (its candidate could not be resolved or loaded): failed, with why."""
    with store.transaction() as tx:
        tx.execute("UPDATE jobs SET state = 'failed', error = ?, finished_at = ? WHERE run_id = ? AND candidate = ?"
                   " AND task = ?", (error, time.time(), run_id, candidate, task))


def requeue_unfinished(store: Store, run_id: str, why: str) -> None:
    """Jobs left running by an interrupted driver go back to the queue (their attempt says why)."""
    for row in jobs(store, run_id):
        if row["state"] == "running":
            end_attempt(store, run_id, row["candidate"], row["task"], "queued", why)


def jobs(store: Store, run_id: str) -> list[sqlite3.Row]:
    """A run's jobs in plan order (none for a run stored before jobs existed)."""
    return store.conn.execute("SELECT * FROM jobs WHERE run_id = ? ORDER BY position", (run_id,)).fetchall()


def done_hashes(store: Store, run_id: str) -> dict[str, tuple[str, str]]:
    """Content hash -> (candidate, task) of the run's jobs whose result is stored."""
    rows = store.conn.execute(
        "SELECT j.hash, j.candidate, j.task FROM jobs j JOIN task_results t ON t.run_id = j.run_id AND"
        " t.candidate = j.candidate AND t.task = j.task WHERE j.run_id = ? AND t.status = 'done' AND j.hash IS NOT"
        " NULL ORDER BY j.position", (run_id,))
    out: dict[str, tuple[str, str]] = {}
    for r in rows:
        out.setdefault(r["hash"], (r["candidate"], r["task"]))
    return out


def copy_result(store: Store, run_id: str, source: tuple[str, str], target: tuple[str, str]) -> None:
    """Store a job's result as another job's (the same content hash: the same work), with the
    source job's node and fingerprint; nothing is run again."""
    with store.transaction() as tx:
        for table in ("task_results", "metrics", "samples", "timings"):
            cols = [r["name"] for r in tx.execute(f"PRAGMA table_info({table})")]
            rest = [c for c in cols if c not in ("run_id", "candidate", "task")]
            tx.execute(f"DELETE FROM {table} WHERE run_id = ? AND candidate = ? AND task = ?", (run_id, *target))
            tx.execute(f"INSERT INTO {table} (run_id, candidate, task, {', '.join(rest)}) SELECT run_id, ?, ?,"
                       f" {', '.join(rest)} FROM {table} WHERE run_id = ? AND candidate = ? AND task = ?",
                       (*target, run_id, *source))
        src = _row(tx, run_id, *source)
        note = json.dumps([{"reused_from": f"{source[0]} x {source[1]}", "finished_at": time.time()}])
        tx.execute("UPDATE jobs SET state = 'done', node = ?, hardware_id = ?, hardware_json = ?, attempts_json = ?,"
                   " finished_at = ? WHERE run_id = ? AND candidate = ? AND task = ?",
                   (src["node"] if src else None, src["hardware_id"] if src else None,
                    src["hardware_json"] if src else None, note, time.time(), run_id, *target))


def _row(tx: sqlite3.Connection, run_id: str, candidate: str, task: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = tx.execute("SELECT * FROM jobs WHERE run_id = ? AND candidate = ? AND task = ?",
                                         (run_id, candidate, task)).fetchone()
    return row
