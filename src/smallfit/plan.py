"""From a RunSpec to what will run: plan (pure), preflight (cheap checks), resolve (the one step
that builds, assembles or downloads).

* :func:`plan` expands a spec into :class:`PlannedCandidate` rows (a quantization sweep's
  variants included) without touching a model file;
* :func:`preflight` checks every candidate and task before any model loads and returns one line
  per problem: a missing or damaged model file (GGUF header, truncation), a hub file neither
  cached nor reachable, a server that does not answer, an unknown quantization type, a task file
  that does not parse or whose template does not format;
* :func:`resolve` is the explicit preparation step: it locates or assembles a bundled model,
  downloads a hub file, builds a sweep variant or an export (each in a process of its own) and
  returns the :class:`~smallfit.contract.ResolvedModel` that is stored with the run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from smallfit.backends.registry import default_backend, get_backend, variant_backend
from smallfit.contract import ResolvedModel, SweepSettings
from smallfit.errors import SmallfitError
from smallfit.models import (
    ALIASES,
    ModelRef,
    alias_installed,
    parse_model_ref,
    resolve_model,
    weights_sha256,
    weights_size,
)
from smallfit.spec import CandidateSpec, RunSpec


@dataclass(frozen=True)
class PlannedCandidate:
    """One candidate as planned: its reference parsed, not yet resolved. Stored with the run, so
    a resumed run does not plan again."""

    name: str
    model: str
    """The reference as written (without a sweep's backend choice)."""
    backend: str
    options: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None
    context_size: int = 2048
    batch_size: int = 512
    variant: str | None = None
    """A quantization sweep's variant (``f32`` is the reference of a GGUF sweep)."""
    hardware: str | None = None
    """The hardware class (a Ray custom resource) its jobs must run on, with ``--executor ray``."""
    hardware_id: str | None = None
    """The hardware fingerprint class (:func:`smallfit.jobs.hardware_id`) its jobs run on: set when
    a cluster has several, each candidate then being one per class (``NAME@CLASS``)."""

    def ref(self) -> ModelRef:
        """The parsed reference on this candidate's backend."""
        parsed = parse_model_ref(self.model)
        return ModelRef(parsed.raw, self.name, parsed.kind, parsed.location, self.backend, parsed.format)

    def to_json(self) -> str:
        """For the store."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PlannedCandidate:
        """Back from the store."""
        return cls(**json.loads(text))


def plan(spec: RunSpec) -> tuple[list[PlannedCandidate], list[str]]:
    """The candidates to run, and one line per candidate that cannot even be planned."""
    planned: list[PlannedCandidate] = []
    problems: list[str] = []
    for cand in spec.candidates:
        try:
            planned += _expand(cand, spec.quantize) if spec.quantize else [_planned(cand, cand.ref())]
        except SmallfitError as exc:
            problems.append(f"candidate {cand.name or cand.model}: {exc}")
    names = [p.name for p in planned]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"candidate names must be unique, repeated: {', '.join(dupes)} (name them: NAME=MODEL, "
                        "or name = \"...\" in the spec)")
    return planned, problems


def _planned(cand: CandidateSpec, ref: ModelRef, **changes: Any) -> PlannedCandidate:
    base = PlannedCandidate(ref.name, cand.model, ref.backend, dict(cand.options), cand.threads, cand.context_size,
                            cand.batch_size, hardware=cand.hardware)
    return PlannedCandidate(**{**asdict(base), **changes})


def _expand(cand: CandidateSpec, types: list[str]) -> list[PlannedCandidate]:
    """A sweep's variants of one candidate, named ``NAME:VARIANT``, its reference first."""
    from smallfit.sweep.quantize import REFERENCE, TORCH_REFERENCE, sweep_variants

    ref = cand.ref()
    if get_backend(ref.backend).serves:
        raise SmallfitError(f"--quantize makes variants of local models; {ref.raw!r} is served over HTTP")
    if ref.format not in ("gguf", "transformers"):
        raise SmallfitError(f"--quantize starts from the source model (a GGUF file or a transformers folder), "
                            f"not a {ref.format} model: {ref.raw!r}")
    reference = TORCH_REFERENCE if ref.format == "transformers" and _is_encoder(ref) else REFERENCE
    out = []
    for v in sweep_variants(types, reference):
        found = variant_backend(v)
        if found is None:  # a GGUF type: built by llama.cpp's quantizer, run by the GGUF default backend
            backend, options = default_backend("gguf").name, dict(cand.options)
        else:
            backend, options = found[0].name, {**cand.options, **found[1]}
        out.append(_planned(cand, ref, name=f"{ref.name}:{v}", backend=backend, options=options, variant=v))
    return out


def _is_encoder(ref: ModelRef) -> bool:
    """A local transformers folder that holds an encoder (read from its config files only)."""
    from smallfit.models import folder_kind

    if ref.kind == "folder":
        return folder_kind(Path(ref.location)) == "encoder"
    if ref.kind == "alias":  # a bundled folder: locating it builds nothing
        return folder_kind(ALIASES[ref.location].locate()) == "encoder"
    return False


def preflight(planned: list[PlannedCandidate], quantize: list[str]) -> dict[str, list[str]]:
    """Problems per candidate name (empty when it can run), found before any model loads."""
    from smallfit.sweep.quantize import FTYPES

    out: dict[str, list[str]] = {}
    unknown = [t for t in quantize if t not in FTYPES and variant_backend(t) is None]
    for p in planned:
        problems = [f"unknown quantization type {t!r}: choose from {', '.join([*FTYPES, *_backend_variants()])}"
                    for t in unknown if p.variant == t]
        if not problems:
            try:
                check_candidate(p)
            except SmallfitError as exc:
                problems.append(str(exc))
        out[p.name] = problems
    return out


def _backend_variants() -> list[str]:
    from smallfit.backends.registry import registry

    return [v for s in registry().values() for v in s.variants]


def check_candidate(p: PlannedCandidate) -> None:
    """Cheap checks before any model loads: a bundled model's packages, a hub file's presence,
    the backend's own check of a file or server."""
    ref = p.ref()
    backend = get_backend(p.backend)
    check = backend.check_model
    if ref.kind == "alias":
        alias_installed(ref.location)
        return
    if ref.kind in ("hub", "hub-repo"):
        _check_hub(ref)
        return
    if check is not None:
        check(ref.location, p.options)


def _check_hub(ref: ModelRef) -> None:
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:
        raise SmallfitError("hub references need huggingface_hub: pip install 'smallfit[llamacpp]'") from None
    owner, repo, *rest = ref.location.split("/", 2)
    filename = rest[0] if rest else "config.json"
    if isinstance(try_to_load_from_cache(f"{owner}/{repo}", filename), str):
        return
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE"):
        raise SmallfitError(f"hf:{ref.location} is not in the local hub cache and the hub is offline "
                            "(HF_HUB_OFFLINE); download it where the hub is reachable and pass its local path")
    import socket
    from urllib.parse import urlsplit

    host = urlsplit(constants.ENDPOINT).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        raise SmallfitError(f"hf:{ref.location} is not in the local hub cache and the hub cannot be reached; "
                            "download it where the hub is reachable and pass its local path") from None


OnStep = Callable[[str], None]


def resolve(p: PlannedCandidate, threads: int, on_step: OnStep) -> tuple[ResolvedModel, SweepSettings | None]:
    """Materialise a candidate's model (the preparation step): what will run, and a sweep
    variant's reference settings."""
    ref = p.ref()
    backend = get_backend(p.backend)
    package = _package(backend.distribution)
    if backend.serves:
        return ResolvedModel(p.name, p.model, p.backend, ref.kind, ref.format, ref.location, serves=True,
                             backend_package=package), None
    if ref.kind in ("alias", "hub", "hub-repo"):
        on_step(f"locating {ref.raw}")
    path = resolve_model(ref, p.options)
    source, sweep = path, None
    if p.variant is not None:
        path, sweep = _variant(path, p.variant, threads, on_step)
    size = weights_size(path)
    on_step("hashing its weights")
    digest = weights_sha256(path)
    return ResolvedModel(p.name, p.model, p.backend, ref.kind, ref.format, str(path), digest, size, p.variant,
                         str(source) if p.variant else None, backend_package=package), sweep


def _package(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{distribution} {version(distribution)}" if distribution else None
    except PackageNotFoundError:
        return distribution


def _variant(source: Path, variant: str, threads: int, on_step: OnStep) -> tuple[Path, SweepSettings]:
    from smallfit.sweep import quantize

    settings = quantize.sweep_settings(source, variant)
    sweep = SweepSettings(variant=variant, reference=settings["reference"],
                          reference_backend=settings["reference_backend"], reference_path=settings["reference_path"],
                          reference_options=dict(settings["reference_options"]), source=str(source))
    if variant_backend(variant) is not None:
        return source, sweep
    on_step(f"building the {variant} variant")
    return quantize.prepare_variant(source, variant, threads), sweep


def prepare_build(resolved: ResolvedModel, options: dict[str, Any], threads: int, on_step: OnStep) -> float | None:
    """Run the backend's preparation build (an ONNX export) in its own process; its seconds."""
    from smallfit.prepare import prepare

    spec = get_backend(resolved.backend)
    if spec.needs_preparing is None or resolved.serves or not spec.needs_preparing(Path(resolved.location), options):
        return None
    on_step(f"building what {spec.name} loads (an export), in its own process")
    return prepare(resolved.backend, Path(resolved.location), threads, options)
