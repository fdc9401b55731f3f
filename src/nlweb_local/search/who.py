"""/who: which sites can answer a question, by similarity of the question to each site's profile.

A site's profile is built from a sample of its items (types and names) and embedded once; it is
rebuilt when the site's item count changes. The cache holds at most `max_sites` profiles.
"""
from __future__ import annotations

import asyncio
import math
from collections import Counter, OrderedDict
from dataclasses import dataclass

from ..core.item_text import item_type
from .ports import Embedder, VectorStore


@dataclass(slots=True)
class SiteMatch:
    site: str
    score: int
    description: str
    item_count: int


class SiteDirectory:
    def __init__(self, embedder: Embedder, store: VectorStore, *, sample: int = 40, max_sites: int = 1000):
        self._embedder = embedder
        self._store = store
        self._sample = sample
        self._max = max_sites
        self._profiles: OrderedDict[str, tuple[int, str, list[float]]] = OrderedDict()

    def _profile(self, site: str, count: int) -> tuple[str, list[float]]:
        cached = self._profiles.get(site)
        if cached and cached[0] == count:
            self._profiles.move_to_end(site)
            return cached[1], cached[2]
        items = self._store.sample(site, self._sample)
        types = Counter(item_type(i.schema_object) for i in items)
        kinds = ", ".join(f"{t} ({n})" for t, n in types.most_common(4))
        names = "; ".join(i.name for i in items[:12])
        desc = f"{site}: {count} items — {kinds}. For example: {names}"
        vec = self._embedder.embed([desc])[0]
        self._profiles[site] = (count, desc, vec)
        while len(self._profiles) > self._max:
            self._profiles.popitem(last=False)
        return desc, vec

    def _rank(self, query: str) -> list[SiteMatch]:
        qv = self._embedder.embed([query])[0]
        out = []
        for info in self._store.sites():
            desc, vec = self._profile(info.name, info.item_count)
            cos = sum(a * b for a, b in zip(qv, vec)) / (math.sqrt(sum(a * a for a in vec)) or 1.0)
            out.append(SiteMatch(info.name, int(round(100 * max(0.0, cos))), desc, info.item_count))
        return sorted(out, key=lambda m: -m.score)

    async def who(self, query: str) -> list[SiteMatch]:
        return await asyncio.to_thread(self._rank, query)
