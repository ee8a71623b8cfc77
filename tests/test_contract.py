"""The typed run contract (job and events round-trip through the one codec), the registry's
declarations, and model references resolved through it."""

import json
from dataclasses import asdict, replace

import pytest

from smallfit.backends.registry import default_backend, get_backend, registry, variant_backend
from smallfit.contract import (
    Fatal,
    Finished,
    Job,
    Loaded,
    Progress,
    ResolvedModel,
    Settings,
    SweepSettings,
    TaskDone,
    TaskFailed,
    TaskStarted,
    decode_event,
    decode_job,
    encode_event,
    encode_job,
)
from smallfit.errors import SmallfitError
from smallfit.models import parse_model_ref
from smallfit.records import RequestTiming, SampleResult, TaskInfo, TaskResult


def _job() -> Job:
    model = ResolvedModel("m", "./m.gguf", "llamacpp", "file", "gguf", "/x/m.gguf", "ab" * 32, 123, "q8_0",
                          "/x/src.gguf", backend_package="smallfit 0.1.0")
    sweep = SweepSettings("q8_0", "f32", "llamacpp", "/x/m.f32.gguf", {"a": 1}, "/x/src.gguf")
    return Job(model, (("quartz", "quartz"), ("probe:energy", "probe:energy")), Settings(limit=5, prices={"x": None}),
               threads=2, options={"batch_size": 4}, sweep=sweep, prepare_s=1.5)


def test_job_round_trips_and_is_frozen():
    job = _job()
    assert decode_job(encode_job(job)) == job
    with pytest.raises(AttributeError):
        job.threads = 3  # type: ignore[misc]


def test_every_event_round_trips_through_the_one_codec():
    info = TaskInfo(kind="multiple_choice", n_samples=2, labels={"energy_j": "estimated: x"},
                    intervals={"acc": "wilson"}, details={"k": [1, 2]})
    result = TaskResult("t", {"acc": 0.5, "ttft_s": None}, [SampleResult(0, "s0", "Q", "A", "A", {"acc": 1.0})],
                        [RequestTiming(0, "latency", 3, 2, 0.1, 0.2, (0.1, 0.2))], info)
    events = [Loaded(0.5, {"threads": 2}, 1000), TaskStarted("t", 2), Progress("t", 1), TaskDone(result),
              TaskFailed("t", "boom"), Fatal("no model"), Finished()]
    for event in events:
        line = encode_event(event)
        assert "\n" not in line and json.loads(line)["event"]
        assert decode_event(line) == event
    with pytest.raises(ValueError):
        decode_event('{"event": "nonsense"}')


def test_task_info_reads_what_older_releases_stored():
    old = {"kind": "generation", "n_samples": 3, "timing_rule": {"min_requests": 10, "min_s": 10.0},
           "sweep": {"variant": "q8_0", "reference": "f32"}, "peak_rss_source": "ru_maxrss (since process start)",
           "knee_rule": "x"}
    info = TaskInfo.from_dict(old)
    assert (info.timing_min_requests, info.timing_min_s, info.sweep_variant) == (10, 10.0, "q8_0")
    assert info.peak_rss_since_start and info.details == {"knee_rule": "x"}
    assert TaskInfo.from_dict(asdict(info)) == info


def test_registry_declarations_pick_backends_without_naming_them_anywhere_else():
    names = set(registry())
    assert {"llamacpp", "transformers", "onnx", "openai"} <= names
    assert default_backend("gguf").name == "llamacpp" and default_backend("onnx").name == "onnx"
    assert default_backend("http").serves and get_backend("hf").name == "transformers"
    assert variant_backend("torch-int8") == (get_backend("transformers"), {"dtype": "float32", "quantize": "int8"})
    assert variant_backend("q8_0") is None
    with pytest.raises(SmallfitError, match="unknown backend 'nope'"):
        get_backend("nope")
    with pytest.raises(SmallfitError, match="no installed backend runs 'xyz' models"):
        default_backend("xyz")


def test_references_are_checked_against_what_each_backend_declares(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert parse_model_ref(f"{gguf}@onnx").backend == "onnx"  # onnx declares it runs gguf (by exporting)
    with pytest.raises(SmallfitError, match="the openai backend does not run a local model"):
        parse_model_ref(f"{gguf}@openai")
    with pytest.raises(SmallfitError, match="the llamacpp backend does not run a server URL"):
        parse_model_ref("http://127.0.0.1:1/v1@llamacpp")
    folder = tmp_path / "hfmodel"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(SmallfitError, match="the llamacpp backend does not run transformers models"):
        parse_model_ref(f"{folder}@llamacpp")
    assert replace(parse_model_ref(str(folder)), raw="").backend == "transformers"


def test_percentile_checks_raise_the_timed_requests_of_the_tasks_they_apply_to():
    from smallfit.runner import settings_of
    from smallfit.spec import build_spec

    spec = build_spec({"candidates": [{"model": "x.toy"}], "tasks": ["quartz", "gsm8k-bpb"],
                       "budget": ["quartz:latency_s_p95<=2s", "ttft_s<=1s", "decode_tok_s>=5"]}, "test")
    settings = settings_of(spec)
    assert settings.percentile_requests == {"quartz": 72, "*": 6}  # a p95 (quartz only), a p50 everywhere
    assert settings.min_requests("quartz") == 72 and settings.min_requests("gsm8k-bpb") == 10
    assert settings.timing_reason.startswith("quartz:latency_s_p95<=2 needs 72 timed requests")
    assert "ttft_s" not in settings.timing_reason  # 6 is fewer than the timing rule's 10 anyway
    assert settings_of(spec.model_copy(update={"quick": True})).percentile_requests == {}
