"""One instance of a deployment: its provider (an engine adapter built for one URL) and its live state —
a circuit breaker of its own, calls in flight, EWMA latency, the last scraped `LoadSnapshot` and when it
was scraped. The fleet reads it as an `InstanceView` (policies never see this object)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..providers.base import LoadSnapshot, Provider
from ..router.breaker import CircuitBreaker
from .policies import InstanceView

EWMA_WEIGHT = 0.2  # weight of the newest measurement


@dataclass(frozen=True, slots=True)
class InstanceStatus:
    """An instance as an operator sees it (GET /admin/fleet)."""

    url: str
    up: bool
    healthy: bool
    detail: str
    breaker: str
    in_flight: int
    waiting: int
    running: int
    ewma_latency_s: float | None
    kv_cache_usage: float | None
    scrape_age_s: float | None  # None: never scraped
    served: int
    failed: int
    models: tuple[str, ...] | None = None  # what its last scrape said it has loaded (None: never said)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Instance:
    __slots__ = ("id", "provider", "breaker", "in_flight", "ewma_s", "load", "scraped_at", "served", "failed",
                 "served_at_scrape")

    def __init__(self, url: str, provider: Provider, breaker: CircuitBreaker):
        self.id = url
        self.provider = provider
        self.breaker = breaker
        self.in_flight = 0
        self.ewma_s: float | None = None
        self.load = LoadSnapshot(healthy=True, detail="not scraped yet")
        self.scraped_at: float | None = None
        self.served = 0
        self.failed = 0
        self.served_at_scrape = 0  # `served` when it was last scraped (answers since then prove it alive)

    def observe(self, seconds: float) -> None:
        self.ewma_s = seconds if self.ewma_s is None else (1 - EWMA_WEIGHT) * self.ewma_s + EWMA_WEIGHT * seconds

    def fresh(self, now: float, stale_s: float) -> bool:
        return self.scraped_at is not None and now - self.scraped_at <= stale_s

    def view(self, now: float, stale_s: float) -> InstanceView:
        if self.fresh(now, stale_s):
            load = self.load
            return InstanceView(self.id, load.healthy, self.breaker.available(), self.in_flight, load.waiting,
                                load.running, self.ewma_s)
        return InstanceView(self.id, True, self.breaker.available(), self.in_flight, 0, 0, self.ewma_s)

    def status(self, now: float, stale_s: float) -> InstanceStatus:
        v = self.view(now, stale_s)
        return InstanceStatus(self.id, v.up, v.healthy, self.load.detail, self.breaker.state.value, self.in_flight,
                              v.waiting, v.running, None if self.ewma_s is None else round(self.ewma_s, 4),
                              self.load.kv_cache_usage,
                              None if self.scraped_at is None else round(now - self.scraped_at, 3),
                              self.served, self.failed, self.load.models)
