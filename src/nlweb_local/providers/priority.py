"""`PriorityGate`: who goes next when an engine serves fewer calls at once than are waiting.

    acquire(priority) ──(a slot is free and nobody waits)──► runs at once
                      └─(else)──► waits in a heap: higher priority first, FIFO within a priority
    release() ──► hands the slot to the best waiter (or frees it)

Ageing: a waiter gains one priority level per `ageing_s` seconds waited, so a stream of high-priority
calls delays a low-priority one but cannot starve it. All waiters age at the same rate, so the order
is fixed at arrival: the heap key is `arrival / ageing_s - priority`.

Bounded: at most `max_waiting` calls wait; `full()` says when the next one should be refused (the
engine answers `OverloadedError`, 503 + Retry-After at the HTTP edge). A waiter that is cancelled
(deadline, client gone) leaves the queue, and a slot handed to it at that moment passes on.
Runs on the event loop only: no locks.
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Callable


class PriorityGate:
    def __init__(self, capacity: int = 1, max_waiting: int = 64, *, ageing_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if not ageing_s > 0:
            raise ValueError("ageing_s must be positive")
        self.capacity = capacity
        self.max_waiting = max_waiting
        self.running = 0
        self._ageing_s = ageing_s
        self._clock = clock
        self._heap: list[tuple[float, int, asyncio.Future]] = []
        self._seq = itertools.count()

    def _key(self, priority: int) -> float:
        return self._clock() / self._ageing_s - priority

    def ahead(self, priority: int = 0) -> int:
        """How many waiters would be served before a call of `priority` arriving now."""
        key = self._key(priority)
        return sum(1 for k, _, f in self._heap if k <= key and not f.done())

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, f in self._heap if not f.done())

    def full(self) -> bool:
        return self.running >= self.capacity and self.waiting >= self.max_waiting

    async def acquire(self, priority: int = 0) -> None:
        """Wait for a slot; higher `priority` is served first. Pair with `release()` (try/finally)."""
        if self.running < self.capacity and not self._heap:
            self.running += 1
            return
        if self.full():
            raise asyncio.QueueFull(f"{self.max_waiting} calls are already waiting")
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (self._key(priority), next(self._seq), fut))
        try:
            await fut  # resolved by release(): the slot is handed over, `running` unchanged
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot arrived as we were cancelled: pass it on
            raise

    def release(self) -> None:
        while self._heap:
            _, _, fut = heapq.heappop(self._heap)
            if not fut.done():  # skip waiters that were cancelled
                fut.set_result(None)
                return
        self.running -= 1
