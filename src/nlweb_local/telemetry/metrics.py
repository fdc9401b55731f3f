"""Prometheus metrics of the gateway, on a registry passed in (never the process-global default one).

Label values are bounded by construction: deployment names come from configuration, task kinds from
`TaskKind`, error classes from the error tree; `BoundedLabel` folds anything past a fixed number of
distinct values into "other", so no caller can grow the series set (no user text, ids or URLs).

Per-call series (updated by `MeteredProvider`):

    nlweb_llm_requests_total{deployment,task,route}          calls started (route: local|cloud)
    nlweb_llm_errors_total{deployment,task,error}            calls failed, by error class
    nlweb_llm_time_to_first_token_seconds{deployment,task}   histogram
    nlweb_llm_request_duration_seconds{deployment,task}      histogram, whole call
    nlweb_llm_tokens_total{deployment,task,direction}        direction: in|out
    nlweb_llm_output_tokens_per_second{deployment,task}      histogram, generation speed per call
    nlweb_llm_in_flight{deployment}                          gauge
    nlweb_llm_cost_usd_total{deployment,route}               what the calls cost
    nlweb_llm_reference_cost_usd_total{deployment,route}     what the reference cloud model would have charged
                                                             (savings = reference - cost)

Pulled at scrape time from the router (`RouterCollector`): breaker state, queue depth, running calls,
health per deployment. The ledger adds its queue depth and dropped rows.
"""
from __future__ import annotations

import threading
from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
SPEED_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)
BREAKER_VALUES = {"closed": 0, "restoring": 1, "half_open": 2, "open": 3}


class BoundedLabel:
    """Maps raw values to at most `limit` distinct label values; the rest become `other`."""

    def __init__(self, limit: int, other: str = "other"):
        self._limit = limit
        self._other = other
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self._limit:
                self._seen.add(value)
                return value
        return self._other


class GatewayMetrics:
    """The metric families, registered on `registry`. One instance per app."""

    def __init__(self, registry: CollectorRegistry, *, max_deployments: int = 64, max_error_classes: int = 32):
        self.registry = registry
        r = registry
        self.deployment_label = BoundedLabel(max_deployments)
        self.error_label = BoundedLabel(max_error_classes)
        self.task_label = BoundedLabel(16)
        self.requests = Counter("nlweb_llm_requests", "LLM calls started, per deployment and task kind",
                                ("deployment", "task", "route"), registry=r)
        self.errors = Counter("nlweb_llm_errors", "LLM calls that failed, by error class",
                              ("deployment", "task", "error"), registry=r)
        self.ttft = Histogram("nlweb_llm_time_to_first_token_seconds", "time to the first streamed token",
                              ("deployment", "task"), buckets=LATENCY_BUCKETS, registry=r)
        self.duration = Histogram("nlweb_llm_request_duration_seconds", "whole LLM call, first byte out to last in",
                                  ("deployment", "task"), buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("nlweb_llm_tokens", "tokens processed (direction: in = prompt, out = generated)",
                              ("deployment", "task", "direction"), registry=r)
        self.speed = Histogram("nlweb_llm_output_tokens_per_second", "generation speed of one call",
                               ("deployment", "task"), buckets=SPEED_BUCKETS, registry=r)
        self.in_flight = Gauge("nlweb_llm_in_flight", "LLM calls in progress", ("deployment",), registry=r)
        self.cost = Counter("nlweb_llm_cost_usd", "cost of the calls in US dollars", ("deployment", "route"), registry=r)
        self.reference_cost = Counter("nlweb_llm_reference_cost_usd", "what the reference cloud model would have "
                                      "charged for the same tokens (savings = reference - cost)",
                                      ("deployment", "route"), registry=r)
        self.ledger_dropped = Counter("nlweb_ledger_dropped_rows", "ledger rows dropped because the write queue was full",
                                      registry=r)
        self.ledger_written = Counter("nlweb_ledger_written_rows", "ledger rows written to the database", registry=r)
        self.ledger_queue = Gauge("nlweb_ledger_queue_depth", "ledger rows waiting to be written", registry=r)

    def for_call(self, deployment: str, task: str, local: bool) -> "CallSeries":
        """The children of one (deployment, task) pair, resolved once: `.labels()` is the costly part."""
        d, t, route = self.deployment_label(deployment), self.task_label(task), "local" if local else "cloud"
        return CallSeries(self, d, t, route)

    def watch_router(self, router: Any) -> None:
        """Export breaker states, queue depths and health of `router`'s deployments at scrape time."""
        self.registry.register(RouterCollector(router, self.deployment_label))


class CallSeries:
    """The metric children one MeteredProvider updates for one task kind."""

    __slots__ = ("_m", "deployment", "task", "requests", "ttft", "duration", "tokens_in", "tokens_out", "speed",
                 "in_flight", "cost", "reference_cost", "_errors")

    def __init__(self, m: GatewayMetrics, deployment: str, task: str, route: str):
        self._m = m
        self.deployment, self.task = deployment, task
        self.requests = m.requests.labels(deployment, task, route)
        self.ttft = m.ttft.labels(deployment, task)
        self.duration = m.duration.labels(deployment, task)
        self.tokens_in = m.tokens.labels(deployment, task, "in")
        self.tokens_out = m.tokens.labels(deployment, task, "out")
        self.speed = m.speed.labels(deployment, task)
        self.in_flight = m.in_flight.labels(deployment)
        self.cost = m.cost.labels(deployment, route)
        self.reference_cost = m.reference_cost.labels(deployment, route)
        self._errors: dict[str, Any] = {}

    def error(self, error_class: str) -> None:
        child = self._errors.get(error_class)
        if child is None:
            child = self._errors[error_class] = self._m.errors.labels(self.deployment, self.task,
                                                                        self._m.error_label(error_class))
        child.inc()


class RouterCollector:
    """Reads the router's live state when Prometheus scrapes: no work on the request path."""

    def __init__(self, router: Any, deployment_label: BoundedLabel):
        self._router = router
        self._label = deployment_label

    def describe(self) -> Iterable:
        return []

    def collect(self) -> Iterable:
        breaker = GaugeMetricFamily("nlweb_breaker_state", "circuit breaker state: 0 closed, 1 restoring, "
                                    "2 half_open, 3 open", labels=("deployment",))
        waiting = GaugeMetricFamily("nlweb_deployment_queue_depth", "requests queued in the engine (last probe)",
                                    labels=("deployment",))
        running = GaugeMetricFamily("nlweb_deployment_running", "calls the router has in flight", labels=("deployment",))
        healthy = GaugeMetricFamily("nlweb_deployment_healthy", "1 if the last health probe succeeded",
                                    labels=("deployment",))
        for name, route in self._router.routes.items():
            d = self._label(name)
            route.breaker.available()  # let an expired OPEN period turn into HALF_OPEN before reading it
            breaker.add_metric((d,), BREAKER_VALUES.get(route.breaker.state.value, -1))
            waiting.add_metric((d,), route.snapshot.waiting)
            running.add_metric((d,), route.in_flight)
            healthy.add_metric((d,), 1.0 if route.snapshot.healthy else 0.0)
        return [breaker, waiting, running, healthy]


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=False)
