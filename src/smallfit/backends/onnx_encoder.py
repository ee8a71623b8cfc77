"""ONNX Runtime backend for encoders (extra ``onnx``): sentence embeddings from an ``.onnx`` graph.

The model is one of:

* an ``.onnx`` file, or a folder holding ``model.onnx`` (or exactly one ``.onnx`` file): its
  inputs are read from the graph (``input_ids``, ``attention_mask``, optional
  ``token_type_ids``) and its token vectors (``last_hidden_state``) are pooled here;
* a transformers encoder folder (safetensors): exported once to ONNX fp32 with
  ``torch.onnx.export`` (needs the ``hf`` extra), in a child process, into a cache entry keyed
  by the folder's content (``cache_dir()/onnx/<folder>-<key, 16 hex>/``, see
  :mod:`smallfit.cache`) with its tokenizer and pooling files, so the cached folder is
  self-contained.

``options = {quantize = "int8"}`` runs an int8 copy made by
``onnxruntime.quantization.quantize_dynamic`` (int8 weights, activations quantized at run time:
int8 matrix products), a cache entry of its own keyed by the fp32 file's content (see
:func:`smallfit.backends.onnx_export.int8_cached`). Weight scales are per output channel
unless ``per_channel = false``: on all-MiniLM-L6-v2 that keeps sentence vectors at a mean cosine
of 0.993 to float32 (examples/tickets.jsonl), against about 0.97 with one scale per tensor.

The tokenizer comes from the folder of the ``.onnx`` file (``tokenizer.json``, else a
``tokenizer_config.json`` through transformers) or from ``options = {tokenizer = "<folder>"}``.
Pooling follows a ``modules.json`` next to the model, else next to the tokenizer, else it is the
mean over tokens (see :mod:`smallfit.backends.encoder`). torch is never imported unless a folder
has to be exported.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from smallfit import cache
from smallfit.backends.base import BackendConfig, Capabilities
from smallfit.backends.encoder import Pooling, is_encoder_folder, max_length, pool, read_pooling
from smallfit.backends.onnx_export import int8_cached
from smallfit.childjob import child_builder
from smallfit.errors import MissingExtraError, SmallfitError
from smallfit.probes.cpu import Int8Path, int8_path

OPSET = 17
_FEEDS = ("input_ids", "attention_mask", "token_type_ids")
_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".h5", ".msgpack", ".gguf", ".ot")


# -- which models are encoders ------------------------------------------------------------------

def onnx_in(folder: Path) -> Path | None:
    """The ``.onnx`` file a folder stands for: ``model.onnx``, else its only ``.onnx`` file;
    None when it has none; an error when it has several and none is ``model.onnx``."""
    if (folder / "model.onnx").is_file():
        return folder / "model.onnx"
    found = sorted(folder.glob("*.onnx"))
    if len(found) > 1:
        raise SmallfitError(f"{folder} holds several .onnx files ({', '.join(p.name for p in found)}): "
                            "pass the one to run")
    return found[0] if found else None


def onnx_outputs(path: Path) -> list[str]:
    """The names of an ONNX graph's outputs (read without its weights where onnx is installed)."""
    try:
        import onnx
    except ImportError:
        return [o.name for o in _session(path, None).get_outputs()]
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf and onnx raise several types for a bad file
        raise SmallfitError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    return [o.name for o in model.graph.output]


def is_encoder_model(path: Path) -> bool:
    """Whether ``load_onnx`` should run ``path`` as an encoder: an ``.onnx`` file (or a folder
    holding one, see :func:`onnx_in`) with no output named ``logits``, or a transformers folder
    without ``.onnx`` files that is an encoder (``modules.json``, or ``config.json``
    architectures without a generative head). GGUF files are never encoders here."""
    if path.is_dir():
        found = onnx_in(path)
        return "logits" not in onnx_outputs(found) if found else is_encoder_folder(path)
    if path.suffix.lower() == ".onnx":
        return "logits" not in onnx_outputs(path)
    return False


# -- export and quantization (cached) -----------------------------------------------------------

def _copy_companions(source: Path, dest: Path) -> None:
    """The tokenizer, config and sentence-transformers module files, without the weights."""
    for item in source.iterdir():
        if item.is_file() and not item.name.endswith(_WEIGHTS):
            shutil.copy2(item, dest / item.name)
    modules = source / "modules.json"
    if modules.is_file():
        for module in json.loads(modules.read_text(encoding="utf-8")):
            sub = source / str(module.get("path", ""))
            if module.get("path") and sub.is_dir():
                shutil.copytree(sub, dest / sub.name, dirs_exist_ok=True)


def export_onnx(folder: Path) -> Path:
    """Export a transformers encoder folder to ONNX fp32 once, in a child process; the cached
    folder (``model.onnx`` plus tokenizer and pooling files). Dynamic batch and sequence axes,
    opset 17."""
    if not any(folder.glob("*.safetensors")):
        raise SmallfitError(f"{folder} has no safetensors weights to export to ONNX")
    key = cache.key(inputs=[folder], version="onnx-encoder-export-1", params={"opset": OPSET})
    return cache.build("onnx", key, folder.name, child_builder(
        "smallfit.backends.onnx_encoder:export_job", {"folder": str(folder)}, f"ONNX export of {folder}"))


def export_job(out: str, folder: str) -> None:
    """Child side (see :mod:`smallfit.childjob`): export the encoder ``folder`` into ``out``."""
    from smallfit.backends.hf_common import import_torch_transformers

    torch, tf = import_torch_transformers()
    source, tmp = Path(folder), Path(out)
    try:
        model = tf.AutoModel.from_pretrained(source, dtype=torch.float32, use_safetensors=True,
                                             trust_remote_code=False).eval()
        enc = tf.AutoTokenizer.from_pretrained(source)(["an example sentence", "two"], padding=True,
                                                        return_tensors="pt")
        names = [k for k in _FEEDS if k in enc]
        # Traced through a wrapper with positional inputs: BertModel's own forward, traced
        # directly, gets "multiple values for argument 'use_cache'".
        wrapper = _last_hidden(torch, model, names).eval()
        axes = {k: {0: "batch", 1: "sequence"} for k in [*names, "last_hidden_state"]}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
            torch.onnx.export(wrapper, tuple(enc[k] for k in names), str(tmp / "model.onnx"), input_names=names,
                              output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=OPSET,
                              dynamo=False)
    except (OSError, ValueError, RuntimeError, TypeError) as exc:
        raise SmallfitError(f"could not export {source} to ONNX: {str(exc).splitlines()[0]}") from None
    _copy_companions(source, tmp)
    (tmp / "smallfit-export.json").write_text(json.dumps(
        {"source": str(source), "opset": OPSET, "torch": torch.__version__,
         "method": "torch.onnx.export (dynamo=False)"}))


def _last_hidden(torch: Any, model: Any, names: Sequence[str]) -> Any:
    class LastHidden(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: Any) -> Any:
            return self.model(**dict(zip(names, inputs, strict=True))).last_hidden_state

    return LastHidden()


def quantize_onnx(source: Path, per_channel: bool = True, mode: Int8Path | None = None) -> Path:
    """An int8 copy of an ONNX model by ``onnxruntime.quantization.quantize_dynamic`` (QInt8
    weights, scales per output channel unless ``per_channel`` is false), made once:
    ``model_int8_per_channel.onnx`` (``..._per_tensor.onnx``) in a cache entry of its own."""
    return int8_cached(source, f"model_int8_per_{'channel' if per_channel else 'tensor'}.onnx", per_channel, mode)[0]


# -- the backend --------------------------------------------------------------------------------

class OnnxEncoderOptions(BaseModel):
    """Candidate options of an encoder on ONNX Runtime (``options = {...}`` in a spec)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quantize: Literal["int8"] | None = Field(default=None, description="int8: onnxruntime dynamic quantization")
    tokenizer: str | None = Field(default=None, description="folder of the tokenizer, if not next to the .onnx")
    batch_size: int = Field(default=32, ge=1, description="texts per run of the graph")
    per_channel: bool = Field(default=True, description="int8 weight scales per output channel (else per tensor)")


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MissingExtraError("onnxruntime", "onnx") from None
    return onnxruntime


def _session(path: Path, threads: int | None) -> Any:
    ort = _ort()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or 0  # 0: onnxruntime's own choice (the physical cores)
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise SmallfitError(f"onnxruntime could not load {path}: {str(exc).splitlines()[0][:300]}") from None


class _Tokenizer:
    """Batches of padded, truncated token ids from ``tokenizer.json`` (the tokenizers library,
    no torch) or, without one, a ``tokenizer_config.json`` through transformers."""

    def __init__(self, folder: Path, limit: int, model_file: Path) -> None:
        self.limit = limit
        self._fast: Any = None
        self._hf: Any = None
        if (folder / "tokenizer.json").is_file():
            try:
                from tokenizers import Tokenizer
            except ImportError:
                raise MissingExtraError("tokenizers", "onnx") from None
            tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
            pad = tok.padding or {}
            tok.enable_truncation(limit)
            tok.enable_padding(pad_id=pad.get("pad_id", 0), pad_type_id=pad.get("pad_type_id", 0),
                               pad_token=pad.get("pad_token", "[PAD]"))  # to the longest of each batch
            self._fast = tok
        elif (folder / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            self._hf = AutoTokenizer.from_pretrained(folder)
        else:
            raise SmallfitError(f"no tokenizer next to {model_file} (tokenizer.json or tokenizer_config.json in "
                                f"{folder}): pass its folder as options = {{tokenizer = \"<folder>\"}}")
        self.source = str(folder)

    def batch(self, texts: Sequence[str]) -> dict[str, Any]:
        import numpy as np

        if self._fast is not None:
            encs = self._fast.encode_batch(list(texts))
            return {"input_ids": np.array([e.ids for e in encs], dtype=np.int64),
                    "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
                    "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64)}
        enc = self._hf(list(texts), padding=True, truncation=True, max_length=self.limit, return_tensors="np")
        out = {k: np.asarray(enc[k], dtype=np.int64) for k in _FEEDS if k in enc}
        out.setdefault("token_type_ids", np.zeros_like(out["input_ids"]))
        return out

    def count(self, text: str) -> int:
        if self._fast is not None:
            return len(self._fast.encode(text).ids)
        return len(self._hf(text, truncation=True, max_length=self.limit).input_ids)


def _position_limit(folder: Path) -> int | None:
    config = folder / "config.json"
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("max_position_embeddings")
    except (OSError, ValueError):
        return None
    return int(value) if value else None


class OnnxEncoderBackend:
    """A sentence-embedding model run by ONNX Runtime on the CPU."""

    capabilities = Capabilities(loglikelihood=False, generation=False, streaming=False, embedding=True)

    def __init__(self, config: BackendConfig) -> None:
        try:
            self.opts = OnnxEncoderOptions.model_validate(config.options)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise SmallfitError(f"onnx encoder option {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        self.threads = config.threads
        fp32_file, self.folder, self.source = self._locate(config.model_path)
        self.model_file = fp32_file
        if self.opts.quantize == "int8":  # tokenizer and pooling still come from the fp32 model's folder
            mode = int8_path()  # 7-bit weights where this CPU's u8s8 kernels would saturate
            self.model_file = quantize_onnx(fp32_file, self.opts.per_channel, mode)
            scales = "per output channel" if self.opts.per_channel else "per tensor"
            bits = "7-bit (reduce_range)" if mode.onnx_reduce_range else "8-bit"
            self.source += (f"; int8 by onnxruntime.quantization.quantize_dynamic (QInt8 {bits} weights, scales "
                            f"{scales}, kernel path {mode.name})")
        tok_folder = Path(self.opts.tokenizer).expanduser().resolve() if self.opts.tokenizer else self.folder
        if self.opts.tokenizer and not tok_folder.is_dir():
            raise SmallfitError(f"tokenizer folder not found: {tok_folder}")
        self.pooling: Pooling = read_pooling(self.folder if (self.folder / "modules.json").is_file() else tok_folder)
        limit = _position_limit(self.folder) or _position_limit(tok_folder)
        self.max_length = max_length(self.pooling, limit, config.context_size)
        self.tokenizer = _Tokenizer(tok_folder, self.max_length, self.model_file)
        self.session = _session(self.model_file, config.threads)
        inputs = {i.name: i.type for i in self.session.get_inputs()}
        missing = [k for k in _FEEDS[:2] if k not in inputs]
        unknown = [k for k in inputs if k not in _FEEDS]
        if missing or unknown:
            raise SmallfitError(f"{self.model_file}: an encoder graph takes input_ids, attention_mask and optionally "
                                f"token_type_ids; this one {_which(missing, unknown)}")
        self._inputs = {k: ("int32" if "int32" in t else "int64") for k, t in inputs.items()}
        outputs = list(self.session.get_outputs())
        named = [o.name for o in outputs if o.name in ("last_hidden_state", "token_embeddings")]
        ranked = [o.name for o in outputs if len(o.shape or []) == 3]
        if not (named or ranked):
            raise SmallfitError(f"{self.model_file} has no token-vector output (last_hidden_state) to pool")
        self.output = (named or ranked)[0]

    def _locate(self, path: Path) -> tuple[Path, Path, str]:
        """(the .onnx file, its folder, where it came from)."""
        if path.is_file():
            if path.suffix.lower() != ".onnx":
                raise SmallfitError(f"{path} is not an .onnx file; the onnx encoder backend runs .onnx files and "
                                    "exports transformers encoder folders")
            return path, path.parent, "onnx file"
        if not path.is_dir():
            raise SmallfitError(f"model not found: {path}")
        found = onnx_in(path)
        if found is not None:
            return found, path, "onnx file"
        if not is_encoder_folder(path):
            raise SmallfitError(f"{path} holds neither an .onnx file nor a transformers encoder to export")
        target = export_onnx(path)
        return target / "model.onnx", target, f"exported from {path} (torch.onnx.export, opset {OPSET}, fp32)"

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Pooled sentence vectors, ``batch_size`` texts per run of the graph."""
        out: list[list[float]] = []
        for lo in range(0, len(texts), self.opts.batch_size):
            enc = self.tokenizer.batch(texts[lo : lo + self.opts.batch_size])
            feed = {k: enc[k].astype(dtype) for k, dtype in self._inputs.items()}
            hidden = self.session.run([self.output], feed)[0]
            out += pool(hidden, enc["attention_mask"], self.pooling)
        return out

    def count_tokens(self, text: str) -> int:
        """Tokens the model reads for ``text``: special tokens included, after truncation."""
        return self.tokenizer.count(text)

    def info(self) -> dict[str, Any]:
        """Settings recorded with every result of this candidate."""
        ort = _ort()
        size = self.model_file.stat().st_size
        data = self.model_file.with_name(self.model_file.name + ".data")  # weights stored beside the graph
        if data.is_file():
            size += data.stat().st_size
        return {
            "library": "onnxruntime", "library_version": ort.__version__, "device": "cpu", "model_type": "encoder",
            "providers": self.session.get_providers(), "threads": self.threads,
            "threads_note": None if self.threads else "onnxruntime default (physical cores)",
            "batch_size": self.opts.batch_size, "max_length": self.max_length, "pooling": self.pooling.mode,
            "normalize": self.pooling.normalize, "pooling_source": self.pooling.source,
            "inputs": sorted(self._inputs), "output": self.output, "source": self.source,
            "weights": str(self.model_file), "tokenizer": self.tokenizer.source,
            "quantize": self.opts.quantize, "model_size_bytes": size,
            "quantize_scales": (("per output channel" if self.opts.per_channel else "per tensor")
                                if self.opts.quantize else None),
        }

    def close(self) -> None:
        """Release the session."""
        self.session = None


def _which(missing: list[str], unknown: list[str]) -> str:
    return "lacks " + ", ".join(missing) if missing else "also needs " + ", ".join(unknown)
