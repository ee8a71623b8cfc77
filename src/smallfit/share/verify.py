"""Check a bundle offline: its signature, every hash in it, and every figure it states that can be
recomputed from its per-example and per-request rows.

Nothing here trusts the bundle: the rows are re-hashed, the task hashes re-derived from the rows'
prompts and targets, and the quality and timing aggregates computed again with the very code that
computed them in the run (the task kind's ``aggregate``, :func:`smallfit.metrics.efficiency_from_timings`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from smallfit.metrics import efficiency_from_timings
from smallfit.records import RequestTiming, SampleResult
from smallfit.share.bundle import MANIFEST, SAMPLES, TIMINGS, Bundle, run_order, task_hash
from smallfit.share.canonical import canonical, digest, sha256_hex
from smallfit.share.keys import key_id, verify_signature

REL_TOLERANCE = 1e-9
"""Recomputed and stated figures agree when within this relative difference (the same code on the
same numbers gives the same bits; this allows only for another platform's last-bit rounding)."""


def _kinds() -> dict[str, Callable[[Sequence[SampleResult]], dict[str, float | None]]]:
    from smallfit.tasks.base import Continuation, Generation, MultipleChoice, Perplexity
    from smallfit.tasks.embedding import EmbeddingClassification

    return {"multiple_choice": MultipleChoice().aggregate, "generation": Generation().aggregate,
            "perplexity": Perplexity().aggregate, "continuation": Continuation().aggregate,
            "embedding_classification": EmbeddingClassification(label_set=lambda: None).aggregate}  # type: ignore[arg-type, return-value]


@dataclass
class Verification:
    """The outcome of checking one bundle: what was checked, and every problem found."""

    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    recomputed: int = 0
    """Figures recomputed from the rows and found equal to the stated ones."""
    stated_only: int = 0
    """Figures that are measurements, not aggregates of the rows (memory, load time, energy)."""

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= REL_TOLERANCE * max(1.0, abs(a), abs(b))


def check_signature(b: Bundle, v: Verification) -> None:
    """The Ed25519 signature over the manifest's canonical bytes, by the key the bundle names."""
    sig, pub = b.signature.get("signature"), b.signature.get("public_key")
    if b.signature.get("algorithm") != "ed25519" or not isinstance(sig, str) or not isinstance(pub, str):
        v.problems.append("signature.json must name algorithm ed25519 with a public_key and a signature")
        return
    if canonical(b.manifest) != b.manifest_bytes:
        v.problems.append("manifest.json is not in canonical form (it was edited after signing)")
    if not verify_signature(pub, sig, b.manifest_bytes):
        v.problems.append(f"the signature does not match the manifest for key {key_id(pub) if _hex(pub) else pub!r}: "
                          "the bundle was changed after it was signed, or signed by another key")
        return
    v.checked.append(f"Ed25519 signature by key {key_id(pub)}")


def _hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def check_hashes(b: Bundle, v: Verification) -> None:
    """Row files against the manifest, each example's prompt and target hash, each task hash,
    the configuration's hash and the models' hashes in it."""
    m = b.manifest
    stated_rows = m.get("rows") or {}
    for name, rows in ((SAMPLES, b.samples), (TIMINGS, b.timings)):
        want = stated_rows.get(name) or {}
        if want.get("sha256") != sha256_hex(b.raw[name]) or want.get("count") != len(rows):
            v.problems.append(f"{name} does not match the SHA-256 and row count the manifest states")
    bad = [r for r in b.samples if r.get("prompt_sha256") != sha256_hex(str(r.get("prompt")))
           or r.get("target_sha256") != sha256_hex(str(r.get("target")))]
    if bad:
        v.problems.append(f"{len(bad)} example(s) have a prompt or target that does not match its SHA-256 "
                          f"(first: {bad[0].get('candidate')} · {bad[0].get('task')} #{bad[0].get('idx')})")
    for res in _results(m):
        rows = _rows(b.samples, res)
        kind = str((res.get("info") or {}).get("kind", ""))
        got = task_hash(kind, rows) if rows else None
        if got != res.get("task_hash"):
            v.problems.append(f"{res.get('candidate')} · {res.get('task')}: task hash {res.get('task_hash')} does not "
                              f"match its examples ({got})")
    config = m.get("config")
    if not isinstance(config, dict) or digest(config) != m.get("config_sha256"):
        v.problems.append("config_sha256 is not the SHA-256 of the configuration")
    else:
        models = {c.get("name"): c.get("model_sha256") for c in config.get("candidates", [])}
        for c in m.get("candidates", []):
            if models.get(c.get("name")) != c.get("model_sha256"):
                v.problems.append(f"candidate {c.get('name')}: its model SHA-256 differs from the configuration's")
    v.checked.append(f"SHA-256 of {MANIFEST}'s row files, {len(b.samples)} examples, the task hashes and the config")


def _results(m: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in m.get("results", []) if isinstance(r, dict)]


def _rows(rows: list[dict[str, Any]], res: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("candidate") == res.get("candidate") and r.get("task") == res.get("task")]


def recompute(res: dict[str, Any], samples: list[dict[str, Any]], timings: list[dict[str, Any]]) -> \
        dict[str, float | None]:
    """The figures of one candidate x task computed from its rows: the task kind's quality
    aggregates (when the kind is known) and every latency and throughput figure."""
    out: dict[str, float | None] = {}
    kind = str((res.get("info") or {}).get("kind", ""))
    aggregate = _kinds().get(kind)
    if aggregate is not None and samples:
        results = [SampleResult(int(r["idx"]), str(r["sample_id"]), str(r["prompt"]), str(r["target"]),
                                str(r["prediction"]), {k: float(x) for k, x in (r.get("scores") or {}).items()})
                   for r in sorted(samples, key=lambda r: int(r["idx"]))]
        out.update(aggregate(results))
    if timings:
        records = [RequestTiming(int(t["idx"]), str(t["phase"]), t.get("n_prompt_tokens"), int(t["n_output_tokens"]),
                                 t.get("ttft_s"), float(t["latency_s"]), tuple(t.get("token_times_s") or ()))
                   for t in sorted(timings, key=run_order)]
        out.update(efficiency_from_timings(records))
    return out


def check_aggregates(b: Bundle, v: Verification) -> None:
    """Every stated figure that the rows determine, computed again and compared."""
    for res in _results(b.manifest):
        if res.get("status") != "done" or str(res.get("task", "")).startswith("probe:"):
            continue
        who = f"{res.get('candidate')} · {res.get('task')}"
        samples, timings = _rows(b.samples, res), _rows(b.timings, res)
        stated = res.get("metrics") or {}
        if res.get("n_samples") != len(samples) or (res.get("info") or {}).get("n_samples") != len(samples):
            v.problems.append(f"{who}: states {res.get('n_samples')} examples but carries {len(samples)}")
        try:
            again = recompute(res, samples, timings)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            v.problems.append(f"{who}: its rows cannot be aggregated ({type(exc).__name__}: {exc})")
            continue
        for name, value in again.items():
            if name not in stated:
                continue
            if not _same(stated[name], value):
                v.problems.append(f"{who}: {name} is stated as {stated[name]!r} but its rows give {value!r}")
            else:
                v.recomputed += 1
        v.stated_only += sum(1 for name in stated if name not in again)
    v.checked.append(f"{v.recomputed} figures recomputed from the rows")


def verify(b: Bundle) -> Verification:
    """Every check on a bundle; ``ok`` when none found a problem."""
    v = Verification()
    check_signature(b, v)
    check_hashes(b, v)
    if not v.problems:  # aggregates of rows that do not match their hashes prove nothing
        check_aggregates(b, v)
    return v
