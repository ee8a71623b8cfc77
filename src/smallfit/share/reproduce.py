"""Reproduce part of a bundle on this machine: K random examples of each candidate x task scored
again with the same model (checked by its SHA-256), the same task definition (checked by each
example's prompt and target hash) and the same settings, on a machine of the same hardware class;
then the same prompts decoded at fixed length to compare time per output token.

The outcome is a signed **reproduction report** (canonical JSON, Ed25519 by this machine's key) that
a board takes as evidence for the "reproduced" tier. A candidate x task agrees when every
reproduced example's scores equal the bundle's (within ``SCORE_TOLERANCE``: another build of the
same kernels may differ in the last digits of a log-probability) and its median time per output
token is within a factor ``SPEED_FACTOR`` of the bundle's.
"""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path
from typing import Any

from smallfit.errors import SmallfitError
from smallfit.share.bundle import Bundle, hardware_class
from smallfit.share.canonical import canonical, sha256_hex
from smallfit.share.keys import SigningKey, key_id, verify_signature

FORMAT = "smallfit-reproduction/1"
SCORE_TOLERANCE = 1e-4
"""Absolute tolerance per score, plus the same relative: 0/1 scores must match exactly."""
SPEED_FACTOR = 2.0
"""The reproduced median time per output token may differ from the bundle's by this factor."""


def _same_score(a: float, b: float) -> bool:
    return abs(a - b) <= SCORE_TOLERANCE * max(1.0, abs(a), abs(b))


def pick(b: Bundle, examples: int, seed: int) -> dict[tuple[str, str], list[str]]:
    """K example ids of each finished candidate x task, chosen at random (seeded)."""
    rng = random.Random(seed)
    out: dict[tuple[str, str], list[str]] = {}
    for r in b.manifest.get("results", []):
        if r.get("status") != "done" or str(r.get("task")).startswith("probe:"):
            continue
        ids = sorted({s["sample_id"] for s in b.samples if s["candidate"] == r["candidate"] and s["task"] == r["task"]})
        if ids:
            out[(r["candidate"], r["task"])] = sorted(rng.sample(ids, min(examples, len(ids))))
    return out


def _compare(rows: dict[str, dict[str, Any]], results: list[Any]) -> tuple[int, list[str]]:
    """Examples whose prompt, target and scores all match, and a line per one that does not."""
    same, diffs = 0, []
    for r in results:
        want = rows[r.sample_id]
        problems = []
        if sha256_hex(r.prompt) != want["prompt_sha256"] or sha256_hex(r.target) != want["target_sha256"]:
            problems.append("its prompt or target differs from the bundle's (another task definition)")
        for name, value in want["scores"].items():
            got = r.scores.get(name)
            if value is not None and (got is None or not _same_score(float(value), float(got))):
                problems.append(f"{name} {got!r} here, {value!r} in the bundle")
        if problems:
            diffs.append(f"example {r.sample_id}: " + "; ".join(problems))
        else:
            same += 1
    return same, diffs


def _tpot(timings: list[Any]) -> float | None:
    values = [(t.latency_s - t.ttft_s) / (t.n_output_tokens - 1) for t in timings
              if t.ttft_s is not None and t.n_output_tokens >= 2]
    return statistics.median(values) if values else None


def _candidate(b: Bundle, name: str, picked: dict[tuple[str, str], list[str]], threads: int) -> list[dict[str, Any]]:
    """Reproduce one candidate's picked examples on every task; one report entry per task."""
    from smallfit.backends.base import BackendConfig
    from smallfit.backends.registry import get_backend
    from smallfit.contract import Job
    from smallfit.measure import fixed_length
    from smallfit.plan import PlannedCandidate, resolve
    from smallfit.runner import settings_of
    from smallfit.spec import RunSpec
    from smallfit.tasks import get_task

    m = b.manifest
    cand = next(c for c in m["candidates"] if c["name"] == name)
    spec_cand: dict[str, Any] = next((c for c in m["spec"]["candidates"] if c.get("name") == name), {})
    planned = PlannedCandidate(name, cand["model_ref"], cand["backend"], dict(spec_cand.get("options") or {}),
                               spec_cand.get("threads"), spec_cand.get("context_size") or 2048,
                               spec_cand.get("batch_size") or 512, cand.get("variant"))
    resolved, _ = resolve(planned, threads, lambda _s: None)
    if resolved.sha256 != cand["model_sha256"]:
        raise SmallfitError(f"{name}: the model here ({resolved.location}) has SHA-256 {resolved.sha256}, the bundle's "
                            f"is {cand['model_sha256']}; reproduce needs the same weights")
    try:
        settings = settings_of(RunSpec.model_validate(m["spec"]))
    except ValueError as exc:
        raise SmallfitError(f"the bundle's spec does not load here ({str(exc).splitlines()[0]})") from None
    job = Job(model=resolved, tasks=(), settings=settings, threads=threads, context_size=planned.context_size,
              batch_size=planned.batch_size, options=planned.options)
    backend = get_backend(resolved.backend).load(BackendConfig(
        model_path=Path(resolved.location), threads=threads, context_size=planned.context_size,
        batch_size=planned.batch_size, options=dict(planned.options)))
    out = []
    try:
        for ref, task_name in m["tasks"].items():
            ids = picked.get((name, task_name))
            if not ids:
                continue
            out.append(_task(b, backend, get_task(ref), job, name, task_name, ids, fixed_length))
    finally:
        backend.close()
    return out


def _task(b: Bundle, backend: Any, task: Any, job: Any, name: str, task_name: str, ids: list[str],
          fixed_length: Any) -> dict[str, Any]:
    from smallfit.measure import task_samples

    rows = {s["sample_id"]: s for s in b.samples if s["candidate"] == name and s["task"] == task_name}
    chosen = [s for s in task_samples(backend, task, job) if s.id in set(ids)]
    entry: dict[str, Any] = {"candidate": name, "task": task_name, "examples": len(ids), "sample_ids": ids}
    if len(chosen) != len(ids):
        return {**entry, "agreed": False, "matched": 0,
                "differences": [f"{len(ids) - len(chosen)} of the picked examples are not in this machine's copy of "
                                f"task {task_name}"]}
    results, _ = task.kind.run(backend, chosen, lambda _n: None)
    matched, diffs = _compare(rows, results)
    result = next(r for r in b.manifest["results"] if r["candidate"] == name and r["task"] == task_name)
    stated = (result.get("metrics") or {}).get("tpot_s")
    here = None
    if backend.capabilities.generation and stated:
        here = _tpot(fixed_length(backend, [task.kind.prompt_of(s) for s in chosen], job.settings.latency_max_tokens))
    ratio = here / stated if here and stated else None
    speed_ok = ratio is None or 1 / SPEED_FACTOR <= ratio <= SPEED_FACTOR
    if not speed_ok and here is not None and stated:
        diffs.append(f"time per output token {here * 1e3:.3f} ms here, {float(stated) * 1e3:.3f} ms in the bundle "
                     f"(more than {SPEED_FACTOR:g}x apart)")
    return {**entry, "matched": matched, "differences": diffs, "tpot_s_bundle": stated, "tpot_s_here": here,
            "agreed": matched == len(ids) and speed_ok}


def reproduce(b: Bundle, examples: int, seed: int, key: SigningKey) -> dict[str, Any]:
    """Reproduce ``examples`` random examples of every candidate x task; the signed report."""
    from smallfit.probes.hardware import fingerprint

    m = b.manifest
    threads = int(m.get("threads") or 1)
    here = fingerprint()
    theirs = hardware_class(m.get("hardware") or {}, threads, None)
    mine = hardware_class(here, threads, None)
    if mine != theirs:
        raise SmallfitError(f"this machine is '{mine}', the bundle was measured on '{theirs}': reproduce it on a "
                            "machine of the same class")
    picked = pick(b, examples, seed)
    entries = []
    for name in dict.fromkeys(c for c, _ in picked):
        entries.extend(_candidate(b, name, picked, threads))
    report = {"format": FORMAT, "bundle_manifest_sha256": sha256_hex(b.manifest_bytes),
              "submission_id": sha256_hex(b.manifest_bytes)[:16], "run_id": m.get("run_id"),
              "examples": examples, "seed": seed, "hardware": here, "hardware_class": mine, "threads": threads,
              "entries": entries}
    body = canonical(report)
    return {"report": report, "public_key": key.public_hex, "key_id": key.key_id, "signature": key.sign(body)}


def check_signed(signed: dict[str, Any]) -> dict[str, Any]:
    """The report of a signed reproduction whose signature holds; a SmallfitError otherwise."""
    report, pub, sig = signed.get("report"), signed.get("public_key"), signed.get("signature")
    if not isinstance(report, dict) or not isinstance(pub, str) or not isinstance(sig, str) \
            or report.get("format") != FORMAT:
        raise SmallfitError(f"not a {FORMAT} report: it needs report, public_key and signature")
    if not verify_signature(pub, sig, canonical(report)):
        raise SmallfitError(f"the reproduction's signature does not match its report (key {key_id(pub)})")
    return report


def dumps(signed: dict[str, Any]) -> str:
    """A signed reproduction as a file's text."""
    return json.dumps(signed, indent=1, sort_keys=True)
