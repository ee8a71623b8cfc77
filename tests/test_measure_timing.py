"""The timing pass's guards: prompts cut to fit, failures kept apart from quality, GPU energy and
roofline never taken from the host (fake backends: these faults cannot be made on a CPU machine)."""

from __future__ import annotations

from typing import Any

from smallfit.backends.base import Capabilities
from smallfit.contract import Job, ResolvedModel, Settings
from smallfit.errors import SmallfitError
from smallfit.measure import _device_bandwidth, _keep_going, _own_energy, fitting_prompts
from smallfit.probes.energy import EnergyReading
from smallfit.probes.figures import roofline_figures


class _Chars:
    """A backend whose tokens are characters, with a stated context."""

    capabilities = Capabilities()

    def __init__(self, context: int, extra: dict[str, Any] | None = None) -> None:
        self.context = context
        self.extra = extra or {}

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def info(self) -> dict[str, Any]:
        return {"context_size": self.context, **self.extra}


def _job(serves: bool = False) -> Job:
    return Job(ResolvedModel("m", "m", "x", "file", "gguf", "m.gguf", serves=serves), (), Settings(), threads=1)


def test_prompts_that_do_not_fit_are_cut_and_said_so():
    details: dict[str, Any] = {}
    long, short = "a" * 500, "short prompt"
    out = fitting_prompts(_Chars(100), [long, short], 32, details)  # room: 100 - 32 - 1 = 67 tokens
    assert out[1] == short and 0 < len(out[0]) <= 67 and long.startswith(out[0])
    assert details["timing_prompts_truncated"] == 1 and "100-token context" in details["timing_prompts_note"]
    untouched: dict[str, Any] = {}
    assert fitting_prompts(_Chars(1000), [long], 32, untouched) == [long] and untouched == {}


def test_a_timing_failure_is_recorded_not_raised():
    details: dict[str, Any] = {}

    def fails() -> None:
        raise SmallfitError("prompt of 9000 tokens leaves no room in the 2048-token context")

    _keep_going(details, fails)
    assert "after the quality pass" in details["timing_error"] and "9000 tokens" in details["timing_error"]


def test_a_gpu_candidate_without_nvml_gets_no_cpu_energy():
    cpu = EnergyReading(12.0, "measured", "RAPL package counters (1): ...", 2.0)
    gone = _own_energy(cpu, _job(), "cuda:0")
    assert gone.joules is None and gone.method == "unavailable" and "cuda:0" in gone.source
    estimated = EnergyReading(3.0, "estimated", "CPU time ...", 2.0)
    assert _own_energy(estimated, _job(), "cuda").joules is None
    nvml = EnergyReading(40.0, "measured", "NVML total energy of the GPU", 2.0)
    assert _own_energy(nvml, _job(), "cuda:0") == nvml
    assert _own_energy(cpu, _job(), "cpu") == cpu


def test_a_gpu_candidate_is_not_held_against_host_memory_bandwidth():
    host = {"bytes_per_s": 20e9, "method": "memmove"}
    assert _device_bandwidth(host, "cpu", _Chars(10)) == host
    unknown = _device_bandwidth(host, "cuda:0", _Chars(10))
    metrics: dict[str, float | None] = {"decode_tok_s": 50.0}
    labels = roofline_figures(metrics, unknown, 1e9, encoder=False)
    assert metrics["decode_roofline_tok_s"] is None and metrics["memory_bandwidth_bytes_s"] is None
    assert labels["decode_roofline_pct"].startswith("not measured") and "cuda:0" in labels["decode_roofline_pct"]
    stated = _device_bandwidth(host, "cuda:0", _Chars(10, {"device_bandwidth_bytes_s": 4.8e12}))
    roofline_figures(metrics, stated, 2.4e9, encoder=False)
    assert metrics["decode_roofline_tok_s"] == 2000.0


def test_the_roofline_uses_the_bytes_as_loaded():
    metrics: dict[str, float | None] = {"decode_tok_s": 10.0}
    labels = roofline_figures(metrics, {"bytes_per_s": 1e9, "method": "m"}, 5e8, encoder=False)  # bf16 of 1e9 fp32
    assert metrics["decode_roofline_tok_s"] == 2.0 and metrics["decode_roofline_pct"] == 500.0
    assert "500000000 bytes as loaded" in labels["decode_roofline_pct"]


def test_a_served_model_never_gets_the_same_prompt_twice_in_the_timing_pass():
    """A server's prompt cache may not be switchable (llama-cpp-python's is not): every timed
    request to a served model starts with its own number; an in-process model gets the prompts as
    they are."""
    from dataclasses import replace

    from smallfit.measure import distinct, timing_pass
    from smallfit.records import RequestTiming

    sent: list[Any] = []

    def run(chunk: list[Any]) -> list[RequestTiming]:
        sent.extend(chunk)
        return [RequestTiming(len(sent), "latency", 3, 2, 0.001, 0.002, (0.001, 0.002))]

    served = replace(_job(serves=True), settings=Settings(timing_min_requests=6, timing_min_s=0.0))
    timing_pass(served, "t", ["p", "q"], [], run)
    assert sent == ["[0] p", "[1] q", "[2] p", "[3] q", "[4] p", "[5] q"] and len(set(sent)) == len(sent)
    sent.clear()
    timing_pass(replace(served, model=replace(served.model, serves=False)), "t", ["p", "q"], [], run)
    assert sent == ["p", "q", "p", "q", "p", "q"]
    from smallfit.tasks.base import GenerationSample

    sample = GenerationSample(id="s", prompt="Q: x\nA:", answer="y")
    assert distinct(sample, 7).prompt == "[7] Q: x\nA:" and distinct(3.5, 1) == 3.5
