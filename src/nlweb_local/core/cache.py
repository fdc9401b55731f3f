"""`BoundedCache`: a least-recently-used map that never holds more than `max_entries` values.

    cache = BoundedCache(10_000, on_lookup=metrics.cache_lookups("ranking"))
    score = cache.get(key)            # None on a miss (so do not store None)
    if score is None:
        score = ...
        cache.put(key, score)         # evicts the least recently used entry when full
    cache.stats()                     # CacheStats(hits, misses, evictions, entries, max_entries, hit_ratio)

`on_lookup(hit)` is called once per `get` — how a cache reports into metrics without this layer
knowing about them (telemetry.metrics.GatewayMetrics.cache_lookups makes one). Safe to share between
threads: every operation holds one lock for a dictionary operation or two.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


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
    def __init__(self, max_entries: int, *, on_lookup: Callable[[bool], None] | None = None):
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._on_lookup = on_lookup
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = self._misses = self._evictions = 0

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
                self._hits += 1
            else:
                self._misses += 1
        if self._on_lookup is not None:
            self._on_lookup(value is not None)
        return value

    def put(self, key: K, value: V) -> None:
        if value is None:
            raise ValueError("BoundedCache cannot hold None (get returns None for a miss)")
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            if len(self._data) > self.max_entries:
                self._data.popitem(last=False)
                self._evictions += 1

    def pop(self, key: K) -> V | None:
        with self._lock:
            return self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:  # does not count as a lookup, does not refresh recency
        return key in self._data

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, self._evictions, len(self._data), self.max_entries)
