"""Metrics, cost ledger, stats and prices: what the gateway's LLM calls cost, save and how they behave.

`Telemetry` bundles the parts one app uses; `build_telemetry(settings)` makes it (called by the
composition root). `Telemetry.deployment_wrappers(...)` are the wrappers every deployment's provider is
composed with (a `MeteredProvider` priced for it, then a `TracedProvider` when tracing is on);
`Telemetry.router_wrappers()` those around the router (a `TracedRouter` when tracing is on).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..providers.base import Provider
from ..providers.wrapper import Wrapper, compose
from .ledger import CallRecord, CostLedger
from .metered import MeteredProvider
from .metrics import GatewayMetrics, new_registry
from .prices import HardwareCost, Price, PriceTable, deployment_price, pricing_from_settings
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
    alert_settings: Any = None  # config AlertSettings; None: no alerts
    monitor: Any = None  # alerts.AlertMonitor, made by watch()
    tracing: Any = None  # tracing.Tracing when telemetry.tracing is on and OpenTelemetry is installed

    def deployment_wrappers(self, *, engine: str = "", price_in_per_m: float = 0.0,
                            price_out_per_m: float = 0.0, model_version: str = "") -> list[Wrapper]:
        """Innermost first: a MeteredProvider priced for the deployment it wraps (its ledger rows name
        `model_version`), then (tracing on) a TracedProvider. For `compose(provider, ...)`."""
        def metered(provider: Provider) -> Provider:
            price = deployment_price(model=provider.model, engine=engine, local=provider.capabilities.local,
                                     price_in_per_m=price_in_per_m, price_out_per_m=price_out_per_m,
                                     table=self.prices, hardware=self.hardware)
            return MeteredProvider(provider, self.metrics, ledger=self.ledger, window=self.window, price=price,
                                   reference=self.reference, clock=self.clock, now=self.now,
                                   model_version=model_version)

        out: list[Wrapper] = [metered]
        if self.tracing is not None:
            tracing, ledger = self.tracing, self.ledger is not None
            out.append(lambda p: tracing.wrap(p, engine=engine, ledger=ledger))
        return out

    def router_wrappers(self) -> list[Wrapper]:
        """Around the router: a TracedRouter (one route span per call) when tracing is on."""
        return [self.tracing.wrap_router] if self.tracing is not None else []

    def cache_accounts(self, cache: str, *, router: Any = None) -> Any:
        """How the cache named `cache` reports: lookups, corrupt entries, prices, hits as ledger rows
        (`cache_accounting.CacheAccounts`; `router` prices hits with its deployments' prices)."""
        from .cache_accounting import CacheAccounts

        return CacheAccounts(self, cache, router=router)

    def wrap(self, provider: Provider, *, engine: str = "", price_in_per_m: float = 0.0,
             price_out_per_m: float = 0.0) -> Provider:
        """`provider` composed with `deployment_wrappers(...)`."""
        return compose(provider, self.deployment_wrappers(engine=engine, price_in_per_m=price_in_per_m,
                                                          price_out_per_m=price_out_per_m))

    def watch(self, router: Any) -> None:
        """Export `router`'s breaker and queue state, and (when alerts are on) watch it for alerts."""
        self.metrics.watch_router(router)
        a = self.alert_settings
        if a is not None and a.enabled:
            from .alerts import AlertEngine, AlertMonitor, WebhookNotifier

            engine = AlertEngine(a, notify=[WebhookNotifier(a.webhooks)] if a.webhooks else [], clock=self.now)
            self.monitor = AlertMonitor(engine, self, router, window_s=a.window_s, interval_s=a.interval_s)

    def start(self) -> "asyncio.Task | None":
        """Background work (alert evaluation); hand the task to `stop` at shutdown."""
        return asyncio.create_task(self.monitor.run_forever()) if self.monitor is not None else None

    async def stop(self, task: "asyncio.Task | None") -> None:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.monitor is not None:
            for n in self.monitor.engine.notifiers:
                close = getattr(n, "close", None)
                if close is not None:
                    await close()

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.metrics.registry)

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
        if self.tracing is not None:
            self.tracing.close()  # flushes the spans still queued for export


def build_telemetry(settings: Any, *, ledger: bool | None = None, clock: Callable[[], float] = time.perf_counter,
                    now: Callable[[], float] = time.time, span_exporters: tuple = ()) -> Telemetry:
    """From `Settings`: the price table, the local hardware model, the reference price, (unless
    `telemetry.ledger` is off or `ledger=False`) the cost ledger under the data folder, and (when
    `telemetry.tracing` is on) OpenTelemetry tracing, exporting also to `span_exporters` (tests)."""
    t = settings.telemetry
    table, reference, hardware = pricing_from_settings(t)
    metrics = GatewayMetrics(new_registry())
    keep = t.ledger if ledger is None else ledger
    book = CostLedger(ledger_path(settings), metrics=metrics, max_queue=t.ledger_queue) if keep else None
    tracing = _tracing(t, span_exporters) if t.tracing else None  # only then is OpenTelemetry imported at all
    return Telemetry(metrics, RecentCalls(t.stats_window_calls, clock=now), table, hardware, reference,
                     t.reference_model, book, clock, now, t.alerts, tracing=tracing)


def _tracing(t: Any, exporters: tuple) -> Any:
    try:
        from .tracing import build_tracing
    except ImportError:  # opentelemetry-api itself is missing
        import logging

        logging.getLogger(__name__).warning("telemetry.tracing is on but OpenTelemetry is not installed "
                                            "(pip install 'nlweb-local[tracing]'): no traces")
        return None
    from .. import __version__

    return build_tracing(t, exporters=exporters, version=__version__)


def ledger_path(settings: Any):
    from pathlib import Path

    t = settings.telemetry
    return Path(t.ledger_path).expanduser() if t.ledger_path else settings.data_path / "ledger.sqlite"
