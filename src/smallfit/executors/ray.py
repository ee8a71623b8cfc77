"""The Ray executor: each job (candidate x task) is a Ray task on a node of a cluster, at most one
timed job per node at a time, results streamed into the driver's one store as they come.

* **One slot per node.** Every job asks for the custom resource ``smallfit_slot: 1`` (and none of
  Ray's CPUs); each node is started with one, so Ray never puts two timed jobs on one machine,
  whose cores and memory bandwidth they would share. A candidate's ``hardware = "NAME"`` makes
  its jobs also ask for a little of resource NAME, so they run only on nodes started with it.
* **Checked at start**, before the run is recorded: the address answers, some node has a slot
  (and each hardware class asked for), and every node runs this driver's smallfit, Ray and
  Python versions (one line per node that does not).
* **Models by content hash.** Candidates are resolved here (a sweep's variants built once);
  each node is asked whether it holds each model's content (at its path, or in its cache); the
  models some node lacks are put once in Ray's object store, and a node writes its copy to its
  cache and checks its SHA-256 before loading it (:mod:`smallfit.executors.ray_node`).
* **Faults.** A job whose node died, whose worker was killed or that ran over
  ``--job-timeout-s`` is tried again on another eligible node, at most ``--retries`` times, then
  stored as failed with the reason; the rest of the sweep goes on. A job's result is committed
  as it arrives, so a driver killed with SIGKILL loses no finished job and ``--resume``
  continues with the others.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from smallfit import __version__, jobs
from smallfit.contract import decode_event, encode_job
from smallfit.errors import MissingExtraError, SmallfitError
from smallfit.executors.base import Event, Outcome, Prepared, RunContext
from smallfit.executors.ray_node import bundle, has_models, node_facts, run_job, run_job_whole
from smallfit.jobs import hardware_id
from smallfit.plan import PlannedCandidate
from smallfit.probes.load import machine_load
from smallfit.spec import RunSpec

SLOT = "smallfit_slot"
HARDWARE_SHARE = 0.001  # of a hardware class's resource: it marks where a job may run, not how much


@dataclass
class _Attempt:
    """One try of one job."""

    prepared: Prepared
    ref: str
    task: str
    number: int = 1
    tried: list[str] = field(default_factory=list)
    """Ray node ids where earlier attempts failed."""
    node: str | None = None
    node_id: str | None = None
    outcome: Outcome = field(default_factory=Outcome)
    end: dict[str, Any] | None = None
    error: str | None = None
    retry: bool = True

    @property
    def candidate(self) -> str:
        return self.prepared.planned.name


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(exc).__name__


class RayExecutor:
    """Runs jobs on a Ray cluster (see the module docstring)."""

    name = "ray"

    def __init__(self, address: str = "auto", retries: int = 2, job_timeout_s: float | None = None) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise MissingExtraError("Ray", "ray") from None
        self.address, self.retries, self.job_timeout_s = address, retries, job_timeout_s
        self.nodes: dict[str, dict[str, Any]] = {}
        """Ray node id -> its facts and resources, for the nodes with a slot (set by :meth:`check`)."""

    def describe(self) -> dict[str, Any]:
        """The address, retries and time limit, for --resume."""
        return {"executor": self.name, "address": self.address, "retries": self.retries,
                "job_timeout_s": self.job_timeout_s}

    def check(self, spec: RunSpec) -> None:
        """Connect, and check the cluster can run ``spec`` (see the module docstring)."""
        self._connect()
        try:
            self._survey(spec)
        except BaseException:
            self._close()
            raise

    def classes(self) -> dict[str, list[str]]:
        """Hardware class (fingerprint id) -> ids of the slot nodes of that class (from :meth:`check`)."""
        out: dict[str, list[str]] = {}
        for nid, facts in sorted(self.nodes.items()):
            out.setdefault(hardware_id(facts["fingerprint"]), []).append(nid)
        return out

    def expand(self, planned: list[PlannedCandidate]) -> list[PlannedCandidate]:
        """On a cluster of several hardware classes, each candidate that does not name its
        hardware becomes one candidate per class, ``NAME@CLASS`` (the class's first 6 digits): a
        verdict, a frontier or a comparison never mixes machines."""
        classes = sorted(self.classes())
        if len(classes) < 2:
            return planned
        out: list[PlannedCandidate] = []
        for p in planned:
            out += [p] if p.hardware else [replace(p, name=f"{p.name}@{c[:6]}", hardware_id=c) for c in classes]
        return out

    def run(self, ctx: RunContext, work: list[tuple[PlannedCandidate, dict[str, str]]]) -> None:
        """Resolve every candidate here, then run all their jobs on the cluster."""
        if not self.nodes:
            self.check(ctx.spec)
        try:
            _Driver(self, ctx).run(work)
        finally:
            self._close()

    # -- connecting and checking -----------------------------------------------------------

    def _connect(self) -> None:
        import ray

        if ray.is_initialized():
            return
        address = self.address
        if address != "auto":
            host, _, port = address.removeprefix("ray://").rpartition(":")
            if not host or not port.isdigit():
                raise SmallfitError(f"--address {address!r} is not auto, HOST:PORT or ray://HOST:PORT")
            try:
                socket.create_connection((host, int(port)), timeout=5).close()
            except OSError as exc:
                raise SmallfitError(f"no Ray cluster answers at {address} ({exc.strerror or exc}); start one (see the "
                                    "README's cluster section) or pass its --address") from None
        try:
            with _quiet_stderr():  # Ray's C++ client logs each failed try there, before our one line
                ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        except Exception as exc:  # noqa: BLE001 - Ray raises several types here; each is one line
            raise SmallfitError(f"cannot connect to the Ray cluster at {address}: {_first_line(exc)}; check --address "
                                "(auto, HOST:PORT or ray://HOST:PORT) and the cluster's token") from None

    def _close(self) -> None:
        import ray

        self.nodes = {}
        if ray.is_initialized():
            ray.shutdown()

    def alive(self, planned: PlannedCandidate | None = None) -> list[str]:
        """Ids of the live nodes with a slot that may run ``planned``'s jobs (its hardware
        resource, its hardware class), or any job."""
        import ray

        nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
        hardware = planned.hardware if planned else None
        of_class = set(self.classes().get(planned.hardware_id, [])) if planned and planned.hardware_id else None
        return [n["NodeID"] for n in nodes if n["Alive"] and n["Resources"].get(SLOT, 0) >= 1
                and (hardware is None or n["Resources"].get(hardware, 0) > 0)
                and (of_class is None or n["NodeID"] in of_class)]

    def _survey(self, spec: RunSpec) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        every: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
        nodes = {n["NodeID"]: n for n in every if n["Alive"] and n["Resources"].get(SLOT, 0) >= 1}
        if not nodes:
            raise SmallfitError(f"no node of the Ray cluster at {self.address} has a {SLOT}; start each node with "
                                f"--resources '{{\"{SLOT}\": 1}}' (one slot: one timed job at a time)")
        lines = []
        for cand in spec.candidates:
            if cand.hardware and not any(n["Resources"].get(cand.hardware, 0) > 0 for n in nodes.values()):
                lines.append(f"candidate {cand.name or cand.model} asks for hardware {cand.hardware!r} but no node "
                             f"with a {SLOT} has that resource; start one with --resources '{{\"{SLOT}\": 1, "
                             f"\"{cand.hardware}\": 1}}' or drop its hardware")
        if lines:
            raise SmallfitError("\n".join(lines))
        remote = ray.remote(node_facts)
        refs = {nid: remote.options(num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
            nid, soft=False)).remote() for nid in nodes}
        mine = {"smallfit": __version__, "ray": ray.__version__, "python": platform.python_version()}
        for nid, ref in refs.items():
            where = f"{nodes[nid]['NodeManagerAddress']}/{nid[:12]}"
            try:
                facts = ray.get(ref, timeout=120)
            except ray.exceptions.GetTimeoutError:
                raise SmallfitError(f"node {where} did not answer in 120 s; check it with 'ray status'") from None
            except ray.exceptions.RayError as exc:
                raise SmallfitError(f"node {where} cannot run smallfit ({_first_line(exc)}); install the driver's "
                                    f"smallfit[ray] {__version__} on every node") from None
            if skew := version_skew(facts["versions"], mine):
                lines.append(f"node {facts['node']} runs {skew}: install the same smallfit, Ray and Python on "
                             "every node")
            self.nodes[nid] = {**facts, "resources": nodes[nid]["Resources"]}
        if lines:
            raise SmallfitError("\n".join(lines))


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the duration (native libraries write there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def version_skew(node: dict[str, str], driver: dict[str, str]) -> str:
    """``smallfit 0.1.0, Python 3.12.1 where the driver runs smallfit 0.2.0, Python 3.11.7`` for
    the versions that differ, or ``""`` when none does."""
    differ = [k for k in ("smallfit", "ray", "python") if node.get(k) != driver.get(k)]
    if not differ:
        return ""
    names = {"smallfit": "smallfit", "ray": "Ray", "python": "Python"}
    theirs = ", ".join(f"{names[k]} {node.get(k)}" for k in differ)
    ours = ", ".join(f"{names[k]} {driver.get(k)}" for k in differ)
    return f"{theirs} where the driver runs {ours}"


class _Driver:
    """One run's jobs on the cluster: submit, stream results into the store, retry, finish."""

    def __init__(self, executor: RayExecutor, ctx: RunContext) -> None:
        self.ex, self.ctx = executor, ctx
        self.files: dict[str, dict[str, tuple[str, list[Any]]]] = {}
        self.left: dict[str, int] = {}
        self.attempts: dict[str, list[_Attempt]] = {}
        self.active: dict[Any, _Attempt] = {}
        self.turn = 0
        self.streaming = not executor.address.startswith("ray://")
        """Items stream as the node yields them; through Ray Client, they come when the job ends."""

    def run(self, work: list[tuple[PlannedCandidate, dict[str, str]]]) -> None:
        ctx, ready = self.ctx, []
        for planned, tasks in work:  # resolved here: a sweep's variants are built once, on the driver
            ctx.on_event(Event("candidate_started", planned.name, total=len(tasks)))
            ctx.store.update_candidate(ctx.run_id, planned.name, status="running", started_at=time.time(), error=None,
                                       load_before_json=machine_load())
            prepared = ctx.prepare(planned, tasks, build=False)
            if prepared is not None:
                ready.append(prepared)
        for p in self._ship(ready):
            self.left[p.planned.name] = len(p.tasks)
            self.attempts[p.planned.name] = []
            if not p.tasks:
                self._candidate_done(p)
            for ref, task in p.tasks.items():
                self._submit(_Attempt(p, ref, task))
        self._drain()

    def _ship(self, ready: list[Prepared]) -> list[Prepared]:
        """Which model content some node lacks: put it once in the object store. The prepared
        candidates whose files could be offered (a driver file that changed fails its candidate)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from smallfit.models import weights_sha256

        wanted: dict[str, str] = {}
        roles: dict[str, dict[str, str]] = {}
        for p in ready:
            roles[p.planned.name] = {}
            if not p.resolved.serves and p.resolved.sha256:
                wanted[p.resolved.sha256] = p.resolved.location
                roles[p.planned.name]["model"] = p.resolved.sha256
            if p.sweep is not None and p.sweep.reference_path and Path(p.sweep.reference_path).exists():
                sha = weights_sha256(Path(p.sweep.reference_path))
                wanted[sha] = p.sweep.reference_path
                roles[p.planned.name]["reference"] = sha
        pairs = [(path, sha) for sha, path in wanted.items()]
        remote = ray.remote(has_models)
        answers = ray.get([remote.options(num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
            nid, soft=False)).remote(pairs) for nid in self.ex.alive()]) if pairs else []
        lacking = {sha for answer in answers for (_, sha), has in zip(pairs, answer, strict=True) if not has}
        copies: dict[str, list[Any]] = {}
        changed: set[str] = set()
        for sha in lacking:
            if weights_sha256(Path(wanted[sha])) != sha:
                changed.add(sha)
            else:
                copies[sha] = [ray.put(bundle(wanted[sha]))]
        out = []
        for p in ready:
            mine = roles[p.planned.name]
            if bad := [sha for sha in mine.values() if sha in changed]:
                self.ctx.fail_candidate(p.planned.name, list(p.tasks.values()),
                                        f"model file {wanted[bad[0]]} changed since the run resolved it (sha256 "
                                        f"{bad[0][:12]}); start a new run")
                continue
            self.files[p.planned.name] = {role: (sha, copies.get(sha, [])) for role, sha in mine.items()}
            out.append(p)
        return out

    def _submit(self, a: _Attempt) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ctx, planned = self.ctx, a.prepared.planned
        resources: dict[str, float] = {SLOT: 1}
        if planned.hardware:
            resources[planned.hardware] = HARDWARE_SHARE
        strategy: Any = "DEFAULT"
        eligible = self.ex.alive(planned)
        others = [n for n in eligible if n not in a.tried]
        if planned.hardware_id and eligible:  # a class is a set of nodes: each job goes to one of them in turn
            self.turn += 1
            pool = others or eligible
            strategy = NodeAffinitySchedulingStrategy(pool[self.turn % len(pool)], soft=False)
        elif a.tried and others:  # a retry goes to another eligible node when there is one
            strategy = NodeAffinitySchedulingStrategy(others[0], soft=False)
        job = ctx.job(a.prepared, {a.ref: a.task}, ctx.requested_threads(planned) or 0)
        gen = ray.remote(run_job if self.streaming else run_job_whole).options(
            num_cpus=0, resources=resources, max_retries=0, retry_exceptions=False, scheduling_strategy=strategy,
            name=f"smallfit {a.candidate} x {a.task}").remote(encode_job(job), ctx.digests[a.ref],
                                                              self.ex.job_timeout_s, self.files[a.candidate])
        self.attempts[a.candidate].append(a)
        self.active[gen] = a

    def _drain(self) -> None:
        import ray

        checked = time.monotonic()
        while self.active:
            ready, _ = ray.wait(list(self.active), num_returns=1, timeout=1.0)
            for gen in ready:
                a = self.active.pop(gen)
                if not self.streaming:
                    self._whole(gen, a)
                    continue
                try:
                    item: dict[str, Any] = ray.get(next(gen))  # type: ignore[arg-type, assignment]
                except StopIteration:
                    self._ended(a)
                    continue
                except ray.exceptions.RayError as exc:
                    self._retry_or_fail(a, f"node {a.node or '(not started)'} lost the job: {_first_line(exc)}")
                    continue
                self._item(a, item)
                self.active[gen] = a
            if time.monotonic() - checked > 5:
                checked = time.monotonic()
                self._strand_check()

    def _whole(self, ref: Any, a: _Attempt) -> None:
        """A job's items, all at once (Ray Client)."""
        import ray

        try:
            items: list[dict[str, Any]] = ray.get(ref)
        except ray.exceptions.RayError as exc:
            self._retry_or_fail(a, f"node {a.node or '(unknown)'} lost the job: {_first_line(exc)}")
            return
        for item in items:
            self._item(a, item)
        self._ended(a)

    def _strand_check(self) -> None:
        """Jobs waiting for a node of a kind the cluster no longer has fail instead of waiting forever."""
        import ray

        for gen, a in list(self.active.items()):
            if a.node is None and not self.ex.alive(a.prepared.planned):
                ray.cancel(gen, force=True)
                del self.active[gen]
                self._fail(a, f"no live node with a {SLOT}" + (f" and hardware {a.prepared.planned.hardware!r}"
                                                               if a.prepared.planned.hardware else "") + " is left")

    def _item(self, a: _Attempt, item: dict[str, Any]) -> None:
        ctx = self.ctx
        kind = item.get("kind")
        if kind == "started":
            a.node, a.node_id = item["node"], item.get("node_id") or _node_id(item["node"], self.ex.nodes)
            jobs.start_attempt(ctx.store, ctx.run_id, a.candidate, a.task, a.node, item["fingerprint"],
                               item["started_at"])
            ctx.on_event(Event("job_started", a.candidate, a.task, message=a.node))
        elif kind == "event":
            ctx.handle(a.candidate, decode_event(item["line"]), a.outcome)
        elif kind == "end":
            a.end = item
        elif kind == "error":
            a.error, a.retry = item["error"], bool(item["retry"])

    def _ended(self, a: _Attempt) -> None:
        out = a.outcome
        if out.done or out.task_errors:
            self._job_done(a)  # stored as it came (a task's own error is not the node's fault)
        elif out.fatal:
            self._fail(a, out.fatal)  # the model does not load: another node would not do better
        else:
            reason = a.error or (a.end or {}).get("exit_reason") or "worker ended before finishing its task"
            self._retry_or_fail(a, f"on node {a.node}: {reason}" if a.node else reason, a.retry)

    def _retry_or_fail(self, a: _Attempt, reason: str, retriable: bool = True) -> None:
        if a.node_id:
            a.tried.append(a.node_id)
        if retriable and a.number <= self.ex.retries and self.ex.alive(a.prepared.planned):
            jobs.end_attempt(self.ctx.store, self.ctx.run_id, a.candidate, a.task, "queued", reason)
            self.ctx.on_event(Event("job_retry", a.candidate, a.task, message=f"{reason}; trying again on another "
                                    f"node (attempt {a.number + 1} of {self.ex.retries + 1})"))
            self._submit(_Attempt(a.prepared, a.ref, a.task, a.number + 1, list(a.tried)))
            return
        self._fail(a, f"{reason} (attempt {a.number} of {self.ex.retries + 1})" if retriable else reason)

    def _fail(self, a: _Attempt, error: str) -> None:
        ctx = self.ctx
        ctx.store.save_task_error(ctx.run_id, a.candidate, a.task, error)
        jobs.end_attempt(ctx.store, ctx.run_id, a.candidate, a.task, "failed", error,
                         (a.end or {}).get("finished_at"))
        a.outcome.task_errors[a.task] = error
        ctx.on_event(Event("task_error", a.candidate, a.task, message=error))
        self._job_done(a)

    def _job_done(self, a: _Attempt) -> None:
        if a.end and a.outcome.done:  # the node's clock: when the worker ended, not when the driver heard
            jobs.end_attempt(self.ctx.store, self.ctx.run_id, a.candidate, a.task, "done", None, a.end["finished_at"])
        self.left[a.candidate] -= 1
        if self.left[a.candidate] == 0:
            self._candidate_done(a.prepared)

    def _candidate_done(self, p: Prepared) -> None:
        name, tries = p.planned.name, self.attempts.get(p.planned.name, [])
        merged = Outcome()
        for a in tries:
            if a.outcome.load_s is not None:
                merged.load_s, merged.info = a.outcome.load_s, a.outcome.info
                merged.weights_bytes = a.outcome.weights_bytes
            rss = (a.end or {}).get("peak_rss_bytes")
            merged.peak_rss_bytes = max(merged.peak_rss_bytes or 0, rss or 0) or None
        finished = {a.task for a in tries if a.outcome.done}
        # an attempt that failed and was retried successfully is not the candidate's error
        error = next((e for a in tries for e in a.outcome.task_errors.values() if a.task not in finished), None)
        status = "error" if error else "done"
        self.ctx.store_candidate(name, p.resolved, merged, status=status, error=error, finished_at=time.time())
        self.ctx.on_event(Event("candidate_error", name, message=error) if error else
                          Event("candidate_done", name, message=status))


def _node_id(node: str, nodes: dict[str, dict[str, Any]]) -> str | None:
    prefix = node.rpartition("/")[2]
    return next((nid for nid in nodes if nid.startswith(prefix)), None)
