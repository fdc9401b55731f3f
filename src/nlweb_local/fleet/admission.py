"""`AdmissionGate`: a deployment's bounded queue, in front of its instances (a `Fleet`, or one engine URL).

    router ─► (deployment chain) ─► AdmissionGate ─► Fleet ─► an instance's adapter
                                     │
                                     ├─ at most instances × `fleet.slots` calls go on to the engines at once
                                     ├─ the rest wait (at most `fleet.max_waiting`) in a `PriorityGate`: by
                                     │  priority class, fair between tenants within a class (llm.priority),
                                     │  with `fleet.reserve` slots kept for the higher classes
                                     └─ refused at once (`QueueFullError`: 503 + Retry-After) when the queue is
                                        full of calls of its class or higher, or when the call could not start
                                        before its deadline at the measured drain rate:
                                            (calls ahead of it + 1) / completions per second > deadline left

An HTTP engine queues what it cannot serve at once in its own FIFO, where priority means nothing; the
gate keeps that queue here, where it can be ordered, bounded and refused honestly. The drain rate is
measured (an EWMA of the gaps between completions while calls wait); until it is, nothing is refused
for its deadline — a waiting call that reaches its deadline still leaves with `QueueFullError`. Time spent
waiting here is the call's `Usage.queue_s` (the router's breaker does not count it as the engine's).
Embedding calls pass through (they carry no priority).
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, AsyncIterator, Callable, Mapping, Sequence

from ..config.settings import FleetSettings
from ..core.errors import QueueFullError
from ..core.priority import PriorityClasses
from ..core.types import ChatChunk, ChatRequest, ChatResponse, LabelProbs
from ..providers.base import LoadSnapshot, Provider
from ..providers.priority import PriorityGate, tenant_of
from ..providers.wrapper import WrapperProvider


class AdmissionGate(WrapperProvider):
    def __init__(self, inner: Provider, settings: FleetSettings, *, classes: PriorityClasses | None = None,
                 weights: Mapping[str, float] | None = None, ageing_s: float = 10.0,
                 instances: Callable[[], int] | None = None, clock: Callable[[], float] = time.monotonic):
        """`instances()`: how many instances the deployment has now (capacity = that × `settings.slots`);
        None: the inner provider's `instance_count()` (a `Fleet`), else 1."""
        super().__init__(inner)
        if settings.slots is None:
            raise ValueError("an admission gate needs fleet.slots")
        classes = classes or PriorityClasses()
        reserve: Sequence[tuple[int, int]] = [(classes.parse(c, f"deployment {inner.name!r}: fleet.reserve"), n)
                                              for c, n in settings.reserve.items()]
        counted = getattr(inner, "instance_count", None)
        self._instances = instances or counted or (lambda: 1)
        self._slots = settings.slots
        self._clock = clock
        self.refused = 0  # calls refused at once (queue full, or their deadline could not be met)
        self.gate = PriorityGate(capacity=self._slots * max(1, self._instances()), max_waiting=settings.max_waiting,
                                 ageing_s=ageing_s, clock=clock, weights=weights, reserve=reserve)

    # -- admission ---------------------------------------------------------------------------------
    def _follow_capacity(self) -> None:
        capacity = self._slots * max(1, self._instances())
        if capacity != self.gate.capacity:
            self.gate.set_capacity(capacity)

    def _retry_after(self) -> float:
        return max(1.0, self.gate.drain_s() or 1.0)

    def _refusal(self, request: ChatRequest | None) -> QueueFullError | None:
        """Why `request` (None: any call) must be refused now, or None."""
        priority, tenant = (request.context.priority, tenant_of(request)) if request is not None else (0, "")
        g = self.gate
        if g.full(priority):
            return QueueFullError(f"{self.name}: {g.waiting} calls are waiting (fleet.max_waiting={g.max_waiting}) "
                                  f"and none of a lower priority class; retry in about {self._retry_after():.0f}s",
                                  retry_after=self._retry_after(), deployment=self.name)
        deadline = request.deadline_s if request is not None else None
        if deadline is not None:
            wait = g.wait_s(priority, tenant)
            if wait is not None and wait > deadline:
                return QueueFullError(
                    f"{self.name}: this call cannot start within its deadline ({deadline:.2f}s): "
                    f"{g.ahead(priority, tenant)} calls are ahead of it and the deployment serves about "
                    f"{g.drain_rate():.1f} calls/s (about {wait:.2f}s to wait)",
                    retry_after=self._retry_after(), deployment=self.name)
        return None

    def admit(self, request: ChatRequest | None = None) -> None:
        self._follow_capacity()
        refusal = self._refusal(request)
        if refusal is not None:
            raise refusal
        self.inner.admit(request)

    async def _enter(self, request: ChatRequest) -> float:
        """Wait for a slot (or refuse); the seconds waited."""
        self._follow_capacity()
        if self.gate.try_acquire(request.context.priority):  # a free slot, nobody waiting: no timer, no clock
            return 0.0
        return await self._queue(request)

    async def _queue(self, request: ChatRequest) -> float:
        refusal = self._refusal(request)
        if refusal is not None:
            self.refused += 1
            raise refusal
        t0 = self._clock()
        try:
            async with asyncio.timeout(request.deadline_s):
                await self.gate.acquire(request.context.priority, tenant_of(request))
        except asyncio.QueueFull as e:  # displaced from a full queue by a call of a higher class
            raise QueueFullError(f"{self.name}: {e}", retry_after=self._retry_after(), deployment=self.name) from None
        except TimeoutError:
            raise QueueFullError(f"{self.name}: no turn within the call's deadline ({request.deadline_s:.2f}s) "
                                 f"behind {self.gate.waiting} waiting calls", retry_after=self._retry_after(),
                                 deployment=self.name) from None
        return self._clock() - t0

    @staticmethod
    def _rest(request: ChatRequest, waited: float) -> ChatRequest:
        if request.deadline_s is None or waited <= 0:
            return request
        return request.with_deadline(max(0.001, request.deadline_s - waited))

    # -- calls -------------------------------------------------------------------------------------
    async def complete(self, request: ChatRequest) -> ChatResponse:
        self._follow_capacity()
        if self.gate.try_acquire(request.context.priority):  # the common case, without a coroutine more
            try:
                return await self.inner.complete(request)
            finally:
                self.gate.release()
        waited = await self._queue(request)
        try:
            out = await self.inner.complete(self._rest(request, waited))
        finally:
            self.gate.release()
        out.usage.queue_s += waited
        return out

    async def classify(self, request: ChatRequest, labels: Sequence[str]) -> LabelProbs:
        from dataclasses import replace

        waited = await self._enter(request)
        try:
            out = await super().classify(self._rest(request, waited), labels)
        finally:
            self.gate.release()
        return replace(out, queue_s=out.queue_s + waited) if waited else out

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        waited = await self._enter(request)
        try:
            async with contextlib.aclosing(self.inner.stream(self._rest(request, waited))) as chunks:
                async for ch in chunks:
                    if ch.usage is not None and waited:
                        ch.usage.queue_s += waited
                    yield ch
        finally:
            self.gate.release()

    async def health(self) -> LoadSnapshot:
        """The instances' load, with the calls waiting here added to their queue."""
        from dataclasses import replace

        snap = await self.inner.health()
        return replace(snap, waiting=snap.waiting + self.gate.waiting) if self.gate.waiting else snap

    def status(self) -> dict[str, Any]:
        """For /admin/fleet."""
        g = self.gate
        rate = g.drain_rate()
        return {"slots": g.capacity, "running": g.running, "waiting": g.waiting, "max_waiting": g.max_waiting,
                "drain_rate_per_s": None if rate is None else round(rate, 3), "displaced": g.displaced,
                "refused": self.refused}
