"""What runs on a Ray node: its facts (hardware fingerprint, versions), whether it holds a model,
and one job: the model found or received and checked by its SHA-256, the task checked by its
digest, then the job in a worker process of its own, its events streamed back to the driver.

Every function here is plain Python that the driver wraps with ``ray.remote``; a node imports it
from its own installed smallfit, so a node without smallfit fails at once and by name.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from smallfit.errors import SmallfitError


class ModelHashError(SmallfitError):
    """A model copy whose content does not hash to what the driver resolved."""


def node_name() -> str:
    """This node as stored with each job: ``IP/first 12 digits of the Ray node id``."""
    import ray

    ctx = ray.get_runtime_context()
    return f"{ray.util.get_node_ip_address()}/{ctx.get_node_id()[:12]}"  # type: ignore[no-untyped-call]


def _ray_node_id() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


def node_facts() -> dict[str, Any]:
    """The node's name, hardware fingerprint and versions (smallfit, Ray, Python)."""
    import ray

    from smallfit import __version__
    from smallfit.probes.hardware import fingerprint

    return {"node": node_name(), "node_id": ray.get_runtime_context().get_node_id(), "fingerprint": fingerprint(),
            "versions": {"smallfit": __version__, "ray": ray.__version__, "python": platform.python_version()}}


def node_cache() -> Path:
    """Where a node keeps model copies received from the driver, by content hash:
    ``$SMALLFIT_NODE_CACHE``, else ``~/.cache/smallfit/nodes``."""
    env = os.environ.get("SMALLFIT_NODE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "smallfit" / "nodes"


def _matches(path: Path, sha256: str) -> bool:
    from smallfit.models import weights_sha256

    return path.exists() and weights_sha256(path) == sha256


def has_models(wanted: list[tuple[str, str]]) -> list[bool]:
    """For each (path, sha256): does this node hold that content, at the path or in its cache?"""
    return [_matches(Path(p), sha) or _matches(node_cache() / sha / Path(p).name, sha) for p, sha in wanted]


def bundle(location: str) -> dict[str, bytes]:
    """A model file, or every file of a model folder, as relative path -> bytes (for ray.put)."""
    path = Path(location)
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(f.relative_to(path.parent)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


def materialize(location: str, sha256: str, copies: list[Any]) -> str:
    """A path on this node whose content hashes to ``sha256``: ``location`` itself (a shared path,
    or the same install), a copy in the node cache, or the driver's copy (``copies``: a list
    holding one Ray object ref, or empty) written to the cache and checked before it is used."""
    import ray

    name = Path(location).name
    if _matches(Path(location), sha256):
        return location
    cached = node_cache() / sha256 / name
    if _matches(cached, sha256):
        return str(cached)
    if not copies:
        raise SmallfitError(f"model {name} (sha256 {sha256[:12]}) is not on node {node_name()} and the driver sent "
                            "no copy; put it on a path every node shares")
    files: dict[str, bytes] = ray.get(copies[0])
    tmp = node_cache() / f"{sha256}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for rel, data in files.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(data)
    if not _matches(tmp / name, sha256):
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelHashError(f"the copy of model {name} received on node {node_name()} fails its SHA-256 check "
                             f"(expected {sha256[:12]}); the driver's file changed since the run resolved it: "
                             "start a new run")
    try:
        tmp.rename(node_cache() / sha256)
    except OSError:  # another job on this node made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return str(cached)


def run_job(job_json: str, digest: str, timeout_s: float | None, files: dict[str, tuple[str, list[Any]]],
            ) -> Iterator[dict[str, Any]]:
    """One job on this node, as a stream of dicts: ``started`` (node, fingerprint, time), each
    worker ``event`` (its JSON line), then ``end`` (peak memory, exit reason, time); or ``error``
    (``retry``: whether another node may do better) when the job cannot start here. ``files``:
    role (``model``, a sweep's ``reference``) -> (SHA-256, the driver's copy or nothing)."""
    from smallfit.contract import Progress, decode_job, encode_event
    from smallfit.executors.process import WorkerProcess
    from smallfit.jobs import task_digest
    from smallfit.plan import prepare_build
    from smallfit.probes.hardware import fingerprint
    from smallfit.probes.load import default_threads

    started = time.time()
    yield {"kind": "started", "node": node_name(), "node_id": _ray_node_id(), "fingerprint": fingerprint(),
           "started_at": started}
    job = decode_job(job_json)
    try:
        job = _localize(job, files)
        ref = job.tasks[0][0]
        if task_digest(ref) != digest:
            raise SmallfitError(f"task {job.tasks[0][1]} loads other examples on node {node_name()} than on the "
                                "driver (or its file is missing there); put task files on a path every node shares")
        threads = job.threads or default_threads()[0]
        prepare_s = prepare_build(job.model, dict(job.options), threads, lambda what: None)
        job = replace(job, threads=threads, prepare_s=prepare_s if prepare_s is not None else job.prepare_s)
    except ModelHashError as exc:
        yield {"kind": "error", "error": str(exc), "retry": False, "finished_at": time.time()}
        return
    except SmallfitError as exc:
        yield {"kind": "error", "error": str(exc), "retry": True, "finished_at": time.time()}
        return
    worker = WorkerProcess(job, timeout_s)
    last_progress = 0.0
    for ev in worker.events():
        if isinstance(ev, Progress):  # at most two a second: each is a message to the driver
            if time.monotonic() - last_progress < 0.5:
                continue
            last_progress = time.monotonic()
        yield {"kind": "event", "line": encode_event(ev)}
    end = worker.end
    yield {"kind": "end", "peak_rss_bytes": end.peak_rss_bytes, "exit_reason": end.exit_reason,
           "timed_out": end.timed_out, "finished_at": time.time(), "threads": threads}


def run_job_whole(job_json: str, digest: str, timeout_s: float | None, files: dict[str, tuple[str, list[Any]]],
                  ) -> list[dict[str, Any]]:
    """:func:`run_job`'s items all at once, when the job ends: for Ray Client (``ray://``), which
    does not stream a task's items."""
    return list(run_job(job_json, digest, timeout_s, files))


def _localize(job: Any, files: dict[str, tuple[str, list[Any]]]) -> Any:
    """The job with its model (and a sweep's reference model) at checked paths on this node."""
    from smallfit.executors.base import with_location

    model, reference = files.get("model"), files.get("reference")
    location = materialize(job.model.location, *model) if model else job.model.location
    ref_path = materialize(job.sweep.reference_path, *reference) if reference and job.sweep else None
    return with_location(job, location, ref_path)
