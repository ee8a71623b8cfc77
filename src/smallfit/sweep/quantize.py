"""Quantization sweep: variants of one source model, built once and cached.

**GGUF variants** (run by llama.cpp). The **reference** variant (``f32``) is the source at full
precision: a GGUF source dequantised exactly (every tensor read with ``gguf.GGUFReader``,
dequantised with ``gguf.quants.dequantize`` and written as F32 under the same names and
metadata, only ``general.file_type`` changing), or a transformers source (a folder or
``hf:OWNER/REPO`` of safetensors weights) converted by llama.cpp's own converter (see
:mod:`smallfit.sweep.convert`). The other types (``q8_0``, ``q4_k_m``, ``f16``...) are made from the
reference by llama.cpp's quantizer (``llama_model_quantize``), so they are what
``llama-quantize`` would make from it.

**Backend variants** run the same source on another backend: ``torch-f32`` and ``torch-int8``
(transformers; int8 is torch's dynamic quantization of the Linear layers) and ``onnx-f32`` and
``onnx-int8`` (ONNX Runtime; the backend exports and quantizes, and caches its files). An
encoder (a folder whose config is not a causal LM) has no GGUF variants: its reference is
``torch-f32``.

Each GGUF variant is a cache entry (:mod:`smallfit.cache`, kind ``quant``) holding
``<stem>.<variant>.gguf``, keyed by the source's content, the variant and (for what llama.cpp
makes) the llama-cpp-python version. Each is built in its own process through
:mod:`smallfit.childjob`: a slow or crashing conversion stays out of the candidate's measured
process and cannot take the run down.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smallfit import cache
from smallfit.childjob import child_builder
from smallfit.errors import SmallfitError

REFERENCE = "f32"

# variant name -> llama.cpp's llama_ftype (the constant's name in llama_cpp, without LLAMA_FTYPE_)
FTYPES: dict[str, str] = {
    "f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16",
    "q8_0": "MOSTLY_Q8_0", "q6_k": "MOSTLY_Q6_K",
    "q5_0": "MOSTLY_Q5_0", "q5_1": "MOSTLY_Q5_1", "q5_k_s": "MOSTLY_Q5_K_S", "q5_k_m": "MOSTLY_Q5_K_M",
    "q4_0": "MOSTLY_Q4_0", "q4_1": "MOSTLY_Q4_1", "q4_k_s": "MOSTLY_Q4_K_S", "q4_k_m": "MOSTLY_Q4_K_M",
    "q3_k_s": "MOSTLY_Q3_K_S", "q3_k_m": "MOSTLY_Q3_K_M", "q3_k_l": "MOSTLY_Q3_K_L",
    "q2_k": "MOSTLY_Q2_K", "q2_k_s": "MOSTLY_Q2_K_S", "iq4_nl": "MOSTLY_IQ4_NL", "iq4_xs": "MOSTLY_IQ4_XS",
}


def parse_types(text: str | list[str]) -> list[str]:
    """``"q8_0, Q4_K_M"`` -> ``["q8_0", "q4_k_m"]``: lower-cased, blanks and repeats dropped.
    Unknown names are kept: each fails as its own variant (see :func:`ftype_name`)."""
    parts = text.split(",") if isinstance(text, str) else [p for t in text for p in t.split(",")]
    out: list[str] = []
    for part in parts:
        name = part.strip().lower()
        if name and name not in out:
            out.append(name)
    return out


TORCH_REFERENCE = "torch-f32"


def is_gguf_variant(variant: str) -> bool:
    """GGUF variants (and unknown names, which fail as GGUF types) are built by llama.cpp; the
    others are run by the backend that declares them (see BackendSpec.variants)."""
    from smallfit.backends.registry import variant_backend

    return variant_backend(variant) is None


def sweep_variants(types: list[str], reference: str = REFERENCE) -> list[str]:
    """The sweep's variants in run order: the reference first, then the requested types."""
    return [reference, *(t for t in types if t != reference)]


def reference_for(source: Path) -> str:
    """The reference variant of a source: ``f32`` (GGUF), or ``torch-f32`` for an encoder folder."""
    from smallfit.models import folder_kind

    return TORCH_REFERENCE if source.is_dir() and folder_kind(source) == "encoder" else REFERENCE


def sweep_settings(source: Path, variant: str) -> dict[str, Any]:
    """What a variant's worker needs for its fidelity figures: its reference and where it is."""
    from smallfit.backends.registry import default_backend, variant_backend

    reference = reference_for(source)
    found = variant_backend(reference)
    if found is None:
        ref_backend, ref_path, ref_options = default_backend("gguf").name, variant_path(source, REFERENCE), {}
    else:
        ref_backend, ref_path, ref_options = found[0].name, source, dict(found[1])
    return {"variant": variant, "reference": reference, "reference_path": str(ref_path),
            "reference_backend": ref_backend, "reference_options": ref_options}


def ftype_name(variant: str) -> str:
    """The llama_cpp constant for a variant (``q8_0`` -> ``LLAMA_FTYPE_MOSTLY_Q8_0``), or a
    one-line error listing the known types."""
    if variant not in FTYPES:
        raise SmallfitError(f"unknown quantization type {variant!r}: choose from {', '.join(FTYPES)}")
    return "LLAMA_FTYPE_" + FTYPES[variant]


VARIANT_FORMAT = "gguf-variant-1"  # bump when a variant's file changes for the same inputs


def _stem(source: Path) -> str:
    return source.stem if source.is_file() else source.name


def _variant_key(source: Path, variant: str) -> str:
    params = {"variant": variant}
    if variant != REFERENCE or source.is_dir():  # llama.cpp's quantizer or converter made it
        from smallfit.sweep.convert import llama_cpp_python_version

        params["llama_cpp_python"] = llama_cpp_python_version()
    return cache.key(inputs=[source], version=VARIANT_FORMAT, params=params)


def variant_path(source: Path, variant: str) -> Path:
    """Where a variant of ``source`` is cached (it may not be built yet)."""
    name = f"{_stem(source)}.{variant}"
    return cache.entry("quant", _variant_key(source, variant), name) / f"{name}.gguf"


def _check_source(source: Path) -> None:
    if source.is_dir():
        return  # a transformers folder: the converter checks it
    with open(source, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise SmallfitError(f"--quantize needs a GGUF file or a transformers folder; {source} is neither "
                                "(pass a .gguf file, a model folder or a bundled alias)")


def build_reference(source: Path, target: Path) -> None:
    """Write ``source`` dequantised to F32 at ``target``: same metadata, tensor names and order."""
    try:
        import gguf
        import numpy as np
    except ImportError:
        raise SmallfitError("--quantize needs the gguf package: pip install 'smallfit[quantize]'") from None
    reader = gguf.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(target, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        vtype = gguf.GGUFValueType(field.types[0])
        sub = gguf.GGUFValueType(field.types[-1]) if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    shapes = []
    for t in reader.tensors:
        # numpy order: the reversed ggml dimensions (ne0 is the innermost)
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))
        shapes.append(shape)
        writer.add_tensor_info(t.name, shape, np.dtype(np.float32), int(np.prod(shape)) * 4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t, shape in zip(reader.tensors, shapes, strict=True):
        data = gguf.quants.dequantize(t.data, t.tensor_type)  # F32 tensors come back as they are
        writer.write_tensor_data(np.ascontiguousarray(data, dtype=np.float32).reshape(shape))
    writer.close()


def quantize_file(source: Path, target: Path, variant: str, threads: int) -> None:
    """``llama_model_quantize`` from ``source`` (the reference) to ``variant`` at ``target``."""
    const = ftype_name(variant)
    try:
        import llama_cpp
    except ImportError:
        raise SmallfitError("--quantize needs llama-cpp-python: pip install 'smallfit[llamacpp]'") from None
    ftype = getattr(llama_cpp, const, None)
    if ftype is None:
        raise SmallfitError(f"this llama-cpp-python ({llama_cpp.__version__}) has no {const}; "
                            "choose another type or upgrade llama-cpp-python")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if rc != 0 or not target.is_file():
        raise SmallfitError(f"llama.cpp could not quantize to {variant} (code {rc}); see its message above, "
                            "or choose another type")


def build_job(out: str, source: str, variant: str, file: str, reference: str = "", threads: int = 1) -> None:
    """Child side (see :mod:`smallfit.childjob`): write ``variant`` of ``source`` as ``out/file``,
    the reference by dequantising the GGUF source, the others by quantizing ``reference``."""
    target = Path(out) / file
    if variant == REFERENCE:
        build_reference(Path(source), target)
    else:
        quantize_file(Path(reference), target, variant, threads)


def _build(source: Path, variant: str, threads: int) -> Path:
    """The cached file of ``variant`` (for a quantized one, the reference must be built)."""
    name = f"{_stem(source)}.{variant}"
    builder: Callable[[Path], None]
    if variant == REFERENCE and source.is_dir():
        from smallfit.sweep.convert import hf_to_gguf

        def convert(out: Path) -> None:
            hf_to_gguf(source, out / f"{name}.gguf")  # llama.cpp's converter, in its own process

        builder = convert
    else:
        reference = str(variant_path(source, REFERENCE)) if variant != REFERENCE else ""
        builder = child_builder("smallfit.sweep.quantize:build_job", {
            "source": str(source), "variant": variant, "file": f"{name}.gguf", "reference": reference,
            "threads": threads}, f"building the {variant} variant")
    return cache.build("quant", _variant_key(source, variant), name, builder) / f"{name}.gguf"


def prepare_variant(source: Path, variant: str, threads: int) -> Path:
    """The cached file of ``variant``, built if missing (the reference first), each in a child
    process (see the module docstring); a failure is one line."""
    ftype_name(variant)  # an unknown type is this variant's error, without starting a process
    target = variant_path(source, variant)
    if target.is_file():
        return target
    _check_source(source)
    reference = _build(source, REFERENCE, threads)
    return reference if variant == REFERENCE else _build(source, variant, threads)
