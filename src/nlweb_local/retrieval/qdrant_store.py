"""Qdrant as the vector store: embedded on-disk mode by default, a server or cluster by URL.

One point per item; the point id is derived from the item's url, so re-loading a url replaces it.
The payload is NLWeb's `{url, name, site, schema_json}`.
"""
from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Sequence

from qdrant_client import QdrantClient
from qdrant_client import models as qm

from ..core.errors import StoreBusyError
from ..core.types import Item, ScoredItem
from .base import SiteInfo


def point_id(url: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, url))


class QdrantStore:
    def __init__(self, *, dimension: int, collection: str = "nlweb_items", path: str | Path | None = None,
                 url: str | None = None, api_key: str | None = None):
        try:
            if url:
                self._client = QdrantClient(url=url, api_key=api_key, timeout=30)
            else:
                Path(path or "data/qdrant").mkdir(parents=True, exist_ok=True)
                self._client = QdrantClient(path=str(path))
        except RuntimeError as e:
            if "already accessed" in str(e):
                raise StoreBusyError(
                    f"the vector store at {path} is in use by another nlweb-local process (probably "
                    "`nlweb-local serve`); stop it first, or point store.url at a Qdrant server to share one store"
                ) from e
            raise
        self._collection = collection
        self._lock = threading.Lock()  # embedded mode is not thread-safe
        self.dimension = dimension
        self.location = url or str(path)
        if not self._client.collection_exists(collection):
            self._client.create_collection(collection, vectors_config=qm.VectorParams(size=dimension, distance=qm.Distance.COSINE))
            if url:
                self._client.create_payload_index(collection, "site", qm.PayloadSchemaType.KEYWORD)
                self._client.create_payload_index(collection, "url", qm.PayloadSchemaType.KEYWORD)

    @staticmethod
    def _site_filter(sites: Sequence[str] | None) -> qm.Filter | None:
        if not sites:
            return None
        return qm.Filter(must=[qm.FieldCondition(key="site", match=qm.MatchAny(any=list(sites)))])

    def upsert(self, items: Sequence[Item], vectors: Sequence[Sequence[float]]) -> None:
        points = [
            qm.PointStruct(id=point_id(it.url), vector=list(v),
                           payload={"url": it.url, "name": it.name, "site": it.site, "schema_json": it.schema_json})
            for it, v in zip(items, vectors, strict=True)
        ]
        with self._lock:
            self._client.upsert(self._collection, points=points, wait=True)

    def existing_urls(self, urls: Sequence[str]) -> set[str]:
        if not urls:
            return set()
        with self._lock:
            got = self._client.retrieve(self._collection, ids=[point_id(u) for u in urls], with_payload=["url"])
        return {p.payload["url"] for p in got if p.payload}

    def search(self, vector: Sequence[float], sites: Sequence[str] | None, limit: int) -> list[ScoredItem]:
        with self._lock:
            res = self._client.query_points(self._collection, query=list(vector), query_filter=self._site_filter(sites),
                                            limit=limit, with_payload=True)
        return [ScoredItem(Item(p.payload["url"], p.payload.get("name", ""), p.payload.get("site", ""),
                                p.payload.get("schema_json", "{}")), float(p.score)) for p in res.points]

    def delete_site(self, site: str) -> int:
        flt = self._site_filter([site])
        with self._lock:
            n = self._client.count(self._collection, count_filter=flt, exact=True).count
            if n:
                self._client.delete(self._collection, points_selector=qm.FilterSelector(filter=flt), wait=True)
        return n

    def delete_urls(self, urls: Sequence[str]) -> None:
        if urls:
            with self._lock:
                self._client.delete(self._collection, points_selector=qm.PointIdsList(points=[point_id(u) for u in urls]), wait=True)

    def sites(self) -> list[SiteInfo]:
        with self._lock:
            try:
                res = self._client.facet(self._collection, key="site", limit=10_000, exact=True)
                return sorted((SiteInfo(h.value, h.count) for h in res.hits), key=lambda s: s.name)
            except Exception:  # facet needs a payload index on servers; count by scrolling instead
                counts: dict[str, int] = {}
                offset = None
                while True:
                    pts, offset = self._client.scroll(self._collection, limit=1000, offset=offset, with_payload=["site"])
                    for p in pts:
                        s = p.payload.get("site", "")
                        counts[s] = counts.get(s, 0) + 1
                    if offset is None:
                        break
                return [SiteInfo(k, v) for k, v in sorted(counts.items())]

    def sample(self, site: str, limit: int) -> list[Item]:
        with self._lock:
            pts, _ = self._client.scroll(self._collection, scroll_filter=self._site_filter([site]), limit=limit, with_payload=True)
        return [Item(p.payload["url"], p.payload.get("name", ""), p.payload.get("site", ""), p.payload.get("schema_json", "{}")) for p in pts]

    def count(self) -> int:
        with self._lock:
            return self._client.count(self._collection, exact=True).count

    def close(self) -> None:
        with self._lock:
            self._client.close()
