"""The transformers backend on the bundled SmolLM2 GGUF, dequantised through transformers."""

import importlib.util

import pytest

from tests.conftest import needs_models

pytestmark = [
    needs_models, pytest.mark.models,
    pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="extra 'hf' not installed"),
]


@pytest.fixture(scope="module")
def backends():
    from smallfit.backends.base import BackendConfig, load_backend
    from smallfit.models import parse_model_ref, resolve_model

    path = resolve_model(parse_model_ref("smollm2-135m"))
    one = load_backend("transformers", BackendConfig(path, threads=2, context_size=256, options={"batch_size": 1}))
    eight = load_backend("transformers", BackendConfig(path, threads=2, context_size=256, options={"batch_size": 8}))
    yield one, eight
    one.close()
    eight.close()


def _requests():
    from smallfit.records import LoglikelihoodRequest

    reqs = []
    for i, q in enumerate(["Which is heavier, a feather or a brick?", "What colour is the sky on a clear day?",
                           "How many legs does a spider have?", "What do bees make?", "Is ice hot or cold?"]):
        ctx = f"Question: {q}\nAnswer:"
        reqs += [LoglikelihoodRequest(ctx, " a brick" if i == 0 else " blue"),
                 LoglikelihoodRequest(ctx, " eight legs"), LoglikelihoodRequest(ctx, " honey")]
        reqs.append(LoglikelihoodRequest(f"Unshared context number {i}:" + " word" * (i * 7), " yes"))
    reqs.append(LoglikelihoodRequest("", "A text with no context at all."))
    return reqs


def test_batch_size_does_not_change_scores(backends):
    one, eight = backends
    a, b = one.loglikelihood(_requests()), eight.loglikelihood(_requests())
    for x, y in zip(a, b, strict=True):
        assert x.logprob == pytest.approx(y.logprob, abs=1e-4)
        assert x.is_greedy == y.is_greedy and x.n_tokens == y.n_tokens


def test_shared_context_equals_scoring_each_alone(backends):
    _, eight = backends
    reqs = _requests()
    together = eight.loglikelihood(reqs)
    alone = [eight.loglikelihood([r])[0] for r in reqs]
    for x, y in zip(together, alone, strict=True):
        assert x.logprob == pytest.approx(y.logprob, abs=1e-4)


def test_rolling_matches_loglikelihood_and_windows(backends):
    from smallfit.records import LoglikelihoodRequest, RollingRequest

    _, eight = backends
    text = "Natalia sold clips to 48 of her friends in April."
    (r,) = eight.loglikelihood_rolling([RollingRequest(text)])
    (ll,) = eight.loglikelihood([LoglikelihoodRequest("", text)])
    assert r.logprob == pytest.approx(ll.logprob, abs=1e-4)
    (long,) = eight.loglikelihood_rolling([RollingRequest("The quick brown fox jumps. " * 60)])  # > 256 tokens
    assert long.n_tokens > 256 and long.logprob < 0


def test_generation_and_its_timings(backends):
    from smallfit.records import GenerationRequest

    _, eight = backends
    (c,) = eight.generate([GenerationRequest("The capital of France is", max_tokens=8, stop=("\n",))])
    assert "Paris" in c.text
    assert c.ttft_s == c.token_times_s[0] <= c.latency_s
    (f,) = eight.generate([GenerationRequest("Thank you, goodbye.", max_tokens=6, ignore_eos=True)])
    assert f.n_output_tokens == 6


def test_agrees_with_llamacpp_on_the_same_weights(backends):
    """Same model, other backend and precision (fp32 vs Q4_1 kernels): close, not equal."""
    from smallfit.backends.base import BackendConfig, load_backend
    from smallfit.models import parse_model_ref, resolve_model
    from smallfit.records import LoglikelihoodRequest

    _, eight = backends
    llama = load_backend("llamacpp", BackendConfig(resolve_model(parse_model_ref("smollm2-135m")), threads=2))
    reqs = [LoglikelihoodRequest("The capital of France is", " Paris"),
            LoglikelihoodRequest("Question: What do bees make?\nAnswer:", " honey")]
    for x, y in zip(eight.loglikelihood(reqs), llama.loglikelihood(reqs), strict=True):
        assert x.logprob == pytest.approx(y.logprob, abs=0.15) and x.is_greedy == y.is_greedy
    llama.close()


def test_pickle_checkpoints_are_refused_and_remote_code_is_off(tmp_path, backends):
    from smallfit.backends.base import BackendConfig, load_backend
    from smallfit.errors import SmallfitError

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(SmallfitError, match="only pickle checkpoints"):
        load_backend("transformers", BackendConfig(tmp_path))
    assert backends[1].info()["trust_remote_code"] is False
    with pytest.raises(SmallfitError, match="transformers option dtype"):
        load_backend("transformers", BackendConfig(tmp_path, options={"dtype": "float8"}))
