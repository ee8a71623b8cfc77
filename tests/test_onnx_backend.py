"""The onnx backend on the bundled SmolLM2 GGUF, exported once through torch.onnx and cached
(under the smallfit cache, as the transformers backend's dequantised copy), and its int8 copy.

Int8 tolerance: dynamic int8 (per-channel QInt8 weights, uint8 activations quantized at run
time with one scale per tensor) is lossy on a 135M model: measured 0.2 to 3.0 nats per request
from fp32 on the requests below, 0.2 to 1.3 per continuation token (SmolLM2's large activations
in a few tokens coarsen everyone's scale). The check is ``INT8_NATS_PER_TOKEN`` per token, the
same greedy answer to the capital of France and the same ranking of the brick/feather answers.

The same on every CPU: the int8 graph's integer products are exact wherever they do not saturate,
so apart from float rounding (~1e-6 relative) every CPU computes the same scores. Saturation
is what differed (u8s8 pairs in int16 without VNNI: -16.0 nats for " Paris"), and the backend
now quantizes weights to 7 bits there (:mod:`smallfit.probes.cpu`). That path is forced here
on any machine (``SMALLFIT_CPU_FEATURES``); halving the weight levels (127 -> 64) doubles the
weight quantization step, so its bound is the 8-bit one times 127/64 (measured: at most 2.4).
"""

import json
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import have_onnx_export, needs_models

pytestmark = [
    needs_models, pytest.mark.models,
    pytest.mark.skipif(not have_onnx_export(), reason="extras 'onnx' and 'hf' not installed"),
]

INT8_NATS_PER_TOKEN = 1.5
INT8_7BIT_NATS_PER_TOKEN = INT8_NATS_PER_TOKEN * 127 / 64  # twice the weight step
NO_VNNI = "x86_64:avx2,fma"  # the AVX2-only EPYC
REQUESTS = [("The capital of France is", " Paris"), ("Question: What do bees make?\nAnswer:", " honey"),
            ("Question: Which is heavier, a feather or a brick?\nAnswer:", " a brick"),
            ("Question: Which is heavier, a feather or a brick?\nAnswer:", " a feather"),
            ("Unshared context:" + " word" * 20, " yes"), ("", "A text with no context at all.")]


@pytest.fixture(scope="module")
def gguf():
    from smallfit.models import parse_model_ref, resolve_model

    return resolve_model(parse_model_ref("smollm2-135m"))


def _load(path, **options):
    from smallfit.backends.base import BackendConfig, load_backend

    return load_backend("onnx", BackendConfig(path, threads=1, context_size=256, options=options))


@pytest.fixture(scope="module")
def fp32(gguf):
    backend = _load(gguf)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def int8(gguf):
    backend = _load(gguf, quantize="int8")
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def int8_no_vnni(gguf):
    with pytest.MonkeyPatch.context() as mp:  # the kernel path is chosen at load
        mp.setenv("SMALLFIT_CPU_FEATURES", NO_VNNI)
        backend = _load(gguf, quantize="int8")
    yield backend
    backend.close()


def _reqs():
    from smallfit.records import LoglikelihoodRequest

    return [LoglikelihoodRequest(c, x) for c, x in REQUESTS]


def test_int8_scores_close_to_fp32_from_a_smaller_file(fp32, int8):
    full, small = fp32.loglikelihood(_reqs()), int8.loglikelihood(_reqs())
    # the bound follows the weights this CPU's path chose: 8 bits with VNNI, 7 on AVX2 alone (an
    # AVX2-only EPYC, emulated with qemu-x86_64 -cpu EPYC-Rome, took 7 bits: -7.18 against fp32's -9.61)
    per_token = INT8_7BIT_NATS_PER_TOKEN if int8.info()["int8_reduce_range"] else INT8_NATS_PER_TOKEN
    for x, y in zip(full, small, strict=True):
        assert x.n_tokens == y.n_tokens
        assert y.logprob == pytest.approx(x.logprob, abs=per_token * x.n_tokens)
    assert full[0].is_greedy and small[0].is_greedy
    assert (full[2].logprob > full[3].logprob) == (small[2].logprob > small[3].logprob)
    # activation scales span a whole graph run, so each request runs alone: no batch effects
    assert [int8.loglikelihood([r])[0] for r in _reqs()] == small
    a, b = fp32.info(), int8.info()
    assert b["model_size_bytes"] < 0.4 * a["model_size_bytes"]
    assert b["model_size_bytes"] == Path(b["model_file"]).stat().st_size and b["model_file"].endswith(".int8.onnx")
    assert "int8" in b["quantization"] and a["quantization"].startswith("none")
    assert a["export"] == b["export"] and a["opset"] == 17 and a["threads"] == 1


def test_without_vnni_the_weights_use_7_bits_and_score_close_to_fp32(fp32, int8, int8_no_vnni):
    import numpy as np
    import onnx

    info, native = int8_no_vnni.info(), int8.info()
    assert info["int8_kernel_path"] == "x86-no-vnni" and info["int8_reduce_range"] is True
    assert "7-bit weights (reduce_range)" in info["quantization"]
    assert info["model_file"] != native["model_file"] or native["int8_reduce_range"]  # its own cache entry
    graph = onnx.load(info["model_file"], load_external_data=False)
    weights = [np.frombuffer(t.raw_data, np.int8) for t in graph.graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and t.raw_data]
    assert weights and max(int(np.abs(w.astype(np.int16)).max()) for w in weights) <= 64  # 2*255*64 fits int16
    full, small = fp32.loglikelihood(_reqs()), int8_no_vnni.loglikelihood(_reqs())
    for x, y in zip(full, small, strict=True):
        assert y.logprob == pytest.approx(x.logprob, abs=INT8_7BIT_NATS_PER_TOKEN * x.n_tokens)
    assert small[0].is_greedy and small[0].logprob > -2  # saturated, it was -16.0
    assert (full[2].logprob > full[3].logprob) == (small[2].logprob > small[3].logprob)


def test_second_load_reuses_the_cached_export(gguf, fp32, int8):
    folder = Path(fp32.info()["export"])
    stamps = {f: f.stat().st_mtime_ns for f in (folder / "model.onnx", Path(int8.info()["model_file"]))}
    for options in ({}, {"quantize": "int8"}):
        again = _load(gguf, **options)
        info = again.info()
        again.close()
        assert info["export"] == str(folder) and info["export_s"] is None and info["quantize_s"] is None
    assert {f: f.stat().st_mtime_ns for f in stamps} == stamps
    assert json.loads((folder / "smallfit-export.json").read_text())["verify_max_abs_logit_diff"] < 1e-3
    assert not list(folder.parent.glob("*.tmp"))  # no half-written export left behind


def test_runs_an_onnx_file_directly_with_the_same_scores(fp32):
    from smallfit.models import parse_model_ref

    model = Path(fp32.info()["model_file"])
    assert parse_model_ref(str(model)).backend == "onnx"
    direct = _load(model)
    try:
        assert direct.info()["source"] == "onnx file" and direct.info()["export"] is None
        for x, y in zip(direct.loglikelihood(_reqs()), fp32.loglikelihood(_reqs()), strict=True):
            assert x == y
    finally:
        direct.close()


def test_shared_context_and_rolling_windows_agree_with_scoring_alone(fp32):
    from smallfit.records import LoglikelihoodRequest, RollingRequest

    together = fp32.loglikelihood(_reqs())
    alone = [fp32.loglikelihood([r])[0] for r in _reqs()]
    for x, y in zip(together, alone, strict=True):
        assert x.logprob == pytest.approx(y.logprob, abs=1e-4) and x.is_greedy == y.is_greedy
    text = "Natalia sold clips to 48 of her friends in April."
    (r,) = fp32.loglikelihood_rolling([RollingRequest(text)])
    (ll,) = fp32.loglikelihood([LoglikelihoodRequest("", text)])
    assert r.logprob == pytest.approx(ll.logprob, abs=1e-4)
    (long,) = fp32.loglikelihood_rolling([RollingRequest("The quick brown fox jumps. " * 60)])  # > 256 tokens
    assert long.n_tokens > 256 and long.logprob < 0


def test_long_inputs_run_in_chunks_on_their_own_past_with_the_same_results(fp32, monkeypatch):
    import smallfit.backends.onnx as onnx_backend
    from smallfit.records import GenerationRequest, LoglikelihoodRequest

    reqs = [*_reqs(), LoglikelihoodRequest("Count:", " one two three four five six seven eight nine ten" * 3)]
    prompt = GenerationRequest("Question: Which is heavier, a feather or a brick?\nAnswer:", max_tokens=6)
    whole, said = fp32.loglikelihood(reqs), fp32.generate([prompt])[0].text
    monkeypatch.setattr(onnx_backend, "_LOGIT_BUFFER_BYTES", 3 * fp32.n_vocab * 4)  # 3 positions a run
    for x, y in zip(fp32.loglikelihood(reqs), whole, strict=True):
        assert x.logprob == pytest.approx(y.logprob, abs=1e-4) and x.is_greedy == y.is_greedy
    assert fp32.generate([prompt])[0].text == said


def test_generation_stops_and_chats(fp32):
    from smallfit.records import GenerationRequest

    (c,) = fp32.generate([GenerationRequest("The capital of France is", max_tokens=8, stop=("\n",))])
    assert "Paris" in c.text and "\n" not in c.text
    assert c.ttft_s == c.token_times_s[0] <= c.latency_s
    assert fp32.chat_prompt("hi").rstrip().endswith("assistant")


def test_errors_are_one_line_smallfit_errors(tmp_path, monkeypatch, fp32):
    import sys

    from smallfit.errors import MissingExtraError, SmallfitError

    fake = tmp_path / "model.onnx"
    fake.write_text("this is a text file, not an ONNX model\n")
    with pytest.raises(SmallfitError, match="is not an ONNX model") as bad:
        _load(fake)
    assert "\n" not in str(bad.value)
    with pytest.raises(SmallfitError, match="onnx option quantize"):
        _load(Path(fp32.info()["model_file"]), quantize="int4")
    header_only = tmp_path / "header-only.gguf"
    header_only.write_bytes(b"GGUF")
    with pytest.raises(SmallfitError, match="onnx option threads: Extra inputs are not permitted"):
        _load(header_only, threads=2)  # checked before any export starts
    weights = tmp_path / "broken"
    weights.mkdir()
    (weights / "config.json").write_text('{"model_type": "llama"}')
    (weights / "model.safetensors").write_bytes(b"not safetensors")
    monkeypatch.setenv("SMALLFIT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SmallfitError, match="ONNX export of .* failed: ") as failed:
        _load(weights)
    assert "\n" not in str(failed.value)
    assert not list((tmp_path / "cache" / "onnx").glob("broken-*"))  # nothing left that looks finished
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the extra were not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'smallfit\[onnx\]'"):
        _load(fake)


def test_run_end_to_end_through_the_cli(cli):
    cli("run", "--model", "smollm2-135m@onnx", "--task", "quartz", "--limit", "3", "--quick", "--threads", "1",
        check=True)
    (row,) = json.loads(cli("results", "--format", "json", check=True).stdout)
    assert row["candidate"] == "smollm2-135m@onnx" and row["error"] is None
    m = row["metrics"]
    assert m["acc"] is not None and m["ttft_s"] > 0 and m["decode_tok_s"] > 0
    with sqlite3.connect(cli.db) as db:
        size, info = db.execute("SELECT model_size_bytes, backend_info_json FROM candidates").fetchone()
    info = json.loads(info)
    # the size of the .onnx that ran, not of the GGUF it was exported from
    assert m["model_size_bytes"] == size == Path(info["model_file"]).stat().st_size > 5e8
    assert info["library"] == "onnxruntime" and info["threads"] == 1


def _tiny_graph(path: Path, output: str) -> Path:
    """A real (one-node) ONNX model whose output is called ``output``."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Cast", ["input_ids"], [output], to=TensorProto.FLOAT)], "tiny",
                              [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", "sequence"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_graphs_are_told_apart_by_their_outputs(tmp_path):
    from smallfit.backends.onnx_graph import read_graph
    from smallfit.errors import SmallfitError

    odd = _tiny_graph(tmp_path / "odd.onnx", "scores")
    graph = read_graph(odd)
    assert (graph.inputs, graph.outputs, graph.opset, graph.op_types) == (["input_ids"], ["scores"], 17,
                                                                          frozenset({"Cast"}))
    with pytest.raises(SmallfitError, match="neither a logits output .* nor a last_hidden_state"):
        _load(odd)
    encoder = _tiny_graph(tmp_path / "encoder.onnx", "last_hidden_state")
    # dispatched to the encoder backend, which looks for the encoder's tokenizer beside the graph
    with pytest.raises(SmallfitError, match=r"no tokenizer next to .*encoder\.onnx .*options = \{tokenizer"):
        _load(encoder)


def test_next_token_distributions_for_the_sweeps_kl_divergence(gguf, fp32, int8, int8_no_vnni):
    from smallfit.backends.base import BackendConfig, load_backend
    from smallfit.sweep.divergence import KL_POSITIONS, distributions, kl_rows, scored_tokens

    prompts = [c for c, _ in REQUESTS[:3] if c]
    reference = load_backend("transformers", BackendConfig(gguf, threads=1, context_size=256))
    try:
        ref, ref_tokens = distributions(reference, prompts), scored_tokens(reference, prompts)
    finally:
        reference.close()
    for backend, bound in ((fp32, 1e-4), (int8, 1.0), (int8_no_vnni, 1.0)):
        mine = distributions(backend, prompts)
        assert mine.shape == (len(prompts) * KL_POSITIONS, ref.shape[1])
        assert (scored_tokens(backend, prompts) == ref_tokens).all()  # the same positions compared
        assert kl_rows(ref, mine).mean() < bound
    assert kl_rows(ref, distributions(int8, prompts)).mean() > kl_rows(ref, distributions(fp32, prompts)).mean()
