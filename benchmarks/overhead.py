"""Measurement overhead: decode tokens/s as smallfit reports it against a bare llama-cpp-python loop.

Same GGUF, same thread count, same prompts (QuaRTz questions), same number of greedy tokens;
the two alternate A/B/A/B in one process so machine drift hits both alike. smallfit's figure
is computed exactly as a run computes it (the llama.cpp backend's generate with per-token
timestamps, then `efficiency_from_timings`); the bare loop is what a user would write with
llama-cpp-python's public API (`Llama.generate`, greedy). Target: smallfit within 2 %.

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
    timings = [RequestTiming(i, "latency", c.n_prompt_tokens, c.n_output_tokens, c.ttft_s, c.latency_s,
                             c.token_times_s) for i, c in enumerate(completions)]
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
    smallfit_decode_tok_s(backend, prompts[:1], 8)  # warm-up both
    bare_decode_tok_s(bare, prompts[:1], 8)
    a, b = [], []
    load_before = os.getloadavg()
    for r in range(args.rounds):
        a.append(smallfit_decode_tok_s(backend, prompts, args.max_tokens))
        b.append(bare_decode_tok_s(bare, prompts, args.max_tokens))
        print(f"round {r + 1}: smallfit {a[-1]:.2f} tok/s, bare loop {b[-1]:.2f} tok/s", flush=True)
    load_after = os.getloadavg()
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    med_a, med_b = statistics.median(a), statistics.median(b)
    gap = (statistics.median(ratios) - 1) * 100
    print(f"\nmodel {args.model}, threads {args.threads}, {args.prompts} prompts x {args.max_tokens} tokens, "
          f"{args.rounds} alternating rounds; loadavg before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print(f"decode tok/s median: smallfit {med_a:.2f}, bare llama-cpp-python {med_b:.2f}; "
          f"median per-round ratio {statistics.median(ratios):.4f} ({gap:+.2f} %), "
          f"spread of ratios {min(ratios):.4f}-{max(ratios):.4f}")
    print(f"target: within 2 %: {'MET' if abs(gap) <= 2 else 'NOT MET'}")


if __name__ == "__main__":
    main()
