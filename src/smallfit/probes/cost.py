"""Cost per million tokens from a declared hardware price and the electricity the run used.

All figures are estimates: the whole machine is charged to the model while it serves one
request at a time (the way these runs measure it).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

JOULES_PER_KWH = 3.6e6


class Prices(BaseModel):
    """Hardware price (per hour, or purchase price over a lifetime) and electricity price."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    hardware_usd_per_hour: float | None = Field(default=0.05, ge=0, description="rent, or None to use purchase")
    hardware_purchase_usd: float | None = Field(default=None, ge=0)
    hardware_lifetime_years: float = Field(default=3.0, gt=0)
    electricity_usd_per_kwh: float = Field(default=0.15, ge=0)
    cpu_watts_per_core: float = Field(default=12.0, gt=0, description="for estimated energy")

    def hardware_usd_per_s(self) -> float:
        """Purchase price spread over the lifetime if given, else the hourly price."""
        if self.hardware_purchase_usd is not None:
            return self.hardware_purchase_usd / (self.hardware_lifetime_years * 365.25 * 24 * 3600)
        return (self.hardware_usd_per_hour or 0.0) / 3600


def usd_per_mtok(tok_s: float | None, watts: float | None, prices: Prices) -> float | None:
    """Cost of a million tokens produced at ``tok_s`` while drawing ``watts``; None if unknown."""
    if not tok_s or tok_s <= 0 or watts is None:
        return None
    seconds = 1e6 / tok_s
    return seconds * prices.hardware_usd_per_s() + seconds * watts / JOULES_PER_KWH * prices.electricity_usd_per_kwh
