"""Result bundles: one zip file that carries a stored run so that anyone can check it offline.

Entries (exactly these, nothing else):

- ``manifest.json``: canonical JSON (:mod:`.canonical`) of the run: smallfit version, the resolved
  configuration and its SHA-256, each model's content SHA-256, each candidate x task's task hash,
  the hardware fingerprint and library versions, every stated figure with its interval method,
  and the SHA-256 and row count of the two row files.
- ``samples.jsonl``: every scored example (prompt, target, prediction, scores, and the SHA-256 of
  its prompt and target), one canonical JSON object a line.
- ``timings.jsonl``: every timed request (phase, token counts, TTFT, latency, token times).
- ``signature.json``: the Ed25519 signature of the manifest's bytes and the public key.

The manifest holds the row files' hashes, so the one signature covers every byte of the bundle.
"""

from __future__ import annotations

import io
import json
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smallfit.errors import SmallfitError
from smallfit.share.canonical import canonical, digest, finite, sha256_hex
from smallfit.share.keys import SigningKey
from smallfit.store import Store, run_tasks

FORMAT = "smallfit-bundle/1"
MANIFEST, SAMPLES, TIMINGS, SIGNATURE = "manifest.json", "samples.jsonl", "timings.jsonl", "signature.json"
ENTRIES = (MANIFEST, SAMPLES, TIMINGS, SIGNATURE)
MAX_BUNDLE_BYTES = 32 * 2**20
"""The largest bundle file read (compressed)."""
MAX_ENTRY_BYTES = 256 * 2**20
"""The largest entry, uncompressed; all entries together get the same limit."""
MAX_RATIO = 200
"""The most an entry may expand on decompression (text JSON compresses 5-30x): above it, a bomb."""
PRIVATE = ("hostname",)
"""Fingerprint fields a bundle leaves out: they name the machine, not its class."""
_ZIP_TIME = (2000, 1, 1, 0, 0, 0)  # fixed entry times: the same run gives the same bytes


class BundleError(SmallfitError):
    """A bundle that cannot be read or does not check out; ``status`` is the HTTP status the board
    answers with (400 unreadable, 413 too large, 422 read but refused)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Bundle:
    """A bundle's parsed contents (not yet verified: see :mod:`smallfit.share.verify`)."""

    manifest: dict[str, Any]
    manifest_bytes: bytes
    samples: list[dict[str, Any]]
    timings: list[dict[str, Any]]
    signature: dict[str, Any]
    raw: dict[str, bytes]


def hardware_class(hardware: dict[str, Any], threads: int | None, device: str | None) -> str:
    """The class a result is ranked within: CPU model, architecture, threads used, and the device
    when the model ran on an accelerator. Runs are compared only inside one class."""
    cpu = str(hardware.get("cpu_model") or "unknown CPU")
    where = f"{cpu} · {hardware.get('machine') or '?'} · {threads or '?'} thread{'' if threads == 1 else 's'}"
    return where if device in (None, "", "cpu") else f"{where} · {device}"


def task_hash(kind: str, rows: list[dict[str, Any]]) -> str:
    """SHA-256 naming a task's workload: its kind and, in index order, each example's id and the
    SHA-256 of its prompt (as the model saw it) and of its target. The same examples, prompts and
    targets give the same hash on any machine; a changed example, order or template does not."""
    ordered = sorted(rows, key=lambda r: int(r["idx"]))
    return digest({"kind": kind, "examples": [[r["sample_id"], r["prompt_sha256"], r["target_sha256"]]
                                              for r in ordered]})


PHASE_ORDER = {"quality": 0, "latency": 1, "embed": 2}
"""The order a task's requests were made in (its own requests, then the timing pass): the order the
run aggregated them in, which the seeded bootstrap of the rates depends on."""


def run_order(t: dict[str, Any]) -> tuple[int, int]:
    """Sort key of a timing row: phase in run order, then index."""
    return PHASE_ORDER.get(str(t.get("phase")), len(PHASE_ORDER)), int(t.get("idx", 0))


def _json(text: str | None, default: Any) -> Any:
    return json.loads(text) if text else default


def _candidate(c: Any) -> dict[str, Any]:
    resolved = _json(c["resolved_json"], {})
    return {"name": c["name"], "model_ref": c["model_ref"], "backend": c["backend"], "variant": c["variant"],
            "model_sha256": c["model_sha256"], "model_size_bytes": c["model_size_bytes"], "status": c["status"],
            "error": c["error"], "load_s": c["load_s"], "resolved": resolved,
            "backend_info": _json(c["backend_info_json"], {})}


def _sample_row(r: Any) -> dict[str, Any]:
    return {"candidate": r["candidate"], "task": r["task"], "idx": r["idx"], "sample_id": r["sample_id"],
            "prompt": r["prompt"], "target": r["target"], "prediction": r["prediction"],
            "prompt_sha256": sha256_hex(r["prompt"]), "target_sha256": sha256_hex(r["target"]),
            "scores": finite(_json(r["scores_json"], {}))}


def _timing_row(r: Any) -> dict[str, Any]:
    return {"candidate": r["candidate"], "task": r["task"], "phase": r["phase"], "idx": r["idx"],
            "n_prompt_tokens": r["n_prompt_tokens"], "n_output_tokens": r["n_output_tokens"],
            "ttft_s": r["ttft_s"], "latency_s": r["latency_s"], "token_times_s": _json(r["token_times_json"], [])}


def config_of(spec: dict[str, Any], candidates: list[dict[str, Any]], task_hashes: dict[str, list[str]]) -> \
        dict[str, Any]:
    """The resolved configuration, free of local paths: the run's settings, each candidate's backend,
    options and model content hash, and each task's hash(es). Its SHA-256 is what a board's
    allowlist names."""
    settings = {k: v for k, v in spec.items() if k not in ("candidates", "tasks")}
    by_name = {c["name"]: c for c in spec.get("candidates", [])}
    cands = [{"name": c["name"], "backend": c["backend"], "variant": c["variant"], "model_sha256": c["model_sha256"],
              **{k: by_name.get(c["name"], {}).get(k) for k in ("options", "threads", "context_size", "batch_size")}}
             for c in candidates]
    return {"settings": settings, "candidates": cands, "tasks": task_hashes}


def build(store: Store, run_id: str | None) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The manifest (unsigned, without the row files' hashes) and the rows of a stored run."""
    from smallfit import __version__

    run = store.run(run_id)
    rid = str(run["id"])
    if run["status"] != "finished":
        raise SmallfitError(f"run {rid} is {run['status']}, not finished; finish it with "
                            f"'smallfit run --resume {rid}' before bundling it")
    candidates = [_candidate(c) for c in store.candidates(rid)]
    samples = [_sample_row(r) for r in store.samples(rid)]
    timings = [t for c in candidates for task in run_tasks(run).values()
               for t in sorted((_timing_row(r) for r in store.timings(rid, c["name"], task)), key=run_order)]
    results = []
    hashes: dict[str, list[str]] = {}
    for t in store.task_results(rid):
        info = _json(t["info_json"], {})
        rows = [s for s in samples if s["candidate"] == t["candidate"] and s["task"] == t["task"]]
        th = task_hash(str(info.get("kind", "")), rows) if rows else None
        if th is not None and th not in hashes.setdefault(t["task"], []):
            hashes[t["task"]].append(th)
        results.append({"candidate": t["candidate"], "task": t["task"], "status": t["status"], "error": t["error"],
                        "task_hash": th, "n_samples": len(rows),
                        "metrics": finite(store.metrics(rid, t["candidate"], t["task"])), "info": finite(info)})
    order = {c["name"]: i for i, c in enumerate(candidates)}
    results.sort(key=lambda r: (order.get(r["candidate"], 0), r["task"]))
    spec = json.loads(run["spec_json"])
    config = config_of(spec, candidates, hashes)
    hardware = {k: v for k, v in _json(run["hardware_json"], {}).items() if k not in PRIVATE}
    manifest = {
        "format": FORMAT, "smallfit_version": __version__, "run_id": rid, "created_at": run["created_at"],
        "finished_at": run["finished_at"], "config": config, "config_sha256": digest(config), "spec": spec,
        "versions": _json(run["versions_json"], {}), "hardware": hardware, "threads": run["threads"],
        "load_before": _json(run["load_before_json"], {}), "load_after": _json(run["load_after_json"], {}),
        "candidates": candidates, "tasks": run_tasks(run), "results": results,
    }
    return finite(manifest), samples, timings


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(canonical(r) + b"\n" for r in rows)


def write(store: Store, run_id: str | None, key: SigningKey, path: Path) -> dict[str, Any]:
    """Write the signed bundle of a stored run to ``path``; its manifest."""
    manifest, samples, timings = build(store, run_id)
    rows = {SAMPLES: _jsonl(samples), TIMINGS: _jsonl(timings)}
    manifest["rows"] = {name: {"sha256": sha256_hex(data), "count": data.count(b"\n")} for name, data in rows.items()}
    body = canonical(manifest)
    signature = {"algorithm": "ed25519", "public_key": key.public_hex, "key_id": key.key_id,
                 "signed": MANIFEST, "signature": key.sign(body)}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in ((MANIFEST, body), (SAMPLES, rows[SAMPLES]), (TIMINGS, rows[TIMINGS]),
                           (SIGNATURE, canonical(signature))):
            info = zipfile.ZipInfo(name, _ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    _self_check(buffer.getvalue(), manifest["run_id"])
    try:
        path.write_bytes(buffer.getvalue())
    except OSError as exc:
        raise SmallfitError(f"cannot write {path}: {exc.strerror}; pass another path with -o") from None
    return manifest


def _self_check(data: bytes, run_id: str) -> None:
    """Refuse to write a bundle that would not verify: a run stored by an older smallfit whose
    rules for a figure differed from today's cannot be recomputed from its rows."""
    from smallfit.share.verify import verify

    v = verify(read_bytes(data))
    if not v.ok:
        raise SmallfitError(f"run {run_id} cannot be bundled: {v.problems[0]}; its figures were stored by a smallfit "
                            "whose rules differ from this one's, so a bundle of it would not verify: run it again")


def _entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int) -> bytes:
    """One entry's bytes, read no further than the limits allow, whatever its header claims."""
    if info.flag_bits & 0x1:
        raise BundleError(f"bundle entry {info.filename!r} is encrypted; a bundle is never encrypted", 400)
    if stat.S_ISLNK(info.external_attr >> 16):
        raise BundleError(f"bundle entry {info.filename!r} is a symbolic link; a bundle holds plain files only", 400)
    limit = min(MAX_ENTRY_BYTES, budget, max(info.compress_size, 1) * MAX_RATIO)
    with zf.open(info) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise BundleError(f"bundle entry {info.filename!r} expands past {limit} bytes (more than {MAX_RATIO}x its "
                          "compressed size, or past the size limit): refused as a decompression bomb", 413)
    return data


def read_bytes(data: bytes) -> Bundle:
    """Parse a bundle from its bytes, checking the archive before trusting any of it: size, entry
    names (exactly the four, no paths, no duplicates), links, expansion ratio, total size."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(f"the bundle is {len(data)} bytes; the limit is {MAX_BUNDLE_BYTES}", 413)
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise BundleError(f"not a smallfit bundle (not a readable zip file: {exc}); make one with "
                          "'smallfit bundle RUN_ID -o FILE'", 400) from None
    names = [i.filename for i in infos]
    odd = [n for n in names if n not in ENTRIES]
    if odd:
        raise BundleError(f"bundle entry {odd[0]!r} is not one of {', '.join(ENTRIES)}: refused (no other files, "
                          "no paths)", 400)
    if len(set(names)) != len(names) or set(names) != set(ENTRIES):
        missing = sorted(set(ENTRIES) - set(names))
        why = f"lacks {', '.join(missing)}" if missing else "has an entry twice"
        raise BundleError(f"the bundle {why}; make it again with 'smallfit bundle RUN_ID -o FILE'", 400)
    raw: dict[str, bytes] = {}
    budget = MAX_ENTRY_BYTES
    try:
        for info in infos:
            raw[info.filename] = _entry(zf, info, budget)
            budget -= len(raw[info.filename])
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise BundleError(f"the bundle is damaged ({exc}); make it again with 'smallfit bundle'", 400) from None
    try:
        manifest = json.loads(raw[MANIFEST])
        signature = json.loads(raw[SIGNATURE])
        samples = [json.loads(line) for line in raw[SAMPLES].splitlines() if line.strip()]
        timings = [json.loads(line) for line in raw[TIMINGS].splitlines() if line.strip()]
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"a bundle entry is not valid JSON ({exc})", 400) from None
    if not isinstance(manifest, dict) or not isinstance(signature, dict) or \
            not all(isinstance(r, dict) for r in [*samples, *timings]):
        raise BundleError("the bundle's manifest, signature and rows must be JSON objects", 400)
    if manifest.get("format") != FORMAT:
        raise BundleError(f"bundle format {manifest.get('format')!r} is not {FORMAT!r}; make it with this "
                          "smallfit's 'smallfit bundle'", 400)
    return Bundle(manifest, raw[MANIFEST], samples, timings, signature, raw)


def read(path: Path) -> Bundle:
    """Read a bundle file (see :func:`read_bytes`); a one-line error when it is missing or too large."""
    try:
        size = path.stat().st_size
        if size > MAX_BUNDLE_BYTES:
            raise BundleError(f"{path} is {size} bytes; the limit is {MAX_BUNDLE_BYTES}", 413)
        data = path.read_bytes()
    except OSError as exc:
        raise SmallfitError(f"cannot read the bundle {path}: {exc.strerror}") from None
    return read_bytes(data)
