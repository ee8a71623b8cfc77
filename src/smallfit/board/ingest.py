"""Submissions checked, not trusted: everything the board verifies before it stores a bundle.

In order, stopping at the first failure (the database is written only when all pass, in one
transaction): the archive (:func:`smallfit.share.bundle.read_bytes`), the signature, every hash and
every recomputable figure (:func:`smallfit.share.verify.verify`), each task hash against the tasks
the board knows, each candidate's speed against the physics of its stated machine
(:mod:`smallfit.share.physics`), and that the same bundle is not already on the board.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from smallfit.board.db import BoardDB
from smallfit.share.bundle import Bundle, BundleError, hardware_class, read_bytes
from smallfit.share.canonical import sha256_hex
from smallfit.share.physics import check_speed
from smallfit.share.verify import verify


def class_id(hw_class: str) -> str:
    """A URL-safe name for a hardware class: 12 hex digits of its SHA-256."""
    return sha256_hex(hw_class)[:12]


def submission_id(b: Bundle) -> str:
    """A submission's permanent id: 16 hex digits of its signed manifest's SHA-256."""
    return sha256_hex(b.manifest_bytes)[:16]


@dataclass(frozen=True)
class Entry:
    """One candidate x task of a submission, as the board ranks it."""

    candidate: str
    task: str
    task_hash: str
    hardware_class: str
    model_sha256: str | None
    metrics: dict[str, Any]
    info: dict[str, Any]


def _device(candidate: dict[str, Any]) -> str | None:
    device = (candidate.get("backend_info") or {}).get("device")
    return str(device) if device else None


def entries(b: Bundle) -> list[Entry]:
    """The rankable rows of a bundle: finished candidate x tasks with examples (not probes)."""
    m = b.manifest
    cands = {c["name"]: c for c in m.get("candidates", [])}
    out = []
    for r in m.get("results", []):
        if r.get("status") != "done" or not r.get("task_hash") or str(r.get("task")).startswith("probe:"):
            continue
        cand = cands.get(r["candidate"], {})
        out.append(Entry(r["candidate"], r["task"], r["task_hash"],
                         hardware_class(m.get("hardware") or {}, m.get("threads"), _device(cand)),
                         cand.get("model_sha256"), r.get("metrics") or {}, r.get("info") or {}))
    return out


def check(db: BoardDB, data: bytes) -> tuple[Bundle, int]:
    """A bundle that passes every check, and how many figures were recomputed; a BundleError
    (with its HTTP status) naming the first problem otherwise."""
    b = read_bytes(data)
    v = verify(b)
    if not v.ok:
        more = f" (and {len(v.problems) - 1} more problem(s))" if len(v.problems) > 1 else ""
        raise BundleError(f"the bundle does not check out: {v.problems[0]}{more}", 422)
    known = db.known_tasks()
    rows = entries(b)
    if not rows:
        raise BundleError("the bundle has no finished candidate x task with examples: nothing to rank", 422)
    unknown = sorted({f"{e.task} ({e.task_hash[:16]})" for e in rows if e.task_hash not in known})
    if unknown:
        raise BundleError(f"task hash(es) this board does not know: {', '.join(unknown)}; the board ranks only "
                          "its own tasks (its owner adds one with 'smallfit board allow-tasks BUNDLE')", 422)
    hardware = b.manifest.get("hardware") or {}
    cands = {c["name"]: c for c in b.manifest.get("candidates", [])}
    for r in b.manifest.get("results", []):
        timings = [t for t in b.timings if t.get("candidate") == r.get("candidate") and t.get("task") == r.get("task")]
        problems = check_speed(r, timings, hardware, _device(cands.get(r.get("candidate"), {})))
        if problems:
            raise BundleError(f"physically implausible on the stated machine: {problems[0]}", 422)
    sid = submission_id(b)
    if db.conn.execute("SELECT 1 FROM submissions WHERE id = ?", (sid,)).fetchone():
        raise BundleError(f"this bundle is already on the board as submission {sid} (/submission/{sid})", 409)
    return b, v.recomputed


def store(db: BoardDB, b: Bundle, recomputed: int, token_id: int, data: bytes) -> str:
    """Store a checked bundle and its entries in one transaction; the submission id."""
    sid = submission_id(b)
    try:
        _insert(db, b, sid, recomputed, token_id, data)
    except sqlite3.IntegrityError:  # the same bundle, uploaded twice at once: the other one won
        raise BundleError(f"this bundle is already on the board as submission {sid} (/submission/{sid})", 409) \
            from None
    return sid


def _insert(db: BoardDB, b: Bundle, sid: str, recomputed: int, token_id: int, data: bytes) -> None:
    m = b.manifest
    with db.transaction() as tx:
        tx.execute("INSERT INTO submissions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (sid, time.time(), token_id, str(m.get("run_id")), str(b.signature.get("key_id")),
                    str(b.signature["public_key"]), str(m["config_sha256"]), m.get("smallfit_version"),
                    b.manifest_bytes.decode("utf-8"), data, recomputed))
        tx.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       [(sid, e.candidate, e.task, e.task_hash, e.hardware_class, class_id(e.hardware_class),
                         e.model_sha256, json.dumps(e.metrics), json.dumps(e.info)) for e in entries(b)])


MAX_REPRODUCTION_BYTES = 2 * 2**20


def add_reproduction(db: BoardDB, sid: str, data: bytes, token_id: int) -> tuple[int, int]:
    """Check and store a signed reproduction report of submission ``sid``: its signature, that it
    reproduces this very bundle (the manifest's SHA-256), from another key than the submitter's, on
    a machine of the same hardware class as each entry it covers. (stored, agreed) entry counts."""
    from smallfit.errors import SmallfitError
    from smallfit.share.reproduce import check_signed

    sub = db.conn.execute("SELECT * FROM submissions WHERE id = ?", (sid,)).fetchone()
    if sub is None:
        raise LookupError(f"no submission {sid}; the boards are at /")
    try:
        signed = json.loads(data)
        report = check_signed(signed if isinstance(signed, dict) else {})
    except (ValueError, SmallfitError) as exc:
        raise BundleError(f"not a valid reproduction: {str(exc).splitlines()[0]}", 422) from None
    if report.get("bundle_manifest_sha256") != sha256_hex(sub["manifest_json"].encode("utf-8")):
        raise BundleError(f"this reproduction is of another bundle than submission {sid}", 422)
    if signed["public_key"] == sub["public_key"]:
        raise BundleError("a reproduction must be signed by another key than the submission's", 422)
    entries = {(e["candidate"], e["task"]): e for e in db.conn.execute(
        "SELECT candidate, task, hardware_class FROM entries WHERE submission_id = ?", (sid,))}
    rows = []
    for e in report.get("entries") or []:
        if not isinstance(e, dict):
            raise BundleError("a reproduction's entries must be objects", 422)
        known = entries.get((e.get("candidate"), e.get("task")))
        if known is None:
            raise BundleError(f"submission {sid} has no {e.get('candidate')} · {e.get('task')} on its boards", 422)
        if known["hardware_class"] != report.get("hardware_class"):
            raise BundleError(f"reproduced on '{report.get('hardware_class')}', not on the entry's class "
                              f"'{known['hardware_class']}'", 422)
        n, matched = int(e.get("examples") or 0), int(e.get("matched") or 0)
        agreed = bool(e.get("agreed")) and n > 0 and matched == n and not e.get("differences")
        rows.append((sid, e["candidate"], e["task"], time.time(), token_id, str(signed["key_id"]),
                     str(report["hardware_class"]), n, int(agreed), json.dumps(e)))
    if not rows:
        raise BundleError("the reproduction covers no candidate x task", 422)
    with db.transaction() as tx:
        tx.executemany("INSERT INTO reproductions (submission_id, candidate, task, created_at, token_id, key_id, "
                       "hardware_class, examples, agreed, report_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    return len(rows), sum(r[8] for r in rows)
