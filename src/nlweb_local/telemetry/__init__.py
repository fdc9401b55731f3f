"""Metrics, cost ledger, stats and prices: what the gateway's LLM calls cost, save and how they behave.

`Telemetry` bundles the parts one app uses; `build_telemetry(settings)` makes it (called by the
composition root); `Telemetry.wrap(provider, ...)` puts a deployment's provider inside a
`MeteredProvider` priced for that deployment.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from .ledger import CallRecord, CostLedger
from .metered import MeteredProvider
from .metrics import GatewayMetrics, new_registry
from .prices import HardwareCost, Price, PriceTable, deployment_price
from .stats import RecentCalls

__all__ = ["Telemetry", "build_telemetry", "CallRecord", "CostLedger", "MeteredProvider", "GatewayMetrics",
           "HardwareCost", "Price", "PriceTable", "RecentCalls"]


@dataclass
class Telemetry:
    metrics: GatewayMetrics
    window: RecentCalls
    prices: PriceTable
    hardware: HardwareCost
    reference: Price | None
    reference_model: str = ""
    ledger: CostLedger | None = None
    clock: Callable[[], float] = time.perf_counter
    now: Callable[[], float] = time.time

    def wrap(self, provider: Any, *, engine: str = "", price_in_per_m: float = 0.0,
             price_out_per_m: float = 0.0) -> MeteredProvider:
        price = deployment_price(model=provider.model, engine=engine, local=provider.capabilities.local,
                                 price_in_per_m=price_in_per_m, price_out_per_m=price_out_per_m, table=self.prices,
                                 hardware=self.hardware)
        return MeteredProvider(provider, self.metrics, ledger=self.ledger, window=self.window, price=price,
                               reference=self.reference, clock=self.clock, now=self.now)

    def watch(self, router: Any) -> None:
        self.metrics.watch_router(router)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.metrics.registry)

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()


def build_telemetry(settings: Any, *, ledger: bool | None = None, clock: Callable[[], float] = time.perf_counter,
                    now: Callable[[], float] = time.time) -> Telemetry:
    """From `Settings`: the price table, the local hardware model, the reference price, and (unless
    `telemetry.ledger` is off or `ledger=False`) the cost ledger under the data folder."""
    from ..core.errors import BadRequestError

    t = settings.telemetry
    table = PriceTable.load(t.price_table)
    reference = table.lookup(t.reference_model)
    if reference is None:
        raise BadRequestError(f"telemetry.reference_model {t.reference_model!r} is not in the price table "
                              f"({', '.join(sorted(table.prices))})")
    metrics = GatewayMetrics(new_registry())
    keep = t.ledger if ledger is None else ledger
    book = CostLedger(ledger_path(settings), metrics=metrics, max_queue=t.ledger_queue) if keep else None
    hardware = HardwareCost(t.hardware_usd, t.hardware_lifetime_years, t.power_watts, t.electricity_usd_per_kwh,
                            t.assumed_local_tokens_per_s)
    return Telemetry(metrics, RecentCalls(t.stats_window_calls, clock=now), table, hardware, reference,
                     t.reference_model, book, clock, now)


def ledger_path(settings: Any):
    from pathlib import Path

    t = settings.telemetry
    return Path(t.ledger_path).expanduser() if t.ledger_path else settings.data_path / "ledger.sqlite"
