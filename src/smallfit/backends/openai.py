"""OpenAI-compatible HTTP backend (extra ``server``): llama-server, Ollama, vLLM, TGI,
llama-cpp-python's server.

The model is a URL, ``http://127.0.0.1:8080/v1#MODEL`` (the fragment, or ``options.model``,
names the served model; by default the first one ``/v1/models`` lists). Everything goes through
``/v1/completions``:

* ``generate`` streams (server-sent events, temperature 0) and timestamps every non-empty chunk
  the moment it is read: TTFT is the first non-empty chunk, latency the last. Output token counts
  come from the server's ``usage`` when it streams one, else from its tokenize endpoint
  (``/tokenize`` or ``/extras/tokenize``) run on the text afterwards, else they are chunk counts,
  and ``info()`` says which (``output_tokens_counted_by``).
* ``loglikelihood`` echoes ``context + continuation`` with ``logprobs`` and sums the token
  log-probabilities from the token that holds the continuation's first character (found by the
  server's ``text_offset``). At load, a probe checks the echoed log-probabilities are those of
  the server's own greedy tokens; a server that fails it (or cannot echo) declares
  ``loglikelihood=False`` and scoring raises a one-line error saying why.

Requests are timed from the start of the attempt that answered; connection errors and 5xx
answers are retried with exponential backoff and the retries are counted in ``info()``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from smallfit.backends._http import RetryPolicy, StreamClosed, Transport, sse_events
from smallfit.backends.base import BackendConfig, Capabilities
from smallfit.backends.llamacpp import split_pair
from smallfit.backends.registry import BackendSpec
from smallfit.errors import MissingExtraError, SmallfitError
from smallfit.probes.concurrency import measure_concurrency
from smallfit.records import (
    Completion,
    GenerationRequest,
    Loglikelihood,
    LoglikelihoodRequest,
    RollingLoglikelihood,
    RollingRequest,
)

NO_SCORING = "this server cannot score multiple-choice tasks; use generation tasks"
# A greedy token's echoed log-probability equals the best one at its position, up to float noise.
_GREEDY_TOL = 1e-4
_PROBE_PROMPT = "The capital of France is"


class OpenAIOptions(BaseModel):
    """Candidate options understood by this backend (``options = {...}`` in a spec)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(default=None, description="served model name (default: the URL's #fragment, "
                                                        "else the first model the server lists)")
    api_key_env: str | None = Field(default=None, description="environment variable holding the API key")
    timeout_s: float = Field(default=60.0, gt=0, le=3600, description="per-request timeout")
    retries: int = Field(default=3, ge=0, le=10, description="retries on connection errors and 5xx answers")
    backoff_s: float = Field(default=0.5, ge=0, le=60, description="wait before the first retry; doubles each time")
    concurrency: list[int] = Field(default=[1, 2, 4], max_length=8,
                                   description="requests in flight at each level of the concurrency pass")
    context_size: int | None = Field(default=None, ge=64, description="the server's context in tokens, where it "
                                     "does not say (vLLM's max_model_len and llama-server's /props are read)")


def _import() -> Any:
    try:
        import httpx
    except ImportError:
        raise MissingExtraError("httpx", "server") from None
    return httpx


def split_location(location: str) -> tuple[str, str | None]:
    """``http://h:8080/v1#MODEL`` -> (``http://h:8080/v1``, ``MODEL``); the fragment is optional."""
    base, _, fragment = location.partition("#")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SmallfitError(f"the openai backend needs a server URL like http://127.0.0.1:8080/v1, not {location!r}")
    return base.rstrip("/"), fragment or None


class OpenAIBackend:
    """A model served behind an OpenAI-compatible ``/v1/completions`` endpoint."""

    capabilities = Capabilities(loglikelihood=False, generation=True, streaming=True, concurrency=True)

    def __init__(self, config: BackendConfig) -> None:
        httpx = _import()
        try:
            self.opts = OpenAIOptions.model_validate(config.options)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise SmallfitError(f"openai option {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        if any(level < 1 or level > 64 for level in self.opts.concurrency):
            raise SmallfitError("openai option concurrency: levels must be between 1 and 64, e.g. [1, 2, 4]")
        self.base_url, fragment = split_location(config.location)
        headers = {}
        if self.opts.api_key_env:
            key = os.environ.get(self.opts.api_key_env)
            if not key:
                raise SmallfitError(f"the environment variable {self.opts.api_key_env} (options.api_key_env) is "
                                    "not set; export the server's API key in it")
            headers["Authorization"] = f"Bearer {key}"
        self.http = Transport(httpx, self.base_url, headers, self.opts.timeout_s,
                              RetryPolicy(self.opts.retries, self.opts.backoff_s))
        self._lock = threading.Lock()
        self._stats = {"requests": 0, "output_counted_by_usage": 0, "output_counted_by_tokenize": 0,
                       "output_counted_by_chunks": 0, "chunks_not_tokens": 0, "ignore_eos_not_honoured": 0,
                       "prompt_cache_reported": 0, "prompt_tokens_from_cache": 0}
        try:
            self.model = self._pick_model(self.opts.model or fragment)
            self._tokenize_path = self._probe_tokenize()
            self.context_size, self.context_from = self._probe_context()
            self.scoring_problem = self._probe_echo()
        except BaseException:
            self.http.close()
            raise
        self.capabilities = Capabilities(loglikelihood=self.scoring_problem is None, generation=True, streaming=True,
                                         concurrency=True)

    # -- probes at load ---------------------------------------------------------------------

    def _pick_model(self, wanted: str | None) -> str:
        data, _ = self.http.get_json("models", "listing the served models")
        listed = data.get("data")
        ids: list[str] = [str(m["id"]) for m in listed if isinstance(m, dict) and isinstance(m.get("id"), str)] \
            if isinstance(listed, list) else []
        if wanted is None:
            if not ids:
                raise SmallfitError(f"{self.base_url}/models lists no model; name one: {self.base_url}#MODEL "
                                    "or options.model")
            return ids[0]
        if ids and wanted not in ids:
            raise SmallfitError(f"the server at {self.base_url} does not serve {wanted!r}; it serves: "
                                f"{', '.join(ids[:10])}")
        return wanted

    def _probe_tokenize(self) -> tuple[str, str] | None:
        """The server's tokenize endpoint and the field it reads, or None if it has none."""
        for path, key in (("/extras/tokenize", "input"), ("/tokenize", "content"), ("/tokenize", "prompt")):
            try:
                data, _ = self.http.post_json(path, {"model": self.model, key: "Hello world"}, "tokenize probe")
            except SmallfitError:
                continue
            tokens = data.get("tokens")
            if isinstance(tokens, list) and tokens and all(isinstance(t, int) for t in tokens):
                return path, key
        return None

    def _probe_context(self) -> tuple[int | None, str | None]:
        """The server's context size in tokens and where it came from: the user's option, the
        model's ``max_model_len`` in ``/v1/models`` (vLLM) or ``/props`` (llama-server's
        ``default_generation_settings.n_ctx``); (None, None) where the server does not say, and
        then the latency pass cannot cut its prompts to fit."""
        if self.opts.context_size is not None:
            return self.opts.context_size, "options.context_size"
        data, _ = self.http.get_json("models", "listing the served models")
        listed = data.get("data")
        for entry in listed if isinstance(listed, list) else []:
            length = entry.get("max_model_len") if isinstance(entry, dict) else None
            if isinstance(entry, dict) and entry.get("id") == self.model and isinstance(length, int):
                return length, "max_model_len (/v1/models)"
        try:
            props, _ = self.http.get_json("/props", "server properties")
        except SmallfitError:
            return None, None
        settings = props.get("default_generation_settings")
        n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
        return (int(n_ctx), "n_ctx (/props)") if isinstance(n_ctx, int) and n_ctx > 0 else (None, None)

    def _probe_echo(self) -> str | None:
        """Why this server's echoed log-probabilities cannot score, or None when they can.

        Generates a few greedy tokens, then echoes prompt + those tokens: each generated token
        must carry the best log-probability at its position. llama-cpp-python's server fails this
        for models without a BOS token (its echoed log-probabilities are shifted by one token).
        """
        try:
            data, _ = self.http.post_json("completions", {
                "model": self.model, "prompt": _PROBE_PROMPT, "max_tokens": 3, "temperature": 0}, "generation probe")
            text = _choice(data, "generation probe").get("text")
            if not isinstance(text, str) or not text.strip():
                return "the server generated no text for the scoring probe"
            text = text.split("\n")[0] or text
            scored = self._echo(_PROBE_PROMPT + text, "scoring probe")
        except SmallfitError as exc:
            return f"its /v1/completions cannot echo the prompt with log-probabilities ({exc})"
        first = _span_start(scored, len(_PROBE_PROMPT))
        entry = scored[first] if first < len(scored) else None
        if entry is None or entry[1] is None or not entry[2]:
            return "its echoed prompt carries no log-probabilities with top alternatives"
        if entry[1] < max(entry[2].values()) - _GREEDY_TOL:
            return ("its echoed log-probabilities are not those of its own greedy tokens (llama-cpp-python's "
                    "server shifts them by one token for models without a BOS token)")
        return None

    # -- scoring ----------------------------------------------------------------------------

    def _echo(self, text: str, what: str) -> list[tuple[int, float | None, dict[str, float] | None]]:
        """(text offset, log-probability, top alternatives) of each token of ``text`` as echoed."""
        # max_tokens=1, not 0: some servers read 0 as "no limit"; the generated token is dropped below
        data, _ = self.http.post_json("completions", {
            "model": self.model, "prompt": text, "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": 1,
        }, what)
        lp = _choice(data, what).get("logprobs")
        if not isinstance(lp, dict):
            raise SmallfitError(f"{what}: the server's answer has no logprobs")
        offsets, logprobs, tops = lp.get("text_offset"), lp.get("token_logprobs"), lp.get("top_logprobs")
        if not (isinstance(offsets, list) and isinstance(logprobs, list) and len(offsets) == len(logprobs)):
            raise SmallfitError(f"{what}: the server's logprobs lack text_offset or token_logprobs")
        if not isinstance(tops, list) or len(tops) != len(offsets):
            tops = [None] * len(offsets)
        return [(int(o), None if v is None else float(v), t if isinstance(t, dict) else None)
                for o, v, t in zip(offsets, logprobs, tops, strict=True) if int(o) < len(text)]

    def _score(self, context: str, continuation: str) -> Loglikelihood:
        if self.scoring_problem is not None:
            raise SmallfitError(f"{NO_SCORING} ({self.scoring_problem})")
        tokens = self._echo(context + continuation, "scoring")
        span = tokens[_span_start(tokens, len(context)):] if continuation else []
        total, greedy = 0.0, True
        for _, logprob, top in span:
            if logprob is None:
                raise SmallfitError("this server gives no log-probability for the first token of a prompt, so it "
                                    "cannot score a text without context (perplexity); use llamacpp or transformers")
            total += logprob
            greedy = greedy and top is not None and logprob >= max(top.values()) - _GREEDY_TOL
        return Loglikelihood(total, greedy, len(span))

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[Loglikelihood]:
        """log P(continuation | context), one echo request per pair (lm-eval's whitespace split)."""
        return [self._score(*split_pair(r.context, r.continuation)) for r in requests]

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest]) -> list[RollingLoglikelihood]:
        """Every token of each text, in one echo request (the text must fit the server's context)."""
        out = []
        for r in requests:
            ll = self._score("", r.text)
            out.append(RollingLoglikelihood(ll.logprob, ll.n_tokens))
        return out

    # -- generation -------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int] | None:
        """Token ids from the server's own tokenizer, or None when it has no tokenize endpoint."""
        if self._tokenize_path is None:
            return None
        path, key = self._tokenize_path
        data, _ = self.http.post_json(path, {"model": self.model, key: text}, "tokenize")
        tokens = data.get("tokens")
        if not isinstance(tokens, list):
            raise SmallfitError(f"tokenize: {path} answered without a token list")
        return [int(t) for t in tokens]

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """Streamed greedy generation, one request at a time."""
        return [self._generate_one(r) for r in requests]

    def _generate_one(self, req: GenerationRequest) -> Completion:
        body: dict[str, Any] = {"model": self.model, "prompt": req.prompt, "max_tokens": req.max_tokens,
                                "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
                                # measured cold: llama-server honours it; others ignore the field (see info())
                                "cache_prompt": False}
        if req.stop:
            body["stop"] = list(req.stop)
        if req.ignore_eos:
            body["ignore_eos"] = True  # llama.cpp servers and vLLM honour it; others ignore it (counted)
        response, _, t0 = self.http.stream("completions", body, "generation")
        times: list[float] = []
        parts: list[str] = []
        finish: str | None = None
        usage: dict[str, Any] | None = None
        try:
            for event in sse_events(response, "generation"):
                now = time.perf_counter() - t0
                if isinstance(event.get("usage"), dict):
                    usage = event["usage"]
                timings = event.get("timings")
                if isinstance(timings, dict) and isinstance(timings.get("cache_n"), int):
                    with self._lock:  # llama-server says how many prompt tokens came from its cache
                        self._stats["prompt_tokens_from_cache"] += int(timings["cache_n"])
                        self._stats["prompt_cache_reported"] += 1
                choices = event.get("choices")
                if not isinstance(choices, list) or not choices:
                    continue
                piece = choices[0].get("text") if isinstance(choices[0], dict) else None
                if not isinstance(piece, str):
                    raise SmallfitError("generation: a streamed chunk has no choices[0].text; "
                                        "is this an OpenAI-compatible /v1/completions endpoint?")
                if piece:
                    times.append(now)
                    parts.append(piece)
                finish = choices[0].get("finish_reason") or finish
        except StreamClosed:
            if finish is None:  # a stream that ends after its finish_reason lost only [DONE]
                raise
        end = time.perf_counter() - t0
        if finish is None:
            raise SmallfitError("generation: the server ended the stream without a finish_reason, so the answer "
                                "was cut short (llama-cpp-python's server interrupts a request when another "
                                "arrives: start it with --interrupt_requests False)")
        return self._completion(req, "".join(parts), times, finish, usage, end)

    def _completion(self, req: GenerationRequest, text: str, times: list[float], finish: str | None,
                    usage: dict[str, Any] | None, end_s: float) -> Completion:
        hit = [text.find(s) for s in req.stop if s and s in text]
        if hit:  # a server that ignored stop: cut here too
            text, finish = text[: min(hit)], "stop"
        n_prompt, n_output, counted_by = _counts(usage)
        if n_output is None and self._tokenize_path is not None:
            prompt_ids, full_ids = self.tokenize(req.prompt), self.tokenize(req.prompt + text)
            if prompt_ids is not None and full_ids is not None:
                n_prompt, n_output, counted_by = len(prompt_ids), len(full_ids) - len(prompt_ids), "tokenize"
        if n_output is None:
            n_output, counted_by = len(times), "chunks"
        reason = {"length": "length"}.get(finish or "", "stop" if req.stop else "eos")
        with self._lock:
            self._stats["requests"] += 1
            self._stats[f"output_counted_by_{counted_by}"] += 1
            self._stats["chunks_not_tokens"] += int(n_output != len(times))
            self._stats["ignore_eos_not_honoured"] += int(req.ignore_eos and reason != "length")
        return Completion(text=text, n_prompt_tokens=n_prompt, n_output_tokens=n_output,
                          ttft_s=times[0] if times else None, latency_s=times[-1] if times else end_s,
                          token_times_s=tuple(times), finish_reason=reason)

    def measure_concurrency(self, requests: Sequence[GenerationRequest]) -> list[dict[str, Any]]:
        """The same requests at each level of ``options.concurrency``: throughput and latency."""
        levels = measure_concurrency(self._generate_one, requests, self.opts.concurrency)
        return [asdict(level) for level in levels]

    # -- the rest of the protocol -----------------------------------------------------------

    def chat_prompt(self, user_message: str) -> str:
        """Not available: the server applies its own template only on /v1/chat/completions."""
        raise SmallfitError("the openai backend cannot render the model's chat template as text; "
                            "set chat_template = false for the task (or run the model through llamacpp)")

    def info(self) -> dict[str, Any]:
        """Settings and what the server supports; counters are cumulative since load."""
        with self._lock:
            stats = dict(self._stats)
        by = [k.removeprefix("output_counted_by_") for k in ("output_counted_by_usage", "output_counted_by_tokenize",
                                                            "output_counted_by_chunks") if stats[k]]
        return {
            "library": "httpx", "library_version": getattr(self.http.httpx, "__version__", "unknown"),
            "server_url": self.base_url, "server_model": self.model, "threads": None,
            "timeout_s": self.opts.timeout_s, "max_retries": self.opts.retries,
            "retries": self.http.counter.retries, "requests_retried": self.http.counter.requests_retried,
            "loglikelihood": self.scoring_problem is None, "loglikelihood_unsupported_because": self.scoring_problem,
            "tokenize_endpoint": self._tokenize_path[0] if self._tokenize_path else None,
            "context_size": self.context_size, "context_size_from": self.context_from,
            "output_tokens_counted_by": "+".join(by) or None,
            "decoding": "greedy (temperature 0, server side)", "ttft_from": "first non-empty streamed chunk",
            "prompt_cache_disabled": _cache_disabled(stats),
            **stats,
        }

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()


def _cache_disabled(stats: Mapping[str, int]) -> bool | None:
    """Whether ``cache_prompt: false`` held: True when the server reported (llama-server's
    ``timings.cache_n``) no prompt token taken from its cache, False when it took some, None when
    it said nothing (llama-cpp-python's server ignores the field and reuses the previous prompt's
    longest common prefix; vLLM's prefix caching is a server flag)."""
    if not stats["prompt_cache_reported"]:
        return None
    return stats["prompt_tokens_from_cache"] == 0


def _choice(data: dict[str, Any], what: str) -> dict[str, Any]:
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise SmallfitError(f"{what}: the server's answer has no choices")
    choice: dict[str, Any] = choices[0]
    return choice


def _span_start(tokens: Sequence[tuple[int, Any, Any]], char: int) -> int:
    """Index of the first token holding character ``char``: the first token that starts there,
    else the one that straddles it (it belongs to the continuation, as it would when the
    continuation is tokenised after its context)."""
    offsets = [t[0] for t in tokens]
    if char in offsets:
        return offsets.index(char)
    before = [i for i, o in enumerate(offsets) if o < char]
    return before[-1] if before else 0


def _counts(usage: dict[str, Any] | None) -> tuple[int | None, int | None, str]:
    if not usage or not isinstance(usage.get("completion_tokens"), int):
        return None, None, ""
    prompt = usage.get("prompt_tokens")
    return (prompt if isinstance(prompt, int) else None), int(usage["completion_tokens"]), "usage"


def check_server(location: str, options: Mapping[str, Any]) -> None:
    """Before any work: the server answers ``GET /v1/models`` within a few seconds."""
    import json
    import urllib.error
    import urllib.request

    base, _ = split_location(location)
    request = urllib.request.Request(f"{base}/models")
    key_env = options.get("api_key_env")
    if isinstance(key_env, str) and os.environ.get(key_env):
        request.add_header("Authorization", f"Bearer {os.environ[key_env]}")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 - the user's own server URL
            json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise SmallfitError(f"{base}/models answered HTTP {exc.code}; check the URL (it ends in /v1) and the "
                            "server's API key (options.api_key_env)") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SmallfitError(f"no server answers at {base} ({reason}); start it or fix the URL") from None
    except ValueError:
        raise SmallfitError(f"{base}/models did not answer JSON: is this an OpenAI-compatible server's /v1 URL?") \
            from None


BACKEND = BackendSpec(
    name="openai", load=OpenAIBackend, aliases=("server",), formats=("http",), default_for=("http",), serves=True,
    check_model=check_server, extra="server",
    description="any OpenAI-compatible server (llama-server, Ollama, vLLM, TGI) by its URL http://HOST:PORT/v1",
)
