"""The onnx backend on the bundled SmolLM2 GGUF: export and int8 times, file sizes, agreement
with transformers, and greedy decode speed at one thread, fp32 vs int8.

With ``--fresh`` the export runs into a temporary SMALLFIT_CACHE (dequantising the GGUF again
there), so its time is a cold one; otherwise the cached export is used and its recorded time
printed. Prints one figure per line; the machine may be shared, so its load is printed too.

    .venv/bin/python benchmarks/onnx_backend.py [--fresh] [--tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def _decode_tok_s(backend: object, prompts: list[str], tokens: int) -> float:
    from smallfit.records import GenerationRequest

    backend.generate([GenerationRequest(prompts[0], max_tokens=4, ignore_eos=True)])  # type: ignore[attr-defined]
    rates = []
    for prompt in prompts:
        (c,) = backend.generate([GenerationRequest(prompt, max_tokens=tokens, ignore_eos=True)])  # type: ignore[attr-defined]
        rates.append((c.n_output_tokens - 1) / (c.latency_s - c.ttft_s))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fresh", action="store_true", help="export into a temporary cache (cold)")
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory() if args.fresh else None
    if tmp is not None:
        os.environ["SMALLFIT_CACHE"] = tmp.name

    from smallfit.backends.base import BackendConfig, load_backend
    from smallfit.models import parse_model_ref, resolve_model
    from smallfit.records import LoglikelihoodRequest

    print(f"load average before: {os.getloadavg()[0]:.2f}")
    gguf = resolve_model(parse_model_ref("smollm2-135m"))
    loaded = {}
    for name, backend, options in (("onnx-fp32", "onnx", {}), ("onnx-int8", "onnx", {"quantize": "int8"}),
                                   ("transformers", "transformers", {})):
        t0 = time.perf_counter()
        loaded[name] = load_backend(backend, BackendConfig(gguf, threads=1, context_size=512, options=options))
        print(f"{name}: load_s {time.perf_counter() - t0:.2f}")
    fp32, int8 = loaded["onnx-fp32"].info(), loaded["onnx-int8"].info()
    meta = json.loads((Path(fp32["export"]) / "smallfit-export.json").read_text())
    print(f"export_s (dequantise + load + torch.onnx.export, as recorded): {meta['export_s']:.1f}")
    print(f"export_s (this load, whole child process): {fp32['export_s']}")
    print(f"int8 quantize_s (this load): {int8['quantize_s']}")
    print(f"export verify max |logit diff|: {meta['verify_max_abs_logit_diff']:.2e}")
    print(f"size fp32 .onnx: {fp32['model_size_bytes'] / 1e6:.1f} MB; int8: {int8['model_size_bytes'] / 1e6:.1f} MB; "
          f"GGUF: {gguf.stat().st_size / 1e6:.1f} MB")
    pairs = [("The capital of France is", " Paris"), ("Question: What do bees make?\nAnswer:", " honey"),
             ("Question: Which is heavier, a feather or a brick?\nAnswer:", " a brick"),
             ("Question: Which is heavier, a feather or a brick?\nAnswer:", " a feather"),
             ("Unshared context:" + " word" * 20, " yes"), ("", "A text with no context at all.")]
    reqs = [LoglikelihoodRequest(c, x) for c, x in pairs]
    ref = loaded["transformers"].loglikelihood(reqs)  # type: ignore[attr-defined]
    for name in ("onnx-fp32", "onnx-int8"):
        got = loaded[name].loglikelihood(reqs)  # type: ignore[attr-defined]
        diffs = [abs(a.logprob - b.logprob) for a, b in zip(got, ref, strict=True)]
        per_token = [d / r.n_tokens for d, r in zip(diffs, ref, strict=True)]
        print(f"{name}: max |loglik diff| vs transformers fp32 {max(diffs):.2e} nats "
              f"({max(per_token):.2e} per token) over {len(reqs)} requests")
    prompts = ["The capital of France is", "Question: What do bees make?\nAnswer:", "Once upon a time"]
    for name in ("onnx-fp32", "onnx-int8", "transformers"):
        print(f"{name}: decode {_decode_tok_s(loaded[name], prompts, args.tokens):.1f} tok/s "
              f"(1 thread, {args.tokens} tokens, median of {len(prompts)})")
    for b in loaded.values():
        b.close()  # type: ignore[attr-defined]
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
