"""What a token costs: cloud list prices from a dated table, and an honest price for local tokens.

A cloud token costs what the vendor charges (`prices.yaml`, overridable per deployment). A local token
costs the machine's time: the hardware price amortised over its lifetime plus its power draw × the
electricity price gives dollars per hour; divided by the tokens per hour the deployment is measured to
process while busy, that is dollars per token:

    $/h          = hardware_usd / (lifetime_years × 8760 h) + power_watts / 1000 × usd_per_kwh
    $/1M tokens  = $/h / (tokens_per_s × 3600) × 1e6

Local input and output tokens get the same price (both take the machine's time; measured throughput
counts both), so the sum of local costs over a period is what the machine's busy hours cost.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol

import yaml

from ..core.errors import BadRequestError

HOURS_PER_YEAR = 8760.0
SHIPPED_TABLE = Path(__file__).with_name("prices.yaml")


@dataclass(frozen=True, slots=True)
class Price:
    """A fixed price: dollars per 1M input and per 1M output tokens, and where it came from."""

    in_per_m: float
    out_per_m: float
    source: str = ""

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.in_per_m + tokens_out * self.out_per_m) / 1e6

    def at(self, tokens_per_s: float | None) -> "Price":
        return self

    def cost_at(self, tokens_in: int, tokens_out: int, tokens_per_s: float | None) -> float:
        return (tokens_in * self.in_per_m + tokens_out * self.out_per_m) / 1e6


FREE = Price(0.0, 0.0, "free")


class PriceModel(Protocol):
    def at(self, tokens_per_s: float | None) -> Price:
        """The price per token given the deployment's measured throughput (None: not measured yet)."""
        ...

    def cost_at(self, tokens_in: int, tokens_out: int, tokens_per_s: float | None) -> float:
        """What a call of these tokens costs at that throughput (the hot path: no objects made)."""
        ...


@dataclass(frozen=True, slots=True)
class HardwareCost:
    """Local inference: the machine's cost per hour spread over the tokens it processes per hour."""

    hardware_usd: float
    lifetime_years: float
    power_watts: float
    electricity_usd_per_kwh: float
    assumed_tokens_per_s: float = 50.0  # until the deployment's throughput has been measured
    _per_s: float = field(init=False, repr=False, compare=False, default=0.0)  # per_hour / 3600, for cost_at

    def __post_init__(self) -> None:
        object.__setattr__(self, "_per_s", self.per_hour / 3600.0)

    @property
    def hardware_per_hour(self) -> float:
        return self.hardware_usd / (self.lifetime_years * HOURS_PER_YEAR) if self.lifetime_years > 0 else 0.0

    @property
    def power_per_hour(self) -> float:
        return self.power_watts / 1000.0 * self.electricity_usd_per_kwh

    @property
    def per_hour(self) -> float:
        return self.hardware_per_hour + self.power_per_hour

    def per_million(self, tokens_per_s: float) -> float:
        return self.per_hour / (tokens_per_s * 3600.0) * 1e6 if tokens_per_s > 0 else 0.0

    def cost_at(self, tokens_in: int, tokens_out: int, tokens_per_s: float | None) -> float:
        tps = tokens_per_s if tokens_per_s is not None and tokens_per_s > 0 else self.assumed_tokens_per_s
        return self._per_s * (tokens_in + tokens_out) / tps if tps > 0 else 0.0

    def at(self, tokens_per_s: float | None) -> Price:
        measured = tokens_per_s is not None and tokens_per_s > 0
        tps = tokens_per_s if measured else self.assumed_tokens_per_s
        per_m = self.per_million(tps)
        how = "measured" if measured else "assumed"
        return Price(per_m, per_m, f"local: ${self.per_hour:.4f}/h ÷ {tps:.1f} tokens/s ({how})")


@dataclass(frozen=True, slots=True)
class PriceTable:
    """Vendor prices by model name (longest prefix wins), with the date they were taken."""

    prices: Mapping[str, Price]
    as_of: str = ""

    @classmethod
    def load(cls, path: str | Path | None = None) -> "PriceTable":
        p = Path(path) if path else SHIPPED_TABLE
        try:
            data = yaml.safe_load(p.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise BadRequestError(f"price table {p} cannot be read: {e} (telemetry.price_table)") from e
        return cls.parse(data, where=str(p))

    @classmethod
    def parse(cls, data: Any, *, where: str = "price table") -> "PriceTable":
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
            raise BadRequestError(f"{where}: expected a mapping with 'models: {{vendor: {{model: {{in, out}}}}}}'")
        as_of = str(data.get("as_of", ""))
        prices: dict[str, Price] = {}
        for vendor, models in data["models"].items():
            for model, p in (models or {}).items():
                try:
                    prices[str(model)] = Price(float(p["in"]), float(p["out"]), f"{vendor} list price {model} ({as_of})")
                except (TypeError, KeyError, ValueError) as e:
                    raise BadRequestError(f"{where}: {vendor}.{model} needs numeric 'in' and 'out' ($ per 1M tokens)") from e
        return cls(prices, as_of)

    def lookup(self, model: str) -> Price | None:
        """The price of `model`: exact name, else the longest table name it starts with."""
        name = model.strip().lower()
        if "/" in name and name not in self.prices and not name.startswith("azure/"):
            name = name.rsplit("/", 1)[1]  # "openai/gpt-4o" → "gpt-4o"
        if name in self.prices:
            return self.prices[name]
        best = max((k for k in self.prices if name.startswith(k)), key=len, default=None)
        return self.prices[best] if best else None


def deployment_price(*, model: str, engine: str, local: bool, price_in_per_m: float, price_out_per_m: float,
                     table: PriceTable, hardware: HardwareCost) -> PriceModel:
    """A deployment's price model: explicit settings win; a local engine is priced by its hardware; a cloud
    model by the table (an unknown cloud model is free, and says so in its source)."""
    if price_in_per_m > 0 or price_out_per_m > 0:
        return Price(price_in_per_m, price_out_per_m, "deployment settings")
    if local:
        return hardware
    found = (table.lookup(f"azure/{model}") if engine == "azure_openai" else None) or table.lookup(model)
    return found or Price(0.0, 0.0, f"unknown: {model!r} is not in the price table; set price_in_per_m/price_out_per_m")


def pricing_from_settings(t: Any) -> tuple["PriceTable", "Price", "HardwareCost"]:
    """From a `TelemetrySettings`: the price table, the reference model's price and the local hardware
    model — shared by the running service and `cost report`."""
    from ..core.errors import BadRequestError

    table = PriceTable.load(t.price_table)
    reference = table.lookup(t.reference_model)
    if reference is None:
        raise BadRequestError(f"telemetry.reference_model {t.reference_model!r} is not in the price table "
                              f"({', '.join(sorted(table.prices))})")
    hardware = HardwareCost(t.hardware_usd, t.hardware_lifetime_years, t.power_watts, t.electricity_usd_per_kwh,
                            t.assumed_local_tokens_per_s)
    return table, reference, hardware
