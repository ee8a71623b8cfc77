"""The int8 kernel path chosen per CPU (:mod:`smallfit.probes.cpu`) and torch's engine for it:
pure rules, each path forced through ``SMALLFIT_CPU_FEATURES``."""

from types import SimpleNamespace

import pytest

from smallfit.errors import SmallfitError
from smallfit.probes.cpu import FEATURES_ENV, S16_MAX, U8_MAX, CpuFeatures, cpu_features, int8_path
from smallfit.probes.hardware import fingerprint


def _cpu(machine, *flags):
    return CpuFeatures(machine, frozenset(flags), True)


@pytest.mark.parametrize(("cpu", "name", "reduce_range"), [
    (_cpu("x86_64", "avx2", "fma"), "x86-no-vnni", True),  # the AVX2-only EPYC that saturated
    (_cpu("x86_64", "avx2", "avx512f", "avx512bw"), "x86-no-vnni", True),  # Skylake-X: AVX-512, no VNNI
    (_cpu("x86_64", "sse4_1"), "x86-no-vnni", True),
    (_cpu("x86_64", "avx2", "avx512f", "avx512_vnni"), "x86-vnni", False),
    (_cpu("x86_64", "avx2", "avx_vnni"), "x86-vnni", False),  # Alder Lake: VEX-encoded VNNI
    (_cpu("x86_64", "avx512_vnni", "amx_tile", "amx_int8"), "x86-amx", False),
    (_cpu("aarch64", "asimd", "asimddp"), "arm", False),
    (_cpu("arm64"), "arm", False),
])
def test_the_weight_range_follows_the_kernel_path(cpu, name, reduce_range):
    path = int8_path(cpu)
    assert (path.name, path.onnx_reduce_range) == (name, reduce_range)
    assert path.torch_engines == (("qnnpack",) if name == "arm" else ("x86", "fbgemm"))


def test_seven_bit_weights_cannot_saturate_an_int16_pair_sum_and_eight_bit_can():
    # vpmaddubsw adds two u8 x s8 products in saturating int16; onnxruntime's 7-bit range is -64..64
    assert 2 * U8_MAX * 64 <= S16_MAX < 2 * U8_MAX * 127
    assert 2 * 127 * 128 <= S16_MAX  # torch: 7-bit activations (0..127) by full 8-bit weights


def test_a_cpu_without_a_rule_is_refused_in_one_line():
    with pytest.raises(SmallfitError, match=r"^int8 dynamic quantization on a riscv64 CPU: .*fp32 or GGUF") as err:
        int8_path(_cpu("riscv64", "v"))
    assert "\n" not in str(err.value)


def test_the_environment_forces_a_path_and_the_fingerprint_records_it(monkeypatch):
    monkeypatch.setenv(FEATURES_ENV, "x86_64:avx2, fma")
    assert cpu_features() == CpuFeatures("x86_64", frozenset({"avx2", "fma"}), True)
    hw = fingerprint()
    assert hw["cpu_features"] == ["avx2", "fma"] and hw["cpu_features_forced"] is True
    assert hw["int8_kernel_path"]["name"] == "x86-no-vnni" and hw["int8_kernel_path"]["onnx_reduce_range"] is True
    monkeypatch.setenv(FEATURES_ENV, "riscv64:v")
    assert fingerprint()["int8_kernel_path"]["name"] is None  # recorded, not raised: only int8 refuses
    monkeypatch.setenv(FEATURES_ENV, "")  # empty: the real CPU
    assert cpu_features().forced is False


def _torch(*engines):
    return SimpleNamespace(backends=SimpleNamespace(quantized=SimpleNamespace(supported_engines=list(engines),
                                                                              engine="none")))


@pytest.mark.parametrize(("forced", "engines", "chosen"), [
    ("x86_64:avx2", ("qnnpack", "x86", "fbgemm"), "x86"),
    ("x86_64:avx512_vnni", ("fbgemm", "qnnpack"), "fbgemm"),  # an older torch without the x86 engine
    ("aarch64:asimd", ("qnnpack", "x86", "fbgemm"), "qnnpack"),
])
def test_torch_engine_follows_the_cpu(monkeypatch, forced, engines, chosen):
    from smallfit.backends.torch_int8 import choose_engine

    monkeypatch.setenv(FEATURES_ENV, forced)
    torch = _torch(*engines)
    assert choose_engine(torch) == chosen and torch.backends.quantized.engine == chosen


def test_torch_without_the_engine_is_refused(monkeypatch):
    from smallfit.backends.torch_int8 import choose_engine

    monkeypatch.setenv(FEATURES_ENV, "aarch64:asimd")
    with pytest.raises(SmallfitError, match=r"no quantized engine for kernel path arm \(wants qnnpack, has x86\)"):
        choose_engine(_torch("x86"))
