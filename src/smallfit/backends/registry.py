"""The backend registry: one :class:`BackendSpec` per backend, found through entry points.

Every backend, built-in or a plugin's, is registered the same way: an entry point in the
``smallfit.backends`` group whose value is a :class:`BackendSpec` (``module:ATTRIBUTE``). A
plugin package declares, in its ``pyproject.toml``::

    [project.entry-points."smallfit.backends"]
    mine = "my_package.backend:BACKEND"

The spec says everything the rest of smallfit needs to know about a backend without loading a
model or importing its library: its name and aliases, the model formats it runs (and those it is
the default for), whether it serves models from another process, whether a model needs a
preparation build before it loads, and how to check a model file before any work starts. The
runner, the model references and the worker ask the registry; none of them names a backend.

Model formats are plain names: ``gguf``, ``onnx`` (a ``.onnx`` file, or a folder holding
``model.onnx`` and no safetensors), ``transformers`` (a model folder or hub repository),
``http`` (an OpenAI-compatible server's URL), or any file suffix a plugin declares (a file
``x.toy`` has the format ``toy``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from smallfit.errors import SmallfitError

GROUP = "smallfit.backends"


@dataclass(frozen=True)
class BackendSpec:
    """A backend's declaration. Only ``name`` and ``load`` are required."""

    name: str
    """The name used in ``MODEL@NAME``, in specs and in stored results."""
    load: Callable[..., Any]
    """``load(config: BackendConfig) -> Backend``: imports the backend's library and loads the model."""
    description: str = ""
    """One line for ``smallfit models``."""
    aliases: tuple[str, ...] = ()
    """Other names accepted after ``@`` (``hf`` for transformers)."""
    formats: tuple[str, ...] = ()
    """Model formats it can run (see the module docstring)."""
    default_for: tuple[str, ...] = ()
    """Formats it runs when the reference gives no ``@BACKEND``."""
    serves: bool = False
    """The model runs in another process (a server): no local file, and this process's memory and
    CPU time are not the model's."""
    needs_preparing: Callable[[Path, Mapping[str, Any]], bool] | None = None
    """``needs_preparing(model_path, options)``: true when loading would build files (an export),
    which the runner then builds in a process of its own before the candidate's worker starts."""
    check_model: Callable[[str, Mapping[str, Any]], None] | None = None
    """``check_model(location, options)``: a cheap check before any model loads (a file's header,
    a server's model list); raises :class:`SmallfitError` naming the problem and the fix."""
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Quantization-sweep variants it runs: variant name -> candidate options (``torch-int8``)."""
    extra: str | None = None
    """The pip extra that installs its library (``smallfit[EXTRA]``)."""
    example: Callable[[Path], str] | None = None
    """``example(folder)``: the location of a small model this backend runs (written into
    ``folder`` or shipped in a package), on which the contract test (smallfit.testing) runs it."""
    distribution: str = ""
    """The package that registered it (filled in by the registry)."""


@functools.cache
def registry() -> dict[str, BackendSpec]:
    """Every registered backend by name; a broken or clashing plugin is a one-line error."""
    found: dict[str, BackendSpec] = {}
    eps = sorted(entry_points(group=GROUP), key=lambda ep: (_dist(ep) != "smallfit", ep.name))
    if not any(_dist(ep) == "smallfit" for ep in eps):
        raise SmallfitError("smallfit's built-in backends are not registered: smallfit is not installed as a "
                            "package; install it with: pip install -e .")
    for ep in eps:
        dist = _dist(ep)
        who = f"backend plugin {ep.name!r} ({dist or ep.value})"
        try:
            spec = ep.load()
        except Exception as exc:  # noqa: BLE001 - any failure of a plugin's import is the plugin's
            raise SmallfitError(f"{who} failed to import: {type(exc).__name__}: {exc}; fix or uninstall "
                                f"{dist or 'it'}") from None
        if not isinstance(spec, BackendSpec):
            raise SmallfitError(f"{who} does not point to a BackendSpec ({ep.value} is a {type(spec).__name__}); "
                                "see smallfit.backends.registry")
        if spec.name != ep.name:
            raise SmallfitError(f"{who} declares the name {spec.name!r}; the entry point and the spec must agree")
        taken = _names(found)
        clash = next((n for n in (spec.name, *spec.aliases) if n in taken), None)
        if clash is not None:
            raise SmallfitError(f"{who} declares the name {clash!r}, which {taken[clash]!r} already has; "
                                "rename the plugin's backend")
        found[spec.name] = replace(spec, distribution=dist)
    return found


def _dist(ep: Any) -> str:
    dist = getattr(ep, "dist", None)
    return str(dist.name) if dist is not None else ""


def _names(found: Mapping[str, BackendSpec]) -> dict[str, str]:
    return {n: s.name for s in found.values() for n in (s.name, *s.aliases)}


def get_backend(name: str) -> BackendSpec:
    """The backend registered as ``name`` or with ``name`` as an alias."""
    specs = registry()
    canonical = _names(specs).get(name)
    if canonical is None:
        raise SmallfitError(f"unknown backend {name!r}: choose one of {', '.join(sorted(specs))}")
    return specs[canonical]


def default_backend(fmt: str) -> BackendSpec:
    """The backend that runs models of format ``fmt`` when none is named."""
    for spec in registry().values():
        if fmt in spec.default_for:
            return spec
    runs = [s.name for s in registry().values() if fmt in s.formats]
    if runs:
        return get_backend(runs[0])
    raise SmallfitError(f"no installed backend runs {fmt!r} models: choose one with MODEL@BACKEND "
                        f"({', '.join(sorted(registry()))}) or install the plugin that reads them")


def variant_backend(variant: str) -> tuple[BackendSpec, Mapping[str, Any]] | None:
    """The backend that runs a quantization-sweep variant such as ``torch-int8``, and its options."""
    for spec in registry().values():
        if variant in spec.variants:
            return spec, spec.variants[variant]
    return None


def known_suffixes() -> set[str]:
    """File suffixes some backend reads (``.gguf``, ``.onnx``, a plugin's)."""
    fixed = {"transformers", "http"}
    return {f".{f}" for s in registry().values() for f in s.formats if f not in fixed}
