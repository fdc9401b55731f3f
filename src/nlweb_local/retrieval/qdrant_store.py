"""Qdrant as the vector store: embedded on-disk mode by default, a server or cluster by URL.

The payload is NLWeb's `{url, name, site, schema_json}` plus the bookkeeping that makes a site's
writes all-or-nothing (crash-consistent, also against `kill -9`):

- every write into a site belongs to a *generation* `N` of that site: its points carry `gen: N` and
  a point id derived from (site, url, N), so they never overwrite what is visible now;
- a point that the write replaces (same url, any site) is marked `{dead: N, dead_site: site}`;
- one small record per site in the `<collection>_generations` collection holds the site's committed
  generation `C` and whether the site is `dirty` (a write or its clean-up may be under way).

While a site is dirty, reads hide its points with `gen > C` (not yet committed) and the points that
its committed generations replaced (`dead <= C`). Committing is one write — the record's `C` becomes
`N` — so the new items and the end of the replaced ones become visible at the same instant. After
that the replaced points are deleted and the record is marked clean; a clean site costs reads nothing.
An interrupted write leaves a dirty record: the leftovers stay hidden and are removed by `recover()`,
which the embedded store runs when it opens and every write runs for its site first.

Points written before generations existed have no `gen` and count as committed.
One writer per site at a time (a second concurrent ingest into the same site is not supported).

The collection remembers the embedding model that fills it: its Qdrant collection metadata (kept by the
embedded store and by Qdrant servers since 1.16, so a server's record lives in the server) holds the model's
name, fingerprint and dimension under `nlweb_local_embedder`, written when the collection is created.
Opening the store with another model (another fingerprint, or vectors of another dimension) raises
`EmbedderMismatchError` naming both, before anything is written: mixing two models' vectors would make
search fail (another dimension) or silently meaningless (the same one). A collection made before this
record existed is adopted: its vector size is checked against the model's, then the model is recorded.
Nothing is ever deleted or re-created to resolve a mismatch.
"""
from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from qdrant_client import QdrantClient
from qdrant_client import models as qm

from ..core.errors import EmbedderMismatchError, StoreBusyError
from ..core.types import Item, ScoredItem
from ..providers.sentence_transformers import DEFAULT_MODEL_NAME
from .base import EmbedderIdentity, SiteInfo
from .store_lock import busy_message

log = logging.getLogger("nlweb_local.store")
_PAGE = 1000
EMBEDDER_KEY = "nlweb_local_embedder"  # the collection metadata key of the model record


def point_id(url: str, site: str = "", gen: int = 0) -> str:
    """The id of `url`'s point in generation `gen` of `site` (gen 0: the id used before generations)."""
    key = url if gen == 0 else f"{site}\x00{url}\x00{gen}"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, key))


def _record_id(site: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"nlweb-local:site-generation:{site}"))


@dataclass(frozen=True, slots=True)
class SiteRecord:
    gen: int = 0  # committed generation
    dirty: bool = False
    stamp: str = ""  # new at every commit: tells a re-created site's generation 1 from its former one


@dataclass(frozen=True, slots=True)
class Recovery:
    """What `recover()` did for one site: staged points of an unfinished write removed, replaced points purged."""
    site: str
    uncommitted: int
    purged: int


def _match(key: str, value) -> qm.FieldCondition:
    return qm.FieldCondition(key=key, match=qm.MatchValue(value=value))


def _uncommitted(site: str, gen: int) -> qm.Filter:
    return qm.Filter(must=[_match("site", site), qm.FieldCondition(key="gen", range=qm.Range(gt=gen))])


def _replaced(site: str, gen: int) -> qm.Filter:
    return qm.Filter(must=[_match("dead_site", site), qm.FieldCondition(key="dead", range=qm.Range(lte=gen))])


def _pending_marks(site: str, gen: int) -> qm.Filter:
    return qm.Filter(must=[_match("dead_site", site), qm.FieldCondition(key="dead", range=qm.Range(gt=gen))])


class QdrantStore:
    def __init__(self, *, dimension: int, collection: str = "nlweb_items", path: str | Path | None = None,
                 url: str | None = None, api_key: str | None = None, embedder: EmbedderIdentity | None = None):
        """`dimension` and `embedder`: the model whose vectors go in (see the module docstring); `embedder`
        None (a caller that does not know the model: tests, tools that only read) checks the dimension only
        and records nothing. Raises `EmbedderMismatchError` (the client closed again) on another model."""
        try:
            if url:
                self._client = QdrantClient(url=url, api_key=api_key, timeout=30)
            else:
                Path(path or "data/qdrant").mkdir(parents=True, exist_ok=True)
                self._client = QdrantClient(path=str(path))
        except RuntimeError as e:
            if "already accessed" in str(e):
                raise StoreBusyError(busy_message(path)) from e
            raise
        self._collection = collection
        self._records_collection = f"{collection}_generations"
        self._lock = threading.Lock()  # embedded mode is not thread-safe
        self._shared = bool(url)  # a server may have other writers: read the records each time
        self.dimension = dimension
        self.location = url or str(path)
        try:
            self._claim(dimension, embedder)
        except BaseException:
            self._client.close()  # (an embedded store's folder lock is let go)
            raise
        if not self._client.collection_exists(self._records_collection):
            self._client.create_collection(self._records_collection,
                                           vectors_config=qm.VectorParams(size=1, distance=qm.Distance.DOT))
        if url:
            for key, schema in (("site", qm.PayloadSchemaType.KEYWORD), ("url", qm.PayloadSchemaType.KEYWORD),
                                ("dead_site", qm.PayloadSchemaType.KEYWORD), ("gen", qm.PayloadSchemaType.INTEGER),
                                ("dead", qm.PayloadSchemaType.INTEGER)):
                self._client.create_payload_index(collection, key, schema)  # idempotent
        self._records: dict[str, SiteRecord] = self._load_records()
        self._epoch = 0  # bumped by delete_urls (which no site record tracks)
        self.recovered: list[Recovery] = [] if self._shared else self.recover()

    # -- the embedding model's record ------------------------------------------------------------

    def _claim(self, dimension: int, embedder: EmbedderIdentity | None) -> None:
        """Create the collection for `embedder`, or check that the existing one was built with it."""
        if not self._client.collection_exists(self._collection):
            self._client.create_collection(self._collection,
                                           vectors_config=qm.VectorParams(size=dimension, distance=qm.Distance.COSINE))
            if embedder is not None:
                self._record(embedder, dimension)
            return
        config = self._client.get_collection(self._collection).config
        vectors = config.params.vectors
        size = vectors.size if isinstance(vectors, qm.VectorParams) else None
        recorded = (config.metadata or {}).get(EMBEDDER_KEY)
        recorded = recorded if isinstance(recorded, dict) else None
        fingerprint = str(recorded.get("fingerprint", "")) if recorded else ""
        if size != dimension or (embedder is not None and fingerprint and fingerprint != embedder.fingerprint):
            raise EmbedderMismatchError(self._mismatch(size, recorded, dimension, embedder))
        if recorded is None and embedder is not None:
            self._record(embedder, dimension)
            log.warning("vector store %s (collection %r) had no record of its embedding model: its %d-dimension "
                        "vectors are taken to be %s's, recorded now (if another model of that dimension built it, "
                        "ingest again into a new store)", self.location, self._collection, dimension, embedder.name)

    def _record(self, embedder: EmbedderIdentity, dimension: int) -> None:
        stamp = {"name": embedder.name, "fingerprint": embedder.fingerprint, "dimension": dimension}
        try:
            self._client.update_collection(self._collection, metadata={EMBEDDER_KEY: stamp})
            kept = (self._client.get_collection(self._collection).config.metadata or {}).get(EMBEDDER_KEY)
        except Exception as e:  # noqa: BLE001 - a server without collection metadata (before Qdrant 1.16)
            log.debug("collection metadata not written: %s", e)
            kept = None
        if kept != stamp:
            log.warning("the Qdrant server at %s does not keep collection metadata (Qdrant 1.16 or later does): "
                        "the store cannot remember its embedding model, so only the vector dimension is checked",
                        self.location)

    def _mismatch(self, size: int | None, recorded: dict | None, dimension: int,
                  embedder: EmbedderIdentity | None) -> str:
        where = f"the vector store {self.location} (collection {self._collection!r})"
        if size is None:
            return (f"{where} does not hold one unnamed vector per item, as nlweb-local's collections do: it was not "
                    "made by nlweb-local. Set store.collection (or store.path) to another collection; nothing was "
                    "changed.")
        if recorded:
            built = f"{recorded.get('name', '?')} ({size} dimensions, fingerprint {recorded.get('fingerprint', '?')})"
        else:
            built = f"an embedding model of {size} dimensions (which one was not recorded)"
        now = (f"{embedder.name} ({dimension} dimensions, fingerprint {embedder.fingerprint})" if embedder is not None
               else f"a model of {dimension} dimensions")
        if not recorded:
            back = f"set embedding.model_path back to the {size}-dimension model that built it"
        elif recorded.get("name") == DEFAULT_MODEL_NAME:
            back = f"set embedding.model_path back to null (the packaged {DEFAULT_MODEL_NAME})"
        else:
            back = f"set embedding.model_path back to {recorded.get('name')}'s folder"
        return (f"{where} was built with {built}, but the configured embedding model is {now}: vectors of two "
                f"models cannot be compared. Either {back}, or ingest your sites again with the new model into a "
                "new store (another store.path, or another store.collection). Nothing was changed.")

    # -- the per-site records --------------------------------------------------------------------

    def _load_records(self) -> dict[str, SiteRecord]:
        out: dict[str, SiteRecord] = {}
        offset = None
        while True:
            pts, offset = self._client.scroll(self._records_collection, limit=_PAGE, offset=offset, with_payload=True)
            for p in pts:
                out[p.payload["site"]] = SiteRecord(int(p.payload.get("gen", 0)), bool(p.payload.get("dirty")),
                                                    str(p.payload.get("stamp", "")))
            if offset is None:
                return out

    def _current_records(self) -> dict[str, SiteRecord]:
        if self._shared:
            self._records = self._load_records()
        return self._records

    def _put_record(self, site: str, record: SiteRecord) -> None:
        self._client.upsert(self._records_collection, wait=True, points=[qm.PointStruct(
            id=_record_id(site), vector=[1.0], payload={"site": site, "gen": record.gen, "dirty": record.dirty,
                                                        "stamp": record.stamp})])
        self._records[site] = record

    def _visible(self, sites: Sequence[str] | None = None, *, extra: Sequence[qm.Condition] = ()) -> qm.Filter | None:
        """Reads see committed items only: dirty sites hide their staged and their replaced points."""
        hidden: list[qm.Condition] = []
        for site, rec in self._current_records().items():
            if rec.dirty:
                hidden += [_uncommitted(site, rec.gen), _replaced(site, rec.gen)]
        must: list[qm.Condition] = list(extra)
        if sites:
            must.append(qm.FieldCondition(key="site", match=qm.MatchAny(any=list(sites))))
        if not must and not hidden:
            return None
        return qm.Filter(must=must or None, must_not=hidden or None)

    def _count(self, flt: qm.Filter) -> int:
        return self._client.count(self._collection, count_filter=flt, exact=True).count

    def _delete(self, flt: qm.Filter) -> int:
        n = self._count(flt)
        if n:
            self._client.delete(self._collection, points_selector=qm.FilterSelector(filter=flt), wait=True)
        return n

    def _recover_site(self, site: str) -> Recovery | None:
        rec = self._current_records().get(site)
        if rec is None or not rec.dirty:
            return None
        purged = self._delete(_replaced(site, rec.gen))
        uncommitted = self._delete(_uncommitted(site, rec.gen))
        if self._count(_pending_marks(site, rec.gen)):
            self._client.delete_payload(self._collection, keys=["dead", "dead_site"], wait=True,
                                        points=qm.FilterSelector(filter=_pending_marks(site, rec.gen)))
        self._put_record(site, SiteRecord(rec.gen, dirty=False, stamp=rec.stamp))
        return Recovery(site, uncommitted, purged)

    def recover(self, site: str | None = None) -> list[Recovery]:
        """Finish what interrupted writes left (of `site`, or of every site): remove the points of an
        uncommitted generation, clear the marks it put on points it would have replaced, and delete the
        points that a committed generation replaced. Visible items do not change."""
        with self._lock:
            sites = [site] if site is not None else sorted(self._current_records())
            done = [r for r in (self._recover_site(s) for s in sites) if r is not None]
        for r in done:
            log.warning("site %r: an interrupted write was cleaned up (%d uncommitted items removed, %d replaced "
                        "items purged)", r.site, r.uncommitted, r.purged)
        return done

    # -- writing ---------------------------------------------------------------------------------

    def begin(self, site: str) -> "SiteWrite":
        """Start an all-or-nothing write into `site`: nothing it writes is visible before `commit()`."""
        self.recover(site)
        with self._lock:
            rec = self._current_records().get(site, SiteRecord())
            committed = rec.gen
            self._put_record(site, SiteRecord(committed, dirty=True, stamp=rec.stamp))
        return SiteWrite(self, site, committed + 1)

    def upsert(self, items: Sequence[Item], vectors: Sequence[Sequence[float]]) -> None:
        """Insert or replace items (keyed by url), each site's items in one committed write."""
        by_site: dict[str, list[int]] = {}
        for i, it in enumerate(items):
            by_site.setdefault(it.site, []).append(i)
        for site, idx in by_site.items():
            with self.begin(site) as write:
                write.write([items[i] for i in idx], [vectors[i] for i in idx])
                write.commit()

    def existing_urls(self, urls: Sequence[str]) -> set[str]:
        return set(self.url_sites(urls))

    def url_sites(self, urls: Sequence[str]) -> dict[str, str]:
        """The site each of `urls` is visible in now (a url is in one site at most); absent ones are left out."""
        if not urls:
            return {}
        cond = qm.FieldCondition(key="url", match=qm.MatchAny(any=list(urls)))
        with self._lock:
            pts = self._scroll(self._visible(extra=[cond]), ["url", "site"])
        return {p.payload["url"]: p.payload.get("site", "") for p in pts if p.payload}

    def _scroll(self, flt: qm.Filter | None, with_payload, limit: int | None = None) -> list[qm.Record]:
        out: list[qm.Record] = []
        offset = None
        while True:
            page = _PAGE if limit is None else min(_PAGE, limit - len(out))
            pts, offset = self._client.scroll(self._collection, scroll_filter=flt, limit=page, offset=offset,
                                              with_payload=with_payload)
            out.extend(pts)
            if offset is None or (limit is not None and len(out) >= limit):
                return out

    # -- reading ---------------------------------------------------------------------------------

    def search(self, vector: Sequence[float], sites: Sequence[str] | None, limit: int) -> list[ScoredItem]:
        with self._lock:
            res = self._client.query_points(self._collection, query=list(vector), query_filter=self._visible(sites),
                                            limit=limit, with_payload=True)
        return [ScoredItem(_item(p.payload), float(p.score)) for p in res.points]

    def sites(self) -> list[SiteInfo]:
        with self._lock:
            flt = self._visible()
            try:
                res = self._client.facet(self._collection, key="site", facet_filter=flt, limit=10_000, exact=True)
                return sorted((SiteInfo(h.value, h.count) for h in res.hits), key=lambda s: s.name)
            except Exception:  # facet needs a payload index on servers; count by scrolling instead
                counts: dict[str, int] = {}
                for p in self._scroll(flt, ["site"]):
                    s = p.payload.get("site", "")
                    counts[s] = counts.get(s, 0) + 1
                return [SiteInfo(k, v) for k, v in sorted(counts.items())]

    def sample(self, site: str, limit: int) -> list[Item]:
        with self._lock:
            pts, _ = self._client.scroll(self._collection, scroll_filter=self._visible([site]), limit=limit, with_payload=True)
        return [_item(p.payload) for p in pts]

    def index_version(self, sites: Sequence[str] | None = None) -> str:
        """What reads of `sites` (None or empty: every site) see, as a string that changes whenever a
        write into one of them commits, a site is deleted or re-created, or urls are deleted: the /ask
        answer cache keys on it, so ingesting into a site invalidates that site's answers. A server's
        records are re-read (another process may have written)."""
        records = dict(self._current_records())
        names = sorted(set(sites)) if sites else sorted(records)
        parts = [f"{s}={records[s].gen}.{records[s].stamp}" if s in records else f"{s}=-" for s in names]
        return f"{self._epoch}|" + ";".join(parts)

    def count(self) -> int:
        with self._lock:
            return self._client.count(self._collection, count_filter=self._visible(), exact=True).count

    # -- deleting --------------------------------------------------------------------------------

    def delete_site(self, site: str) -> int:
        self.recover(site)
        with self._lock:
            n = self._count(self._visible([site]))
            self._delete(qm.Filter(must=[_match("site", site)]))
            if site in self._records:
                self._client.delete(self._records_collection, points_selector=qm.PointIdsList(points=[_record_id(site)]),
                                    wait=True)
                del self._records[site]
        return n

    def delete_urls(self, urls: Sequence[str]) -> None:
        if urls:
            self._epoch += 1  # (not site-scoped: every answer of this process is invalidated)
            with self._lock:
                self._delete(qm.Filter(must=[qm.FieldCondition(key="url", match=qm.MatchAny(any=list(urls)))]))

    def close(self) -> None:
        with self._lock:
            self._client.close()


def _item(payload: dict) -> Item:
    return Item(payload["url"], payload.get("name", ""), payload.get("site", ""), payload.get("schema_json", "{}"))


class SiteWrite:
    """One generation of one site, from `QdrantStore.begin(site)`: `write()` batches, then `commit()`.
    Leaving the `with` block without committing rolls the write back (a crash leaves it to `recover()`)."""

    def __init__(self, store: QdrantStore, site: str, gen: int):
        self._store, self.site, self.gen = store, site, gen
        self.finished = False

    def __enter__(self) -> "SiteWrite":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.finished:
            self.abort()

    def write(self, items: Sequence[Item], vectors: Sequence[Sequence[float]]) -> None:
        """Stage items (hidden until commit); the visible points they replace are marked, not touched."""
        if any(it.site != self.site for it in items):
            raise ValueError(f"a write into site {self.site!r} got items of another site")
        points = [qm.PointStruct(id=point_id(it.url, self.site, self.gen), vector=list(v),
                                 payload={"url": it.url, "name": it.name, "site": it.site, "schema_json": it.schema_json,
                                          "gen": self.gen})
                  for it, v in zip(items, vectors, strict=True)]
        s = self._store
        with s._lock:
            s._client.upsert(s._collection, points=points, wait=True)
            urls = qm.FieldCondition(key="url", match=qm.MatchAny(any=[it.url for it in items]))
            old = [p.id for p in s._scroll(s._visible(extra=[urls]), False)]
            if old:
                s._client.set_payload(s._collection, payload={"dead": self.gen, "dead_site": self.site},
                                      points=qm.PointIdsList(points=old), wait=True)

    def commit(self) -> None:
        """Make every staged item visible, and every item they replace invisible, in one write."""
        s = self._store
        with s._lock:
            stamp = uuid.uuid4().hex[:12]
            s._put_record(self.site, SiteRecord(self.gen, dirty=True, stamp=stamp))  # the switch
            self.finished = True
            s._delete(_replaced(self.site, self.gen))
            s._put_record(self.site, SiteRecord(self.gen, dirty=False, stamp=stamp))

    def abort(self) -> None:
        """Drop what was staged; the visible items stay as they were."""
        self.finished = True
        self._store.recover(self.site)
