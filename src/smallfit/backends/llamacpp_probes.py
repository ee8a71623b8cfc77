"""llama.cpp measurements that need their own context: several sequences decoded together
(the load curve) and one long prompt in a context sized for it (context scaling).

Each measurement creates a fresh llama.cpp context with the model already loaded, so its KV
cache and compute buffers are its own, and frees it afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from smallfit.errors import SmallfitError
from smallfit.records import Completion


@contextmanager
def scratch_context(backend: Any, n_ctx: int, n_seq: int) -> Iterator[tuple[Any, Any]]:
    """A new llama.cpp context (and batch) over ``backend``'s loaded model."""
    lib = backend._lib
    params = lib.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = params.n_ubatch = min(n_ctx, max(512, backend.config.batch_size))
    params.n_seq_max = n_seq
    params.n_threads = params.n_threads_batch = backend.threads
    params.kv_unified = True
    ctx = lib.llama_init_from_model(backend._llm._model.model, params)
    if not ctx:
        raise SmallfitError(f"llama.cpp could not create a context of {n_ctx} tokens for {n_seq} sequences "
                            "(out of memory?)")
    batch = lib.llama_batch_init(max(params.n_batch, n_seq), 0, n_seq)
    try:
        yield ctx, batch
    finally:
        lib.llama_batch_free(batch)
        lib.llama_free(ctx)


def _fill(batch: Any, items: Sequence[tuple[int, int, int, bool]]) -> None:
    """Items are (token, position, sequence, wants logits)."""
    batch.n_tokens = len(items)
    for i, (tok, pos, seq, logits) in enumerate(items):
        batch.token[i] = tok
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits


def generate_together(backend: Any, prompts: Sequence[str], max_tokens: int) -> list[Completion]:
    """Greedy generation of ``max_tokens`` tokens (end-of-text never chosen) for every prompt at
    once: one decode call per step carries one token of each sequence."""
    lib, np = backend._lib, backend._np
    tokens = [backend.tokenize(p) for p in prompts]
    n_ctx = sum(len(t) for t in tokens) + len(prompts) * (max_tokens + 1) + 8
    step = max(512, backend.config.batch_size)
    with scratch_context(backend, n_ctx, len(prompts)) as (ctx, batch):
        t0 = time.perf_counter()
        pending = [(tok, pos, seq, pos == len(t) - 1) for seq, t in enumerate(tokens) for pos, tok in enumerate(t)]
        last_row: dict[int, int] = {}
        for lo in range(0, len(pending), step):  # the prompts, several per decode call
            chunk = pending[lo : lo + step]
            _fill(batch, chunk)
            if lib.llama_decode(ctx, batch) != 0:
                raise SmallfitError("llama_decode failed while evaluating the prompts")
            for row, (_, _, seq, wants) in enumerate(chunk):
                if wants:
                    last_row[seq] = row
        times: list[list[float]] = [[] for _ in prompts]
        outputs: list[list[int]] = [[] for _ in prompts]
        rows = last_row
        for _ in range(max_tokens):
            step_items = []
            for seq in range(len(prompts)):
                logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, rows[seq]), shape=(backend.n_vocab,))
                tok = int(logits.argmax())
                if lib.llama_vocab_is_eog(backend._vocab, tok):
                    tok = backend._best_non_eog(logits)
                outputs[seq].append(tok)
                step_items.append((tok, len(tokens[seq]) + len(outputs[seq]) - 1, seq, True))
            now = time.perf_counter() - t0
            for seq in range(len(prompts)):
                times[seq].append(now)
            if len(outputs[0]) == max_tokens:
                break
            _fill(batch, step_items)
            if lib.llama_decode(ctx, batch) != 0:
                raise SmallfitError("llama_decode failed while generating")
            rows = {seq: seq for seq in range(len(prompts))}
    return [Completion(text=bytes(backend._llm.detokenize(out)).decode("utf-8", "replace"),
                       n_prompt_tokens=len(t), n_output_tokens=len(out), ttft_s=ts[0], latency_s=ts[-1],
                       token_times_s=tuple(ts), finish_reason="length")
            for t, out, ts in zip(tokens, outputs, times, strict=True)]


def prefill_once(backend: Any, tokens: Sequence[int]) -> float:
    """Seconds to evaluate ``tokens`` and pick the first output token, in a context sized for it."""
    lib, np = backend._lib, backend._np
    step = max(512, backend.config.batch_size)
    with scratch_context(backend, len(tokens) + 8, 1) as (ctx, batch):
        t0 = time.perf_counter()
        for lo in range(0, len(tokens), step):
            chunk = tokens[lo : lo + step]
            _fill(batch, [(tok, lo + j, 0, lo + j == len(tokens) - 1) for j, tok in enumerate(chunk)])
            if lib.llama_decode(ctx, batch) != 0:
                raise SmallfitError(f"llama_decode failed on a {len(tokens)}-token prompt")
        logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, -1), shape=(backend.n_vocab,))
        int(logits.argmax())
        return time.perf_counter() - t0


def context_train(backend: Any) -> int:
    """The context length the model was trained with."""
    return int(backend._lib.llama_model_n_ctx_train(backend._llm._model.model))
