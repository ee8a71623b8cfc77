"""transformers backend for encoders (sentence embeddings), and the dispatch of the backend.

``transformers`` is one backend name for two kinds of model: :func:`load_transformers` gives a
folder that holds an encoder (see :func:`smallfit.backends.encoder.is_encoder_folder`) to
:class:`TransformersEncoder` and everything else to the causal-LM
:class:`smallfit.backends.hf.TransformersBackend`.

The encoder loads with ``AutoModel`` (no task head), from safetensors only and with
``trust_remote_code`` off, and pools as the folder's sentence-transformers modules say (mean by
default, normalised only when ``modules.json`` lists a ``Normalize`` module).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from smallfit.backends.base import Backend, BackendConfig, Capabilities
from smallfit.backends.encoder import is_encoder_folder, max_length, pool, read_pooling
from smallfit.backends.hf_common import import_torch_transformers
from smallfit.backends.registry import BackendSpec
from smallfit.errors import SmallfitError
from smallfit.models import weights_size


def load_transformers(config: BackendConfig) -> Any:
    """The registry's ``transformers`` entry: an encoder folder loads as
    :class:`TransformersEncoder`, any other model as the causal-LM backend."""
    if config.model_path.is_dir() and is_encoder_folder(config.model_path):
        return TransformersEncoder(config)
    from smallfit.backends.hf import TransformersBackend

    backend: Backend = TransformersBackend(config)
    return backend


class EncoderOptions(BaseModel):
    """Candidate options of an encoder on transformers (``options = {...}`` in a spec)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = Field(default="cpu", description="cpu, cuda, cuda:N or auto")
    batch_size: int = Field(default=32, ge=1, description="texts per forward pass")
    quantize: Literal["int8"] | None = Field(default=None, description="int8: torch dynamic quantization")
    per_channel: bool = Field(default=True, description="int8 weight scales per output channel (else per tensor)")


class TransformersEncoder:
    """A sentence-embedding model (BERT-like encoder) loaded through transformers."""

    capabilities = Capabilities(loglikelihood=False, generation=False, streaming=False, embedding=True)

    def __init__(self, config: BackendConfig) -> None:
        self._torch, tf = import_torch_transformers()
        torch = self._torch
        try:
            self.opts = EncoderOptions.model_validate(config.options)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise SmallfitError(f"transformers encoder option {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if self.opts.device == "auto" else self.opts.device)
        self.folder = config.model_path
        if not any(self.folder.glob("*.safetensors")):
            raise SmallfitError(f"{self.folder} has no safetensors weights; the encoder backend loads only those")
        try:
            self.tokenizer = tf.AutoTokenizer.from_pretrained(self.folder)
            self.model = tf.AutoModel.from_pretrained(
                self.folder, dtype=getattr(torch, self.opts.dtype), use_safetensors=True, trust_remote_code=False,
            ).to(self.device).eval()
        except (OSError, ValueError) as exc:
            raise SmallfitError(f"transformers could not load {self.folder}: {str(exc).splitlines()[0]}") from None
        self._quant: dict[str, Any] = {}
        if self.opts.quantize == "int8":
            from smallfit.backends.torch_int8 import quantize_int8

            self.model, self._quant = quantize_int8(torch, self.model, self.device, self.opts.per_channel)
        self.pooling = read_pooling(self.folder)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        self.max_length = max_length(self.pooling, limit, config.context_size)
        params = inspect.signature(self.model.forward).parameters
        anything = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        self._inputs = [k for k in ("input_ids", "attention_mask", "token_type_ids") if anything or k in params]

    def _encode(self, texts: Sequence[str]) -> Any:
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt")

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Pooled sentence vectors, ``batch_size`` texts per padded forward pass."""
        torch = self._torch
        out: list[list[float]] = []
        for lo in range(0, len(texts), self.opts.batch_size):
            enc = self._encode(texts[lo : lo + self.opts.batch_size])
            feed = {k: enc[k].to(self.device) for k in self._inputs if k in enc}
            with torch.inference_mode():
                hidden = self.model(**feed).last_hidden_state
            out += pool(hidden.float().cpu().numpy(), enc["attention_mask"].numpy(), self.pooling)
        return out

    def count_tokens(self, text: str) -> int:
        """Tokens the model reads for ``text``: special tokens included, after truncation."""
        return len(self.tokenizer(text, truncation=True, max_length=self.max_length).input_ids)

    def info(self) -> dict[str, Any]:
        """Settings recorded with every result of this candidate."""
        import transformers

        torch = self._torch
        return {
            "library": "transformers", "library_version": transformers.__version__,
            "torch_version": torch.__version__, "device": str(self.device), "model_type": "encoder",
            "dtype": self.opts.dtype, "threads": torch.get_num_threads(), "batch_size": self.opts.batch_size,
            "max_length": self.max_length, "pooling": self.pooling.mode, "normalize": self.pooling.normalize,
            "pooling_source": self.pooling.source, "source": "safetensors", "weights": str(self.folder),
            "trust_remote_code": False, "quantize": None, "weights_on_disk_bytes": weights_size(self.folder),
            # an int8 model has no file: its size is its quantized weights' (torch.save of the state dict)
            "model_size_bytes": self._quant.get("weights_in_memory_bytes", weights_size(self.folder)),
            **self._quant,
        }

    def close(self) -> None:
        """Drop the model."""
        self.model = None


def check_local_model(location: str, options: Mapping[str, Any]) -> None:
    """Before any work: a GGUF file's header, or a model folder's config and weights."""
    path = Path(location)
    if path.suffix.lower() == ".gguf":
        from smallfit.backends.gguf_file import check_gguf

        check_gguf(path)
        return
    if not path.is_dir():
        raise SmallfitError(f"{path} is neither a model folder nor a .gguf file; pass a transformers folder")
    if not (path / "config.json").is_file():
        raise SmallfitError(f"{path} has no config.json: not a transformers model folder")
    weights = [*path.glob("*.safetensors"), *path.glob("*.bin")]
    if not weights:
        raise SmallfitError(f"{path} holds no weights (*.safetensors); download the whole model folder")


def _example(folder: Path) -> str:
    """The bundled SmolLM2 GGUF file (the contract test's model)."""
    from smallfit.models import ALIASES

    return str(ALIASES["smollm2-135m"].locate())


BACKEND = BackendSpec(
    name="transformers", load=load_transformers, aliases=("hf",), formats=("transformers", "gguf"),
    default_for=("transformers",), example=_example, check_model=check_local_model, extra="hf",
    variants={"torch-f32": {"dtype": "float32"}, "torch-int8": {"dtype": "float32", "quantize": "int8"}},
    description="Hugging Face transformers on torch: model folders, hub repositories, GGUF files (dequantised)",
)
