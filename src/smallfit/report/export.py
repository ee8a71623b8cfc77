"""``smallfit export``: a run's candidates x tasks or its scored samples as CSV (stdlib) or Parquet.

Parquet needs pyarrow, an optional extra: ``pip install 'smallfit[parquet]'``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from smallfit.errors import MissingExtraError, SmallfitError
from smallfit.results import collect
from smallfit.store import Store

FORMATS = ("csv", "parquet")
WHATS = ("candidates", "samples")


def candidate_records(store: Store, run_id: str | None) -> list[dict[str, Any]]:
    """One record per candidate x task: identity, verdict, error, and every stored figure."""
    res = collect(store, run_id)
    names = list(dict.fromkeys(m for r in res.rows for m in r.metrics))
    return [{"run_id": res.run["id"], "candidate": r.candidate, "task": r.task, "verdict": r.verdict,
             "error": r.error, **{m: r.metrics.get(m) for m in names}} for r in res.rows]


def sample_records(store: Store, run_id: str | None) -> list[dict[str, Any]]:
    """One record per scored example, each score in its own column, then the example's seconds
    and each confidence signal (``signal_<name>``; empty in runs stored before signals were)."""
    run = str(store.run(run_id)["id"])
    rows = store.samples(run)
    scores = [json.loads(r["scores_json"]) for r in rows]
    signals = [json.loads(r["signals_json"] or "{}") for r in rows]
    names = list(dict.fromkeys(k for s in scores for k in s))
    kinds = list(dict.fromkeys(k for s in signals for k in s))
    return [{"run_id": run, "candidate": r["candidate"], "task": r["task"], "index": r["idx"],
             "sample_id": r["sample_id"], "prompt": r["prompt"], "target": r["target"],
             "prediction": r["prediction"], **{k: s.get(k) for k in names}, "latency_s": r["latency_s"],
             **{f"signal_{k}": g.get(k) for k in kinds}}
            for r, s, g in zip(rows, scores, signals, strict=True)]


def write(records: list[dict[str, Any]], path: Path, fmt: str) -> None:
    """Write the records as CSV or Parquet (columns: the union of the records' keys, in order)."""
    columns = list(dict.fromkeys(k for r in records for k in r))
    if fmt == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise MissingExtraError("pyarrow", "parquet") from None
        pq.write_table(pa.Table.from_pylist(records), path)
        return
    try:
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(records)
    except OSError as exc:
        raise SmallfitError(f"cannot write {path}: {exc.strerror}; pass another path with -o") from None


def export(store: Store, run_id: str | None, what: str, fmt: str, path: Path) -> int:
    """Export and return the number of records written."""
    if fmt not in FORMATS:
        raise SmallfitError(f"unknown --format {fmt!r}: use csv or parquet")
    if what not in WHATS:
        raise SmallfitError(f"unknown --what {what!r}: use candidates or samples")
    records = candidate_records(store, run_id) if what == "candidates" else sample_records(store, run_id)
    write(records, path, fmt)
    return len(records)
