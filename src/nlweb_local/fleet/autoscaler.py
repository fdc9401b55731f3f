"""The autoscaler: every `interval_s` it samples a fleet's load, applies the scaling policy (`scaling.py`)
to the peaks of the last `window_s` seconds, and drives the launcher (`launcher.py`) to the count it chose.

    sample   from the fleet's instances (`Fleet.status()`): calls in flight through this gateway, what the
             engines report queued/running, EWMA time to first token
             queue depth   what waits for a free slot: per instance, the engine's own queue or the calls
                           in flight beyond its slots (launch.slots; an engine that reports what it runs:
                           that many), plus the calls held in the deployment's admission gate when it
                           has one — `nlweb_fleet_queue_depth{deployment}`, the signal an HPA/KEDA
                           scaler of Kubernetes replicas reads too
             utilisation   busy slots / all slots of the instances serving
    hold     while a replica is starting (its effect is not measurable yet); the samples start afresh
             after every change (they measured another count of replicas)
    replace  a replica whose process died is dropped (`reap`) and launched again, up to the count decided
    fit      a scale-up goes no further than the host's memory budget admits (`launcher.room()`: each replica
             reserves its model's size); the autoscaler holds at the count that fits and says why
             (`memory_hold` in /admin/fleet)

`step()` does no I/O and never waits: launches and drains run in the launcher's background, so a test
drives it on a simulated clock.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..config.settings import AutoscaleSettings
from .scaling import ScaleDecision, ScaleSignals, desired_replicas

log = logging.getLogger(__name__)
MAX_SAMPLES = 1024  # the window's samples are bounded whatever window_s / interval_s is
MAX_EVENTS = 50  # scale events kept for /admin/fleet


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    queue_depth: int
    in_flight: int
    utilisation: float
    ttft_s: float | None


def measure(statuses: Sequence[Any], slots: int | None, at: float = 0.0, waiting: int = 0) -> Sample:
    """One look at a fleet's instances (`InstanceStatus`es). `slots`: calls one instance serves at once
    (None: what the engine reports running, at least 1). `waiting`: calls held in front of the instances
    (a deployment's admission gate), queued too."""
    queue = in_flight = waiting
    busy = capacity = 0
    ttfts = []
    for s in statuses:
        load = max(s.in_flight, s.running + s.waiting)
        cap = slots if slots is not None else max(s.running, 1)
        queue += max(s.waiting, load - cap, 0)
        in_flight += load
        if s.up:
            busy += min(load, cap)
            capacity += cap
        if s.ewma_latency_s is not None:
            ttfts.append(s.ewma_latency_s)
    return Sample(at, queue, in_flight, busy / capacity if capacity else 0.0,
                  sum(ttfts) / len(ttfts) if ttfts else None)


def queue_depth(fleet: Any, slots: int | None, waiting: Callable[[], int] | None = None) -> int:
    return measure(fleet.status(), slots, waiting=waiting() if waiting is not None else 0).queue_depth


class Autoscaler:
    """Scales `launcher`'s replicas of `fleet` within `settings` (min/max, objective, cooldowns)."""

    def __init__(self, name: str, fleet: Any, launcher: Any, settings: AutoscaleSettings, *, slots: int = 1,
                 waiting: Callable[[], int] | None = None, clock: Callable[[], float] = time.monotonic):
        """`waiting()`: calls held in front of the fleet (its deployment's admission gate), part of the queue."""
        self.name, self.fleet, self.launcher, self.settings, self.slots = name, fleet, launcher, settings, slots
        self.waiting = waiting
        self._clock = clock
        self._samples: collections.deque[Sample] = collections.deque(maxlen=MAX_SAMPLES)
        self.desired = launcher.current
        self.last_change = -math.inf
        self.last_decision: ScaleDecision | None = None
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_EVENTS)
        self.scale_events = {"up": 0, "down": 0}
        self.wanted: int | None = None  # what the policy asked for, when the memory budget holds it lower
        self.memory_hold: str | None = None  # why: the budget's room

    def _fit(self, to: int) -> int:
        """`to`, or fewer replicas when the memory budget has room for fewer (then `memory_hold` says why)."""
        current = self.launcher.current
        room_of = getattr(self.launcher, "room", None)
        room = room_of() if room_of is not None and to > current else None
        if room is None or current + room >= to:
            self.wanted = self.memory_hold = None
            return to
        fits = current + room
        hold = (f"holding at {fits} of the {to} replicas wanted: the memory budget has room for {room} more "
                f"replica{'s' if room != 1 else ''} of {self.launcher.size_mb:.0f} MiB (llm.memory.budget_mb; see /admin/memory)")
        if hold != self.memory_hold:
            log.warning("fleet %s: %s", self.name, hold)
        self.wanted, self.memory_hold = to, hold
        return fits

    def signals(self, now: float) -> ScaleSignals:
        s = list(self._samples)
        return ScaleSignals(queue_depth=max(x.queue_depth for x in s), in_flight=max(x.in_flight for x in s),
                            ttft_s=max((x.ttft_s for x in s if x.ttft_s is not None), default=None),
                            utilisation=max(x.utilisation for x in s), replicas=self.launcher.current,
                            since_change_s=now - self.last_change,
                            observed_s=now - s[0].at + self.settings.interval_s)  # (each sample stands for an interval)

    def step(self) -> ScaleDecision | None:
        """Sample, decide, act (in the background). None: holding while replicas start."""
        now = self._clock()
        if self.launcher.reap():
            self._samples.clear()
        if self.launcher.starting:
            self._samples.clear()
            return None
        if self.launcher.current < self.desired:  # a replica died (or a launch failed): replace it
            if now - self.last_change < self.settings.scale_up_cooldown_s:
                return None
            to = self._fit(self.desired)
            if to > self.launcher.current:
                log.warning("fleet %s: %d of %d replicas running; launching again", self.name, self.launcher.current,
                            self.desired)
                self._change(now, self.launcher.current, to, "replacing replicas that stopped", None)
                return None
            self.desired = to  # nothing fits: hold here (and decide from the samples as usual)
        self._samples.append(measure(self.fleet.status(), self.slots, now,
                                     self.waiting() if self.waiting is not None else 0))
        while self._samples and now - self._samples[0].at > self.settings.window_s:
            self._samples.popleft()
        signals = self.signals(now)
        decision = desired_replicas(signals, self.settings, self.slots)
        self.last_decision = decision
        current = self.launcher.current
        to = self._fit(decision.replicas)
        if to != current:
            self.scale_events[decision.direction(current)] += 1
            self._change(now, current, to, decision.reason, signals.in_flight)
        return decision

    def _change(self, now: float, current: int, to: int, reason: str, in_flight: float | None) -> None:
        log.info("fleet %s: scaling %d -> %d (%s)", self.name, current, to, reason)
        self.events.append({"at": time.time(), "from": current, "to": to, "reason": reason, "in_flight": in_flight})
        self.desired, self.last_change = to, now
        self._samples.clear()
        self.launcher.scale_to(to)

    async def run_forever(self) -> None:
        while True:
            try:
                self.step()
            except Exception:  # noqa: BLE001 - one bad tick must not end autoscaling
                log.exception("fleet %s: autoscaler step failed", self.name)
            await asyncio.sleep(self.settings.interval_s)

    def view(self) -> dict[str, Any]:
        a, d = self.settings, self.last_decision
        return {"current": self.launcher.current, "desired": self.desired, "min_replicas": a.min_replicas,
                "max_replicas": a.max_replicas, "ttft_slo_s": a.ttft_slo_s,
                "queue_depth": queue_depth(self.fleet, self.slots, self.waiting), "reason": d.reason if d is not None else None,
                "wanted": self.wanted, "memory_hold": self.memory_hold,
                "scale_events": dict(self.scale_events), "events": list(self.events)[-10:]}
