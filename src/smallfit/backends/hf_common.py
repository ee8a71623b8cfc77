"""What the backends built on transformers share: importing torch and transformers (extra
``hf``) and the size of a model folder's weights. No import of either library at module level."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smallfit.errors import MissingExtraError


def import_torch_transformers() -> tuple[Any, Any]:
    """The ``torch`` and ``transformers`` modules; a one-line error naming extra ``hf`` without them."""
    try:
        import torch
        import transformers
    except ImportError:
        raise MissingExtraError("torch/transformers", "hf") from None
    return torch, transformers


def weights_bytes(folder: Path) -> int:
    """Bytes of a model folder's weights on disk: its safetensors files, else its pickle ``.bin`` files."""
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) or sum(
        p.stat().st_size for p in folder.glob("*.bin"))
