"""Quantization sweep, pure parts: type names, sweep expansion, KL divergence by hand."""

import math

import numpy as np
import pytest

from smallfit.errors import SmallfitError
from smallfit.metrics import METRICS, known_metric
from smallfit.plan import PlannedCandidate, plan, preflight
from smallfit.spec import RunSpec, build_spec
from smallfit.sweep.divergence import cosine_summary, kl_rows, summarize
from smallfit.sweep.quantize import ftype_name, parse_types, sweep_variants


def test_type_names_normalised_deduplicated_and_mapped_to_llama_ftypes():
    assert parse_types(" q8_0, Q4_K_M,,q8_0 ") == ["q8_0", "q4_k_m"]
    assert parse_types(["q8_0,q4_0", "f16"]) == ["q8_0", "q4_0", "f16"]
    assert sweep_variants(["q4_0", "f32", "q8_0"]) == ["f32", "q4_0", "q8_0"]
    assert ftype_name("q8_0") == "LLAMA_FTYPE_MOSTLY_Q8_0"
    assert ftype_name("q4_k_m") == "LLAMA_FTYPE_MOSTLY_Q4_K_M"
    assert ftype_name("f32") == "LLAMA_FTYPE_ALL_F32"
    with pytest.raises(SmallfitError, match=r"unknown quantization type 'q9_9': choose from f32, f16"):
        ftype_name("q9_9")


def _plan(data):
    planned, problems = plan(build_spec({"tasks": ["quartz"], **data}, "test"))
    assert not problems, problems
    return planned


def test_sweep_expands_candidates_reference_first_without_building_anything(tmp_path, monkeypatch):
    monkeypatch.setenv("SMALLFIT_CACHE", str(tmp_path))  # nothing may be assembled into the cache
    spec = build_spec({"candidates": [{"model": "smollm2-135m"}, {"model": "gemma3-270m", "name": "g"}],
                       "tasks": ["quartz"], "quantize": ["q8_0, q4_0"]}, "test")
    assert RunSpec.model_validate_json(spec.model_dump_json()) == spec  # the spec keeps the user's intent
    assert [c.model for c in spec.candidates] == ["smollm2-135m", "gemma3-270m"]
    planned, problems = plan(spec)
    assert not problems
    assert [(p.name, p.variant) for p in planned] == [
        ("smollm2-135m:f32", "f32"), ("smollm2-135m:q8_0", "q8_0"), ("smollm2-135m:q4_0", "q4_0"),
        ("g:f32", "f32"), ("g:q8_0", "q8_0"), ("g:q4_0", "q4_0")]
    assert [PlannedCandidate.from_json(p.to_json()) for p in planned] == planned
    assert not any(tmp_path.iterdir())  # planning assembled no Gemma file


def test_backend_variants_run_the_source_on_their_backend_with_their_options():
    planned = _plan({"candidates": [{"model": "smollm2-135m", "options": {"batch_size": 4}}],
                     "quantize": ["q8_0,torch-int8,onnx-int8"]})
    assert [(p.name, p.variant, p.backend, p.options) for p in planned] == [
        ("smollm2-135m:f32", "f32", "llamacpp", {"batch_size": 4}),
        ("smollm2-135m:q8_0", "q8_0", "llamacpp", {"batch_size": 4}),
        ("smollm2-135m:torch-int8", "torch-int8", "transformers", {"batch_size": 4, "dtype": "float32",
                                                                   "quantize": "int8"}),
        ("smollm2-135m:onnx-int8", "onnx-int8", "onnx", {"batch_size": 4, "quantize": "int8"})]


def test_an_encoder_folder_is_swept_against_full_precision_torch(tmp_path):
    (tmp_path / "config.json").write_text('{"architectures": ["BertModel"]}')
    sweep = {"candidates": [{"model": str(tmp_path)}]}
    assert [p.variant for p in _plan({**sweep, "quantize": ["onnx-int8", "torch-int8"]})] == [
        "torch-f32", "onnx-int8", "torch-int8"]
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    assert _plan({**sweep, "quantize": ["q8_0"]})[0].variant == "f32"


def test_servers_and_onnx_exports_cannot_be_swept(tmp_path):
    _, problems = plan(build_spec({"candidates": [{"model": "http://127.0.0.1:1/v1"}], "tasks": ["quartz"],
                                   "quantize": ["q8_0"]}, "test"))
    assert len(problems) == 1 and "--quantize makes variants of local models" in problems[0]
    export = tmp_path / "model.onnx"
    export.write_bytes(b"x")
    _, problems = plan(build_spec({"candidates": [{"model": str(export)}], "tasks": ["quartz"], "quantize": ["q8_0"]},
                                  "test"))
    assert len(problems) == 1 and "starts from the source model" in problems[0]
    with pytest.raises(SmallfitError, match="--quantize names no type"):
        build_spec({"candidates": [{"model": "smollm2-135m"}], "tasks": ["quartz"], "quantize": [" , "]}, "test")
    with pytest.raises(SmallfitError, match="variant: Extra inputs are not permitted"):
        build_spec({"candidates": [{"model": "smollm2-135m", "variant": "q8_0"}], "tasks": ["quartz"]}, "test")


def test_unknown_quantization_type_is_a_preflight_problem_of_that_variant_only():
    planned = _plan({"candidates": [{"model": "smollm2-135m"}], "quantize": ["q8_0,q9_9"]})
    problems = preflight(planned, ["q8_0", "q9_9"])
    assert problems["smollm2-135m:q8_0"] == [] and problems["smollm2-135m:f32"] == []
    assert problems["smollm2-135m:q9_9"][0].startswith("unknown quantization type 'q9_9': choose from f32")


def test_kl_divergence_on_hand_made_distributions():
    ref = np.log(np.array([[0.5, 0.5], [1.0, 1e-300], [0.25, 0.75]]))
    var = np.log(np.array([[0.9, 0.1], [0.5, 0.5], [0.25, 0.75]]))
    ref[1, 1] = -np.inf  # a token the reference rules out adds nothing
    kl = kl_rows(ref, var)
    # 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1) = 0.5 (-0.587787) + 0.5 (1.609438) = 0.510826
    assert kl[0] == pytest.approx(0.5108256, abs=1e-6)
    assert kl[1] == pytest.approx(math.log(2), abs=1e-12)  # 1 x ln(1/0.5)
    assert kl[2] == 0.0
    with pytest.raises(SmallfitError, match="do not share a vocabulary"):
        kl_rows(ref, var[:, :1])


def test_kl_summary_mean_and_p95():
    # p95 of [0, 1, 2, 3]: rank 0.95 x 3 = 2.85 -> 2 + 0.85 x (3 - 2)
    assert summarize([0.0, 1.0, 2.0, 3.0]) == {"kl_divergence": 1.5, "kl_divergence_p95": pytest.approx(2.85)}
    assert summarize([]) == {"kl_divergence": None, "kl_divergence_p95": None}


def test_kl_metrics_are_defined():
    for name in ("kl_divergence", "kl_divergence_p95"):
        assert known_metric(name) and not METRICS[name].higher_is_better and METRICS[name].unit == "nats"
    for name in ("embedding_cosine", "embedding_cosine_min"):
        assert known_metric(name) and METRICS[name].higher_is_better


def test_cosine_fidelity_by_hand():
    ref = np.array([[1.0, 0.0], [0.0, 1.0]])
    mine = np.array([[1.0, 0.0], [np.sqrt(0.5), np.sqrt(0.5)]])
    assert cosine_summary(ref, mine) == {"embedding_cosine": pytest.approx((1 + np.sqrt(0.5)) / 2),
                                         "embedding_cosine_min": pytest.approx(np.sqrt(0.5))}
