"""`AnswerCache`: the /ask answer cache. A completed answer's events (wire-neutral: the renderers run on
the replay as on the original) are kept under the question and replayed for the same question.

Key: the (whitespace-normalised) decontextualised query, the sites, mode, min_score and max_results,
the models that answer (`model_version`) and the store's index version of those sites
(`VectorStore.index_version`): ingesting into a site commits a new generation, which changes the
version, so that site's answers are never served again (and age out of the bounded cache).

A semantic index (`cache.semantic.SemanticIndex`: `lookup(namespace, text)`, `add(namespace, text,
key)`) may be given: a question missed exactly is then looked up by meaning, in the namespace
"ask:" + everything in the key but the query (sites, mode, parameters, models, index version).

Only non-personalised questions (no `prev`) are cached, and only answers that completed cleanly (no
failure, not degraded). Entries are JSON-able dicts (a shared backend can hold them); one that does
not read back is dropped and counted, never served. `accounting` (telemetry's `CacheAccounts`) counts
lookups, and records each hit in the ledger as a zero-cost call that saved what the answer had cost.
Finding, dropping and keeping entries is `cache.lookup.CacheLookup`'s, shared with the response cache.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..cache.entries import CorruptEntry
from ..cache.lookup import CacheLookup, Found
from ..core.cache import Cache
from ..core.types import Item
from .events import (AskRequest, Begin, Decontextualized, End, Event, Failure, Generated, NoResults, Notice, RankedItem,
                     Results, Summary)

log = logging.getLogger(__name__)
VERSION = 1


class CorruptAnswer(CorruptEntry):
    pass


@dataclass(frozen=True, slots=True)
class AnswerKey:
    key: str  # the exact key
    namespace: str  # a semantic index's namespace: everything in the key but the query
    query: str


def _ranked(r: RankedItem) -> list[Any]:
    return [r.item.url, r.item.name, r.item.site, r.item.schema_json, r.score, r.description, r.similarity]


def _unranked(raw: Any) -> RankedItem:
    url, name, site, schema_json, score, description, similarity = raw
    if not all(isinstance(x, str) for x in (url, name, site, schema_json, description)) or not isinstance(score, int):
        raise CorruptAnswer("a stored item has the wrong shape")
    return RankedItem(Item(url, name, site, schema_json), score, description, float(similarity))


def encode_event(ev: Event) -> list[Any]:
    match ev:
        case Begin(query=q):
            return ["B", q]
        case Decontextualized(original=o, decontextualized=d):
            return ["D", o, d]
        case Results(items=items):
            return ["R", [_ranked(r) for r in items]]
        case Summary(text=t):
            return ["S", t]
        case Generated(answer=a, items=items):
            return ["G", a, [_ranked(r) for r in items]]
        case NoResults(message=m):
            return ["N", m]
        case Notice(text=t):
            return ["O", t]
        case End(stats=stats):
            return ["E", stats]
    raise ValueError(f"not an event kept by the answer cache: {type(ev).__name__}")


def decode_event(raw: Any) -> Event:
    try:
        tag, *rest = raw
        match tag:
            case "B":
                return Begin(str(rest[0]), cache="hit")
            case "D":
                return Decontextualized(str(rest[0]), str(rest[1]))
            case "R":
                return Results([_unranked(r) for r in rest[0]])
            case "S":
                return Summary(str(rest[0]))
            case "G":
                return Generated(str(rest[0]), [_unranked(r) for r in rest[1]])
            case "N":
                return NoResults(str(rest[0]))
            case "O":
                return Notice(str(rest[0]))
            case "E":
                if not isinstance(rest[0], dict):
                    raise CorruptAnswer("end stats are not an object")
                return End(stats=rest[0])
    except (TypeError, ValueError, IndexError) as e:
        raise CorruptAnswer(f"a stored event has the wrong shape: {e}") from None
    raise CorruptAnswer(f"unknown stored event {tag!r}")


def _read_answer(raw: Any, outcome: str) -> list[Event]:
    """A stored answer's events (Begin says `outcome`), or `CorruptAnswer`."""
    if not isinstance(raw, dict) or raw.get("v") != VERSION or not isinstance(raw.get("ev"), list):
        raise CorruptAnswer("not an answer entry")
    events = [decode_event(e) for e in raw["ev"]]
    if not events or not isinstance(events[0], Begin) or not isinstance(events[-1], End):
        raise CorruptAnswer("an answer must begin and end")
    events[0].cache = outcome
    for k in ("c", "r"):
        if not isinstance(raw.get(k), (int, float)):
            raise CorruptAnswer(f"entry field {k!r} is missing")
    return events


class AnswerCache:
    def __init__(self, store: Cache[dict], index_version: Callable[[Sequence[str]], str], *, model_version: str = "",
                 ttl_s: float = 3600.0, accounting: Any = None, semantic: Any = None, semantic_accounting: Any = None,
                 clock: Callable[[], float] = time.time, timer: Callable[[], float] = time.perf_counter):
        """`index_version(sites)`: the store's `index_version`; `accounting`: telemetry's `CacheAccounts`
        (lookup, corrupt, spent, hit), or None; `semantic_accounting`: the semantic cache's."""
        self.lookup = CacheLookup(store, name="answer", accounting=accounting, semantic=semantic,
                                  semantic_accounting=semantic_accounting, timer=timer)
        self._index_version = index_version
        self._model_version = model_version
        self._ttl = ttl_s
        self._accounting = accounting
        self._clock = clock

    @property
    def _store(self) -> Cache[dict]:
        return self.lookup.store

    hits = property(lambda self: self.lookup.hits)
    misses = property(lambda self: self.lookup.misses)
    corrupt = property(lambda self: self.lookup.corrupt)

    @staticmethod
    def applies(req: AskRequest) -> bool:
        """Non-personalised questions only: no conversation history."""
        return not req.prev

    async def key(self, req: AskRequest) -> AnswerKey:
        version = await asyncio.to_thread(self._index_version, sorted(req.sites))
        query = " ".join((req.decontextualized_query or req.query).split())
        scope = [VERSION, sorted(req.sites), req.mode, req.min_score, req.max_results, self._model_version, version]
        key = "ask:" + hashlib.blake2b(json.dumps([query, scope]).encode(), digest_size=16).hexdigest()
        return AnswerKey(key, "ask:" + hashlib.blake2b(json.dumps(scope).encode(), digest_size=8).hexdigest(), query)

    async def find(self, k: AnswerKey) -> Found | None:
        """The stored answer (`found.value`: its events, Begin saying "hit" or "semantic-hit; similarity=S";
        `found.entry`: the entry), or None (a miss)."""
        return await self.lookup.find(k.key, _read_answer, (k.namespace, k.query))

    def spent(self) -> tuple[float, float]:
        return self._accounting.spent() if self._accounting is not None else (0.0, 0.0)

    def record_hit(self, found: Found) -> None:
        e = found.entry
        self.lookup.record_hit(found, deployment="", local=True, task="ask", tokens_in=0, tokens_out=0,
                               saved_usd=float(e["c"]), reference_usd=float(e["r"]))

    async def keep(self, k: AnswerKey, events: list[Event], spent_before: tuple[float, float]) -> None:
        """Store a completed answer (not one that failed or was degraded)."""
        end = events[-1] if events else None
        if not isinstance(end, End) or end.error or end.degraded or any(isinstance(e, Failure) for e in events):
            return
        cost, ref = self.spent()
        try:
            entry = {"v": VERSION, "ts": self._clock(), "ev": [encode_event(e) for e in events],
                     "c": max(0.0, cost - spent_before[0]), "r": max(0.0, ref - spent_before[1])}
        except ValueError as e:
            log.warning("answer cache: could not store an answer (%s)", e)
            return
        await self.lookup.keep(k.key, entry, self._ttl, (k.namespace, k.query))
