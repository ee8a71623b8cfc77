"""Why smallfit's llama.cpp backend scores one sequence at a time: two measurements on the bundled
SmolLM2 GGUF (Q4_1) with the installed llama-cpp-python.

1. Exactness of several sequences in one KV cache. The reference: a LogiQA question's context
   decoded alone, the logits of its last token. Then the same context decoded after another
   sequence's single token (so its cells start at cell 1, not 0), in a unified KV cache and in
   separate KV streams (``kv_unified`` false), with and without flash attention and with an f32
   KV cache. One-sequence decoding is bit-identical at any batch size (the first line checks 512
   against 16), so any difference here comes from sharing the cache, not from float rounding.
2. Prefill throughput by decode-call size (8 to 512 tokens of one sequence): what packing several
   sequences' tokens into bigger calls could gain at most on this CPU and weight type.

    .venv/bin/python benchmarks/llamacpp_multiseq.py [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np


def logits_after(lib: Any, model: Any, ctx_tokens: list[int], n_vocab: int, threads: int, *, junk: int,
                 unified: bool = True, flash: int = 0, f32_kv: bool = False, ubatch: int = 512) -> Any:
    params = lib.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = 2048, ubatch, ubatch, 8
    params.n_threads = params.n_threads_batch = threads
    params.kv_unified, params.flash_attn_type = unified, flash
    if f32_kv:
        params.type_k = params.type_v = 0  # GGML_TYPE_F32
    ctx = lib.llama_init_from_model(model, params)
    batch = lib.llama_batch_init(2048, 0, 1)
    other = [(tok, p, 5, False) for p, tok in enumerate((ctx_tokens[::-1] * 4)[:junk])]  # another sequence
    items = other + [
        (t, i, 0, i == len(ctx_tokens) - 1) for i, t in enumerate(ctx_tokens)]
    for lo in range(0, len(items), ubatch):
        chunk = items[lo : lo + ubatch]
        batch.n_tokens = len(chunk)
        for i, (tok, pos, seq, scored) in enumerate(chunk):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, pos, 1, scored
            batch.seq_id[i][0] = seq
        assert lib.llama_decode(ctx, batch) == 0
    out = np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, -1), shape=(n_vocab,)).copy()
    lib.llama_batch_free(batch)
    lib.llama_free(ctx)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from smallfit.backends.base import BackendConfig, load_backend
    from smallfit.models import parse_model_ref, resolve_model
    from smallfit.tasks.builtin import evals_multiple_choice

    b = load_backend("llamacpp", BackendConfig(resolve_model(parse_model_ref("smollm2-135m")), threads=args.threads))
    lib, model, n_vocab = b._lib, b._llm._model.model, b.n_vocab  # type: ignore[attr-defined]
    ctx_tokens = b.tokenize(evals_multiple_choice("logiqa")[0].context)  # type: ignore[attr-defined]
    print(f"load average {os.getloadavg()[0]:.2f}; context of {len(ctx_tokens)} tokens; "
          f"{b.info()['system_info']}")

    def run(**kw: Any) -> Any:
        return logits_after(lib, model, ctx_tokens, n_vocab, args.threads, **kw)

    ref = run(junk=0)
    print(f"one sequence, ubatch 16 vs 512: max |logit difference| {np.abs(ref - run(junk=0, ubatch=16)).max():.2e}")
    for label, kw in (("unified KV", {}), ("unified KV, flash attention", {"flash": 1}),
                      ("unified KV, f32 KV cache", {"f32_kv": True}), ("separate KV streams", {"unified": False})):
        base = run(junk=0, **kw)
        for junk in (1, 100):
            moved = run(junk=junk, **kw)
            print(f"{label}: another sequence's {junk} token(s) decoded first in the same call move this "
                  f"sequence's last logits by up to {np.abs(base - moved).max():.2e}")
    tokens = b.tokenize("The quick brown fox jumps over the lazy dog. " * 80)[:512]  # type: ignore[attr-defined]
    for n in (8, 32, 128, 512):
        best = float("inf")
        for _ in range(2):
            b._clear()  # type: ignore[attr-defined]
            t0 = time.perf_counter()
            for lo in range(0, 512, n):
                b._decode(tokens[lo : lo + n], lo, [False] * (n - 1) + [True])  # type: ignore[attr-defined]
            best = min(best, time.perf_counter() - t0)
        print(f"prefill in calls of {n} tokens: {512 / best:.0f} tok/s")
    print(f"load average {os.getloadavg()[0]:.2f}")
    b.close()


if __name__ == "__main__":
    main()
