"""Figures derived from a task's timed requests and its energy reading: energy per token and per
request, power, cost per million tokens, and the decode roofline. Each comes with its label
(measured or estimated, and from what); this is the only place they are computed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from smallfit.metrics import EMBED_PHASE, timed_requests
from smallfit.probes.bandwidth import decode_roofline_tok_s
from smallfit.probes.cost import Prices, usd_per_mtok
from smallfit.probes.energy import EnergyReading
from smallfit.records import RequestTiming

ENERGY_FIGURES = ("energy_j", "energy_j_per_token", "energy_j_per_request", "power_w")


def energy_figures(metrics: dict[str, float | None], timings: Sequence[RequestTiming],
                   energy: EnergyReading) -> dict[str, str]:
    """Energy per token and per request and mean power, into ``metrics``; their labels."""
    timed = timed_requests(timings)
    out_tokens = sum(t.n_output_tokens for t in timed)
    if energy.joules is not None and timed:
        metrics["energy_j"] = energy.joules
        metrics["energy_j_per_token"] = energy.joules / out_tokens if out_tokens else None
        metrics["energy_j_per_request"] = energy.joules / len(timed)
        metrics["power_w"] = energy.joules / energy.seconds if energy.seconds > 0 else None
    else:
        metrics.update(dict.fromkeys(ENERGY_FIGURES))
    return dict.fromkeys(ENERGY_FIGURES, f"{energy.method}: {energy.source}")


def cost_figures(metrics: dict[str, float | None], prices_data: Mapping[str, Any], encoder: bool,
                 energy_method: str) -> dict[str, str]:
    """Cost per million output and input tokens from the declared prices; their labels."""
    try:
        prices = Prices.model_validate(dict(prices_data))
    except ValueError as exc:
        metrics["cost_usd_per_mtok_out"] = metrics["cost_usd_per_mtok_in"] = None
        reason = f"not computed: bad price ({exc})"
        return {"cost_usd_per_mtok_out": reason, "cost_usd_per_mtok_in": reason}
    watts = metrics.get("power_w")
    metrics["cost_usd_per_mtok_out"] = usd_per_mtok(metrics.get("decode_tok_s"), watts, prices)
    rate_in = metrics.get("input_tok_s") if encoder else metrics.get("prefill_tok_s")
    metrics["cost_usd_per_mtok_in"] = usd_per_mtok(rate_in, watts, prices)
    reason = (f"estimated: hardware {prices.hardware_usd_per_s() * 3600:.4g} $/h, electricity "
              f"{prices.electricity_usd_per_kwh:g} $/kWh, power from energy_j ({energy_method})")
    return {"cost_usd_per_mtok_out": reason, "cost_usd_per_mtok_in": reason}


def roofline_figures(metrics: dict[str, float | None], bandwidth: Mapping[str, Any], weights_bytes: float | None,
                     encoder: bool) -> dict[str, str]:
    """The decode ceiling if every weight byte is read once per token, and the share reached.
    ``bandwidth`` is that of the memory the weights run from; without ``bytes_per_s`` its
    ``reason`` says why there is none (a GPU candidate is not held against host memory)."""
    bw = bandwidth.get("bytes_per_s")
    metrics["memory_bandwidth_bytes_s"] = bw
    if bw and weights_bytes and not encoder:
        ceiling = decode_roofline_tok_s(bw, weights_bytes)
        metrics["decode_roofline_tok_s"] = ceiling
        decode = metrics.get("decode_tok_s")
        metrics["decode_roofline_pct"] = 100 * decode / ceiling if decode else None
    else:
        metrics["decode_roofline_tok_s"] = metrics["decode_roofline_pct"] = None
    if not bw:
        reason = f"not measured: {bandwidth.get('reason', 'no memory bandwidth figure')}"
        return dict.fromkeys(("memory_bandwidth_bytes_s", "decode_roofline_tok_s", "decode_roofline_pct"), reason)
    roof = (f"estimated: every weight byte ({weights_bytes:.0f} bytes as loaded) read once per token"
            if weights_bytes else "not measured: the size of the loaded weights is unknown")
    return {"memory_bandwidth_bytes_s": f"measured: {bandwidth.get('method', 'not measured')}",
            "decode_roofline_tok_s": roof, "decode_roofline_pct": roof}


def derived_figures(metrics: dict[str, float | None], timings: Sequence[RequestTiming], energy: EnergyReading,
                    prices: Mapping[str, Any], bandwidth: Mapping[str, Any]) -> dict[str, str]:
    """Energy, cost and roofline figures into ``metrics``; every figure's label."""
    encoder = any(t.phase == EMBED_PHASE for t in timed_requests(timings))  # no output tokens, no decode
    labels = energy_figures(metrics, timings, energy)
    labels.update(cost_figures(metrics, prices, encoder, energy.method))
    labels.update(roofline_figures(metrics, bandwidth, metrics.get("model_size_bytes"), encoder))
    return labels
