"""SQLite store: runs, candidates, per-task results, per-sample scores, raw timings, metrics.

The schema is versioned by append-only, named migrations; WAL journaling; every finished
candidate x task is committed at once, so an interrupted run loses at most the task in flight.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from smallfit.contract import ResolvedModel
from smallfit.errors import SmallfitError
from smallfit.records import TaskResult

MIGRATIONS: list[tuple[str, str]] = [
    ("0001_initial", """
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    finished_at REAL,
    status TEXT NOT NULL,              -- running | finished | interrupted
    pid INTEGER,
    spec_json TEXT NOT NULL,
    smallfit_version TEXT,
    versions_json TEXT NOT NULL,
    hardware_json TEXT NOT NULL,
    threads INTEGER,
    load_before_json TEXT,
    load_after_json TEXT
);
CREATE TABLE candidates (
    run_id TEXT NOT NULL REFERENCES runs(id),
    name TEXT NOT NULL,
    position INTEGER NOT NULL,
    model_ref TEXT NOT NULL,
    backend TEXT NOT NULL,
    model_path TEXT,
    model_size_bytes INTEGER,
    status TEXT NOT NULL,              -- pending | running | done | error
    error TEXT,
    load_s REAL,
    process_peak_rss_bytes INTEGER,
    backend_info_json TEXT,
    load_before_json TEXT,
    load_after_json TEXT,
    started_at REAL,
    finished_at REAL,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE task_results (
    run_id TEXT NOT NULL,
    candidate TEXT NOT NULL,
    task TEXT NOT NULL,
    status TEXT NOT NULL,              -- done | error
    error TEXT,
    info_json TEXT,
    finished_at REAL NOT NULL,
    PRIMARY KEY (run_id, candidate, task),
    FOREIGN KEY (run_id, candidate) REFERENCES candidates(run_id, name)
);
CREATE TABLE metrics (
    run_id TEXT NOT NULL,
    candidate TEXT NOT NULL,
    task TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL,                        -- NULL: not measured
    position INTEGER NOT NULL,
    PRIMARY KEY (run_id, candidate, task, name)
);
CREATE TABLE samples (
    run_id TEXT NOT NULL,
    candidate TEXT NOT NULL,
    task TEXT NOT NULL,
    idx INTEGER NOT NULL,
    sample_id TEXT NOT NULL,
    prompt TEXT NOT NULL,
    target TEXT NOT NULL,
    prediction TEXT NOT NULL,
    scores_json TEXT NOT NULL,
    PRIMARY KEY (run_id, candidate, task, idx)
);
CREATE TABLE timings (
    run_id TEXT NOT NULL,
    candidate TEXT NOT NULL,
    task TEXT NOT NULL,
    phase TEXT NOT NULL,               -- quality | latency
    idx INTEGER NOT NULL,
    n_prompt_tokens INTEGER,
    n_output_tokens INTEGER NOT NULL,
    ttft_s REAL,
    latency_s REAL NOT NULL,
    token_times_json TEXT NOT NULL,
    PRIMARY KEY (run_id, candidate, task, phase, idx)
);
"""),
    # Task files are referred to by path but reported by name: keep both, so a run can be read
    # back (and resumed) without re-reading its task files.
    ("0002_run_tasks", """
ALTER TABLE runs ADD COLUMN tasks_json TEXT;
"""),
    # What each candidate actually ran (resolved file, its content hash and size, backend, variant)
    # and its plan: readers need neither the model files nor a re-parse of the spec, and a
    # resumed run does not plan again. From here on candidates.status may also be 'blocked': it
    # failed the checks made before the run and was recorded, not run (--keep-going).
    ("0003_resolved_candidates", """
ALTER TABLE candidates ADD COLUMN plan_json TEXT;
ALTER TABLE candidates ADD COLUMN resolved_json TEXT;
ALTER TABLE candidates ADD COLUMN model_sha256 TEXT;
ALTER TABLE candidates ADD COLUMN variant TEXT;
"""),
    # Each scored example's confidence signals (smallfit.signals) and the seconds its requests
    # took, so a cascade can be replayed from a stored run; NULL in runs stored before.
    ("0004_confidence_signals", """
ALTER TABLE samples ADD COLUMN signals_json TEXT;
ALTER TABLE samples ADD COLUMN latency_s REAL;
"""),
    # A run expands into jobs, one per candidate x task: what each will run (content hash of the
    # model, backend and options, the task and its examples, the settings), its state, its
    # attempts, and the node that ran it with that node's hardware fingerprint. runs.executor_json
    # says where the run's jobs go (local, or a Ray cluster's address), for --resume.
    ("0005_jobs", """
CREATE TABLE jobs (
    run_id TEXT NOT NULL REFERENCES runs(id),
    candidate TEXT NOT NULL,
    task TEXT NOT NULL,
    position INTEGER NOT NULL,
    hash TEXT,                         -- NULL until the candidate's model is resolved
    state TEXT NOT NULL,               -- queued | running | done | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    node TEXT,
    hardware_id TEXT,
    hardware_json TEXT,
    error TEXT,
    attempts_json TEXT NOT NULL DEFAULT '[]',
    started_at REAL,
    finished_at REAL,
    PRIMARY KEY (run_id, candidate, task)
);
ALTER TABLE runs ADD COLUMN executor_json TEXT;
"""),
]
SCHEMA_VERSION = len(MIGRATIONS)


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One atomic write on a connection opened with ``isolation_level=None``: everything inside
    commits together or not at all."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def apply_migrations(conn: sqlite3.Connection, migrations: list[tuple[str, str]],
                     too_new: Callable[[int], str]) -> None:
    """Apply the ``(name, sql)`` migrations not yet recorded in ``schema_migrations``, each in its
    own transaction; a database with a newer migration than these is refused with
    ``too_new(its newest version)``."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                 "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)")
    applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    newest = max(applied, default=0)
    if newest > len(migrations):
        raise SmallfitError(too_new(newest))
    for version, (name, sql) in enumerate(migrations, 1):
        if version in applied:
            continue
        with transaction(conn) as tx:
            for statement in sql.split(";"):
                if statement.strip():
                    tx.execute(statement)
            tx.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, time.time()))


def default_db_path() -> Path:
    """``$SMALLFIT_DB``, else ``$XDG_DATA_HOME/smallfit/smallfit.db`` (``~/.local/share/...``)."""
    env = os.environ.get("SMALLFIT_DB")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "smallfit" / "smallfit.db"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def effective_status(run: sqlite3.Row) -> str:
    """A run's status, with ``running`` read as ``stopped`` when its process is gone (killed)."""
    status = str(run["status"])
    if status != "running" or run["pid"] is None:
        return status
    try:
        os.kill(int(run["pid"]), 0)
    except ProcessLookupError:
        return "stopped (killed)"
    except PermissionError:
        pass
    return status


def run_tasks(run: sqlite3.Row) -> dict[str, str]:
    """Task reference -> task name for a run, in run order (references are names before 0002)."""
    if run["tasks_json"]:
        tasks: dict[str, str] = json.loads(run["tasks_json"])
        return tasks
    return {ref: ref for ref in json.loads(run["spec_json"])["tasks"]}


def new_run_id() -> str:
    """Sortable, readable and unique: ``20261126-203000-7f3a``."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


class Store:
    """A connection to one results database."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path

    @classmethod
    def open(cls, path: Path, create: bool = True) -> Store:
        """Open (and migrate) the database; a one-line error if it is not a usable SQLite file."""
        path = path.expanduser()
        if path.is_dir():
            raise SmallfitError(f"--db {path} is a directory; pass a file path such as {path / 'smallfit.db'}")
        if not path.exists():
            if not create:
                raise SmallfitError(f"no results database at {path}; run 'smallfit run' first or pass --db")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SmallfitError(f"cannot create the folder for --db {path}: {exc.strerror}") from None
        elif not os.access(path, os.R_OK | os.W_OK):
            raise SmallfitError(f"cannot read and write --db {path}: check its permissions or pass another path")
        try:
            conn = sqlite3.connect(path, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=NORMAL")
            store = cls(conn, path)
            store._migrate()
        except sqlite3.DatabaseError as exc:
            raise SmallfitError(f"--db {path} is not a usable SQLite database ({exc}); "
                                "pass a different --db path") from None
        return store

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: everything inside commits together or not at all."""
        with transaction(self.conn) as tx:
            yield tx

    def _migrate(self) -> None:
        def too_new(newest: int) -> str:
            return (f"--db {self.path} was written by a newer smallfit (schema {newest}, this one knows "
                    f"{SCHEMA_VERSION}); upgrade smallfit or pass another --db")

        apply_migrations(self.conn, MIGRATIONS, too_new)

    def schema_version(self) -> int:
        """The newest migration applied."""
        row = self.conn.execute("SELECT MAX(version) AS v FROM schema_migrations").fetchone()
        return int(row["v"] or 0)

    # -- writing ----------------------------------------------------------------------------

    def create_run(self, spec_json: str, versions: dict[str, Any], hardware: dict[str, Any],
                   threads: int, load_before: dict[str, Any], tasks: dict[str, str] | None = None) -> str:
        """Record a new run and return its id. ``tasks`` maps each task reference to its name."""
        run_id = new_run_id()
        with self.transaction() as tx:
            tx.execute(
                "INSERT INTO runs (id, created_at, status, pid, spec_json, smallfit_version, versions_json,"
                " hardware_json, threads, load_before_json, tasks_json)"
                " VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, time.time(), os.getpid(), spec_json, versions.get("smallfit"), _dumps(versions),
                 _dumps(hardware), threads, _dumps(load_before), json.dumps(tasks) if tasks else None))
        return run_id

    def add_candidate(self, run_id: str, name: str, position: int, model_ref: str, backend: str,
                      plan_json: str | None = None) -> None:
        """Register a candidate of a run (pending), with its plan."""
        with self.transaction() as tx:
            tx.execute("INSERT INTO candidates (run_id, name, position, model_ref, backend, status, plan_json)"
                       " VALUES (?, ?, ?, ?, ?, 'pending', ?)", (run_id, name, position, model_ref, backend, plan_json))

    def save_resolved(self, run_id: str, name: str, resolved: ResolvedModel) -> None:
        """Store what a candidate actually runs: file, content hash, size, backend, variant."""
        self.update_candidate(run_id, name, resolved_json=json.dumps(asdict(resolved), sort_keys=True),
                              model_path=resolved.location, model_size_bytes=resolved.size_bytes,
                              model_sha256=resolved.sha256, variant=resolved.variant, backend=resolved.backend)

    def mark_run(self, run_id: str, status: str, load_after: dict[str, Any] | None = None) -> None:
        """Set a run's status (``running`` on resume, ``finished``, ``interrupted``)."""
        finished = time.time() if status != "running" else None
        with self.transaction() as tx:
            tx.execute("UPDATE runs SET status = ?, finished_at = ?, pid = ?,"
                       " load_after_json = COALESCE(?, load_after_json) WHERE id = ?",
                       (status, finished, os.getpid(), _dumps(load_after) if load_after else None, run_id))

    def update_candidate(self, run_id: str, name: str, **fields: Any) -> None:
        """Update some of a candidate's columns; dicts are stored as JSON."""
        if not fields:
            return
        cols = ", ".join(f"{k} = ?" for k in fields)
        values = [_dumps(v) if isinstance(v, dict) else v for v in fields.values()]
        with self.transaction() as tx:
            tx.execute(f"UPDATE candidates SET {cols} WHERE run_id = ? AND name = ?", (*values, run_id, name))

    def save_task_result(self, run_id: str, candidate: str, result: TaskResult) -> None:
        """Store a finished candidate x task (metrics, samples, raw timings) in one commit."""
        key = (run_id, candidate, result.task)
        with self.transaction() as tx:
            self._clear_task(tx, key)
            tx.execute("INSERT INTO task_results VALUES (?, ?, ?, 'done', NULL, ?, ?)",
                       (*key, _dumps(asdict(result.info)), time.time()))
            tx.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?)",
                           [(*key, name, value, i) for i, (name, value) in enumerate(result.metrics.items())])
            tx.executemany("INSERT INTO samples (run_id, candidate, task, idx, sample_id, prompt, target, prediction,"
                           " scores_json, signals_json, latency_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           [(*key, s.index, s.sample_id, s.prompt, s.target, s.prediction, _dumps(s.scores),
                             _dumps(s.signals), s.latency_s) for s in result.samples])
            tx.executemany("INSERT INTO timings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           [(*key, t.phase, t.index, t.n_prompt_tokens, t.n_output_tokens, t.ttft_s,
                             t.latency_s, json.dumps(t.token_times_s)) for t in result.timings])

    def save_task_error(self, run_id: str, candidate: str, task: str, error: str) -> None:
        """Record that a candidate x task failed, with the reason."""
        key = (run_id, candidate, task)
        with self.transaction() as tx:
            self._clear_task(tx, key)
            tx.execute("INSERT INTO task_results VALUES (?, ?, ?, 'error', ?, '{}', ?)", (*key, error, time.time()))

    @staticmethod
    def _clear_task(tx: sqlite3.Connection, key: tuple[str, str, str]) -> None:
        for table in ("task_results", "metrics", "samples", "timings"):
            tx.execute(f"DELETE FROM {table} WHERE run_id = ? AND candidate = ? AND task = ?", key)

    # -- reading ----------------------------------------------------------------------------

    def run(self, run_id: str | None = None) -> sqlite3.Row:
        """A run by id (a unique prefix will do), or the latest run."""
        if run_id is None:
            row = self.conn.execute("SELECT * FROM runs ORDER BY created_at DESC, id DESC LIMIT 1").fetchone()
            if row is None:
                raise SmallfitError(f"no runs in {self.path} yet; start one with 'smallfit run'")
            return row  # type: ignore[no-any-return]
        rows = self.conn.execute("SELECT * FROM runs WHERE id LIKE ? || '%'", (run_id,)).fetchall()
        if len(rows) != 1:
            what = "no run" if not rows else f"{len(rows)} runs"
            raise SmallfitError(f"{what} matching {run_id!r} in {self.path}; list runs with 'smallfit runs'")
        return rows[0]  # type: ignore[no-any-return]

    def runs(self, limit: int = 50) -> list[sqlite3.Row]:
        """The most recent runs, newest first, with candidate counts."""
        return self.conn.execute(
            "SELECT r.*, (SELECT COUNT(*) FROM candidates c WHERE c.run_id = r.id) AS n_candidates,"
            " (SELECT COUNT(*) FROM task_results t WHERE t.run_id = r.id AND t.status = 'done') AS n_done"
            " FROM runs r ORDER BY created_at DESC, id DESC LIMIT ?", (limit,)).fetchall()

    def latest_unfinished(self) -> sqlite3.Row | None:
        """The newest run that did not finish (interrupted or killed)."""
        row: sqlite3.Row | None = self.conn.execute(
            "SELECT * FROM runs WHERE status != 'finished' ORDER BY created_at DESC, id DESC LIMIT 1").fetchone()
        return row

    def candidates(self, run_id: str) -> list[sqlite3.Row]:
        """A run's candidates in spec order."""
        return self.conn.execute("SELECT * FROM candidates WHERE run_id = ? ORDER BY position", (run_id,)).fetchall()

    def task_results(self, run_id: str) -> list[sqlite3.Row]:
        """Every stored candidate x task outcome of a run."""
        return self.conn.execute("SELECT * FROM task_results WHERE run_id = ?", (run_id,)).fetchall()

    def done_tasks(self, run_id: str) -> set[tuple[str, str]]:
        """(candidate, task) pairs already finished: a resumed run does not redo these."""
        rows = self.conn.execute("SELECT candidate, task FROM task_results WHERE run_id = ? AND status = 'done'",
                                 (run_id,))
        return {(r["candidate"], r["task"]) for r in rows}

    def metrics(self, run_id: str, candidate: str, task: str) -> dict[str, float | None]:
        """A candidate x task's metrics in the order they were reported."""
        rows = self.conn.execute("SELECT name, value FROM metrics WHERE run_id = ? AND candidate = ? AND task = ?"
                                 " ORDER BY position", (run_id, candidate, task))
        return {r["name"]: r["value"] for r in rows}

    def sample_count(self, run_id: str, candidate: str, task: str) -> int:
        """How many scored examples a candidate x task stored."""
        row = self.conn.execute("SELECT COUNT(*) AS n FROM samples WHERE run_id = ? AND candidate = ? AND task = ?",
                                (run_id, candidate, task)).fetchone()
        return int(row["n"])

    def samples(self, run_id: str) -> list[sqlite3.Row]:
        """Every scored example of a run, by candidate, task and index."""
        return self.conn.execute("SELECT s.* FROM samples s JOIN candidates c ON c.run_id = s.run_id AND"
                                 " c.name = s.candidate WHERE s.run_id = ? ORDER BY c.position, s.task, s.idx",
                                 (run_id,)).fetchall()

    def task_samples(self, run_id: str, candidate: str, task: str) -> list[sqlite3.Row]:
        """A candidate x task's scored examples in index order (signals_json NULL before 0004)."""
        return self.conn.execute("SELECT * FROM samples WHERE run_id = ? AND candidate = ? AND task = ? ORDER BY idx",
                                 (run_id, candidate, task)).fetchall()

    def timings(self, run_id: str, candidate: str, task: str) -> list[sqlite3.Row]:
        """Raw per-request timings of a candidate x task."""
        return self.conn.execute("SELECT * FROM timings WHERE run_id = ? AND candidate = ? AND task = ?"
                                 " ORDER BY phase, idx", (run_id, candidate, task)).fetchall()

