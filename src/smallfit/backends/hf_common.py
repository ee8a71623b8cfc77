"""What the backends built on transformers share: importing torch and transformers (extra
``hf``), and a GGUF file dequantised to a safetensors folder (a cache entry built in a child
process). No import of either library at module level."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smallfit import cache
from smallfit.childjob import child_builder
from smallfit.errors import MissingExtraError


def import_torch_transformers() -> tuple[Any, Any]:
    """The ``torch`` and ``transformers`` modules; a one-line error naming extra ``hf`` without them."""
    try:
        import torch
        import transformers
    except ImportError:
        raise MissingExtraError("torch/transformers", "hf") from None
    return torch, transformers


def gguf_to_safetensors(path: Path) -> Path:
    """Dequantise a GGUF file through transformers once and cache it as a safetensors folder (a
    cache entry keyed by the file's content, built in a child process: see :mod:`smallfit.cache`
    and :mod:`smallfit.childjob`)."""
    key = cache.key(inputs=[path], version="gguf-to-safetensors-1")
    builder = child_builder("smallfit.backends.hf_common:dequantise_job", {"path": str(path)},
                            f"dequantising {path.name} through transformers")
    return cache.build("hf", key, path.stem, builder)


def dequantise_job(out: str, path: str) -> None:
    """Child side: write the GGUF file ``path`` dequantised as a safetensors model folder ``out``.

    transformers refuses to save a GGUF-loaded model, so the weights are moved into a model
    built from the same config without its quantization settings, then saved."""
    torch, tf = import_torch_transformers()
    gguf = Path(path)
    tokenizer = tf.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = tf.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict())
    clean.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
