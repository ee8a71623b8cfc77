"""ONNX Runtime backend (extra ``onnx``): the registry's ``onnx`` entry.

This branch runs encoders only (see :mod:`smallfit.backends.onnx_encoder`); causal LMs on ONNX
Runtime come with the causal-LM backend.
"""

from __future__ import annotations

from typing import Any

from smallfit.backends.base import BackendConfig
from smallfit.errors import SmallfitError


def load_onnx(config: BackendConfig) -> Any:
    """Load the model: an encoder (an ``.onnx`` without a ``logits`` output, or a folder holding
    one or holding a transformers encoder to export) runs on :class:`OnnxEncoderBackend`."""
    from smallfit.backends.onnx_encoder import OnnxEncoderBackend, is_encoder_model

    if is_encoder_model(config.model_path):
        return OnnxEncoderBackend(config)
    raise SmallfitError("causal LMs on ONNX Runtime: not in this branch")
