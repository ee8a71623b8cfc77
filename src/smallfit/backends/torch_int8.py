"""``quantize = "int8"`` for the transformers backends: PyTorch dynamic int8 quantization.

Every ``torch.nn.Linear`` gets int8 weights and quantizes its input on the fly at each call
(int8 matrix products); embeddings and layer norms stay in float32. CPU only. Weights are
quantized per output channel by default, which on all-MiniLM-L6-v2 keeps sentence vectors much
closer to float32 than one scale per tensor (mean cosine 0.977 against 0.953 on
examples/tickets.jsonl); ``per_channel = false`` gives the classic per-tensor recipe.

This is ``torch.ao.quantization.quantize_dynamic``: torch marks that module deprecated in favour
of ``torchao``, a separate package; until smallfit depends on it the deprecation warnings are
silenced here and the method is recorded in the backend's ``info()``.

The quantized engine (``torch.backends.quantized.engine``) follows the CPU
(:func:`smallfit.probes.cpu.int8_path`): ``x86`` (or ``fbgemm``) on x86, whose dynamic Linear
quantizes activations to 7 bits (``reduce_range=True``), so u8s8 pair sums fit in int16 with or
without VNNI; ``qnnpack`` on ARM. A CPU with no rule, or a torch built without the engine, is
refused with a one-line reason. The engine is recorded.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

from smallfit.errors import SmallfitError
from smallfit.probes.cpu import int8_path

METHOD = "torch.ao.quantization.quantize_dynamic (nn.Linear: int8 weights, activations quantized per call)"


def quantize_int8(torch: Any, model: Any, device: Any, per_channel: bool = True) -> tuple[Any, dict[str, Any]]:
    """The model with int8 Linear layers, and what to record: the method, the weight scales and
    the bytes of its weights in memory (a serialised state dict: int8 matrices plus the float32 rest)."""
    if getattr(device, "type", "cpu") != "cpu":
        raise SmallfitError("quantize = \"int8\" (torch dynamic quantization) runs on the CPU only; "
                            "drop device or the quantize option")
    engine = choose_engine(torch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import (
            default_dynamic_qconfig,
            per_channel_dynamic_qconfig,
            quantize_dynamic,
        )

        qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
        quantized = quantize_dynamic(model, {torch.nn.Linear: qconfig}, dtype=torch.qint8)  # type: ignore[no-untyped-call]
        buffer = io.BytesIO()
        torch.save(quantized.state_dict(), buffer)
    return quantized, {"quantize": "int8", "quantize_method": METHOD,
                       "quantize_scales": "per output channel" if per_channel else "per tensor",
                       "weights_in_memory_bytes": buffer.tell(), "quantized_engine": engine,
                       "int8_kernel_path": int8_path().name,
                       "quantize_activations": "7-bit (reduce_range)" if engine in ("x86", "fbgemm") else "8-bit"}


def choose_engine(torch: Any) -> str:
    """Set and return ``torch.backends.quantized.engine`` for this CPU's int8 path (the first of
    its engines this torch supports); refuse when none is built in."""
    path = int8_path()
    supported = list(torch.backends.quantized.supported_engines)
    for engine in path.torch_engines:
        if engine in supported:
            torch.backends.quantized.engine = engine
            return engine
    raise SmallfitError(f"quantize = \"int8\": this torch has no quantized engine for kernel path {path.name} "
                        f"(wants {' or '.join(path.torch_engines)}, has {', '.join(supported) or 'none'})")
