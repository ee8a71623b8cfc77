"""Export a transformers causal LM (a model folder, or a GGUF file dequantised through
transformers) to ONNX with past key values, and build its int8 copy; both cached on disk.

The export and the int8 copy run in child processes (:mod:`smallfit.childjob`): torch and the
fp32 model never enter the process whose memory and time are measured, and the candidate's
worker needs only onnxruntime. Each is a cache entry (:mod:`smallfit.cache`, kind ``onnx``)
keyed by the content of what it is made from, built in a temporary folder renamed when
complete, so an interrupted export never looks finished.

Graph interface (the one optimum's ``text-generation-with-past`` exports have): inputs
``input_ids``, ``attention_mask`` (batch, past + new), ``position_ids`` and
``past_key_values.N.key|value`` (batch, kv heads, past, head dim), outputs ``logits`` and
``present.N.key|value``. The first step feeds a zero-length past.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smallfit import cache
from smallfit.childjob import child_builder
from smallfit.errors import MissingExtraError, SmallfitError
from smallfit.probes.cpu import Int8Path, int8_path

EXPORT_FORMAT = 1  # bump when the exported graph changes, so old caches are not reused
OPSET = 17
MARKER = "smallfit-export.json"  # the export's record: source, opset, verification
_VERIFY_MAX_ABS_LOGIT_DIFF = 1e-2


# -- the parent's side: find or build ---------------------------------------------------

def export_cached(source: Path) -> tuple[Path, float | None]:
    """The cached export folder of ``source`` (a GGUF file or transformers folder), exporting it
    first if needed (in a child process); also the seconds the export took in this call (None
    when it was cached)."""
    key = cache.key(inputs=[source], version=f"onnx-export-{EXPORT_FORMAT}", params={"opset": OPSET})
    return _timed_build(key, source.stem if source.is_file() else source.resolve().name, child_builder(
        "smallfit.backends.onnx_export:export_job", {"source": str(source)}, f"ONNX export of {source}"))


def _timed_build(key: str, name: str, builder: Callable[[Path], None]) -> tuple[Path, float | None]:
    took: list[float] = []

    def timed(out: Path) -> None:
        t0 = time.perf_counter()
        builder(out)
        took.append(time.perf_counter() - t0)

    return cache.build("onnx", key, name, timed), (took[0] if took else None)


INT8_RECIPE = ("onnxruntime.quantization.quantize_dynamic: QInt8 weights per channel, activations "
               "quantized at run time (uint8); MatMul with constant weights and Gather (embeddings)")


def int8_recipe(mode: Int8Path) -> str:
    """What the int8 graph is, with the weight range chosen for this CPU's kernels."""
    weights = "7-bit weights (reduce_range)" if mode.onnx_reduce_range else "full 8-bit weights"
    return f"{INT8_RECIPE}; {weights} for kernel path {mode.name}: {mode.reason}"


def int8_cached(fp32: Path, filename: str, per_channel: bool = True,
                mode: Int8Path | None = None) -> tuple[Path, float | None]:
    """The int8 dynamic-quantized copy of the ONNX model ``fp32`` (QInt8 weights, scales per
    output channel unless ``per_channel`` is false), as ``filename`` in its own cache entry, made
    first if needed (in a child process); also the seconds that took (None when cached).

    The weight range follows ``mode`` (this CPU's :func:`smallfit.probes.cpu.int8_path` by
    default, which refuses a CPU it has no rule for): 7 bits where u8s8 kernels would saturate.
    It is part of the cache key, so a cache shared between machines never serves the wrong one."""
    mode = mode or int8_path()
    params = {"per_channel": per_channel, "filename": filename, "reduce_range": mode.onnx_reduce_range}
    key = cache.key(inputs=onnx_files(fp32), version="onnx-int8-1", params=params)
    stem = fp32.parent.name if fp32.stem == "model" else fp32.stem
    suffix = "-int8-7bit" if mode.onnx_reduce_range else "-int8"
    folder, seconds = _timed_build(key, f"{stem}{suffix}", child_builder(
        "smallfit.backends.onnx_export:int8_job", {"source": str(fp32), **params}, f"int8 quantization of {fp32}"))
    return folder / filename, seconds


def int8_job(out: str, source: str, filename: str, per_channel: bool, reduce_range: bool = False) -> None:
    """Child side: ``quantize_dynamic`` of ``source`` into ``out/filename`` (and its external
    data file, for a model over protobuf's 2 GiB limit). Only MatMuls with a constant weight are
    quantized (``MatMulConstBOnly``, onnxruntime's default for dynamic quantization); weights
    in 7 bits when ``reduce_range``."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise MissingExtraError("onnxruntime", "onnx") from None
    large = onnx_files_bytes(Path(source)) > 2**31 - 2**24  # protobuf's 2 GiB limit, with room
    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process the graph goes to the root logger
    quantize_dynamic(source, Path(out) / filename, weight_type=QuantType.QInt8, per_channel=per_channel,
                     reduce_range=reduce_range, use_external_data_format=large,
                     extra_options={"MatMulConstBOnly": True})


def onnx_files(model: Path) -> list[Path]:
    """An .onnx file and its external-data file, if it has one under one of the usual names
    (``model.onnx_data``, ``model.onnx.data``, ``model.data``)."""
    extra = [model.with_name(n) for n in (model.name + "_data", model.name + ".data", model.stem + ".data")]
    return [model, *(f for f in extra if f.is_file())]


def onnx_files_bytes(model: Path) -> int:
    """Bytes on disk of an .onnx file and its external-data file (see :func:`onnx_files`)."""
    return sum(f.stat().st_size for f in onnx_files(model))


# -- which graph a candidate runs ----------------------------------------------------------

def locate_graph(path: Path, options: dict[str, Any], check_options: Callable[[dict[str, Any]], object]
                 ) -> tuple[Path, dict[str, Any]]:
    """The .onnx file to run and where it came from (exported now, from cache, or given); the
    options are checked before an export (an .onnx graph may be an encoder, with its own)."""
    if not path.exists():
        raise SmallfitError(f"model not found: {path}")
    if path.is_dir():
        for candidate in (path / "model.onnx", path / "onnx" / "model.onnx"):
            if candidate.is_file():
                return candidate, {"source": "onnx file"}
        if not any(path.glob("*.safetensors")):
            raise SmallfitError(f"{path} has no model.onnx and no safetensors weights to export")
    elif path.suffix.lower() == ".onnx":
        return path, {"source": "onnx file"}
    else:
        with open(path, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise SmallfitError(f"{path} is not an .onnx, GGUF file or model folder; the onnx backend runs "
                                    ".onnx models and exports GGUF files and transformers folders")
    check_options(options)
    folder, export_s = export_cached(path)
    meta = json.loads((folder / MARKER).read_text())
    kind = "gguf (dequantised by transformers)" if path.is_file() else "transformers folder"
    return folder / "model.onnx", {"source": f"exported from {kind} by torch.onnx", "export": str(folder),
                                   "export_s": export_s, "opset": meta.get("opset"),
                                   "export_max_abs_logit_diff": meta.get("verify_max_abs_logit_diff")}


def tokenizer_dir(model: Path) -> Path:
    """The folder of an .onnx graph's tokenizer: beside it, or one folder up (optimum's layout)."""
    for folder in (model.parent, model.parent.parent):
        if (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file():
            return folder
    raise SmallfitError(f"no tokenizer files (tokenizer.json) next to {model}; save the model's tokenizer "
                        "beside it (optimum-cli export onnx does)")


# -- the child's side: the export itself -------------------------------------------------

def _libraries() -> tuple[Any, Any, Any]:
    try:
        import numpy
        import torch
        import transformers
    except ImportError:
        raise MissingExtraError("torch/transformers", "hf") from None
    return numpy, torch, transformers


def export_job(out: str, source: str) -> None:
    """Child side (see :mod:`smallfit.childjob`): export ``source`` into the folder ``out``."""
    try:
        _export(Path(source), Path(out))
    except SmallfitError as exc:
        raise SmallfitError(f"ONNX export of {source} failed: {exc}") from None


def _export(source: Path, out: Path) -> None:
    np, torch, tf = _libraries()
    from smallfit.backends.hf_common import gguf_to_safetensors

    t0 = time.perf_counter()
    if source.is_file():
        with open(source, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise SmallfitError(f"{source} is neither a GGUF file nor a model folder")
        folder = gguf_to_safetensors(source)
    else:
        if not any(source.glob("*.safetensors")):
            raise SmallfitError(f"{source} has no safetensors weights to export (pickle checkpoints are not loaded)")
        folder = source
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        model = tf.AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, attn_implementation="eager", trust_remote_code=False, use_safetensors=True,
        ).eval()
    except (OSError, ValueError) as exc:
        raise SmallfitError(f"transformers could not load {folder}: {str(exc).splitlines()[0]}") from None
    wrapper = _flat_module(model, torch, tf)
    layers, heads, dim = wrapper.layers, wrapper.heads, wrapper.dim
    names_past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    names_present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total"},
        "position_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"},
        **{n: {0: "batch", 2: "past"} for n in names_past}, **{n: {0: "batch", 2: "total"} for n in names_present},
    }
    # traced with a non-empty past (2 rows, 3 new tokens on 4 cached) so no size is baked in
    batch, new, cached = 2, 3, 4
    args = (torch.randint(0, 100, (batch, new)), torch.ones(batch, cached + new, dtype=torch.long),
            torch.arange(cached, cached + new).expand(batch, new),
            *[torch.randn(batch, heads, cached, dim) for _ in names_past])
    with torch.no_grad():
        torch.onnx.export(wrapper, args, str(out / "model.onnx"), dynamo=False, opset_version=OPSET,
                          input_names=["input_ids", "attention_mask", "position_ids", *names_past],
                          output_names=["logits", *names_present], dynamic_axes=axes)
    export_s = time.perf_counter() - t0
    diff = _verify(out / "model.onnx", model, names_past, (heads, dim), torch, np)
    if not diff <= _VERIFY_MAX_ABS_LOGIT_DIFF:
        raise SmallfitError(f"the exported graph's logits differ from torch's by {diff:.3g} (over "
                            f"{_VERIFY_MAX_ABS_LOGIT_DIFF}); this architecture does not export correctly yet")
    tokenizer.save_pretrained(out)  # with its chat template
    model.config.save_pretrained(out)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)
    meta = {"source": str(source.resolve()), "weights": str(folder), "sha256": cache.content_sha256(source),
            "format": EXPORT_FORMAT, "opset": OPSET, "export_s": round(export_s, 3),
            "verify_max_abs_logit_diff": diff, "torch_version": torch.__version__,
            "transformers_version": tf.__version__}
    (out / MARKER).write_text(json.dumps(meta, indent=1) + "\n")


def _flat_module(model: Any, torch: Any, tf: Any) -> Any:
    """The exported module: forward(input_ids, attention_mask, position_ids, *flat past) ->
    (logits, *flat present), with the model's Cache object built inside (defined here so that
    torch is imported only in the export process)."""

    class Flat(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            cfg = model.config.get_text_config()
            self.layers = int(cfg.num_hidden_layers)
            self.heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
            self.dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)

        def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, *past: Any) -> Any:
            # a plain DynamicCache (full layers): sliding-window models still mask by window
            cache = tf.DynamicCache()
            for i in range(self.layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            result = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                past_key_values=cache, use_cache=True)
            present = []
            for layer in result.past_key_values.layers:
                present += [layer.keys, layer.values]
            return (result.logits, *present)

    return Flat()


def _verify(path: Path, model: Any, names_past: list[str], kv: tuple[int, int], torch: Any, np: Any) -> float:
    """Largest |logit| difference between onnxruntime and torch on 12 tokens: all at once from
    an empty past, and the last 4 on top of the first 8's past."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingExtraError("onnxruntime", "onnx") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ids = torch.randint(0, int(model.config.get_text_config().vocab_size), (1, 12))
    with torch.no_grad():
        want = model(ids).logits.numpy()
    empty = np.zeros((1, kv[0], 0, kv[1]), np.float32)

    def run(lo: int, hi: int, past: list[Any]) -> list[Any]:
        feed = {"input_ids": ids[:, lo:hi].numpy(), "attention_mask": np.ones((1, hi), np.int64),
                "position_ids": np.arange(lo, hi, dtype=np.int64)[None], **dict(zip(names_past, past, strict=True))}
        return list(session.run(None, feed))

    whole = run(0, 12, [empty] * len(names_past))
    first = run(0, 8, [empty] * len(names_past))
    rest = run(8, 12, first[1:])
    return float(max(np.abs(whole[0] - want).max(), np.abs(rest[0] - want[:, 8:]).max()))
