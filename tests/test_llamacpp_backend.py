"""The llama.cpp backend on the real bundled GGUF models."""


import pytest

from tests.conftest import needs_models

pytestmark = [needs_models, pytest.mark.models]


@pytest.fixture(scope="module", params=["smollm2-135m", "gemma3-270m"])
def backend(request):
    from smallfit.backends.base import BackendConfig, load_backend
    from smallfit.models import parse_model_ref, resolve_model

    b = load_backend("llamacpp", BackendConfig(resolve_model(parse_model_ref(request.param)), threads=2,
                                               context_size=512))
    yield b
    b.close()


def test_generation_timings_are_taken_where_tokens_are_produced(backend):
    from smallfit.records import GenerationRequest

    (c,) = backend.generate([GenerationRequest("The capital of France is", max_tokens=8)])
    assert c.text.strip()
    assert c.n_output_tokens == len(c.token_times_s) >= 1
    assert c.ttft_s == c.token_times_s[0] <= c.latency_s == c.token_times_s[-1]
    assert list(c.token_times_s) == sorted(c.token_times_s)
    assert c.n_prompt_tokens == len(backend.tokenize("The capital of France is"))
    assert c.finish_reason in ("length", "eos", "stop")


def test_stop_sequences_cut_the_text(backend):
    from smallfit.records import GenerationRequest

    (c,) = backend.generate([GenerationRequest("Count: 1, 2, 3, 4,", max_tokens=16, stop=(",",))])
    assert "," not in c.text and c.finish_reason in ("stop", "eos", "length")


def test_shared_context_scores_equal_separate_scores(backend):
    from smallfit.records import LoglikelihoodRequest

    ctx = "Question: Which is heavier, a feather or a brick?\nAnswer:"
    reqs = [LoglikelihoodRequest(ctx, " a brick"), LoglikelihoodRequest(ctx, " a feather"),
            LoglikelihoodRequest("Unrelated context.", " yes")]
    together = backend.loglikelihood(reqs)
    alone = [backend.loglikelihood([r])[0] for r in reqs]
    for a, b in zip(together, alone, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert a.n_tokens == b.n_tokens and a.logprob < 0


def test_greedy_generation_is_greedy_under_loglikelihood(backend):
    from smallfit.records import GenerationRequest, LoglikelihoodRequest

    prompt = "The capital of France is"
    # stop at a newline: "\n\n" generated as two tokens re-tokenizes as one, which is not greedy
    (c,) = backend.generate([GenerationRequest(prompt, max_tokens=4, stop=("\n",))])
    (ll,) = backend.loglikelihood([LoglikelihoodRequest(prompt, c.text)])
    # the generated text re-tokenizes to the tokens that were the argmax at each step
    assert ll.is_greedy
    assert ll.logprob > -5


def test_rolling_equals_loglikelihood_from_the_prefix_token(backend):
    from smallfit.records import LoglikelihoodRequest, RollingRequest

    text = "Natalia sold clips to 48 of her friends in April."
    (rolling,) = backend.loglikelihood_rolling([RollingRequest(text)])
    (ll,) = backend.loglikelihood([LoglikelihoodRequest("", text)])
    assert rolling.logprob == pytest.approx(ll.logprob, abs=1e-4)
    assert rolling.n_tokens == len(backend.tokenize(text, add_bos=False))


def test_info_records_threads_context_and_batch(backend):
    info = backend.info()
    assert info["threads"] == 2 and info["context_size"] == 512 and info["batch_size"] == 512
    assert info["library_version"]


def test_info_records_which_llama_cpp_build_ran_and_its_cpu_features(backend):
    import re

    info = backend.info()
    assert re.fullmatch(r"\d+\.\d+\.\d+", info["ggml_version"])  # read from the library itself
    assert info["ggml_commit"] and re.fullmatch(r"[0-9a-f]{16}", info["llama_cpp_lib_sha256"])
    assert "CPU :" in info["system_info"] and "REPACK" in info["system_info"]
    assert info["weights_file_type"] != "unknown"


def test_not_a_gguf_file(tmp_path):
    from smallfit.backends.base import BackendConfig, load_backend
    from smallfit.errors import SmallfitError

    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 definitely a zip")
    with pytest.raises(SmallfitError, match="is not a GGUF file"):
        load_backend("llamacpp", BackendConfig(fake))


def test_ignore_eos_generates_exactly_max_tokens(backend):
    from smallfit.records import GenerationRequest

    # a prompt after which a chat model tends to end its turn at once
    (c,) = backend.generate([GenerationRequest("Thank you, goodbye.", max_tokens=12, ignore_eos=True)])
    assert c.n_output_tokens == 12 and c.finish_reason == "length"


def test_chat_template_from_the_gguf_is_rendered_and_its_special_tokens_parsed():
    from smallfit.backends.base import BackendConfig, load_backend
    from smallfit.models import parse_model_ref, resolve_model

    b = load_backend("llamacpp", BackendConfig(resolve_model(parse_model_ref("smollm2-135m")), threads=1,
                                               context_size=256))
    prompt = b.chat_prompt("What is 2+2?")
    assert "<|im_start|>user\nWhat is 2+2?<|im_end|>" in prompt and prompt.endswith("<|im_start|>assistant\n")
    ids = b.tokenize(prompt)
    start = b.tokenize("<|im_start|>", add_bos=False)
    assert len(start) == 1 and ids.count(start[0]) == 3  # system, user, assistant turns
    b.close()



def test_rolling_windows_are_lm_evals_with_a_full_context_for_the_last(backend, monkeypatch):
    from smallfit.records import RollingRequest

    long_text = " ".join(["The quick brown fox jumps over the lazy dog."] * 15)  # > 128 tokens, < 256
    tokens = backend.tokenize(long_text, add_bos=False)
    monkeypatch.setattr(backend, "rolling_length", 128)  # windows of 128: the rule, cheaply
    n, size = 128, len(tokens)
    assert n < size < 2 * n
    # lm-eval (context_len 1, then make_disjoint_window), written out: n tokens from the prefix token,
    # then the rest read after the n - (size - n) tokens before them (not after one token)
    windows = [([backend._prefix_token], tokens[:n]), (tokens[size - n - 1 : n], tokens[n:])]
    expected = 0.0
    for ctx, targets in windows:
        backend._clear()
        backend._eval_prefix(ctx[:-1])
        expected += backend._eval_scored([ctx[-1], *targets[:-1]], targets, len(ctx) - 1)[0]
    (r,) = backend.loglikelihood_rolling([RollingRequest(long_text)])
    assert r.n_tokens == size
    assert r.logprob == pytest.approx(expected, abs=1e-3)


def test_rolling_windows_are_the_training_context_whatever_the_loaded_one(backend):
    from smallfit.backends.base import BackendConfig, load_backend
    from smallfit.records import RollingRequest

    info = backend.info()
    assert info["rolling_window_tokens"] == backend.rolling_length >= 8192 > info["context_size"] == 512
    long_text = " ".join(["The quick brown fox jumps over the lazy dog."] * 60)  # ~600 tokens: one window
    (r,) = backend.loglikelihood_rolling([RollingRequest(long_text)])
    assert backend.n_ctx == 512 and backend.info()["context_size"] == 512  # the loaded context is back
    roomy = load_backend("llamacpp", BackendConfig(backend.config.model_path, threads=2, context_size=1024))
    try:
        (same,) = roomy.loglikelihood_rolling([RollingRequest(long_text)])
    finally:
        roomy.close()
    # one window either way, from a context made for it or the loaded one: the same arithmetic
    assert r.n_tokens == same.n_tokens > 512 and r.logprob == pytest.approx(same.logprob, abs=1e-4)


def test_info_records_which_cpu_kernels_the_weights_got(backend):
    info = backend.info()
    assert info["weight_buffers_mib"] and all(mib > 0 for mib in info["weight_buffers_mib"].values())
    assert bool(info["repacked_tensors"]) == ("CPU_REPACK" in info["weight_buffers_mib"])
    if info["weights_file_type"] == "3":  # SmolLM2's Q4_1: no repacked layout on any CPU
        assert info["repacked_tensors"] == {}


def test_weight_kernels_read_from_the_load_log():
    from smallfit.backends.llamacpp import weight_kernels

    log = ["load_tensors:   CPU_Mapped model buffer size =   235.16 MiB\n",
           "load_tensors:   CPU_REPACK model buffer size =    12.66 MiB\n", "....",
           "repack: repack tensor blk.0.attn_output.weight with q4_K_8x8\n",
           "repack: repack tensor blk.2.ffn_down.weight with q4_K_8x8\n",
           "repack: repack tensor blk.2.ffn_up.weight with q4_0_8x8\n"]
    assert weight_kernels(log) == {"repacked_tensors": {"q4_0_8x8": 1, "q4_K_8x8": 2},
                                   "weight_buffers_mib": {"CPU_Mapped": 235.16, "CPU_REPACK": 12.66}}


def test_a_file_llama_cpp_cannot_load_is_one_line_with_its_own_cause(tmp_path):
    from smallfit.backends.base import BackendConfig, load_backend
    from smallfit.errors import SmallfitError
    from smallfit.models import parse_model_ref, resolve_model

    # cut short, as an interrupted download leaves it
    truncated = tmp_path / "cut.gguf"
    with open(resolve_model(parse_model_ref("smollm2-135m")), "rb") as fh:
        truncated.write_bytes(fh.read(200_000))
    with pytest.raises(SmallfitError, match=r"could not load .*cut\.gguf.*\(gguf_init_from_reader: failed to read"):
        load_backend("llamacpp", BackendConfig(truncated))
    # an architecture this llama.cpp does not know (a model newer than the library, say)
    gguf = pytest.importorskip("gguf")
    alien = tmp_path / "alien.gguf"
    writer = gguf.GGUFWriter(str(alien), "nonesuch")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(SmallfitError) as err:
        load_backend("llamacpp", BackendConfig(alien))
    assert "unknown model architecture: 'nonesuch'" in str(err.value) and "\n" not in str(err.value)
