"""``quantize = "int8"`` on the causal-LM transformers backend: the bundled SmolLM2, dequantised
to float32 through transformers, then torch dynamic int8 (per output channel)."""

import importlib.util

import pytest

from tests.conftest import needs_models

pytestmark = [
    needs_models, pytest.mark.models,
    pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="extra 'hf' not installed"),
]


def test_int8_causal_lm_scores_generates_and_records_it():
    from smallfit.backends.base import BackendConfig, load_backend
    from smallfit.backends.hf import TransformersBackend
    from smallfit.models import parse_model_ref, resolve_model
    from smallfit.records import GenerationRequest, LoglikelihoodRequest

    path = resolve_model(parse_model_ref("smollm2-135m"))
    backend = load_backend("transformers", BackendConfig(path, threads=1, context_size=256,
                                                         options={"quantize": "int8"}))
    assert isinstance(backend, TransformersBackend)
    info = backend.info()
    assert info["quantize"] == "int8" and info["quantize_scales"] == "per output channel"
    assert "quantize_dynamic" in info["quantize_method"]
    # on x86 fbgemm's 7-bit activations keep u8s8 pair sums inside int16 with or without VNNI
    assert (info["quantized_engine"], info["quantize_activations"]) in (("x86", "7-bit (reduce_range)"),
                                                                       ("fbgemm", "7-bit (reduce_range)"),
                                                                       ("qnnpack", "8-bit"))
    assert info["weights_in_memory_bytes"] < info["weights_on_disk_bytes"]  # int8 Linear weights, float32 embeddings
    assert info["model_size_bytes"] == info["weights_in_memory_bytes"]  # no file: the quantized weights
    (paris,) = backend.loglikelihood([LoglikelihoodRequest("The capital of France is", " Paris")])
    assert paris.is_greedy and -3 < paris.logprob < 0
    (done,) = backend.generate([GenerationRequest("The capital of France is", 4, ignore_eos=True)])
    assert done.n_output_tokens == 4 and done.ttft_s is not None
    backend.close()
