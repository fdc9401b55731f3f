"""`ResponseCache`: the exact response cache, a wrapper around the router chain (outermost in the gateway).

    complete / stream / embed ──► key (cache.keys) ──► Cache port (in-process LRU, or Redis) ──► hit: the
                                                           │                                    stored answer
                                                           └─ optional SemanticIndex: a paraphrase's key
                                          miss: the inner chain answers; the answer is stored (a stream
                                          only once it ended normally) and said to be a "miss"

Only deterministic requests are looked up and stored (`keys.cacheable`). The caller's `CacheControl`
(on the call context) can forbid reading (no_cache) or storing (no_store), set the entry's ttl (up to
`cache.max_ttl_s`), the oldest entry it accepts (max_age_s) and its namespace. A `local_only` request
never reads an entry a cloud deployment produced (unless `cache.local_only_reads_cloud`). A stored
value that does not read back as an entry is deleted and counted, never served. The cache never fails
a call: a backend or index error is logged and the call goes on as a miss. (Finding, dropping and
keeping entries is `lookup.CacheLookup`'s, shared with the /ask answer cache.)

`accounting` (telemetry's `CacheAccounts`) counts lookups and corrupt entries, prices each answer that
is stored (so a hit knows what it saved) and records every hit in the ledger as a zero-cost call.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Callable, Protocol, Sequence

from ..config.settings import CacheSettings
from ..core.cache import Cache
from ..core.types import CacheControl, ChatChunk, ChatRequest, ChatResponse, EmbeddingResponse, Privacy, Served
from ..providers.base import Provider
from ..providers.wrapper import StreamTally, WrapperProvider, call_tokens, close_after_error
from . import entries
from .keys import ServingVersions, Versions, cacheable, chat_key, embed_key, semantic_subject
from .lookup import Accounts, CacheLookup, Found, SemanticIndex

__all__ = ["CacheAccounting", "ResponseCache", "SemanticIndex"]


class CacheAccounting(Accounts, Protocol):
    """Where the response cache reports (telemetry.cache_accounting.CacheAccounts implements it)."""

    def price(self, deployment: str, tokens_in: int, tokens_out: int) -> tuple[float, float]:
        """(cost, reference cost) of a call of that size served by `deployment`."""
        ...


@dataclass(frozen=True, slots=True)
class _Plan:
    key: str
    read: bool
    write: bool
    ttl_s: float
    max_age_s: float | None
    local_only: bool
    semantic: tuple[str, str] | None = None


class ResponseCache(WrapperProvider):
    """`store`: the `Cache` port holding entries (dicts); `versions`: the router's serving versions (None:
    the inner provider's own name and model make the version, e.g. an in-process embedding model)."""

    def __init__(self, inner: Provider, store: Cache[dict], settings: CacheSettings, *,
                 versions: ServingVersions | None = None, accounting: CacheAccounting | None = None,
                 semantic: SemanticIndex | None = None, semantic_accounting: Accounts | None = None,
                 clock: Callable[[], float] = time.time, timer: Callable[[], float] = time.perf_counter):
        """`semantic_accounting`: where semantic lookups and hits are counted (the "semantic" cache)."""
        super().__init__(inner)
        self.lookup = CacheLookup(store, name="response", accounting=accounting, semantic=semantic,
                                  semantic_accounting=semantic_accounting, timer=timer)
        self._s = settings
        self._versions = versions
        self._accounting = accounting
        self._clock = clock
        self._timer = timer
        self._own: Versions = ((inner.name, inner.model),)

    @property
    def _store(self) -> Cache[dict]:
        return self.lookup.store

    hits = property(lambda self: self.lookup.hits)
    misses = property(lambda self: self.lookup.misses)
    corrupt = property(lambda self: self.lookup.corrupt)

    # -- planning ---------------------------------------------------------------------------------
    def _plan_for(self, key: str, ctl: CacheControl | None, local_only: bool,
                  semantic: tuple[str, str] | None = None) -> _Plan:
        ttl = min(ctl.ttl_s, self._s.max_ttl_s) if ctl is not None and ctl.ttl_s is not None else self._s.ttl_s
        read = ctl is None or not (ctl.no_cache or (ctl.max_age_s is not None and ctl.max_age_s <= 0))
        return _Plan(key, read, ctl is None or not ctl.no_store, ttl, ctl.max_age_s if ctl is not None else None,
                     local_only, semantic)

    def _chat_plan(self, req: ChatRequest) -> _Plan | None:
        if not cacheable(req):
            return None
        versions = self._versions.for_request(req) if self._versions is not None else self._own
        key = chat_key(req, versions)
        if key is None:
            return None
        semantic = semantic_subject(req, versions) if self.lookup.semantic is not None else None
        return self._plan_for(key, req.context.cache, req.context.privacy is Privacy.LOCAL_ONLY, semantic)

    # -- reading ----------------------------------------------------------------------------------
    async def _find(self, plan: _Plan, rebuild: Callable[[dict[str, Any], str], Any]) -> Found | None:
        def read(raw: Any, outcome: str) -> Any:
            entry = entries.check(raw)
            value = rebuild(entry, outcome)
            if plan.local_only and not entry["l"] and not self._s.local_only_reads_cloud:
                return None  # produced by a cloud deployment: a local_only request never sees it
            if plan.max_age_s is not None and self._clock() - entry["ts"] > plan.max_age_s:
                return None
            return value

        return await self.lookup.find(plan.key, read, plan.semantic)

    def _account_hit(self, found: Found) -> None:
        e = found.entry
        self.lookup.record_hit(found, deployment=e["d"], local=e["l"], task=str(e.get("t", "")), tokens_in=e["ti"],
                               tokens_out=e["to"], saved_usd=float(e["c"]), reference_usd=float(e["r"]))

    # -- writing ----------------------------------------------------------------------------------
    def _price(self, deployment: str, tokens: tuple[int, int]) -> tuple[float, float]:
        if self._accounting is None:
            return 0.0, 0.0
        return self._accounting.price(deployment, *tokens)

    def _local(self, deployment: str) -> bool:
        if self._versions is None:
            return self.inner.capabilities.local
        return self._versions.local(deployment)

    async def _put(self, plan: _Plan, entry: dict[str, Any]) -> None:
        await self.lookup.keep(plan.key, entry, plan.ttl_s, plan.semantic)

    def _chat_entry(self, req: ChatRequest, served: Served | None, chunks: list[list[Any]],
                    tokens: tuple[int, int]) -> dict[str, Any]:
        deployment = served.deployment if served is not None else self.inner.name
        entry = entries.head(ts=self._clock(), served=served, deployment=deployment, local=self._local(deployment),
                             task=req.task.value, tokens=tokens, price=self._price(deployment, tokens))
        entry["ch"] = chunks
        return entry

    # -- Provider -------------------------------------------------------------------------------------
    async def complete(self, request: ChatRequest) -> ChatResponse:
        plan = self._chat_plan(request)
        if plan is None:
            return await self.inner.complete(request)
        if plan.read:
            found = await self._find(plan, entries.response_of)
            if found is not None:
                self._account_hit(found)
                return found.value
        resp = await self.inner.complete(request)
        served = resp.served
        resp.served = replace(served, cache="miss") if served is not None else Served(resp.deployment, cache="miss")
        if plan.write:
            tokens = call_tokens(resp.usage, request, len(resp.content))
            await self._put(plan, self._chat_entry(request, served, entries.response_chunks(resp), tokens))
        return resp

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        plan = self._chat_plan(request)
        if plan is None:
            return self.inner.stream(request)
        return self._stream(plan, request)

    async def _stream(self, plan: _Plan, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        if plan.read:
            found = await self._find(plan, entries.chunks_of)
            if found is not None:
                self._account_hit(found)
                for ch in found.value:
                    yield ch
                return
        chunks = self.inner.stream(request)
        kept: list[list[Any]] | None = []
        served: Served | None = None
        first, seen = True, StreamTally(self._timer)  # what was sent: usage, or the characters to estimate it
        error: BaseException | None = None
        try:
            async for ch in chunks:
                if first:
                    first, served = False, ch.served
                    ch.served = (replace(served, cache="miss") if served is not None
                                 else Served(self.inner.name, cache="miss"))
                if kept is not None:
                    kept.append(entries.encode_chunk(ch))
                    if len(kept) > self._s.max_stream_chunks:
                        kept = None
                seen.see(ch)
                yield ch
        except BaseException as e:
            error = e
            raise
        finally:
            await close_after_error(chunks, error)
        if plan.write and kept:  # the stream ended normally: keep it
            tokens = seen.tokens(request)
            await self._put(plan, self._chat_entry(request, served, kept, tokens))

    async def embed(self, texts: Sequence[str], control: CacheControl | None = None) -> EmbeddingResponse:
        """Embeddings are deterministic: always cacheable (subject to `control`)."""
        if control is not None and control.no_cache and control.no_store:
            return await self.inner.embed(texts)
        versions = self._versions.embedding() if self._versions is not None else self._own
        plan = self._plan_for(embed_key(texts, versions, control), control, False)
        if plan.read:
            found = await self._find(plan, entries.embedding_of)
            if found is not None:
                self._account_hit(found)
                return found.value
        out = await self.inner.embed(texts)
        out.cache = "miss"
        if plan.write:
            deployment = out.deployment or self.inner.name
            tokens = (out.prompt_tokens or sum(len(t) for t in texts) // 4, 0)
            entry = entries.head(ts=self._clock(), served=None, deployment=deployment, local=self._local(deployment),
                                 task="embed", tokens=tokens, price=self._price(deployment, tokens))
            entry.update(m=out.model, vec=out.vectors, pt=out.prompt_tokens)
            await self._put(plan, entry)
        return out
