"""`RedisCounters`: the `Counters` port in Redis, so that every replica draws on the same limits.

`reserve` is one Lua script (Redis runs a script atomically): it reads every counter, and only when each
charge fits adds them all (INCRBY) and gives a new counter its expiry (PEXPIRE). `adjust` is another
(INCRBY each, expiry set where missing). Keys live under `nlweb:limits:`.

Unlike the caches, limits fail closed: when Redis cannot be reached, a reservation raises
`OverloadedError` (503 + Retry-After) rather than letting calls through unmetered.
"""
from __future__ import annotations

from typing import Sequence

from ..core.errors import OverloadedError
from .counters import Charge, Refusal

PREFIX = "nlweb:limits:"
_RESERVE = """
local n = #KEYS
for i = 1, n do
  local used = tonumber(redis.call('GET', KEYS[i]) or '0')
  if used + tonumber(ARGV[3 * i - 2]) > tonumber(ARGV[3 * i - 1]) then
    local pttl = redis.call('PTTL', KEYS[i])
    return {i, used, pttl}
  end
end
for i = 1, n do
  redis.call('INCRBY', KEYS[i], ARGV[3 * i - 2])
  if redis.call('PTTL', KEYS[i]) < 0 then redis.call('PEXPIRE', KEYS[i], ARGV[3 * i]) end
end
return {0, 0, 0}
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
        `max_connections` connections (a burst queues for them rather than failing)."""
        import redis.asyncio as aioredis

        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=wait_s,
                                                        socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._pool = pool
        self._redis = aioredis.Redis(connection_pool=pool)
        self._prefix = prefix
        self._reserve = self._redis.register_script(_RESERVE)
        self._adjust = self._redis.register_script(_ADJUST)

    def _failed(self, e: Exception) -> OverloadedError:
        return OverloadedError(f"the limits store (Redis) cannot be reached ({type(e).__name__}); "
                               "calls are refused until it is back", retry_after=5.0)

    async def reserve(self, charges: Sequence[Charge]) -> Refusal | None:
        if not charges:
            return None
        args: list[int] = []
        for c in charges:
            args += [c.amount, c.limit, max(1, int(c.ttl_s * 1000))]
        try:
            i, used, pttl = await self._reserve(keys=[self._prefix + c.key for c in charges], args=args)
        except Exception as e:  # noqa: BLE001  (a connection error, a timeout, a script error)
            raise self._failed(e) from e
        if not i:
            return None
        c = charges[int(i) - 1]
        return Refusal(int(i) - 1, int(used), pttl / 1000.0 if pttl and pttl > 0 else c.ttl_s)

    async def adjust(self, changes: Sequence[tuple[str, int, float]]) -> None:
        changes = [c for c in changes if c[1]]
        if not changes:
            return
        args: list[int] = []
        for _, delta, ttl_s in changes:
            args += [delta, max(1, int(ttl_s * 1000))]
        try:
            await self._adjust(keys=[self._prefix + k for k, _, _ in changes], args=args)
        except Exception as e:  # noqa: BLE001
            raise self._failed(e) from e

    async def value(self, key: str) -> int:
        try:
            raw = await self._redis.get(self._prefix + key)
        except Exception as e:  # noqa: BLE001
            raise self._failed(e) from e
        return int(raw) if raw is not None else 0

    async def close(self) -> None:
        await self._redis.aclose()
        await self._pool.disconnect()
