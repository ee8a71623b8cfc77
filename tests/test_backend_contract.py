"""The contract every backend passes: same prompts, same checks.

Backends: llama.cpp in process, transformers (the same GGUF dequantised to fp32), and the
openai backend against llama-cpp-python's real server on 127.0.0.1 (SmolLM2, whose echoed
log-probabilities that server gets wrong, and Gemma, whose it gets right). Log-likelihoods are
compared with llama.cpp in process on the same GGUF, within ``TOLERANCE_NATS`` per request.
Measured on these requests: transformers fp32 (dequantised) vs llama.cpp's Q4_1 kernels differ
by 0.006 and 0.08 nats on the one-token continuations and 0.18-0.19 on the two-token ones; the
Gemma server vs llama.cpp in process (same library, same GGUF) by under 1e-6 on one-token
continuations and 0.13 on ' a brick' (its ' a' is scored in one batch with the prompt there, and
after the context's cached evaluation in process), so the Gemma server is held to
``SAME_LIBRARY_NATS``.

The onnx backend runs the transformers fp32 weights exported by torch.onnx, so it is also held to
transformers itself within ``SAME_WEIGHTS_NATS``: measured 1e-5 to 2.3e-5 nats on these requests
(float rounding of another kernel library; the export is verified to 1e-4 in its logits).
"""

import importlib.util
from pathlib import Path

import pytest

from tests.conftest import have_onnx_export, needs_models
from tests.servers import have_server_deps, llama_server

pytestmark = [needs_models, pytest.mark.models]

TOLERANCE_NATS = 0.25
SAME_LIBRARY_NATS = 0.15
SAME_WEIGHTS_NATS = 1e-4
PROMPTS = ["The capital of France is", "Question: What do bees make?\nAnswer:"]
REQUESTS = [("The capital of France is", " Paris"), ("Question: What do bees make?\nAnswer:", " honey"),
            ("Question: Which is heavier, a feather or a brick?\nAnswer:", " a brick"),
            ("Question: Which is heavier, a feather or a brick?\nAnswer:", " a feather")]
TOO_LONG = "word " * 3000  # more tokens than any context below

CASES = [
    pytest.param(("llamacpp", "smollm2-135m"), id="llamacpp"),
    pytest.param(("transformers", "smollm2-135m"), id="transformers", marks=pytest.mark.skipif(
        importlib.util.find_spec("transformers") is None, reason="extra 'hf' not installed")),
    pytest.param(("onnx", "smollm2-135m"), id="onnx", marks=pytest.mark.skipif(
        not have_onnx_export(), reason="extras 'onnx' and 'hf' not installed")),
    pytest.param(("openai", "smollm2-135m"), id="openai-smollm2", marks=pytest.mark.skipif(
        not have_server_deps(), reason="llama_cpp.server's deps or httpx missing")),
    pytest.param(("openai", "gemma3-270m"), id="openai-gemma3", marks=pytest.mark.skipif(
        not have_server_deps(), reason="llama_cpp.server's deps or httpx missing")),
]


def _path(alias: str) -> Path:
    from smallfit.models import parse_model_ref, resolve_model

    return resolve_model(parse_model_ref(alias))


@pytest.fixture(scope="module")
def references():
    """llama.cpp in process, per model: the reference scores and tokenizer."""
    from smallfit.backends.base import BackendConfig, load_backend

    loaded = {}

    def get(alias: str):
        if alias not in loaded:
            loaded[alias] = load_backend("llamacpp", BackendConfig(_path(alias), threads=1, context_size=512))
        return loaded[alias]

    yield get
    for b in loaded.values():
        b.close()


@pytest.fixture(scope="module", params=CASES)
def case(request):
    from smallfit.backends.base import BackendConfig, load_backend

    name, alias = request.param
    if name == "openai":
        with llama_server(_path(alias)) as url:
            b = load_backend("openai", BackendConfig(Path(), location=url))
            yield b, alias
            b.close()
        return
    b = load_backend(name, BackendConfig(_path(alias), threads=1, context_size=512))
    yield b, alias
    b.close()


def test_generation_returns_text_timings_and_own_tokenizer_counts(case, references):
    from smallfit.records import GenerationRequest

    backend, alias = case
    ref = references(alias)
    for c, prompt in zip(backend.generate([GenerationRequest(p, max_tokens=6) for p in PROMPTS]), PROMPTS,
                         strict=True):
        assert c.text
        assert c.ttft_s is not None and 0 < c.ttft_s == c.token_times_s[0] <= c.latency_s
        assert list(c.token_times_s) == sorted(c.token_times_s)
        assert c.n_prompt_tokens == len(ref.tokenize(prompt))
        assert c.n_output_tokens == len(ref.tokenize(prompt + c.text)) - len(ref.tokenize(prompt))
        assert 1 <= c.n_output_tokens <= 6


def test_fixed_length_requests_for_the_latency_pass(case):
    from smallfit.records import GenerationRequest

    backend, _ = case
    (c,) = backend.generate([GenerationRequest(PROMPTS[0], max_tokens=5, ignore_eos=True)])
    assert c.n_output_tokens == 5 and c.finish_reason == "length"


def test_loglikelihoods_agree_with_llamacpp_on_the_same_weights(case, references):
    from smallfit.errors import SmallfitError
    from smallfit.records import LoglikelihoodRequest

    backend, alias = case
    reqs = [LoglikelihoodRequest(c, x) for c, x in REQUESTS]
    if not backend.capabilities.loglikelihood:  # declared, and said in one line when asked
        with pytest.raises(SmallfitError, match="cannot score multiple-choice tasks; use generation tasks"):
            backend.loglikelihood(reqs)
        return
    expected = references(alias).loglikelihood(reqs)
    same_library = _is_server(backend)  # llama-cpp-python's server: the same llama.cpp and GGUF
    for got, want in zip(backend.loglikelihood(reqs), expected, strict=True):
        assert got.n_tokens == want.n_tokens
        assert got.logprob == pytest.approx(want.logprob, abs=SAME_LIBRARY_NATS if same_library else TOLERANCE_NATS)


def test_a_server_without_the_first_tokens_logprob_refuses_perplexity_in_one_line(case):
    from smallfit.errors import SmallfitError
    from smallfit.records import RollingRequest

    backend, _ = case
    if not (_is_server(backend) and backend.capabilities.loglikelihood):
        pytest.skip("a server that scores continuations (Gemma's)")
    assert backend.info()["loglikelihood_unsupported_because"] is None
    # the first token of a prompt gets no log-probability from this server: perplexity is refused
    with pytest.raises(SmallfitError, match="no log-probability for the first token"):
        backend.loglikelihood_rolling([RollingRequest("Hello there.")])


def _is_server(backend) -> bool:
    from smallfit.backends.openai import OpenAIBackend

    return isinstance(backend, OpenAIBackend)


def test_errors_surface_as_smallfit_errors(case):
    from smallfit.backends.base import ConcurrentBackend
    from smallfit.errors import SmallfitError
    from smallfit.records import GenerationRequest

    backend, _ = case
    with pytest.raises(SmallfitError):
        backend.generate([GenerationRequest(TOO_LONG, max_tokens=4)])
    # and an in-process backend still works afterwards (llama-cpp-python's server itself may drop
    # its next stream, seen with Gemma: the server's fault, not checked here)
    if not isinstance(backend, ConcurrentBackend):
        (c,) = backend.generate([GenerationRequest(PROMPTS[0], max_tokens=2)])
        assert c.text


@pytest.mark.skipif(not have_onnx_export(), reason="extras 'onnx' and 'hf' not installed")
def test_onnx_agrees_with_transformers_on_the_same_fp32_weights(case):
    """The export runs the same fp32 weights as transformers: scores agree to float rounding."""
    from smallfit.backends.base import BackendConfig, load_backend
    from smallfit.records import LoglikelihoodRequest

    backend, alias = case
    if backend.info().get("library") != "onnxruntime":
        pytest.skip("only the onnx backend runs transformers' own fp32 weights through another library")
    reqs = [LoglikelihoodRequest(c, x) for c, x in REQUESTS] + [LoglikelihoodRequest("", "A text with no context.")]
    hf = load_backend("transformers", BackendConfig(_path(alias), threads=1, context_size=512))
    try:
        for got, want in zip(backend.loglikelihood(reqs), hf.loglikelihood(reqs), strict=True):
            assert got.n_tokens == want.n_tokens and got.is_greedy == want.is_greedy
            assert got.logprob == pytest.approx(want.logprob, abs=SAME_WEIGHTS_NATS)
    finally:
        hf.close()
