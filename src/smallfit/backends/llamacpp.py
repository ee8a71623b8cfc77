"""llama.cpp backend (llama-cpp-python), talking to the C API for logits only where scored.

Log-likelihoods come from the model's logits: the context is evaluated once per group of
requests that share it, and each continuation is evaluated on top of it with logits requested
only at the positions that are scored. Generation is greedy (argmax of the logits), one token
per decode step, timestamped the moment each token id is known. The KV cache is cleared before
every generation so that no request benefits from an earlier one's prompt.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from smallfit.backends.base import BackendConfig, Capabilities
from smallfit.backends.registry import BackendSpec
from smallfit.backends.rolling import rolling_windows
from smallfit.errors import LLAMA_CPP_REBUILD, MissingExtraError, SmallfitError
from smallfit.records import (
    Completion,
    GenerationRequest,
    Loglikelihood,
    LoglikelihoodRequest,
    RollingLoglikelihood,
    RollingRequest,
)

# Logit blocks at least this big (elements) have their log-sum-exp split over the threads.
_SPLIT_ELEMENTS = 2**22
# Bytes of logits one decode may ask for: caps the rows per step when every position is scored
# (Gemma's 262k-token vocabulary makes a 512-row output buffer 512 MiB).
_LOGIT_BUFFER_BYTES = 64 * 2**20


def _import() -> tuple[Any, Any]:
    try:
        import llama_cpp
        import numpy
    except ImportError:
        raise MissingExtraError("llama-cpp-python", "llamacpp") from None
    except (OSError, RuntimeError) as exc:  # its shared library: an old glibc, a missing CPU feature
        cause = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise SmallfitError(f"llama.cpp's library does not load on this machine ({cause}); rebuild it here: "
                            f"{LLAMA_CPP_REBUILD}") from None
    return llama_cpp, numpy


def split_pair(context: str, continuation: str) -> tuple[str, str]:
    """Move trailing whitespace of the context onto the continuation, as lm-eval does, so that
    ``"Answer: "`` + ``"Paris"`` is scored as ``"Answer:"`` + ``" Paris"``."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        return context[:-n_spaces], context[-n_spaces:] + continuation
    return context, continuation


class LlamaCppBackend:
    """A GGUF model loaded through llama-cpp-python."""

    capabilities = Capabilities(loglikelihood=True, generation=True, streaming=True, batching=True, token_logprobs=True)

    def __init__(self, config: BackendConfig) -> None:
        self._lib, self._np = _import()
        path = config.model_path
        with open(path, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise SmallfitError(f"{path} is not a GGUF file; the llamacpp backend reads .gguf models")
        self.config = config
        self.threads = config.threads or 1
        try:
            with _load_log(self._lib) as log:
                self._llm = self._lib.Llama(
                    model_path=str(path), n_ctx=config.context_size, n_batch=config.batch_size,
                    n_ubatch=config.batch_size, n_threads=self.threads, n_threads_batch=self.threads,
                    seed=config.seed, logits_all=False, verbose=False,
                )
        except (ValueError, RuntimeError) as exc:
            raise SmallfitError(f"llama.cpp could not load {path}: {exc}{_log_cause(log)}") from None
        self._kernels = weight_kernels(log)
        self._ctx = self._llm._ctx.ctx
        self._mem = self._lib.llama_get_memory(self._ctx)
        self._vocab = self._lib.llama_model_get_vocab(self._llm._model.model)
        self.n_vocab = int(self._llm.n_vocab())
        self._logits_type = ctypes.c_float * self.n_vocab
        self.n_ctx = int(self._llm.n_ctx())
        # lm-eval's rolling window: the model's own (training) context, as the transformers backend's
        self.rolling_length = int(self._lib.llama_model_n_ctx_train(self._llm._model.model)) or self.n_ctx
        self._batch = self._lib.llama_batch_init(config.batch_size, 0, 1)
        bos = int(self._lib.llama_vocab_bos(self._vocab))
        self._bos = bos
        self._prefix_token = bos if bos >= 0 else int(self._lib.llama_vocab_eos(self._vocab))
        self._rows_per_logits_step = max(1, min(config.batch_size, _LOGIT_BUFFER_BYTES // (4 * self.n_vocab)))
        self._pool: Any = None

    # -- plumbing ---------------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids from the model's own tokenizer: BOS only if the model declares one (and the
        text does not start with it already, as a chat template's output may); special tokens
        written in the text are parsed, as Hugging Face tokenizers do."""
        ids = list(self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))
        if len(ids) > 1 and ids[0] == ids[1] == self._bos:
            ids = ids[1:]
        return ids

    def chat_prompt(self, user_message: str) -> str:
        """One user turn in the chat template stored in the GGUF file (``tokenizer.chat_template``)."""
        template = self._llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise SmallfitError("this model's GGUF file has no chat template; set chat_template = false for the task")
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        def text_of(token: int) -> str:
            return "" if token < 0 else bytes(self._llm.detokenize([token], special=True)).decode("utf-8", "replace")

        formatter = Jinja2ChatFormatter(template=template, eos_token=text_of(self._lib.llama_vocab_eos(self._vocab)),
                                        bos_token=text_of(self._bos), add_generation_prompt=True)
        try:
            return str(formatter(messages=[{"role": "user", "content": user_message}]).prompt)
        except Exception as exc:  # noqa: BLE001 - a template is a program of its own
            raise SmallfitError(f"the model's chat template failed to render: {exc}") from None

    def _clear(self) -> None:
        self._lib.llama_memory_clear(self._mem, True)

    def _decode(self, tokens: Sequence[int], start_pos: int, want_logits: Sequence[bool]) -> None:
        """Evaluate ``tokens`` at positions from ``start_pos``; logits kept where requested."""
        b = self._batch
        b.n_tokens = len(tokens)
        for i, tok in enumerate(tokens):
            b.token[i] = tok
            b.pos[i] = start_pos + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = want_logits[i]
        rc = self._lib.llama_decode(self._ctx, b)
        if rc != 0:
            raise SmallfitError(f"llama_decode failed with code {rc} (context of {self.n_ctx} tokens full?)")

    def _output_rows(self, n_rows: int) -> Any:
        """The logits of the previous decode's ``n_rows`` outputs, as an (n_rows, n_vocab) view."""
        ptr = self._lib.llama_get_logits(self._ctx)
        return self._np.ctypeslib.as_array(ptr, shape=(n_rows, self.n_vocab))

    def _eval_scored(self, inputs: Sequence[int], targets: Sequence[int], start_pos: int) -> tuple[float, bool]:
        """Evaluate ``inputs`` from ``start_pos``; input ``i`` predicts ``targets[i]``.

        Returns the summed log-probability of the targets and whether each was the argmax.
        """
        total, greedy = 0.0, True
        step = self._rows_per_logits_step
        for lo in range(0, len(inputs), step):
            chunk = inputs[lo : lo + step]
            self._decode(chunk, start_pos + lo, [True] * len(chunk))
            logits = self._output_rows(len(chunk))
            peak, lse = self._row_norms(logits)
            for j, tgt in enumerate(targets[lo : lo + step]):
                total += float(logits[j, tgt]) - float(lse[j])
                greedy = greedy and float(logits[j, tgt]) >= float(peak[j])
        return total, greedy

    def _row_norms(self, logits: Any) -> tuple[Any, Any]:
        """Each row's max and log-sum-exp, for log-softmax at the targets only:
        x[t] - (max + log(sum(exp(x - max)))). Big blocks (every position of a text scored with a
        large vocabulary: Gemma's 262k) are split by rows over the candidate's threads, which sit
        idle while numpy works; each row's arithmetic is the same either way."""
        np = self._np

        def norms(rows: Any) -> tuple[Any, Any]:
            peak = rows.max(axis=1)
            return peak, peak + np.log(np.exp(rows - peak[:, None]).sum(axis=1, dtype=np.float64))

        if self.threads < 2 or logits.size < _SPLIT_ELEMENTS:
            return norms(logits)
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="smallfit-lse")
        parts = list(self._pool.map(norms, np.array_split(logits, self.threads)))
        return np.concatenate([p for p, _ in parts]), np.concatenate([n for _, n in parts])

    def _eval_prefix(self, tokens: Sequence[int]) -> None:
        """Evaluate tokens into the cache without asking for logits."""
        step = self.config.batch_size
        for lo in range(0, len(tokens), step):
            chunk = tokens[lo : lo + step]
            self._decode(chunk, lo, [False] * len(chunk))

    # -- the three methods ------------------------------------------------------------------

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[Loglikelihood]:
        """Score each continuation; requests sharing a context evaluate it once."""
        groups: dict[str, list[int]] = defaultdict(list)
        pairs = [split_pair(r.context, r.continuation) for r in requests]
        for i, (ctx, _) in enumerate(pairs):
            groups[ctx].append(i)
        out: list[Loglikelihood | None] = [None] * len(requests)
        for ctx, idxs in groups.items():
            ctx_tokens = self.tokenize(ctx) if ctx else []
            if not ctx_tokens:
                ctx_tokens = [self._prefix_token]
            conts = [self.tokenize(ctx + pairs[i][1])[len(ctx_tokens):] if ctx
                     else self.tokenize(pairs[i][1], add_bos=False) for i in idxs]
            longest = max(len(c) for c in conts)
            keep = max(1, self.n_ctx - longest)
            ctx_tokens = ctx_tokens[-keep:]  # left-truncate a context that would not fit
            self._clear()
            self._eval_prefix(ctx_tokens[:-1])
            base = len(ctx_tokens) - 1
            for i, cont in zip(idxs, conts, strict=True):
                if not cont:
                    out[i] = Loglikelihood(0.0, True, 0)
                    continue
                self._lib.llama_memory_seq_rm(self._mem, 0, base, -1)
                inputs = [ctx_tokens[-1], *cont[:-1]]
                logprob, greedy = self._eval_scored(inputs, cont, base)
                out[i] = Loglikelihood(logprob, greedy, len(cont))
        return [o for o in out if o is not None]

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest]) -> list[RollingLoglikelihood]:
        """lm-eval's rolling windows of the model's own (training) context, as lm-eval and the
        transformers backend build them: the first token is predicted from the BOS (or EOS) token,
        each later window from a full window of the tokens before it. Windows longer than the
        loaded context are scored in a context made for them (as many cells as the longest
        window needs, at most the training context) and freed afterwards."""
        docs = [self.tokenize(r.text, add_bos=False) for r in requests]
        needed = max((min(len(t) + 1, self.rolling_length) for t in docs), default=0)
        results = []
        with self._context_of(needed):
            for tokens in docs:
                total = 0.0
                for ctx, targets in rolling_windows(tokens, self._prefix_token, self.rolling_length):
                    self._clear()
                    self._eval_prefix(ctx[:-1])  # context without logits; its last token predicts the first target
                    logprob, _ = self._eval_scored([ctx[-1], *targets[:-1]], targets, len(ctx) - 1)
                    total += logprob
                results.append(RollingLoglikelihood(total, len(tokens)))
        return results

    @contextlib.contextmanager
    def _context_of(self, cells: int) -> Iterator[None]:
        """Decode in a context of at least ``cells`` cells for the block: the loaded one where it
        is big enough, else a new one with the same settings, freed on the way out."""
        if cells <= self.n_ctx:
            yield
            return
        from llama_cpp._internals import LlamaContext

        params = type(self._llm.context_params).from_buffer_copy(self._llm.context_params)
        params.n_ctx = cells
        try:
            big = LlamaContext(model=self._llm._model, params=params, verbose=False)
        except ValueError as exc:
            raise SmallfitError(f"llama.cpp could not make a {cells}-token context for a rolling window: {exc}; "
                                "lower the documents' length or run on a machine with more memory") from None
        saved = self._ctx, self._mem, self.n_ctx
        self._ctx, self._mem, self.n_ctx = big.ctx, self._lib.llama_get_memory(big.ctx), cells
        try:
            yield
        finally:
            self._ctx, self._mem, self.n_ctx = saved
            big.close()  # type: ignore[no-untyped-call]

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """Greedy generation, one request at a time, each from an empty KV cache."""
        return [self._generate_one(r) for r in requests]

    def _generate_one(self, req: GenerationRequest) -> Completion:
        lib = self._lib
        t0 = time.perf_counter()  # the request starts before tokenisation
        prompt = self.tokenize(req.prompt) or [self._prefix_token]
        max_new = max(0, min(req.max_tokens, self.n_ctx - len(prompt)))
        if max_new == 0:
            raise SmallfitError(f"prompt of {len(prompt)} tokens leaves no room in the {self.n_ctx}-token context")
        out: list[int] = []
        out_bytes = bytearray()
        times: list[float] = []
        logprobs: list[float] = []
        finish, text = "length", ""
        self._clear()
        self._eval_prefix(prompt[:-1])
        pos, tok = len(prompt) - 1, prompt[-1]
        for _ in range(max_new):
            self._decode([tok], pos, [True])
            pos += 1
            logits = self._last_logits()
            tok = int(logits.argmax())
            if lib.llama_vocab_is_eog(self._vocab, tok):  # not an output token
                if not req.ignore_eos:
                    finish = "eos"
                    break
                tok = self._best_non_eog(logits)
            times.append(time.perf_counter() - t0)
            out.append(tok)
            if req.logprobs:  # after the timestamp: the signal's cost falls on the next token, as a cascade pays it
                logprobs.append(self._token_logprob(logits, tok))
            if req.stop:  # text is needed per token only to look for a stop sequence
                out_bytes += self._llm.detokenize([tok])
                text = out_bytes.decode("utf-8", errors="ignore")
                hit = _first_stop(text, req.stop)
                if hit is not None:
                    text, finish = text[:hit], "stop"
                    break
        if not req.stop:
            text = bytes(self._llm.detokenize(out)).decode("utf-8", errors="ignore")
        latency = times[-1] if times else time.perf_counter() - t0
        return Completion(
            text=text, n_prompt_tokens=len(prompt), n_output_tokens=len(times),
            ttft_s=times[0] if times else None, latency_s=latency,
            token_times_s=tuple(times), finish_reason=finish,
            token_logprobs=tuple(logprobs[: len(times)]) if req.logprobs else None,
        )

    def _token_logprob(self, logits: Any, tok: int) -> float:
        """log-softmax of ``logits`` at ``tok``: x[tok] - (max + log(sum(exp(x - max))))."""
        np = self._np
        peak = float(logits.max())
        return float(logits[tok]) - peak - float(np.log(np.exp(logits - peak).sum(dtype=np.float64)))

    def _last_logits(self) -> Any:
        """A zero-copy view of the last decoded position's logits."""
        ptr = self._lib.llama_get_logits_ith(self._ctx, -1)
        address = ctypes.cast(ptr, ctypes.c_void_p).value
        if not address:
            raise SmallfitError("llama.cpp returned no logits for the last position")
        return self._np.frombuffer(self._logits_type.from_address(address), dtype=self._np.float32)

    def _best_non_eog(self, logits: Any) -> int:
        masked = logits.copy()
        tok = int(masked.argmax())
        while self._lib.llama_vocab_is_eog(self._vocab, tok):
            masked[tok] = -float("inf")
            tok = int(masked.argmax())
        return tok

    def next_token_logprobs(self, text: str, last_n: int) -> Any:
        """Log-probabilities of the whole vocabulary for the next token at each of the last
        ``last_n`` positions of ``text`` (fewer for a shorter text): a float32 (rows, n_vocab)
        array, the last row predicting the token after the text. A text longer than the context
        keeps its end."""
        np = self._np
        tokens = (self.tokenize(text) or [self._prefix_token])[-self.n_ctx:]
        n = min(last_n, len(tokens))
        self._clear()
        self._eval_prefix(tokens[:-n])
        rows = []
        step = self._rows_per_logits_step
        for lo in range(len(tokens) - n, len(tokens), step):
            chunk = tokens[lo : min(lo + step, len(tokens))]
            self._decode(chunk, lo, [True] * len(chunk))
            logits = self._output_rows(len(chunk)).astype(np.float64)
            peak = logits.max(axis=1, keepdims=True)
            lse = peak + np.log(np.exp(logits - peak).sum(axis=1, keepdims=True))
            rows.append((logits - lse).astype(np.float32))
        return np.concatenate(rows)

    # -- probes (their own contexts; see llamacpp_probes) --------------------------------------

    def generate_together(self, prompts: Sequence[str], max_tokens: int) -> list[Completion]:
        """Fixed-length greedy generation for all prompts at once (one batch per step)."""
        from smallfit.backends.llamacpp_probes import generate_together

        return generate_together(self, prompts, max_tokens)

    def prefill_seconds(self, tokens: Sequence[int]) -> float:
        """Time to evaluate a prompt of these tokens and pick the first output token."""
        from smallfit.backends.llamacpp_probes import prefill_once

        return prefill_once(self, tokens)

    def context_train(self) -> int:
        """The model's training context length."""
        from smallfit.backends.llamacpp_probes import context_train

        return context_train(self)

    def info(self) -> dict[str, Any]:
        """Settings recorded with every result of this candidate."""
        sysinfo = self._lib.llama_print_system_info()
        return {
            "library": "llama-cpp-python",
            "library_version": getattr(self._lib, "__version__", "unknown"),
            "threads": self.threads,
            "context_size": self.n_ctx,
            "rolling_window_tokens": self.rolling_length,
            "batch_size": self.config.batch_size,
            "n_vocab": self.n_vocab,
            "prefix_cache": False,
            "decoding": "greedy (argmax)",
            "system_info": sysinfo.decode("utf-8", "replace") if isinstance(sysinfo, bytes) else str(sysinfo),
            "weights_file_type": self._llm.metadata.get("general.file_type", "unknown"),
            **self._kernels,
            **build_info(self._lib),
        }

    def close(self) -> None:
        """Free the batch, the model and the row-norm threads."""
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown()
            self._pool = None
        if getattr(self, "_batch", None) is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.close()
            self._llm = None


def build_info(lib: Any) -> dict[str, str]:
    """Which llama.cpp build this is: ggml's version and commit ("unknown" when built from a source
    distribution without git), and a digest of the shared libraries that ran, which tells two
    builds of the same version apart (a native build, a reduced build, a prebuilt wheel)."""
    folder = Path(lib.__file__).parent / "lib"
    out = {"ggml_version": "unknown", "ggml_commit": "unknown", "llama_cpp_lib": str(folder)}
    try:
        base = ctypes.CDLL(str(next(folder.glob("libggml-base.so*"))))
        for name in ("ggml_version", "ggml_commit"):
            fn = getattr(base, name)
            fn.restype = ctypes.c_char_p
            out[name] = (fn() or b"unknown").decode("utf-8", "replace")
    except (OSError, StopIteration, AttributeError):
        pass
    digest = hashlib.sha256()
    for so in sorted(folder.glob("lib*.so")):
        digest.update(so.name.encode())
        digest.update(so.read_bytes())
    out["llama_cpp_lib_sha256"] = digest.hexdigest()[:16]
    return out


@contextlib.contextmanager
def _load_log(lib: Any) -> Iterator[list[str]]:
    """llama.cpp's log lines while the block runs (a model load), whatever the verbosity: a
    capturing callback is swapped in and llama-cpp-python's own put back after."""
    from llama_cpp._logger import llama_log_callback as own

    lines: list[str] = []

    @lib.llama_log_callback  # type: ignore[untyped-decorator]
    def capture(level: int, text: bytes, user_data: Any) -> None:
        lines.append(text.decode("utf-8", "replace"))

    lib.llama_log_set(capture, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        lib.llama_log_set(own, ctypes.c_void_p(0))


def _log_cause(log: Sequence[str]) -> str:
    """The first failure llama.cpp logged during a failed load (its root cause: a truncated file's
    "failed to read key-value pairs", an "unknown model architecture"), which llama-cpp-python's
    exception does not carry; "" when it logged none."""
    for line in "".join(log).splitlines():
        if _FAILURE.search(line):
            return f" ({line.strip()})"
    return ""


_FAILURE = re.compile(r"error|failed|unknown|invalid|unsupported", re.IGNORECASE)
_REPACKED = re.compile(r"repack tensor (\S+) with (\S+)")
_BUFFER = re.compile(r"(\S+) model buffer size =\s*([\d.]+) MiB")


def weight_kernels(log: Sequence[str]) -> dict[str, Any]:
    """Which CPU kernels the weights got, from llama.cpp's load log: the tensors repacked into an
    interleaved layout (its CPU_REPACK buffer: AVX2/AVX-512 or ARM GEMM kernels for types such as
    Q4_0, Q4_K, IQ4_NL and Q8_0) by layout, and the MiB in each weight buffer. Tensors of other types
    (Q4_1, Q5_0, Q6_K, ...) stay in the plain CPU buffer and use ggml's vector-dot kernels."""
    text = "".join(log)
    repacked = Counter(layout for _tensor, layout in _REPACKED.findall(text))
    buffers = {name: float(mib) for name, mib in _BUFFER.findall(text)}
    return {"repacked_tensors": dict(sorted(repacked.items())), "weight_buffers_mib": buffers}


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def _check(location: str, options: Mapping[str, Any]) -> None:
    from smallfit.backends.gguf_file import check_gguf

    check_gguf(Path(location))


def _example(folder: Path) -> str:
    """The bundled SmolLM2 GGUF file (the contract test's model)."""
    from smallfit.models import ALIASES

    return str(ALIASES["smollm2-135m"].locate())


BACKEND = BackendSpec(
    name="llamacpp", load=LlamaCppBackend, aliases=("llama.cpp",), formats=("gguf",), default_for=("gguf",),
    example=_example, check_model=_check, extra="llamacpp",
    description="llama.cpp through llama-cpp-python: GGUF files, in process, on the CPU (or a GPU build)",
)
