"""The scaling policy: a pure function of a deployment's load signals and its `AutoscaleSettings` to the
number of replicas it should have. No clock, no I/O: the autoscaler (`autoscaler.py`) measures, this decides.

    up      when calls queue (more than `queue_per_replica` per replica wait for a slot) or, with calls in
            flight, the time to first token is above `ttft_slo_s`; to the replicas the demand needs at
            `target_utilisation` (at least one more), at most `max_replicas`; not within
            `scale_up_cooldown_s` of the last change
    down    when nothing queues, under `scale_down_utilisation` of the slots are busy, the time to first
            token (with calls in flight) is under half the objective, the signals cover a whole window,
            and the demand fits in fewer replicas at `target_utilisation`; to that count (at least
            `min_replicas`); not within `scale_down_cooldown_s` of the last change
    hold    otherwise: the band between the two is the hysteresis

Out of bounds (fewer than `min_replicas`, more than `max_replicas`) is corrected at once, cooldown or not.

The two thresholds make each decision a fixed point: at the count a scale-up chose, the same demand does
not scale down, and at the count a scale-down chose, it does not scale up (tests/test_fleet_scaling.py
checks this over random signals).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..config.settings import AutoscaleSettings


@dataclass(frozen=True, slots=True)
class ScaleSignals:
    """What the autoscaler measured (the peaks over its window)."""

    queue_depth: float  # calls waiting for a free slot on the deployment's replicas
    in_flight: float  # calls on its replicas: running and waiting
    ttft_s: float | None  # recent time to first token (None: not measured)
    utilisation: float  # share of its replicas' slots busy, 0..1
    replicas: int  # replicas serving or starting (not those draining)
    since_change_s: float = math.inf  # since the last scale event
    observed_s: float = math.inf  # how long the samples behind these signals span


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    replicas: int  # desired
    reason: str

    def direction(self, current: int) -> str:
        return "up" if self.replicas > current else "down" if self.replicas < current else "hold"


def needed(in_flight: float, a: AutoscaleSettings, slots: int) -> int:
    """Replicas that hold `in_flight` calls at the target utilisation, within the bounds."""
    n = math.ceil(in_flight / (slots * a.target_utilisation) - 1e-9)
    return min(a.max_replicas, max(a.min_replicas, n))


def desired_replicas(s: ScaleSignals, a: AutoscaleSettings, slots: int = 1) -> ScaleDecision:
    cur = s.replicas
    if cur < a.min_replicas:
        return ScaleDecision(a.min_replicas, f"{cur} replicas, below min_replicas {a.min_replicas}")
    if cur > a.max_replicas:
        return ScaleDecision(a.max_replicas, f"{cur} replicas, above max_replicas {a.max_replicas}")
    need = needed(s.in_flight, a, slots)
    busy = s.in_flight > 0
    slow = busy and s.ttft_s is not None and s.ttft_s > a.ttft_slo_s
    queued = s.queue_depth > a.queue_per_replica * cur
    if (queued or slow) and cur < a.max_replicas:
        why = (f"queue {s.queue_depth:g} > {a.queue_per_replica:g} per replica" if queued
               else f"time to first token {s.ttft_s:.2f}s > objective {a.ttft_slo_s:g}s")
        wait = a.scale_up_cooldown_s - s.since_change_s
        if wait > 0:
            return ScaleDecision(cur, f"{why}; cooling down ({wait:.1f}s left)")
        return ScaleDecision(min(a.max_replicas, max(need, cur + 1)), why)
    fast = not busy or s.ttft_s is None or s.ttft_s <= a.ttft_slo_s / 2
    calm = s.queue_depth == 0 and s.utilisation < a.scale_down_utilisation and fast
    if calm and need < cur:
        why = f"utilisation {s.utilisation:.2f} < {a.scale_down_utilisation:g}, {s.in_flight:g} in flight"
        if s.observed_s < a.window_s:
            return ScaleDecision(cur, f"{why}; observing ({a.window_s - s.observed_s:.1f}s more)")
        wait = a.scale_down_cooldown_s - s.since_change_s
        if wait > 0:
            return ScaleDecision(cur, f"{why}; cooling down ({wait:.1f}s left)")
        return ScaleDecision(need, why)
    return ScaleDecision(cur, "within the band" if cur < a.max_replicas or not (queued or slow) else
                         f"at max_replicas {a.max_replicas}")
