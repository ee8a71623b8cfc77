"""Helpers that take a real bundle apart and put it back together, as a forger would: change a row
or a figure, re-hash the rows, re-sign with another key, add an entry."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

from smallfit.share.canonical import canonical, sha256_hex


def entries(path: Path) -> dict[str, bytes]:
    """A bundle's entries by name."""
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def pack(files: dict[str, bytes], compress: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of ``files`` (names taken as given, traversal included)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compress) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def rows(data: bytes) -> list[dict[str, Any]]:
    """JSONL rows."""
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def jsonl(items: list[dict[str, Any]]) -> bytes:
    """Canonical JSONL, as bundles carry it."""
    return b"".join(canonical(r) + b"\n" for r in items)


def rehash(files: dict[str, bytes]) -> dict[str, bytes]:
    """The row files' hashes written into the manifest again (the signature no longer matches)."""
    manifest = json.loads(files["manifest.json"])
    for name in ("samples.jsonl", "timings.jsonl"):
        manifest["rows"][name] = {"sha256": sha256_hex(files[name]), "count": files[name].count(b"\n")}
    return {**files, "manifest.json": canonical(manifest)}


def resign(files: dict[str, bytes], key_path: Path) -> dict[str, bytes]:
    """Signed again with the key at ``key_path``: a valid signature by that key."""
    from smallfit.share.keys import load

    key = load(key_path)
    manifest = canonical(json.loads(files["manifest.json"]))
    sig = {"algorithm": "ed25519", "public_key": key.public_hex, "key_id": key.key_id, "signed": "manifest.json",
           "signature": key.sign(manifest)}
    return {**files, "manifest.json": manifest, "signature.json": canonical(sig)}


def change_score(files: dict[str, bytes]) -> dict[str, bytes]:
    """The first example scored 0 flipped to 1 (every score of it), rows re-hashed."""
    samples = rows(files["samples.jsonl"])
    row = next(r for r in samples if r["scores"].get("acc") == 0.0)
    row["scores"] = {k: (1.0 if k in ("acc", "acc_norm", "acc_bytes") else v) for k, v in row["scores"].items()}
    return rehash({**files, "samples.jsonl": jsonl(samples)})


def change_aggregate(files: dict[str, bytes], metric: str = "acc", by: float = 0.1) -> dict[str, bytes]:
    """The first result with ``metric`` stated better by ``by``."""
    manifest = json.loads(files["manifest.json"])
    res = next(r for r in manifest["results"] if r["metrics"].get(metric) is not None)
    res["metrics"][metric] += by
    return {**files, "manifest.json": canonical(manifest)}


def _retask(files: dict[str, bytes], samples: list[dict[str, Any]]) -> dict[str, bytes]:
    """Task hashes, the configuration and its hash made consistent with changed ``samples``."""
    from smallfit.share.bundle import task_hash
    from smallfit.share.canonical import digest

    manifest = json.loads(files["manifest.json"])
    hashes: dict[str, list[str]] = {}
    for res in manifest["results"]:
        mine = [r for r in samples if r["candidate"] == res["candidate"] and r["task"] == res["task"]]
        if mine:
            res["task_hash"] = task_hash(res["info"]["kind"], mine)
            if res["task_hash"] not in hashes.setdefault(res["task"], []):
                hashes[res["task"]].append(res["task_hash"])
    manifest["config"]["tasks"] = hashes
    manifest["config_sha256"] = digest(manifest["config"])
    return rehash({**files, "manifest.json": canonical(manifest), "samples.jsonl": jsonl(samples)})


def change_prompt(files: dict[str, bytes]) -> dict[str, bytes]:
    """Every candidate's first example of each task given another prompt, and every hash made to
    match: a self-consistent bundle of a task the board has never seen."""
    samples = rows(files["samples.jsonl"])
    for r in samples:
        if r["idx"] == 0:
            r["prompt"] = "Another question entirely?\nAnswer:"
            r["prompt_sha256"] = sha256_hex(r["prompt"])
    return _retask(files, samples)


def rename(files: dict[str, bytes], old: str, new: str) -> dict[str, bytes]:
    """A candidate renamed everywhere (manifest, configuration, rows), every hash made to match."""
    from smallfit.share.canonical import digest

    manifest = json.loads(files["manifest.json"])
    for item in [*manifest["candidates"], *manifest["config"]["candidates"]]:
        if item["name"] == old:
            item["name"] = new
    for res in manifest["results"]:
        if res["candidate"] == old:
            res["candidate"] = new
    manifest["config_sha256"] = digest(manifest["config"])
    out = {}
    for name in ("samples.jsonl", "timings.jsonl"):
        items = rows(files[name])
        for r in items:
            if r["candidate"] == old:
                r["candidate"] = new
        out[name] = jsonl(items)
    return rehash({**files, **out, "manifest.json": canonical(manifest)})


def state(files: dict[str, bytes], candidate: str, **metrics: float) -> dict[str, bytes]:
    """Stated measurements (not recomputable from rows) of one candidate changed on every task."""
    manifest = json.loads(files["manifest.json"])
    for res in manifest["results"]:
        if res["candidate"] == candidate:
            res["metrics"].update(metrics)
    return {**files, "manifest.json": canonical(manifest)}
