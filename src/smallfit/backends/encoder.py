"""What the encoder backends share: telling an encoder from a causal LM, and sentence pooling.

A sentence-transformers folder says how token vectors become one sentence vector: its
``modules.json`` lists a ``Pooling`` module (``1_Pooling/config.json``: mean, CLS, max or
mean/sqrt(length)) and, for most models (all-MiniLM-L6-v2 among them), a ``Normalize`` module
that scales the result to unit length. Both encoder backends (transformers and ONNX Runtime)
pool here, in numpy, so the same folder gives the same vectors on either. A folder without
``modules.json`` is pooled by the mean over its tokens, unnormalised.

Only numpy is imported: the ONNX backend must not pull in torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smallfit.errors import SmallfitError

_POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}
# Heads that make a transformers model a generator: such a folder is a causal LM, not an encoder.


@dataclass(frozen=True)
class Pooling:
    """How a sentence vector is made from the token vectors; ``max_seq_length`` is the
    sentence-transformers truncation length (``sentence_bert_config.json``), if the folder has one."""

    mode: str = "mean"
    normalize: bool = False
    max_seq_length: int | None = None
    source: str = "default (no modules.json): mean over tokens, not normalised"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SmallfitError(f"cannot read {path}: {exc}") from None


def read_pooling(folder: Path) -> Pooling:
    """The pooling a sentence-transformers folder declares, or mean pooling without one."""
    modules_file = folder / "modules.json"
    bert_config = folder / "sentence_bert_config.json"
    max_len = _read_json(bert_config).get("max_seq_length") if bert_config.is_file() else None
    if not modules_file.is_file():
        return Pooling(max_seq_length=max_len)
    modules = _read_json(modules_file)
    types = [str(m.get("type", "")) for m in modules]
    normalize = any(t.endswith(".Normalize") for t in types)
    mode = "mean"
    for module in modules:
        if str(module.get("type", "")).endswith(".Pooling"):
            config = _read_json(folder / module.get("path", "") / "config.json")
            modes = [name for key, name in _POOLING_KEYS.items() if config.get(key)]
            unknown = [k for k, v in config.items() if k.startswith("pooling_mode") and v and k not in _POOLING_KEYS]
            if len(modes) != 1 or unknown:
                raise SmallfitError(f"{folder}: pooling {modes + unknown} is not supported; one of "
                                    f"{', '.join(_POOLING_KEYS.values())} is")
            mode = modes[0]
    return Pooling(mode, normalize, max_len, f"{modules_file.name}: {mode}{', normalised' if normalize else ''}")


def pool(hidden: Any, mask: Any, pooling: Pooling) -> list[list[float]]:
    """Sentence vectors from token vectors ``hidden`` (batch, tokens, dim) and the attention
    ``mask`` (batch, tokens), as sentence-transformers computes them."""
    import numpy as np

    h = np.asarray(hidden, dtype=np.float32)
    m = np.asarray(mask, dtype=np.float32)[:, :, None]
    if pooling.mode == "cls":
        out = h[:, 0]
    elif pooling.mode == "max":
        out = np.where(m > 0, h, -1e9).max(axis=1)
    else:
        counts = np.clip(m.sum(axis=1), 1e-9, None)
        out = (h * m).sum(axis=1) / (counts if pooling.mode == "mean" else np.sqrt(counts))
    if pooling.normalize:
        out = out / np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
    return [[float(x) for x in row] for row in out]


def is_encoder_folder(folder: Path) -> bool:
    """A transformers folder that holds an encoder (see :func:`smallfit.models.folder_kind`)."""
    from smallfit.models import folder_kind

    return folder_kind(folder) == "encoder"


def max_length(pooling: Pooling, model_limit: int | None, context_size: int) -> int:
    """Tokens per text after truncation: the sentence-transformers length if the folder sets
    one, else the model's position limit, never more than the candidate's context size."""
    limits = [n for n in (pooling.max_seq_length, model_limit, context_size) if n]
    return int(min(limits))
