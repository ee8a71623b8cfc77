"""transformers weights -> an F32 GGUF, with llama.cpp's own converter.

A quantization sweep of a transformers model (a folder or ``hf:OWNER/REPO``) needs a
full-precision GGUF to quantize from. llama.cpp's ``convert_hf_to_gguf.py`` knows every
architecture llama.cpp runs; smallfit uses the copy in the source distribution of the
llama-cpp-python it runs (so converter and runtime agree), found in this order:

1. ``$SMALLFIT_LLAMA_CPP``: a llama.cpp checkout (the folder holding ``convert_hf_to_gguf.py``);
2. a cache entry (:mod:`smallfit.cache`, kind ``llama.cpp-convert``) keyed by that version,
   extracted earlier;
3. the sdist ``llama-cpp-python==<installed version>``, fetched from the package index with pip
   (about 75 MB, once) and the converter's files extracted into (2).

Safety: the converter runs in its own process (:func:`convert_job`, through
:mod:`smallfit.childjob`), which makes transformers refuse ``trust_remote_code`` (some converter
paths ask for it) unless the candidate allows it, and the folder must hold safetensors weights
(the converter would otherwise read pickle files).
"""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from smallfit import cache
from smallfit.childjob import run_child
from smallfit.errors import SmallfitError

SCRIPT = "convert_hf_to_gguf.py"
_PARTS = (SCRIPT, "conversion/", "gguf-py/")  # what the converter imports, relative to llama.cpp/


def llama_cpp_python_version() -> str:
    """The installed llama-cpp-python's version, or a one-line error naming the extra."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        raise SmallfitError("converting to GGUF needs llama-cpp-python: pip install 'smallfit[quantize]'") from None


def converter_dir() -> Path:
    """The folder holding ``convert_hf_to_gguf.py`` (see the module docstring), fetched if needed."""
    env = os.environ.get("SMALLFIT_LLAMA_CPP")
    if env:
        folder = Path(env).expanduser()
        if not (folder / SCRIPT).is_file():
            raise SmallfitError(f"SMALLFIT_LLAMA_CPP={env} has no {SCRIPT}: point it at a llama.cpp checkout")
        return folder
    ver = llama_cpp_python_version()
    key = cache.key(version="llama-cpp-convert-1", params={"llama_cpp_python": ver})
    return cache.build("llama.cpp-convert", key, f"llama-cpp-python-{ver}", lambda out: _fetch_converter(ver, out))


def _fetch_converter(ver: str, out: Path) -> None:
    """Download llama-cpp-python's sdist with pip and extract the converter's files into ``out``."""
    download = out / ".download"
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                           "--dest", str(download), f"llama-cpp-python=={ver}"], capture_output=True, text=True,
                          check=False)
    archives = list(download.glob("llama_cpp_python-*.tar.gz"))
    if proc.returncode != 0 or not archives:
        why = (proc.stderr.strip().splitlines() or ["no archive"])[-1][:200]
        raise SmallfitError(f"could not fetch llama.cpp's converter (the llama-cpp-python=={ver} source "
                            f"distribution): {why}; set SMALLFIT_LLAMA_CPP to a llama.cpp checkout instead")
    with tarfile.open(archives[0]) as tar:
        for member in tar.getmembers():
            _, _, rel = member.name.partition("/vendor/llama.cpp/")
            if rel and rel.startswith(_PARTS) and (member.isfile() or member.isdir()):
                member.name = rel
                tar.extract(member, out, filter="data")
    shutil.rmtree(download)
    if not (out / SCRIPT).is_file():
        raise SmallfitError(f"llama-cpp-python=={ver}'s source distribution has no {SCRIPT}; "
                            "set SMALLFIT_LLAMA_CPP to a llama.cpp checkout")


def is_causal_lm(folder: Path) -> bool:
    """Whether a transformers folder holds a causal LM (see :func:`smallfit.models.folder_kind`)."""
    from smallfit.models import folder_kind

    return folder_kind(folder) == "causal-lm"


def hf_to_gguf(folder: Path, target: Path, allow_remote_code: bool = False) -> None:
    """Convert a transformers folder to an F32 GGUF at ``target`` (in a cache entry's temporary
    folder), in a child process; one-line errors for a folder that cannot be converted."""
    if not (folder / "config.json").is_file():
        raise SmallfitError(f"{folder} is not a transformers model folder (no config.json)")
    if not any(folder.glob("*.safetensors")):
        raise SmallfitError(f"{folder} has no safetensors weights; smallfit does not convert pickle checkpoints")
    if not is_causal_lm(folder):
        raise SmallfitError(f"{folder.name} is not a causal LM: GGUF variants are for causal LMs "
                            "(sweep an encoder with torch-int8, onnx-f32, onnx-int8)")
    script = converter_dir() / SCRIPT
    run_child("smallfit.sweep.convert:convert_job", {"script": str(script), "folder": str(folder),
                                                     "outfile": str(target),
                                               "allow_remote_code": allow_remote_code},
              f"llama.cpp's converter on {folder.name}")
    if not target.is_file():
        raise SmallfitError(f"llama.cpp's converter wrote no file for {folder.name}")


def _refuse_remote_code() -> None:
    """Make every transformers ``from_pretrained`` run with ``trust_remote_code=False``."""
    import transformers

    for name in ("AutoTokenizer", "AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoProcessor"):
        cls = getattr(transformers, name, None)
        if cls is None:
            continue
        original = cls.from_pretrained.__func__

        def safe(klass: type, /, *args: object, _original: object = original, **kwargs: object) -> object:
            kwargs["trust_remote_code"] = False
            return _original(klass, *args, **kwargs)  # type: ignore[operator]

        cls.from_pretrained = classmethod(safe)


def convert_job(script: str, folder: str, outfile: str, allow_remote_code: bool = False) -> None:
    """Child side (see :mod:`smallfit.childjob`): run llama.cpp's converter on ``folder`` to an
    F32 GGUF ``outfile``, repository code refused unless allowed. The converter imports its own
    ``gguf`` package (not the installed one), so this process is used for nothing else."""
    if not allow_remote_code:
        _refuse_remote_code()
    sys.path.insert(0, str(Path(script).parent / "gguf-py"))
    sys.path.insert(0, str(Path(script).parent))
    sys.argv = [script, folder, "--outtype", "f32", "--outfile", outfile]
    runpy.run_path(script, run_name="__main__")
