"""Measurement overhead: decode tokens/s as smallfit reports it against a bare llama-cpp-python loop.

Same GGUF, same thread count, same prompts (QuaRTz questions), same number of greedy tokens;
the two alternate A/B/A/B in one process so machine drift hits both alike. smallfit's figure
is computed exactly as a run computes it (the llama.cpp backend's generate with per-token
timestamps, then `efficiency_from_timings`). The bare loop is the least a program can do with
llama-cpp-python: llama_decode one token, argmax of its logits, repeat, with a clock read only at
the first and the last token. Target: smallfit within 2 % of it. For reference it also times
llama-cpp-python's public high-level loop (`Llama.generate`, greedy), which does more per token.

    .venv/bin/python benchmarks/overhead.py [--model smollm2-135m] [--threads 1] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from smallfit.backends.base import BackendConfig, load_backend
from smallfit.metrics import efficiency_from_timings
from smallfit.models import parse_model_ref, resolve_model
from smallfit.records import GenerationRequest, RequestTiming
from smallfit.tasks import get_task


def minimal_decode_tok_s(llm: object, prompts: list[str], max_tokens: int) -> float:
    """llama_decode + argmax per token; decode rate = (n - 1) / (last token - first token)."""
    import llama_cpp
    import numpy as np

    ctx = llm._ctx.ctx  # type: ignore[attr-defined]
    mem = llama_cpp.llama_get_memory(ctx)
    n_vocab = llm.n_vocab()  # type: ignore[attr-defined]
    batch = llama_cpp.llama_batch_init(512, 0, 1)
    tokens_out, decode_time = 0, 0.0
    try:
        for prompt in prompts:
            tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)  # type: ignore[attr-defined]
            llama_cpp.llama_memory_clear(mem, True)
            pos = 0
            for chunk_start in range(0, len(tokens), 512):
                chunk = tokens[chunk_start : chunk_start + 512]
                batch.n_tokens = len(chunk)
                for i, tok in enumerate(chunk):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos + i, 1
                    batch.seq_id[i][0], batch.logits[i] = 0, pos + i == len(tokens) - 1
                llama_cpp.llama_decode(ctx, batch)
                pos += len(chunk)
            first = last = 0.0
            for k in range(max_tokens):
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
                tok = int(logits.argmax())
                if k == 0:
                    first = time.perf_counter()
                if k == max_tokens - 1:
                    last = time.perf_counter()
                    break
                batch.n_tokens = 1
                batch.token[0], batch.pos[0], batch.n_seq_id[0] = tok, pos, 1
                batch.seq_id[0][0], batch.logits[0] = 0, True
                llama_cpp.llama_decode(ctx, batch)
                pos += 1
            tokens_out += max_tokens - 1
            decode_time += last - first
    finally:
        llama_cpp.llama_batch_free(batch)
    return tokens_out / decode_time


def bare_decode_tok_s(llm: object, prompts: list[str], max_tokens: int) -> float:
    """Greedy generation with Llama.generate; decode rate = (n - 1) / (last token - first token)."""
    tokens_out, decode_time = 0, 0.0
    for prompt in prompts:
        tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)  # type: ignore[attr-defined]
        llm.reset()  # type: ignore[attr-defined]
        times = []
        t0 = time.perf_counter()
        for _ in llm.generate(tokens, top_k=1, temp=0.0, reset=True):  # type: ignore[attr-defined]
            times.append(time.perf_counter() - t0)
            if len(times) == max_tokens:
                break
        tokens_out += len(times) - 1
        decode_time += times[-1] - times[0]
    return tokens_out / decode_time


def smallfit_decode_tok_s(backend: object, prompts: list[str], max_tokens: int) -> float:
    completions = backend.generate([GenerationRequest(p, max_tokens, ignore_eos=True) for p in prompts])  # type: ignore[attr-defined]
    timings = [RequestTiming.of(i, "latency", c) for i, c in enumerate(completions)]
    rate = efficiency_from_timings(timings)["decode_tok_s"]
    assert rate is not None
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description="smallfit decode rate vs a bare llama-cpp-python loop")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    import llama_cpp

    path = resolve_model(parse_model_ref(args.model))
    prompts = [s.context for s in get_task("quartz").load()[: args.prompts]]
    backend = load_backend("llamacpp", BackendConfig(path, threads=args.threads))
    bare = llama_cpp.Llama(model_path=str(path), n_ctx=2048, n_batch=512, n_threads=args.threads,
                           n_threads_batch=args.threads, verbose=False)
    smallfit_decode_tok_s(backend, prompts[:1], 8)  # warm-up all three
    minimal_decode_tok_s(bare, prompts[:1], 8)
    bare_decode_tok_s(bare, prompts[:1], 8)
    a, b, c = [], [], []
    load_before = os.getloadavg()
    for r in range(args.rounds):  # alternate, so drift on a shared machine hits all alike
        a.append(smallfit_decode_tok_s(backend, prompts, args.max_tokens))
        b.append(minimal_decode_tok_s(bare, prompts, args.max_tokens))
        c.append(bare_decode_tok_s(bare, prompts, args.max_tokens))
        print(f"round {r + 1}: smallfit {a[-1]:.2f} tok/s, minimal loop {b[-1]:.2f} tok/s, "
              f"Llama.generate {c[-1]:.2f} tok/s", flush=True)
    load_after = os.getloadavg()
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    gap = (statistics.median(ratios) - 1) * 100
    print(f"\nmodel {args.model}, threads {args.threads}, {args.prompts} prompts x {args.max_tokens} tokens, "
          f"{args.rounds} alternating rounds; loadavg before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print(f"decode tok/s median: smallfit {statistics.median(a):.2f}, minimal llama-cpp-python loop "
          f"{statistics.median(b):.2f}, Llama.generate {statistics.median(c):.2f}")
    print(f"smallfit / minimal loop: median per-round ratio {statistics.median(ratios):.4f} ({gap:+.2f} %), "
          f"spread {min(ratios):.4f}-{max(ratios):.4f}; target within 2 %: {'MET' if abs(gap) <= 2 else 'NOT MET'}")


if __name__ == "__main__":
    main()
