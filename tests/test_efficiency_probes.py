"""Energy, cost, roofline, contention and the probes' pure parts, with hand-computed values."""

import json

import pytest

from smallfit.errors import SmallfitError
from smallfit.probes.bandwidth import copy_bandwidth_bytes_s, decode_roofline_tok_s
from smallfit.probes.cost import Prices, usd_per_mtok
from smallfit.probes.energy import EnergyMeter, counter_delta, rapl_domains
from smallfit.probes.load import Contention
from smallfit.probes.scaling import knee
from smallfit.spec import build_spec
from tests.conftest import needs_models


def _rapl(root, uj, wrap=None, name="package-0", index=0):
    domain = root / f"intel-rapl:{index}"
    domain.mkdir(parents=True, exist_ok=True)
    (domain / "name").write_text(name + "\n")
    (domain / "energy_uj").write_text(str(uj))
    if wrap is not None:
        (domain / "max_energy_range_uj").write_text(str(wrap))
    (root / f"intel-rapl:{index}:0").mkdir(exist_ok=True)  # a sub-domain: already inside the package figure
    return domain


def test_only_package_domains_are_summed_by_name(tmp_path):
    p0 = _rapl(tmp_path, 1_000_000)
    p1 = _rapl(tmp_path, 2_000_000, name="package-1", index=1)
    psys = _rapl(tmp_path, 9_000_000, name="psys", index=2)  # the whole platform: packages included
    dram = _rapl(tmp_path, 5, name="dram", index=3)
    assert rapl_domains(tmp_path) == [p0, p1]
    meter = EnergyMeter(powercap=tmp_path)
    meter.start()
    for domain, uj in ((p0, 1_500_000), (p1, 2_250_000), (psys, 19_000_000), (dram, 10_000_005)):
        (domain / "energy_uj").write_text(str(uj))
    reading = meter.stop()
    assert reading.method == "measured" and reading.joules == pytest.approx(0.75)
    assert "(2)" in reading.source


def test_counter_delta_with_wraparound():
    assert counter_delta(10, 25, None) == 15
    assert counter_delta(990, 5, 1000) == 15
    with pytest.raises(ValueError):
        counter_delta(990, 5, None)


def test_rapl_counters_are_measured(tmp_path):
    domain = _rapl(tmp_path, 1_000_000, wrap=2_000_000)
    meter = EnergyMeter(powercap=tmp_path)
    assert rapl_domains(tmp_path) == [domain]
    meter.start()
    (domain / "energy_uj").write_text("500000")  # wrapped: 1,000,000 more micro-joules
    reading = meter.stop()
    assert reading.method == "measured" and reading.joules == pytest.approx(1.5)
    assert "RAPL" in reading.source


def test_unreadable_counters_fall_back_to_a_labelled_estimate(tmp_path):
    domain = _rapl(tmp_path, 7)
    (domain / "energy_uj").write_text("not a number")
    meter = EnergyMeter(cpu_watts_per_core=10.0, powercap=tmp_path)
    meter.start()
    sum(i * i for i in range(200_000))  # some CPU time
    reading = meter.stop()
    assert reading.method == "estimated" and reading.joules is not None and reading.joules > 0
    assert "10 W per busy core" in reading.source


def test_gpu_counter_from_recorded_readings_and_a_gpu_that_disappears(tmp_path):
    readings = iter([5_000, 8_500])  # millijoules, as NVML reports them
    meter = EnergyMeter(gpu_energy_mj=lambda: next(readings), powercap=tmp_path)
    meter.start()
    reading = meter.stop()
    assert (reading.joules, reading.method) == (3.5, "measured") and "NVML" in reading.source

    def vanished():
        raise RuntimeError("GPU is lost")

    meter = EnergyMeter(gpu_energy_mj=lambda: 1_000, powercap=tmp_path)
    meter.start()
    meter.gpu = vanished  # the GPU falls off the bus during the span
    lost = meter.stop()
    assert lost.joules is None and lost.method == "unavailable" and "GPU is lost" in lost.source


def test_cost_per_million_tokens():
    prices = Prices(hardware_usd_per_hour=3.6, electricity_usd_per_kwh=0.36)
    # 1e6 tokens at 100 tok/s = 1e4 s; hardware 0.001 $/s -> 10 $; 50 W x 1e4 s = 5e5 J = 0.1389 kWh -> 0.05 $
    assert usd_per_mtok(100.0, 50.0, prices) == pytest.approx(10.0 + 0.05)
    assert usd_per_mtok(None, 50.0, prices) is None and usd_per_mtok(100.0, None, prices) is None
    bought = Prices(hardware_usd_per_hour=None, hardware_purchase_usd=1000.0, hardware_lifetime_years=1.0)
    assert bought.hardware_usd_per_s() == pytest.approx(1000.0 / (365.25 * 24 * 3600))


@pytest.mark.parametrize("prices, fragment", [
    ({"hardware_usd_per_hour": -1}, "prices.hardware_usd_per_hour: Input should be greater than or equal to 0"),
    ({"electricity_usd_per_kwh": "cheap"}, "prices.electricity_usd_per_kwh: Input should be a valid number"),
    ({"electricity_usd_per_kwh": float("nan")}, "Input should be a finite number"),
])
def test_bad_prices_are_one_line_errors(prices, fragment):
    with pytest.raises(SmallfitError, match=fragment):
        build_spec({"candidates": [{"model": "smollm2-135m"}], "tasks": ["quartz"], "prices": prices}, "spec.toml")


def test_unknown_probe():
    with pytest.raises(SmallfitError, match="unknown probe 'roofline'"):
        build_spec({"candidates": [{"model": "smollm2-135m"}], "tasks": ["quartz"], "probes": ["roofline"]}, "x")


def test_roofline_bandwidth_and_knee():
    assert decode_roofline_tok_s(10e9, 100e6) == 100.0
    assert copy_bandwidth_bytes_s(threads=1, size=4 * 2**20, repeats=2) > 1e8
    assert knee({1: 50.0, 2: 90.0, 4: 120.0, 8: 125.0}) == 4  # 4 -> 8 adds only 4 %
    assert knee({1: 50.0, 2: 52.0}) == 1
    assert knee({1: 50.0, 2: 100.0}) == 2


def test_contention_reports_other_processes():
    """Another process spinning on a core while this one sleeps is counted as another's busy CPU."""
    import subprocess
    import sys
    import time

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # let it start spinning
        c = Contention()
        c.start()
        time.sleep(1.0)
        out = c.stop()
    finally:
        spinner.kill()
        spinner.wait()
    assert set(out) >= {"others_busy_cpus", "steal_pct", "noisy"}
    assert out["others_busy_cpus"] > 0.5  # most of one core, whatever else the machine is doing


@needs_models
@pytest.mark.models
def test_probes_end_to_end(cli):
    proc = cli("run", "-m", "smollm2-135m", "-t", "quartz", "--limit", "3", "--quick", "--threads", "1",
               "--probe", "load-curve,context,energy", "--max-context", "512", "--budget", "peak_rss_bytes<=2GB",
               check=True)
    assert "Load curve" in proc.stdout and "Context scaling" in proc.stdout and "(est.)" in proc.stdout
    rows = {r["task"]: r for r in json.loads(cli("results", "--format", "json", check=True).stdout)}
    assert set(rows) == {"quartz", "probe:load-curve", "probe:context", "probe:energy"}
    curve, ctx = rows["probe:load-curve"]["metrics"], rows["probe:context"]["metrics"]
    energy = rows["probe:energy"]["metrics"]
    assert all(curve[f"throughput_tok_s_at_{n}"] > 0 for n in (1, 2, 4, 8)) and curve["knee_batch_size"] in (1, 2, 4, 8)
    assert ctx["ttft_s_at_128"] > 0 and ctx["ttft_s_at_512"] > 0 and ctx["max_context_within_memory_budget"] == 512
    assert "ttft_s_at_2048" not in ctx  # beyond --max-context: skipped with its reason
    assert energy["energy_j_per_token"] > 0 and rows["quartz"]["metrics"]["cost_usd_per_mtok_out"] > 0
    assert rows["quartz"]["labels"]["energy_j"].startswith(("measured", "estimated"))
    report = cli.db.parent / "report.html"
    cli("report", "-o", str(report), check=True)
    page = report.read_text()
    assert "Energy, cost and roofline" in page and "probe:context" in page and "knee_batch_size" in page
    assert "probe:load-curve: quality" not in page  # probes are not tasks: no frontier plots for them
