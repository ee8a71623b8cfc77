"""The openai backend against llama-cpp-python's real OpenAI-compatible server on 127.0.0.1, and
against a tiny misbehaving server for faults a real one cannot be made to produce on demand."""

import json
from pathlib import Path

import pytest

from tests.conftest import REPO, needs_models
from tests.servers import fake_server, free_port, llama_server, needs_server

pytestmark = [needs_server]


def _load(url: str, **options):
    from smallfit.backends.base import BackendConfig, load_backend

    return load_backend("openai", BackendConfig(Path(), location=url, options=options))


def _model(alias: str) -> Path:
    from smallfit.models import parse_model_ref, resolve_model

    return resolve_model(parse_model_ref(alias))


@pytest.fixture(scope="module")
def smollm2_server():
    with llama_server(_model("smollm2-135m")) as url:
        yield url


@pytest.fixture(scope="module")
def smollm2(smollm2_server):
    b = _load(smollm2_server)
    yield b
    b.close()


# -- the real server ---------------------------------------------------------------------------

@needs_models
@pytest.mark.models
def test_streamed_generation_with_timings_and_token_counts(smollm2):
    from smallfit.backends.base import BackendConfig, load_backend
    from smallfit.records import GenerationRequest

    prompt = "The capital of France is"
    (c,) = smollm2.generate([GenerationRequest(prompt, max_tokens=8)])
    assert "Paris" in c.text
    assert c.ttft_s is not None and 0 < c.ttft_s == c.token_times_s[0] <= c.latency_s == c.token_times_s[-1]
    assert list(c.token_times_s) == sorted(c.token_times_s)
    # counts from the server's own tokenizer (it streams no usage), equal to llama.cpp's in-process
    llama = load_backend("llamacpp", BackendConfig(_model("smollm2-135m"), threads=1, context_size=512))
    assert c.n_prompt_tokens == len(llama.tokenize(prompt))
    assert c.n_output_tokens == len(llama.tokenize(prompt + c.text)) - len(llama.tokenize(prompt)) == 8
    (same,) = llama.generate([GenerationRequest(prompt, max_tokens=8)])
    llama.close()
    # greedy on the same weights: the same answer (later tokens may part where two are near-tied:
    # measured ' Paris.\n- The' here against ' Paris.\n\nThe' in process)
    assert same.text.split("\n")[0] == c.text.split("\n")[0] == " Paris."
    info = smollm2.info()
    assert info["output_tokens_counted_by"] == "tokenize" and info["tokenize_endpoint"] == "/extras/tokenize"
    assert info["chunks_not_tokens"] == 0  # this server streams one token per chunk
    # llama-cpp-python's server ignores cache_prompt and reports no cache use: not confirmed disabled
    assert info["prompt_cache_disabled"] is None and info["prompt_cache_reported"] == 0


@needs_models
@pytest.mark.models
def test_latency_prompts_are_cut_to_the_declared_context(smollm2, smollm2_server):
    from smallfit.measure import fitting_prompts
    from smallfit.records import GenerationRequest

    # llama-cpp-python's server states no context (no max_model_len, no /props): nothing is cut
    assert smollm2.info()["context_size"] is None
    long = "Tell me about bees. " * 200  # about 1,000 tokens, twice the server's 512
    assert fitting_prompts(smollm2, [long], 32, {}) == [long]
    declared = _load(smollm2_server, context_size=512)
    try:
        assert declared.info()["context_size"] == 512
        assert declared.info()["context_size_from"] == "options.context_size"
        details: dict = {}
        (cut,) = fitting_prompts(declared, [long], 32, details)
        assert long.startswith(cut) and len(declared.tokenize(cut)) <= 512 - 32 - 1
        assert details["timing_prompts_truncated"] == 1
        (c,) = declared.generate([GenerationRequest(cut, max_tokens=32)])  # fits: the server answers
        assert c.n_output_tokens > 0
    finally:
        declared.close()


@needs_models
@pytest.mark.models
def test_stop_sequences(smollm2):
    from smallfit.records import GenerationRequest

    (c,) = smollm2.generate([GenerationRequest("Count: 1, 2, 3, 4,", max_tokens=16, stop=(",",))])
    assert "," not in c.text and c.finish_reason in ("stop", "length")


@needs_models
@pytest.mark.models
def test_smollm2_server_cannot_score_and_says_why(smollm2):
    """Found for real: llama-cpp-python 0.3.36's server pairs each echoed token with the
    log-probabilities of the *next* position when the model adds no BOS token (SmolLM2), so its
    echoed scores are wrong; the load probe detects it and scoring says so in one line."""
    from smallfit.errors import SmallfitError
    from smallfit.records import LoglikelihoodRequest, RollingRequest

    assert not smollm2.capabilities.loglikelihood
    assert "shifts them by one token" in smollm2.info()["loglikelihood_unsupported_because"]
    with pytest.raises(SmallfitError, match="cannot score multiple-choice tasks; use generation tasks"):
        smollm2.loglikelihood([LoglikelihoodRequest("The capital of France is", " Paris")])
    with pytest.raises(SmallfitError, match="cannot score multiple-choice tasks"):
        smollm2.loglikelihood_rolling([RollingRequest("Hello.")])


@needs_models
@pytest.mark.models
def test_concurrency_levels(smollm2):
    from smallfit.backends.base import ConcurrentBackend
    from smallfit.records import GenerationRequest

    assert isinstance(smollm2, ConcurrentBackend)
    reqs = [GenerationRequest(p, max_tokens=4, ignore_eos=True) for p in ("The capital of France is", "Hello,",
                                                                          "1, 2, 3,", "Once upon a time")]
    levels = smollm2.measure_concurrency(reqs)
    assert [lv["concurrency"] for lv in levels] == [1, 2, 4]
    for lv in levels:
        assert lv["n_requests"] == 4 and lv["wall_s"] > 0 and lv["requests_per_s"] > 0
        assert lv["ttft_s"] <= lv["latency_s"] and lv["latency_s"] <= lv["latency_s_p95"]
        assert lv["output_tok_s"] > 0


@needs_models
@pytest.mark.models
def test_run_through_the_cli(cli, smollm2_server):
    """capitals (generation) runs; quartz (multiple choice) is refused with the clear message
    and recorded as that task's error; an unreachable second server stops the run before any
    work (one line, exit 2), or with --keep-going is recorded as its own error."""
    dead = f"http://127.0.0.1:{free_port()}/v1"
    spec = Path(cli.db).parent / "spec.toml"
    spec.write_text(f"""
tasks = ["{REPO / 'examples' / 'capitals.toml'}", "quartz"]
limit = 3
latency_prompts = 2
latency_max_tokens = 4
[[candidates]]
model = "{smollm2_server}"
options = {{concurrency = [1, 2]}}
[[candidates]]
model = "dead={dead}"
options = {{retries = 1, backoff_s = 0.01}}
""")
    refused = cli("run", str(spec), timeout=600)
    assert refused.returncode == 2 and f"dead: no server answers at {dead}" in refused.stderr
    run = cli("run", str(spec), "--keep-going", timeout=600)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    rows = json.loads(cli("results", "--format", "json", check=True).stdout)
    by = {(r["candidate"], r["task"]): r for r in rows}
    name = smollm2_server.split("//")[1].split("/")[0]
    cap = by[(name, "capitals")]
    assert cap["error"] is None
    m = cap["metrics"]
    assert m["exact_match"] is not None and m["model_size_bytes"] is None
    assert m["ttft_s"] <= m["latency_s"] and m["prefill_tok_s"] is not None
    assert "cannot score multiple-choice tasks; use generation tasks" in by[(name, "quartz")]["error"]
    assert f"no server answers at {dead}" in by[("dead", "capitals")]["error"]
    from smallfit.store import Store

    store = Store.open(cli.db, create=False)
    (result,) = [t for t in store.task_results(rows[0]["run_id"]) if t["candidate"] == name and t["task"] == "capitals"]
    info = json.loads(result["info_json"])
    assert [lv["concurrency"] for lv in info["concurrency"]] == [1, 2]
    # the backend's counters as of the task's end (only those that changed since load are kept)
    assert info["backend"]["requests"] > 0 and info["backend"]["output_tokens_counted_by"] == "tokenize"
    assert "retries" not in info["backend"]  # still 0, as at load


# -- faults ------------------------------------------------------------------------------------

def test_unreachable_server_is_one_clear_error():
    from smallfit.errors import SmallfitError

    with pytest.raises(SmallfitError, match=r"cannot reach the server at http://127.0.0.1:\d+/v1 .*2 tries"):
        _load(f"http://127.0.0.1:{free_port()}/v1", retries=1, backoff_s=0.01)


def test_garbage_answer():
    from smallfit.errors import SmallfitError

    with fake_server("garbage") as url, pytest.raises(SmallfitError, match="not JSON.*OpenAI-compatible"):
        _load(url, retries=0)


@pytest.mark.parametrize(("mode", "message"), [
    ("not-sse", "instead of a server-sent event stream"),
    ("bad-lines", "not a server-sent event"),
    ("drop", "closed the stream before it finished"),
])
def test_bad_streams(mode, message):
    from smallfit.errors import SmallfitError
    from smallfit.records import GenerationRequest

    with fake_server(mode) as url:
        b = _load(url, retries=0)
        assert not b.capabilities.loglikelihood  # this fake cannot echo log-probabilities
        with pytest.raises(SmallfitError, match=message):
            b.generate([GenerationRequest("Hi", max_tokens=4)])
        b.close()


def test_5xx_answers_are_retried_and_counted():
    from smallfit.records import GenerationRequest

    with fake_server("flaky") as url:
        b = _load(url, retries=3, backoff_s=0.01)
        (c,) = b.generate([GenerationRequest("Hi", max_tokens=4)])
        info = b.info()
        b.close()
    assert c.text == " Paris" and c.n_output_tokens == 2 and c.n_prompt_tokens is None
    assert info["retries"] == 2 and info["requests_retried"] == 1
    assert info["output_tokens_counted_by"] == "chunks"  # no usage, no tokenize endpoint: said, not hidden


def test_bad_options_and_references():
    from smallfit.errors import SmallfitError
    from smallfit.models import parse_model_ref

    with pytest.raises(SmallfitError, match="openai option timeout_s"):
        _load("http://127.0.0.1:1/v1", timeout_s=-1)
    with pytest.raises(SmallfitError, match="openai option nope"):
        _load("http://127.0.0.1:1/v1", nope=1)
    with pytest.raises(SmallfitError, match="OPENAI_TEST_KEY_UNSET"):
        _load("http://127.0.0.1:1/v1", api_key_env="OPENAI_TEST_KEY_UNSET")
    with pytest.raises(SmallfitError, match="needs a server URL"):
        from smallfit.backends.openai import split_location

        split_location("ftp://x/v1")
    with pytest.raises(SmallfitError, match="drop the @BACKEND suffix"):
        parse_model_ref("http://127.0.0.1:8080/v1@llamacpp")


def test_cache_disabled_only_when_the_server_says_so():
    from smallfit.backends.openai import _cache_disabled

    assert _cache_disabled({"prompt_cache_reported": 0, "prompt_tokens_from_cache": 0}) is None
    assert _cache_disabled({"prompt_cache_reported": 3, "prompt_tokens_from_cache": 0}) is True
    assert _cache_disabled({"prompt_cache_reported": 3, "prompt_tokens_from_cache": 12}) is False
