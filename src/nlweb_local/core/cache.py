"""The `Cache` port and `BoundedCache`, its in-process implementation: a least-recently-used map that never
holds more than `max_entries` values.

    cache: Cache[float] = BoundedCache(10_000, on_lookup=metrics.cache_lookups("ranking"))
    score = await cache.get(key)        # None on a miss (so do not store None)
    if score is None:
        score = ...
        await cache.set(key, score)     # evicts the least recently used entry when full
        await cache.set(key, score, ttl_s=3600)   # or: a miss again after an hour
    await cache.delete(key)
    cache.stats()                       # CacheStats(hits, misses, evictions, entries, max_entries, hit_ratio)

The port is async so that a shared backend (Redis, for several gateway replicas) fits behind it
unchanged; keys are strings for the same reason (a remote backend stores them as they are; values it
must serialise). The in-process cache does no I/O: its coroutines finish without suspending.

`on_lookup(hit)` is called once per `get` — how a cache reports into metrics without this layer
knowing about them (telemetry.metrics.GatewayMetrics.cache_lookups makes one). An expired entry is a
miss. Safe to share between threads and event loops: every operation holds one lock for a dictionary
operation or two.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Generic, Hashable, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Cache(Protocol[V]):
    """What callers of a cache may rely on, whichever backend holds it."""

    async def get(self, key: str) -> V | None:
        """The value, or None on a miss (absent or expired). Counts one lookup."""
        ...

    async def set(self, key: str, value: V, ttl_s: float | None = None) -> None:
        """Keep `value` (not None) under `key`, for `ttl_s` seconds (None: until evicted)."""
        ...

    async def delete(self, key: str) -> None: ...


@dataclass(frozen=True, slots=True)
class CacheStats:
    hits: int
    misses: int
    evictions: int
    entries: int
    max_entries: int

    @property
    def hit_ratio(self) -> float | None:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else None


class BoundedCache(Generic[K, V]):
    """In-process `Cache`: bounded LRU, optional per-entry expiry on an injectable monotonic clock."""

    def __init__(self, max_entries: int, *, on_lookup: Callable[[bool], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, default_ttl_s: float | None = None):
        """`default_ttl_s`: the expiry of entries set without a `ttl_s` (None: until evicted)."""
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if default_ttl_s is not None and default_ttl_s <= 0:
            raise ValueError("default_ttl_s must be positive (or None: until evicted)")
        self.max_entries = max_entries
        self.default_ttl_s = default_ttl_s
        self._on_lookup = on_lookup
        self._clock = clock
        self._data: OrderedDict[K, V] = OrderedDict()
        self._expires: dict[K, float] = {}  # only entries set with a ttl: the common path pays nothing
        self._lock = threading.Lock()
        self._hits = self._misses = self._evictions = 0

    async def get(self, key: K) -> V | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None and self._expires and key in self._expires and self._clock() >= self._expires[key]:
                del self._data[key], self._expires[key]
                value = None
            if value is not None:
                self._data.move_to_end(key)
                self._hits += 1
            else:
                self._misses += 1
        if self._on_lookup is not None:
            self._on_lookup(value is not None)
        return value

    async def set(self, key: K, value: V, ttl_s: float | None = None) -> None:
        if value is None:
            raise ValueError("a cache cannot hold None (get returns None for a miss)")
        if ttl_s is not None and ttl_s <= 0:
            raise ValueError("ttl_s must be positive (or None: until evicted)")
        if ttl_s is None:
            ttl_s = self.default_ttl_s
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            if ttl_s is not None:
                self._expires[key] = self._clock() + ttl_s
            elif self._expires:
                self._expires.pop(key, None)
            if len(self._data) > self.max_entries:
                old, _ = self._data.popitem(last=False)
                if self._expires:
                    self._expires.pop(old, None)
                self._evictions += 1

    async def delete(self, key: K) -> None:
        with self._lock:
            self._data.pop(key, None)
            self._expires.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._expires.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:  # does not count as a lookup, does not refresh recency
        with self._lock:
            return key in self._data and not (key in self._expires and self._clock() >= self._expires[key])

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, self._evictions, len(self._data), self.max_entries)
