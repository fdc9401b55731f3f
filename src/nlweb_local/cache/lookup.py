"""`CacheLookup`: how the response cache and the /ask answer cache find, drop and keep entries — the part
they share, written once.

    found = await lookup.find(key, read, semantic=(namespace, text))   # exact key first, then by meaning
    found.value, found.entry, found.outcome                            # outcome: "hit" | "semantic-hit; similarity=0.93"
    lookup.record_hit(found, deployment=..., ...)                       # the ledger row of the hit
    await lookup.keep(key, entry, ttl_s, semantic=(namespace, text))

`read(entry, outcome)` turns a stored value into the answer. It raises `CorruptEntry` for a value that
does not read back — the entry is deleted and counted, never served — and answers None for an entry this
request must not see (produced by a cloud deployment for a local_only request, older than it accepts): a
miss. The backend or the semantic index failing is logged and is a miss as well: a cache never fails its
caller.

Accounting: each exact lookup is a hit or a miss of this cache (`accounting`, e.g. "response"); a
semantic lookup, made only after an exact miss, is a hit or miss of the semantic cache
(`semantic_accounting`), and so is the ledger row of a semantic hit. The caches' figures thus add up
without overlap: answered from a cache = exact hits + semantic hits.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ..core.cache import Cache
from .entries import CorruptEntry

log = logging.getLogger(__name__)


class SemanticIndex(Protocol):
    """Finds the key of an entry stored for a paraphrase (cache/semantic.py provides one)."""

    async def lookup(self, namespace: str, text: str) -> tuple[str, float] | None: ...

    async def add(self, namespace: str, text: str, key: str) -> None: ...


class Accounts(Protocol):
    """Where a cache reports (telemetry.cache_accounting.CacheAccounts implements it)."""

    def lookup(self, hit: bool) -> None: ...

    def corrupt(self) -> None: ...

    def hit(self, *, deployment: str, local: bool, task: str, tokens_in: int, tokens_out: int, latency_s: float,
            saved_usd: float, reference_usd: float) -> None: ...


@dataclass(slots=True)
class Found:
    entry: Any  # the stored value
    value: Any  # what `read` made of it
    outcome: str  # "hit" or "semantic-hit; similarity=S"
    started: float  # the timer when the lookup began
    semantic: bool


class CacheLookup:
    def __init__(self, store: Cache[dict], *, name: str, accounting: Accounts | None = None,
                 semantic: SemanticIndex | None = None, semantic_accounting: Accounts | None = None,
                 timer: Callable[[], float] = time.perf_counter):
        self.store = store
        self.name = name
        self.semantic = semantic
        self._accounting = accounting
        self._semantic_accounting = semantic_accounting
        self._timer = timer
        self.hits = self.misses = self.corrupt = 0

    async def _get(self, key: str) -> Any:
        try:
            return await self.store.get(key)
        except Exception as e:  # noqa: BLE001  (the cache never fails its caller)
            log.warning("%s cache: lookup failed (%s); answering without the cache", self.name, e)
            return None

    async def find(self, key: str, read: Callable[[Any, str], Any],
                   semantic: tuple[str, str] | None = None) -> Found | None:
        """The entry under `key`, else (with a semantic index and a `semantic` (namespace, text)) the entry
        of a paraphrase; None: a miss."""
        started = self._timer()
        raw = await self._get(key)
        found = None if raw is None else await self._read(key, raw, read, "hit", started)
        if self._accounting is not None:
            self._accounting.lookup(found is not None)
        if found is None and semantic is not None and self.semantic is not None:
            found = await self._find_near(semantic, read, started)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    async def _find_near(self, semantic: tuple[str, str], read: Callable[[Any, str], Any],
                         started: float) -> Found | None:
        try:
            near = await self.semantic.lookup(*semantic)  # type: ignore[union-attr]
        except Exception as e:  # noqa: BLE001
            log.warning("%s cache: semantic lookup failed (%s)", self.name, e)
            near = None
        found = None
        if near is not None:
            key, similarity = near
            raw = await self._get(key)
            if raw is not None:
                found = await self._read(key, raw, read, f"semantic-hit; similarity={similarity:.2f}", started, True)
        if self._semantic_accounting is not None:
            self._semantic_accounting.lookup(found is not None)
        return found

    async def _read(self, key: str, raw: Any, read: Callable[[Any, str], Any], outcome: str, started: float,
                    semantic: bool = False) -> Found | None:
        try:
            value = read(raw, outcome)
        except CorruptEntry as e:
            log.warning("%s cache: dropped an entry that does not read back (%s)", self.name, e)
            self.corrupt += 1
            if self._accounting is not None:
                self._accounting.corrupt()
            try:
                await self.store.delete(key)
            except Exception:  # noqa: BLE001
                pass
            return None
        return None if value is None else Found(raw, value, outcome, started, semantic)

    def record_hit(self, found: Found, *, deployment: str, local: bool, task: str, tokens_in: int, tokens_out: int,
                   saved_usd: float, reference_usd: float) -> None:
        """The hit's ledger row (a zero-cost call that saved `saved_usd`), in the semantic cache's name for a
        semantic hit."""
        accounts = self._semantic_accounting if found.semantic and self._semantic_accounting else self._accounting
        if accounts is not None:
            accounts.hit(deployment=deployment, local=local, task=task, tokens_in=tokens_in, tokens_out=tokens_out,
                         latency_s=self._timer() - found.started, saved_usd=saved_usd, reference_usd=reference_usd)

    async def keep(self, key: str, entry: dict[str, Any], ttl_s: float, semantic: tuple[str, str] | None = None) -> None:
        """Store `entry` (and, with a semantic index, the text it answers)."""
        try:
            await self.store.set(key, entry, ttl_s=ttl_s)
            if semantic is not None and self.semantic is not None:
                await self.semantic.add(semantic[0], semantic[1], key)
        except Exception as e:  # noqa: BLE001
            log.warning("%s cache: could not store an answer (%s)", self.name, e)
