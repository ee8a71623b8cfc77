"""Quantization sweep on the bundled SmolLM2: real GGUF files, real llama.cpp, a real run.

The variants are cached under ``cache_dir()/quant`` (built once, then reused by later runs).
"""

import importlib.util
import json

import numpy as np
import pytest

from smallfit.backends.base import BackendConfig, load_backend
from smallfit.models import parse_model_ref, resolve_model
from smallfit.records import LoglikelihoodRequest
from smallfit.sweep.divergence import KL_POSITIONS, kl_rows
from smallfit.sweep.quantize import REFERENCE, prepare_variant, variant_path
from smallfit.tasks import get_task
from tests.conftest import needs_models

pytestmark = [needs_models, pytest.mark.models]


@pytest.fixture(scope="module")
def sweep():
    source = resolve_model(parse_model_ref("smollm2-135m"))
    files = {v: prepare_variant(source, v, 1) for v in ("q8_0", "q4_0")}  # builds the f32 reference first
    files[REFERENCE] = variant_path(source, REFERENCE)
    samples = list(get_task("quartz").load())[:4]
    requests = [LoglikelihoodRequest(s.context, c) for s in samples for c in s.choices]
    scored, dists = {}, {}
    for name, path in files.items():
        backend = load_backend("llamacpp", BackendConfig(model_path=path, threads=1))
        scored[name] = np.array([r.logprob for r in backend.loglikelihood(requests)])
        dists[name] = np.concatenate([backend.next_token_logprobs(s.context, KL_POSITIONS) for s in samples])
        backend.close()
    return {"source": source, "files": files, "requests": requests, "scored": scored, "dists": dists}


def test_variants_are_gguf_files_smaller_as_precision_drops(sweep):
    sizes = {v: p.stat().st_size for v, p in sweep["files"].items()}
    assert sizes["f32"] > sizes["q8_0"] > sizes["q4_0"]
    for path in sweep["files"].values():
        assert path.read_bytes()[:4] == b"GGUF"
    assert prepare_variant(sweep["source"], "q8_0", 1) == sweep["files"]["q8_0"]  # cached, not rebuilt


def test_q8_0_scores_closer_to_the_reference_than_q4_0(sweep):
    ref = sweep["scored"]["f32"]
    d8 = np.abs(sweep["scored"]["q8_0"] - ref)
    d4 = np.abs(sweep["scored"]["q4_0"] - ref)
    assert d8.mean() < d4.mean()
    assert d8.mean() < 0.5  # q8_0 stays near its reference


def test_kl_divergence_ordering(sweep):
    d = sweep["dists"]
    assert d["f32"].shape == (4 * KL_POSITIONS, 49152)
    assert np.allclose(np.exp(d["f32"]).sum(axis=1), 1.0, atol=1e-4)
    kl8, kl4 = kl_rows(d["f32"], d["q8_0"]).mean(), kl_rows(d["f32"], d["q4_0"]).mean()
    assert 0 < kl8 < kl4
    assert kl_rows(d["f32"], d["f32"]).max() == 0.0


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs the hf extra (torch)")
def test_f32_reference_scores_as_the_transformers_dequantisation(sweep):
    # the same GGUF dequantised by transformers (gguf_to_safetensors) must score like our f32 file
    backend = load_backend("transformers", BackendConfig(model_path=sweep["source"], threads=1))
    hf = np.array([r.logprob for r in backend.loglikelihood(sweep["requests"])])
    backend.close()
    # Not bit-equal, and the gap is not one processor's: llama.cpp keeps its KV cache in float16
    # (llama-cpp-python's default type_k/type_v), so every cached key and value is rounded to a
    # relative 2**-11, while transformers keeps float32; both then accumulate float32 sums in
    # their own order (SIMD width differs per CPU). A log-probability is a difference of logits of
    # size ~|logprob|, so its error scales with it: bound 2 (keys and values) x 2**-10 (one f16
    # ulp) x (1 + |logprob|). Measured 0.2x that on AVX-512; the AVX2-only EPYC's 0.0144 nats
    # (over the old flat 0.01) is within it.
    ref = sweep["scored"]["f32"]
    assert (np.abs(hf - ref) <= 2 * 2.0**-10 * (1 + np.abs(ref))).all(), np.abs(hf - ref) / (1 + np.abs(ref))


HAVE_TORCH = importlib.util.find_spec("torch") is not None


def test_run_with_quantize_compares_variants_and_records_a_bad_type(cli):
    torch_variant = ["torch-f32"] if HAVE_TORCH else []  # the same weights on transformers: KL ~ 0
    args = ["run", "--quantize", ",".join(["q8_0", "q4_0", "q9_9", *torch_variant]), "-m", "smollm2-135m",
            "-t", "quartz", "--limit", "3", "--quick", "--threads", "1"]
    refused = cli(*args)  # an unknown type is found before any work...
    assert refused.returncode == 2 and "smollm2-135m:q9_9: unknown quantization type 'q9_9'" in refused.stderr
    proc = cli(*args, "--keep-going")  # ...and with --keep-going recorded as that variant's error
    assert proc.returncode == 0, proc.stderr
    assert "Quantization sweep" in proc.stdout
    rows = json.loads(cli("results", "--format", "json", check=True).stdout)
    assert [r["candidate"] for r in rows] == ["smollm2-135m:f32", "smollm2-135m:q8_0", "smollm2-135m:q4_0",
                                              "smollm2-135m:q9_9"] + [f"smollm2-135m:{v}" for v in torch_variant]
    if HAVE_TORCH:
        torch_row = rows[-1]
        assert torch_row["error"] is None and torch_row["labels"]["kl_divergence"].startswith("measured")
        assert torch_row["metrics"]["kl_divergence"] < 1e-3  # same weights, another backend
        rows = rows[:-1]
    by = {r["candidate"].split(":")[1]: r for r in rows}
    assert "unknown quantization type 'q9_9'" in by["q9_9"]["error"]
    for v in ("f32", "q8_0", "q4_0"):
        m = by[v]["metrics"]
        assert by[v]["error"] is None
        assert m["acc"] is not None and m["decode_tok_s"] and m["peak_rss_bytes"]
        assert by[v]["labels"]["kl_divergence"].startswith("measured")
    kl = {v: by[v]["metrics"]["kl_divergence"] for v in ("f32", "q8_0", "q4_0")}
    assert kl["f32"] == 0.0 and 0 < kl["q8_0"] < kl["q4_0"]
    sizes = {v: by[v]["metrics"]["model_size_bytes"] for v in ("f32", "q8_0", "q4_0")}
    assert sizes["f32"] > sizes["q8_0"] > sizes["q4_0"]
    report = cli.db.with_name("sweep.html")
    cli("report", "-o", str(report), check=True)
    html = report.read_text()
    assert "<h2>Quantization sweep</h2>" in html and "smollm2-135m:q4_0</td><td>llamacpp</td>" in html
    assert f"{kl['q8_0']:.4f}" in html  # the KL figure, as in the terminal


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs the hf extra (torch)")
def test_a_transformers_folder_is_converted_by_llama_cpp_and_swept(sweep):
    from smallfit.backends.hf_common import gguf_to_safetensors

    folder = gguf_to_safetensors(sweep["source"])  # the same weights as a safetensors folder
    q8 = prepare_variant(folder, "q8_0", 1)  # llama.cpp's converter makes the f32 reference first
    ref = variant_path(folder, REFERENCE)
    assert ref.read_bytes()[:4] == b"GGUF" and q8.stat().st_size < ref.stat().st_size
    scored = {}
    for name, path in (("f32", ref), ("q8_0", q8)):
        backend = load_backend("llamacpp", BackendConfig(model_path=path, threads=1))
        scored[name] = np.array([r.logprob for r in backend.loglikelihood(sweep["requests"])])
        backend.close()
    # converted from the dequantised weights, the reference scores as the GGUF route's reference
    assert np.abs(scored["f32"] - sweep["scored"]["f32"]).max() < 1e-4
    assert np.abs(scored["q8_0"] - sweep["scored"]["q8_0"]).max() < 0.05
