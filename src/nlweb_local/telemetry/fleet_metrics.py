"""Fleet metrics, read when Prometheus scrapes (`FleetCollector`, over `fleet.replicas.ReplicaSets.gauges`):

    nlweb_fleet_queue_depth{deployment}             calls waiting for a free slot on a deployment's instances
                                                    (the engines' own queues, or the calls in flight beyond their
                                                    slots; a deployment without a fleet counts as one instance):
                                                    the autoscaler's signal, and the one a Kubernetes HPA / KEDA
                                                    scaler reads
    nlweb_fleet_replicas{deployment}                launched replicas starting or serving
    nlweb_fleet_replicas_desired{deployment}        the count the autoscaler last decided
    nlweb_fleet_scale_events_total{deployment,direction}   direction: up|down

(`nlweb_deployment_queue_depth` is what the engine itself reports at the router's last probe: 0 for an
engine that does not report a queue, such as llama_cpp.server.)
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class FleetCollector:
    def __init__(self, gauges: Callable[[], list[dict[str, Any]]], deployment_label: Callable[[str], str]):
        self._gauges = gauges
        self._label = deployment_label

    def describe(self) -> Iterable:
        return []

    def collect(self) -> Iterable:
        queue = GaugeMetricFamily("nlweb_fleet_queue_depth", "calls waiting for a free slot on the deployment's "
                                  "instances (engine queues, or calls in flight beyond their slots)", labels=("deployment",))
        current = GaugeMetricFamily("nlweb_fleet_replicas", "launched replicas starting or serving", labels=("deployment",))
        desired = GaugeMetricFamily("nlweb_fleet_replicas_desired", "replicas the autoscaler last decided",
                                    labels=("deployment",))
        events = CounterMetricFamily("nlweb_fleet_scale_events", "autoscaler scale events", labels=("deployment", "direction"))
        for row in self._gauges():
            d = self._label(row["deployment"])
            queue.add_metric((d,), row["queue_depth"])
            if "current" in row:
                current.add_metric((d,), row["current"])
                desired.add_metric((d,), row["desired"])
                for direction, n in row["scale_events"].items():
                    events.add_metric((d, direction), n)
        return [queue, current, desired, events]
