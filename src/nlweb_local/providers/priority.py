"""`PriorityGate`: who goes next when an engine (or a deployment's instances) serves fewer calls at once
than are waiting; and `RequestPriority`, the wrapper that puts the request's priority on every call.

    acquire(priority, tenant) ──(a slot it may take is free, nobody waits)──► runs at once
                              └─(else)──► waits: by class (higher first, with ageing), and within a class
                                          by weighted fair sharing between tenants
    release() ──► the freed slot goes to the best waiter that may take it (or stays free)

Between classes — ageing: a waiter gains one priority level per `ageing_s` seconds waited, so a stream of
high-priority calls delays a low-priority one but cannot starve it. A class ranks by its oldest waiter:
`arrival / ageing_s - priority`, lowest first.

Within a class — start-time fair queueing: each tenant (a team, else a key; "" for anonymous callers)
has a virtual finish time; a call that arrives gets the start tag `max(V, finish[tenant])` and moves the
tenant's finish on by `1 / weight`; the waiter with the least start tag goes first and `V` follows the
start tags served. A tenant that floods a class queues behind its own calls: another tenant's call
starts at `V`, so it waits for at most one call of each other backlogged tenant. Over any stretch where
two tenants both wait, the calls they got, each divided by its weight, differ by at most 1/w_a + 1/w_b.

Reserved slots: `reserve` pairs (class priority, slots): a call of a lower priority than the class may
not take one of the last `slots` free slots (kept for that class and above, so a flood of batch calls
leaves a slot for the next interactive one; at most capacity - 1 are held back).

Bounded: at most `max_waiting` calls wait. When full, a call displaces the newest waiter of the lowest
class below its own (that waiter gets `asyncio.QueueFull`: the edge answers 503 + Retry-After), else it
is refused itself. A waiter that is cancelled (deadline, client gone) leaves the queue, and a slot
handed to it at that moment passes on.

Drain rate: the gate measures completions per second while calls wait (an EWMA of the gaps between
completions with a backlog), so that a caller can tell whether a call would start before its deadline
(`wait_s`). Runs on the event loop only: no locks.
"""
from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import time
from typing import AsyncIterator, Awaitable, Callable, Mapping, Sequence

from ..core.priority import ASKED
from ..core.types import ChatChunk, ChatRequest, ChatResponse, LabelProbs
from .base import Provider
from .wrapper import WrapperProvider

DRAIN_EWMA = 0.2  # weight of the newest gap between completions


class _Waiter:
    __slots__ = ("fut", "priority", "tenant", "arrival", "start", "seq", "granted", "live")

    def __init__(self, fut: asyncio.Future, priority: int, tenant: str, arrival: float, start: float, seq: int):
        self.fut, self.priority, self.tenant, self.arrival, self.start, self.seq = fut, priority, tenant, arrival, start, seq
        self.granted = False
        self.live = True  # waiting (not granted, displaced or cancelled)


class _Class:
    """The waiters of one priority: a heap by fair start tag, and a deque in arrival order."""

    __slots__ = ("heap", "fifo", "vtime", "finish", "count")

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, _Waiter]] = []
        self.fifo: collections.deque[_Waiter] = collections.deque()
        self.vtime = 0.0
        self.finish: dict[str, float] = {}
        self.count = 0

    def oldest(self) -> _Waiter:
        while not self.fifo[0].live:
            self.fifo.popleft()
        return self.fifo[0]

    def newest(self) -> _Waiter:
        while not self.fifo[-1].live:
            self.fifo.pop()
        return self.fifo[-1]

    def next_fair(self) -> _Waiter:
        while not self.heap[0][2].live:
            heapq.heappop(self.heap)
        return heapq.heappop(self.heap)[2]

    def start_tag(self, tenant: str) -> float:
        return max(self.vtime, self.finish.get(tenant, 0.0))


class PriorityGate:
    def __init__(self, capacity: int = 1, max_waiting: int = 64, *, ageing_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, weights: Mapping[str, float] | None = None,
                 reserve: Sequence[tuple[int, int]] = ()):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if not ageing_s > 0:
            raise ValueError("ageing_s must be positive")
        if any(not w > 0 for w in (weights or {}).values()):
            raise ValueError("tenant weights must be positive")
        self.capacity = capacity
        self.max_waiting = max_waiting
        self.running = 0
        self.waiting = 0
        self.displaced = 0  # waiters pushed out of a full queue by a call of a higher class
        self._ageing_s = ageing_s
        self._clock = clock
        self._weights = dict(weights or {})
        self._reserve = tuple(reserve)
        self._classes: dict[int, _Class] = {}
        self._seq = itertools.count()
        self._last_done: float | None = None
        self._gap_s: float | None = None  # EWMA of the seconds between completions while calls wait

    # -- reading -------------------------------------------------------------------------------------
    def held_back(self, priority: int) -> int:
        """Slots a call of `priority` may not take (reserved for higher classes)."""
        if not self._reserve:
            return 0
        return min(self.capacity - 1, sum(n for p, n in self._reserve if priority < p))

    def _may_run(self, priority: int) -> bool:
        return self.running < self.capacity - self.held_back(priority)

    def _class_key(self, priority: int, c: _Class) -> tuple[float, int]:
        w = c.oldest()
        return w.arrival / self._ageing_s - priority, w.seq

    def ahead(self, priority: int = 0, tenant: str = "") -> int:
        """About how many waiters would be served before a call of `priority` from `tenant` arriving now:
        every waiter of a class that ranks before it, and those of its own class with an earlier start tag."""
        key = self._clock() / self._ageing_s - priority
        n = 0
        for p, c in self._classes.items():
            if p == priority:
                start = c.start_tag(tenant)
                n += sum(1 for s, _, w in c.heap if w.live and s <= start)
            elif self._class_key(p, c)[0] <= key:
                n += c.count
        return n

    def full(self, priority: int | None = None) -> bool:
        """Whether the next call (of `priority`: it may displace a lower class) would be refused."""
        if self.waiting < self.max_waiting:
            return False
        return priority is None or not any(p < priority for p in self._classes)

    def drain_rate(self) -> float | None:
        """Measured completions per second while calls wait (None: not measured yet)."""
        return 1.0 / self._gap_s if self._gap_s else None

    def wait_s(self, priority: int = 0, tenant: str = "") -> float | None:
        """Expected seconds before a call arriving now would start: 0 when it would run at once; None when
        it would wait but no drain rate is measured yet."""
        if not self.waiting and self._may_run(priority):
            return 0.0
        rate = self.drain_rate()
        return (self.ahead(priority, tenant) + 1) / rate if rate else None

    def drain_s(self) -> float | None:
        """Expected seconds until every waiting call has started (None: not measured yet)."""
        rate = self.drain_rate()
        return self.waiting / rate if rate else None

    # -- acquiring and releasing ---------------------------------------------------------------------
    def try_acquire(self, priority: int = 0) -> bool:
        """Take a slot now if a call of `priority` would run at once (nobody waits, one it may take is free);
        else False and nothing changes. Pair a True with `release()`."""
        if not self.waiting and self._may_run(priority):
            self.running += 1
            return True
        return False

    async def acquire(self, priority: int = 0, tenant: str = "") -> None:
        """Wait for a slot. Pair with `release()` (try/finally). `asyncio.QueueFull` when the queue is full
        (or this waiter was displaced by a call of a higher class)."""
        if not self.waiting and self._may_run(priority):
            self.running += 1
            return
        if self.waiting >= self.max_waiting:
            self._displace_below(priority)
        c = self._classes.get(priority)
        if c is None:
            c = self._classes[priority] = _Class()
        start = c.start_tag(tenant)
        c.finish[tenant] = start + 1.0 / self._weights.get(tenant, 1.0)
        w = _Waiter(asyncio.get_running_loop().create_future(), priority, tenant, self._clock(), start, next(self._seq))
        heapq.heappush(c.heap, (start, w.seq, w))
        c.fifo.append(w)
        c.count += 1
        self.waiting += 1
        self._dispatch()
        try:
            await w.fut  # resolved by _dispatch(): the slot is this call's (`running` counts it)
        except asyncio.CancelledError:
            if w.granted:
                self.release()  # the slot arrived as we were cancelled: pass it on
            elif w.live:
                self._leave(w)
            raise

    def release(self) -> None:
        self.running -= 1
        now = self._clock()
        if self.waiting:
            if self._last_done is not None:
                gap = now - self._last_done
                self._gap_s = gap if self._gap_s is None else (1 - DRAIN_EWMA) * self._gap_s + DRAIN_EWMA * gap
            self._last_done = now
            self._dispatch()
        else:
            self._last_done = None  # no backlog: the next gap would measure idleness, not the drain rate

    def set_capacity(self, capacity: int) -> None:
        """A new number of slots (instances came or went); waiters take the new ones at once."""
        self.capacity = max(1, capacity)
        self._dispatch()

    # -- inside --------------------------------------------------------------------------------------
    def _leave(self, w: _Waiter) -> None:
        w.live = False
        self.waiting -= 1
        c = self._classes[w.priority]
        c.count -= 1
        if not c.count:
            del self._classes[w.priority]  # (its fair-share state goes with it: nobody of it waits)
        elif len(c.heap) > 2 * c.count + 64:  # bounded: drop the entries of waiters that left out of turn
            c.heap = [e for e in c.heap if e[2].live]
            heapq.heapify(c.heap)
            c.fifo = collections.deque(x for x in c.fifo if x.live)

    def _displace_below(self, priority: int) -> None:
        lower = [p for p in self._classes if p < priority]
        if not lower:
            raise asyncio.QueueFull(f"{self.max_waiting} calls are already waiting")
        victim = self._classes[min(lower)].newest()
        self._leave(victim)
        if victim.fut.done():  # cancelled while waiting (its task is on its way out): its place is free anyway
            return
        self.displaced += 1
        victim.fut.set_exception(asyncio.QueueFull(f"{self.max_waiting} calls are waiting and one of a higher "
                                                   "priority class took this call's place"))

    def _dispatch(self) -> None:
        """Give free slots to the best waiters that may take them."""
        while self.waiting and self.running < self.capacity:
            best: tuple[float, int] | None = None
            chosen: int | None = None
            for p, c in self._classes.items():
                if self._may_run(p):
                    key = self._class_key(p, c)
                    if best is None or key < best:
                        best, chosen = key, p
            if chosen is None:
                return  # the free slots are reserved for classes nobody of which waits
            c = self._classes[chosen]
            w = c.next_fair()
            self._leave(w)
            if w.fut.done():  # cancelled while waiting (its task is on its way out)
                continue
            c.vtime = max(c.vtime, w.start)
            if len(c.finish) > 2 * c.count + 16:  # forget tenants with nothing left ahead of V
                c.finish = {t: f for t, f in c.finish.items() if f > c.vtime}
            w.granted = True
            self.running += 1
            w.fut.set_result(None)


def tenant_of(request: ChatRequest) -> str:
    """Whom a call is shared fairly as: its caller's team, else its key ("" for anonymous callers)."""
    ctx = request.context
    return ctx.team or ctx.caller


class RequestPriority(WrapperProvider):
    """Puts the priority the HTTP edge resolved for the request being served (`core.priority.ASKED`:
    its x-nlweb-priority header, its key's and team's class) on every call's `CallContext.priority`."""

    def _stamped(self, request: ChatRequest) -> ChatRequest:
        asked = ASKED.get()
        if asked is not None and request.context.priority != asked:
            request.context = request.context.with_(priority=asked)  # (in place: the edge made it for this call)
        return request

    # (complete and stream directly, not through `around_call`: one coroutine less on the hot path)
    def complete(self, request: ChatRequest) -> Awaitable[ChatResponse]:
        return self.inner.complete(self._stamped(request))

    async def classify(self, request: ChatRequest, labels: Sequence[str]) -> LabelProbs:
        return await super().classify(self._stamped(request), labels)

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        return self.inner.stream(self._stamped(request))


def request_priority(inner: Provider) -> Provider:
    """The wrapper for the gateway's fold."""
    return RequestPriority(inner)
