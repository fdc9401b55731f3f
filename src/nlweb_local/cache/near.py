"""A near cache: a small in-process LRU in front of a shared (Redis) cache.

A hit in Redis costs a round trip and a decode (~0.2–0.6 ms here); a hit in process costs microseconds.
The response and /ask caches are keyed by content (the normalised request, the serving versions, the
site's index version), so an entry's value never changes under its key: the only staleness a near copy
can add is time. Each near copy lives at most `ttl_s` (and never longer than the expiry it was stored
with), so an entry may be served up to `ttl_s` after it expired in Redis or after another replica
deleted it — the bound the README states. Writes go to both; a Redis outage leaves the near copies
serving what they hold (the shared cache itself degrades to misses).
"""
from __future__ import annotations

import time
from typing import Any, Callable

from ..core.cache import BoundedCache, Cache


class NearCache:
    """`Cache` over `far`, with up to `max_entries` near copies, each kept at most `ttl_s`."""

    def __init__(self, far: Cache[Any], *, max_entries: int, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic):
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self.far = far
        self.ttl_s = ttl_s
        self._near: BoundedCache[str, Any] = BoundedCache(max_entries, clock=clock, default_ttl_s=ttl_s)

    async def get(self, key: str) -> Any:
        value = await self._near.get(key)
        if value is not None:
            return value
        value = await self.far.get(key)
        if value is not None:
            await self._near.set(key, value)
        return value

    async def set(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        await self.far.set(key, value, ttl_s)
        await self._near.set(key, value, min(ttl_s, self.ttl_s) if ttl_s is not None else None)

    async def delete(self, key: str) -> None:
        await self._near.delete(key)
        await self.far.delete(key)

    async def clear(self) -> int:
        """Drop every entry: the near copies here, and the shared ones (all replicas)."""
        self._near.clear()
        clear = getattr(self.far, "clear", None)
        return await clear() if clear is not None else 0

    async def close(self) -> None:
        close = getattr(self.far, "close", None)
        if close is not None:
            await close()
