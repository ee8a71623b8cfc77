"""The board's own SQLite database: upload tokens (hashed), submissions (each with its bundle),
one entry per candidate x task, the tasks and configurations the board knows, and reproductions.

Versioned like the results store (append-only, named migrations) but a schema of its own: a board
never shares a file with a results database.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from smallfit.errors import SmallfitError
from smallfit.store import apply_migrations, transaction

MIGRATIONS: list[tuple[str, str]] = [
    ("0001_board", """
CREATE TABLE tokens (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,  -- the token itself is shown once and never stored
    created_at REAL NOT NULL
);
CREATE TABLE submissions (
    id TEXT PRIMARY KEY,                -- first 16 hex digits of the signed manifest's SHA-256
    created_at REAL NOT NULL,
    token_id INTEGER NOT NULL REFERENCES tokens(id),
    run_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    config_sha256 TEXT NOT NULL,
    smallfit_version TEXT,
    manifest_json TEXT NOT NULL,
    bundle BLOB NOT NULL,
    recomputed INTEGER NOT NULL         -- figures the board recomputed from the rows
);
CREATE TABLE entries (
    submission_id TEXT NOT NULL REFERENCES submissions(id),
    candidate TEXT NOT NULL,
    task TEXT NOT NULL,
    task_hash TEXT NOT NULL,
    hardware_class TEXT NOT NULL,
    class_id TEXT NOT NULL,
    model_sha256 TEXT,
    metrics_json TEXT NOT NULL,
    info_json TEXT NOT NULL,
    PRIMARY KEY (submission_id, candidate, task)
);
CREATE INDEX entries_board ON entries (task_hash, class_id);
CREATE TABLE known_tasks (
    task_hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    n_examples INTEGER NOT NULL,
    added_at REAL NOT NULL
);
CREATE TABLE allowed_configs (
    config_sha256 TEXT PRIMARY KEY,
    note TEXT NOT NULL,
    added_at REAL NOT NULL
);
CREATE TABLE reproductions (
    id INTEGER PRIMARY KEY,
    submission_id TEXT NOT NULL REFERENCES submissions(id),
    candidate TEXT NOT NULL,
    task TEXT NOT NULL,
    created_at REAL NOT NULL,
    token_id INTEGER NOT NULL REFERENCES tokens(id),
    key_id TEXT NOT NULL,
    hardware_class TEXT NOT NULL,
    examples INTEGER NOT NULL,
    agreed INTEGER NOT NULL,
    report_json TEXT NOT NULL
);
"""),
]


def default_board_path() -> Path:
    """``$SMALLFIT_BOARD_DB``, else ``$XDG_DATA_HOME/smallfit/board.db``."""
    env = os.environ.get("SMALLFIT_BOARD_DB")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "smallfit" / "board.db"


def token_hash(token: str) -> str:
    """What the board stores of a token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class BoardDB:
    """One connection to a board database."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path

    @classmethod
    def open(cls, path: Path) -> BoardDB:
        """Open (creating and migrating) the board database at ``path``."""
        path = path.expanduser()
        if path.is_dir():
            raise SmallfitError(f"--board-db {path} is a directory; pass a file path such as {path / 'board.db'}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            db = cls(conn, path)
            db._migrate()
        except (sqlite3.DatabaseError, OSError) as exc:
            raise SmallfitError(f"--board-db {path} is not a usable SQLite database ({exc}); pass another path") \
                from None
        return db

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write."""
        with transaction(self.conn) as tx:
            yield tx

    def _migrate(self) -> None:
        apply_migrations(self.conn, MIGRATIONS,
                         lambda _: f"--board-db {self.path} was written by a newer smallfit; upgrade smallfit")

    # -- tokens, tasks, configurations ------------------------------------------------------------

    def add_token(self, name: str) -> str:
        """A new upload token for ``name``: returned once, stored only as its SHA-256."""
        token = "sfb_" + secrets.token_urlsafe(32)
        with self.transaction() as tx:
            tx.execute("INSERT INTO tokens (name, token_sha256, created_at) VALUES (?, ?, ?)",
                       (name, token_hash(token), time.time()))
        return token

    def token(self, token: str) -> sqlite3.Row | None:
        """The token's row, or None when the board does not know it."""
        row: sqlite3.Row | None = self.conn.execute("SELECT * FROM tokens WHERE token_sha256 = ?",
                                                    (token_hash(token),)).fetchone()
        return row

    def add_task(self, task_hash: str, name: str, kind: str, n_examples: int) -> bool:
        """Make a task hash known to the board; False when it already was."""
        with self.transaction() as tx:
            cur = tx.execute("INSERT OR IGNORE INTO known_tasks VALUES (?, ?, ?, ?, ?)",
                             (task_hash, name, kind, n_examples, time.time()))
        return cur.rowcount == 1

    def known_tasks(self) -> dict[str, sqlite3.Row]:
        """Task hash -> its row."""
        return {r["task_hash"]: r for r in self.conn.execute("SELECT * FROM known_tasks ORDER BY name")}

    def allow_config(self, config_sha256: str, note: str) -> bool:
        """Put a configuration on the board's allowlist; False when it already was."""
        with self.transaction() as tx:
            cur = tx.execute("INSERT OR IGNORE INTO allowed_configs VALUES (?, ?, ?)",
                             (config_sha256, note, time.time()))
        return cur.rowcount == 1

    def allowed_configs(self) -> set[str]:
        """Configuration hashes on the allowlist."""
        return {r["config_sha256"] for r in self.conn.execute("SELECT config_sha256 FROM allowed_configs")}

    def counts(self) -> dict[str, int]:
        """Rows per table (what a refused upload must leave unchanged)."""
        tables = ("submissions", "entries", "reproductions")
        return {t: int(self.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in tables}
