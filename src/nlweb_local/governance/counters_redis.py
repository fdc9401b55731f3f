"""`RedisCounters`: the `Counters` port in Redis, so that every replica draws on the same limits.

`reserve` runs one Lua script (Redis runs a script atomically): for each reservation it reads every
counter and, only when each charge fits, adds them all (INCRBY) and gives a new counter its expiry
(PEXPIRE). `adjust` runs another (INCRBY each, expiry set where missing). Keys live under `nlweb:limits:`.

Calls are coalesced: the reservations (and, apart, the adjustments) that arrive while earlier scripts are
on their way to Redis (at most `MAX_IN_FLIGHT` of each) go together in the next one, each still
all-or-nothing on its own (a later reservation in a script sees an earlier one's charges). One round trip
then serves a whole burst: the client's per-command cost, not Redis, is what limits a Python process
(~150 µs of CPU a command without hiredis). A caller cancelled while its reservation was in flight gets
it undone. Settling does not wait for Redis (`adjust` returns once queued; a failure is logged), and
`value` first waits for this process's queued adjustments, so a reader here sees its own writes.

Unlike the caches, limits fail closed: when Redis cannot be reached, a reservation raises
`OverloadedError` (503 + Retry-After) rather than letting calls through unmetered.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Sequence

from ..core.errors import OverloadedError
from .counters import Charge, Refusal

log = logging.getLogger(__name__)
PREFIX = "nlweb:limits:"
MAX_BATCH = 256  # reservations (or adjustments) per script run
MAX_IN_FLIGHT = 4  # scripts of each kind on their way to Redis at once
# ARGV: the number of reservations, then per reservation: its charge count n, then n (amount, limit, ttl_ms);
# KEYS: every reservation's keys, in order. Returns per reservation {0,0,0} (taken) or {i, used, pttl}.
_RESERVE = """
local out, a, k = {}, 2, 1
for g = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[a]); a = a + 1
  local refused = false
  for i = 0, n - 1 do
    local used = tonumber(redis.call('GET', KEYS[k + i]) or '0')
    if used + tonumber(ARGV[a + 3 * i]) > tonumber(ARGV[a + 3 * i + 1]) then
      out[g] = {i + 1, used, redis.call('PTTL', KEYS[k + i])}
      refused = true
      break
    end
  end
  if not refused then
    for i = 0, n - 1 do
      redis.call('INCRBY', KEYS[k + i], ARGV[a + 3 * i])
      if redis.call('PTTL', KEYS[k + i]) < 0 then redis.call('PEXPIRE', KEYS[k + i], ARGV[a + 3 * i + 2]) end
    end
    out[g] = {0, 0, 0}
  end
  k = k + n; a = a + 3 * n
end
return out
"""
_ADJUST = """
for i = 1, #KEYS do
  redis.call('INCRBY', KEYS[i], ARGV[2 * i - 1])
  if redis.call('PTTL', KEYS[i]) < 0 then redis.call('PEXPIRE', KEYS[i], ARGV[2 * i]) end
end
return 1
"""


class RedisCounters:
    def __init__(self, url: str, *, timeout_s: float = 0.5, max_connections: int = 32, wait_s: float = 2.0,
                 prefix: str = PREFIX):
        """`timeout_s`: a connect or a reply; `wait_s`: the longest a call waits for one of the
        `max_connections` connections."""
        import redis.asyncio as aioredis

        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=wait_s,
                                                        socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._pool = pool
        self._redis = aioredis.Redis(connection_pool=pool)
        self._prefix = prefix
        self._reserve = self._redis.register_script(_RESERVE)
        self._adjust = self._redis.register_script(_ADJUST)
        self._queues: dict[str, list[tuple[Any, asyncio.Future]]] = {"reserve": [], "adjust": []}
        self._collecting: dict[str, bool] = {"reserve": False, "adjust": False}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._tasks: set[asyncio.Task] = set()
        self._unsettled: set[asyncio.Future] = set()  # adjustments queued or in flight

    def _failed(self, e: BaseException) -> OverloadedError:
        return OverloadedError(f"the limits store (Redis) cannot be reached ({type(e).__name__}); "
                               "calls are refused until it is back", retry_after=5.0)

    def _queue(self, which: str, item: Any) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._queues[which].append((item, fut))
        if not self._collecting[which]:  # no script is gathering calls yet: start one
            self._collecting[which] = True
            task = asyncio.ensure_future(self._flush(which))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return fut

    async def _flush(self, which: str) -> None:
        slots = self._slots.get(which)
        if slots is None:
            slots = self._slots[which] = asyncio.Semaphore(MAX_IN_FLIGHT)
        async with slots:
            await asyncio.sleep(0)  # the calls of this turn of the loop join too
            queue = self._queues[which]
            batch = queue[:MAX_BATCH]
            del queue[:MAX_BATCH]
            self._collecting[which] = False
            if queue:  # more than one script's worth: the rest go in the next
                self._queue_more(which)
            if not batch:
                return
            try:
                results = await (self._run_reserve(batch) if which == "reserve" else self._run_adjust(batch))
            except Exception as e:  # noqa: BLE001  (a connection error, a timeout, a script error)
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(self._failed(e))
                return
        undo: list[tuple[str, int, float]] = []
        for (item, fut), result in zip(batch, results):
            if fut.done():  # the caller was cancelled: undo a reservation it will never settle
                if which == "reserve" and result is None:
                    undo += [(c.key, -c.amount, c.ttl_s) for c in item]
                continue
            fut.set_result(result)
        if undo:
            await self.adjust(undo)

    def _queue_more(self, which: str) -> None:
        self._collecting[which] = True
        task = asyncio.ensure_future(self._flush(which))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_reserve(self, batch: list) -> list[Refusal | None]:
        keys: list[str] = []
        args: list[int] = [len(batch)]
        for charges, _ in batch:
            args.append(len(charges))
            for c in charges:
                keys.append(self._prefix + c.key)
                args += [c.amount, c.limit, max(1, int(c.ttl_s * 1000))]
        out = await self._reserve(keys=keys, args=args)
        results: list[Refusal | None] = []
        for (charges, _), (i, used, pttl) in zip(batch, out):
            if not i:
                results.append(None)
            else:
                c = charges[int(i) - 1]
                results.append(Refusal(int(i) - 1, int(used), pttl / 1000.0 if pttl and pttl > 0 else c.ttl_s))
        return results

    async def _run_adjust(self, batch: list) -> list[None]:
        keys: list[str] = []
        args: list[int] = []
        for changes, _ in batch:
            for key, delta, ttl_s in changes:
                keys.append(self._prefix + key)
                args += [delta, max(1, int(ttl_s * 1000))]
        await self._adjust(keys=keys, args=args)
        return [None] * len(batch)

    async def reserve(self, charges: Sequence[Charge]) -> Refusal | None:
        if not charges:
            return None
        return await self._queue("reserve", list(charges))

    async def adjust(self, changes: Sequence[tuple[str, int, float]]) -> None:
        changes = [c for c in changes if c[1]]
        if changes:
            fut = self._queue("adjust", changes)
            self._unsettled.add(fut)
            fut.add_done_callback(self._settled)

    def _settled(self, fut: asyncio.Future) -> None:
        self._unsettled.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            log.warning("a limit settlement was not written to Redis: %s", fut.exception())

    async def value(self, key: str) -> int:
        if self._unsettled:
            await asyncio.wait(list(self._unsettled))
        try:
            raw = await self._redis.get(self._prefix + key)
        except Exception as e:  # noqa: BLE001
            raise self._failed(e) from e
        return int(raw) if raw is not None else 0

    async def close(self) -> None:
        if self._tasks:  # settle what is queued
            _, late = await asyncio.wait(list(self._tasks), timeout=2.0)
            if late:
                log.warning("limit settlements still queued at shutdown were not written to Redis")
        await self._redis.aclose()
        await self._pool.disconnect()
