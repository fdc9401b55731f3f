"""`SemanticIndex`: which cached question means what this one means — by embedding similarity, vetoed by words.

The exact response cache stores answers under exact keys; this index maps the *text* of a question (an
/ask query after decontextualisation, or a chat request's one standalone question) to the exact key of
an answer already cached, so a paraphrase finds it:

    index = SemanticIndex(embedder, settings.semantic_cache)
    hit = await index.lookup("ask:cedarvalley", "vegan lasagna without cheese?")
    if hit is not None:
        key, similarity = hit            # the exact cache's key, and the cosine similarity (≥ the threshold)
    ...                                  # a miss: answer, store under `key` in the exact cache, then
    await index.add("ask:cedarvalley", "vegan lasagna without cheese?", key)

A hit needs the cosine similarity of the two texts' unit vectors to reach the namespace's threshold
(`thresholds`, longest matching leading part of the namespace, else `threshold`) *and* no lexical veto
(`cache.lexical`: different numbers or dates, negation, mutually exclusive words, names, a swap of one or
two content words) to fire; the best-scoring stored text that passes both is the hit. all-MiniLM-L6-v2's
cosine alone cannot tell "trail shoes for wide feet" from "... narrow feet" (0.95) while true paraphrases
score 0.55–0.97, so the vetoes carry most of the precision: at the shipped 0.8, precision 1.0 with them and
0.51 without, hit rate 0.36 (0.53 on held-out pairs). Curve: `nlweb-local eval cache`.

Namespaces never see each other's entries: a caller puts into the namespace everything that must match
besides the question — tenant, site, the model version that would serve, and for chat the system prompt and
sampling parameters (`chat_scope(request)` digests those of a request). Memory is bounded: at most
`max_entries_per_namespace` per namespace and `max_entries` in all, the least recently used (stored or hit)
going first; an emptied namespace is dropped.

Embedding runs the in-process model (an `Embedder` such as `retrieval.embedder.ProviderEmbedder`, or an
embedding provider: its `embed_blocking`, else its async `embed`) on a worker thread, never on the event
loop; so do the similarity search and the vetoes. The vectors of the last `recent` texts are remembered,
so the `add` after a missed `lookup` of the same text does not embed it again.
"""
from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import re
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..config.settings import SemanticCacheSettings
from .lexical import VETOES, Features, features, veto

_CANDIDATES = 4  # stored texts above the threshold checked against the vetoes, best first


@dataclass(frozen=True, slots=True)
class SemanticStats:
    hits: int
    misses: int
    vetoed: Mapping[str, int]  # lookups whose best candidates were refused, by the veto that refused the first
    evictions: int
    entries: int
    namespaces: int
    max_entries: int


@dataclass(slots=True)
class _Space:
    """One namespace: vectors in the rows of a matrix that grows by doubling up to its bound."""

    vectors: np.ndarray
    keys: list[str | None]
    feats: list[Features | None]
    slots: "OrderedDict[str, int]" = field(default_factory=OrderedDict)  # key -> row, least recently used first
    free: list[int] = field(default_factory=list)
    high: int = 0  # rows in use or freed below this


class SemanticIndex:
    def __init__(self, embedder: Any, settings: SemanticCacheSettings | None = None, *, recent: int = 256):
        """`embedder`: an `Embedder` (sync `embed(texts)`) or an embedding provider (`embed_blocking`, or async
        `embed -> EmbeddingResponse`) — the in-process MiniLM that retrieval uses. `settings`: thresholds,
        bounds, vetoes (default: `SemanticCacheSettings()`)."""
        self.settings = s = settings or SemanticCacheSettings()
        self._blocking: Callable[[list[str]], Sequence[Sequence[float]]] | None = getattr(embedder, "embed_blocking",
                                                                                            None)
        if self._blocking is None and not inspect.iscoroutinefunction(getattr(embedder, "embed", None)):
            self._blocking = embedder.embed
        self._embedder = embedder
        self._vetoes: tuple[str, ...] = VETOES if s.lexical_vetoes else ()
        self._thresholds = sorted(s.thresholds.items(), key=lambda kv: -len(kv[0]))
        self._spaces: dict[str, _Space] = {}
        self._lru: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._recent: OrderedDict[str, tuple[np.ndarray, Features]] = OrderedDict()
        self._recent_max = recent
        self._lock = threading.Lock()
        self._hits = self._misses = self._evictions = 0
        self._vetoed: Counter[str] = Counter()

    # -- the two calls ----------------------------------------------------------------------------
    async def lookup(self, namespace: str, text: str) -> tuple[str, float] | None:
        """(the stored key, its similarity) of the best stored text of `namespace` that means `text`, or None."""
        text = _normalise(text)
        if not text or len(text) > self.settings.max_chars or namespace not in self._spaces:
            with self._lock:
                self._count(None)  # nothing to compare with: no need to embed
            return None
        if self._blocking is not None:
            return await asyncio.to_thread(self._lookup_now, namespace, text, None)
        vector = await self._embed_async(text)
        return await asyncio.to_thread(self._lookup_now, namespace, text, vector)

    async def add(self, namespace: str, text: str, key: str) -> None:
        """Remember that `text` (in `namespace`) is answered by the exact cache's entry `key`. A text longer than
        `max_chars` is not stored. Storing a key again replaces its text."""
        text = _normalise(text)
        if not text or len(text) > self.settings.max_chars:
            return
        if self._blocking is not None:
            await asyncio.to_thread(self._add_now, namespace, text, key, None)
        else:
            await asyncio.to_thread(self._add_now, namespace, text, key, await self._embed_async(text))

    # -- invalidation -------------------------------------------------------------------------------
    def discard(self, namespace: str, key: str) -> None:
        """Forget the entry for `key` (e.g. the exact entry expired or failed to deserialise)."""
        with self._lock:
            self._remove(namespace, key)

    def drop_namespace(self, namespace: str) -> int:
        """Forget a whole namespace (e.g. a site was re-ingested); the number of entries dropped."""
        with self._lock:
            space = self._spaces.pop(namespace, None)
            if space is None:
                return 0
            for key in space.slots:
                self._lru.pop((namespace, key), None)
            return len(space.slots)

    def threshold(self, namespace: str) -> float:
        for prefix, value in self._thresholds:
            if namespace == prefix or namespace.startswith(prefix + ":"):
                return value
        return self.settings.threshold

    def stats(self) -> SemanticStats:
        with self._lock:
            return SemanticStats(self._hits, self._misses, dict(self._vetoed), self._evictions, len(self._lru),
                                 len(self._spaces), self.settings.max_entries)

    def __len__(self) -> int:
        return len(self._lru)

    # -- on a worker thread -----------------------------------------------------------------------
    def _lookup_now(self, namespace: str, text: str, vector: np.ndarray | None) -> tuple[str, float] | None:
        vec, feats = self._vector(text, vector)
        threshold = self.threshold(namespace)
        first_veto = None
        with self._lock:
            space = self._spaces.get(namespace)
            if space is not None and space.slots:
                sims = space.vectors[: space.high] @ vec
                top = np.argpartition(-sims, _CANDIDATES)[:_CANDIDATES] if len(sims) > _CANDIDATES else sims.argsort()
                for row in sorted(top, key=lambda r: -sims[r]):
                    sim = float(sims[row])
                    key = space.keys[row]
                    if sim < threshold:
                        break
                    if key is None:
                        continue
                    why = veto(feats, space.feats[row], self._vetoes) if self._vetoes else None
                    if why is not None:
                        first_veto = first_veto or why
                        continue
                    space.slots.move_to_end(key)
                    self._lru.move_to_end((namespace, key))
                    self._hits += 1
                    return key, min(sim, 1.0)
            self._count(first_veto)
        return None

    def _add_now(self, namespace: str, text: str, key: str, vector: np.ndarray | None) -> None:
        vec, feats = self._vector(text, vector)
        s = self.settings
        with self._lock:
            space = self._spaces.get(namespace)
            if space is not None and key in space.slots:
                row = space.slots[key]
                space.slots.move_to_end(key)
                self._lru.move_to_end((namespace, key))
            else:
                if space is not None and len(space.slots) >= s.max_entries_per_namespace:
                    self._evict(namespace, next(iter(space.slots)))
                while len(self._lru) >= s.max_entries:
                    self._evict(*next(iter(self._lru)))
                space = self._spaces.get(namespace)  # an eviction may have dropped it
                if space is None:
                    space = self._spaces[namespace] = _Space(np.zeros((1, len(vec)), np.float32), [], [])
                row = self._row(space)
                space.slots[key] = row
                self._lru[(namespace, key)] = None
            space.vectors[row] = vec
            space.keys[row], space.feats[row] = key, feats

    def _row(self, space: _Space) -> int:
        if space.free:
            return space.free.pop()
        if space.high == len(space.vectors):
            grown = np.zeros((min(2 * len(space.vectors), self.settings.max_entries_per_namespace),
                              space.vectors.shape[1]), np.float32)
            grown[: space.high] = space.vectors
            space.vectors = grown
        space.keys.append(None)
        space.feats.append(None)
        space.high += 1
        return space.high - 1

    def _evict(self, namespace: str, key: str) -> None:
        self._remove(namespace, key)
        self._evictions += 1

    def _remove(self, namespace: str, key: str) -> None:  # holds the lock
        space = self._spaces.get(namespace)
        if space is None or key not in space.slots:
            return
        row = space.slots.pop(key)
        self._lru.pop((namespace, key), None)
        space.vectors[row] = 0.0  # a free row scores 0: below any threshold
        space.keys[row] = space.feats[row] = None
        space.free.append(row)
        if not space.slots:
            del self._spaces[namespace]
        elif len(space.vectors) > 8 and 4 * len(space.slots) < len(space.vectors):
            self._compact(space)

    @staticmethod
    def _compact(space: _Space) -> None:
        """Move the live rows to the front of a matrix half the size, so a namespace that shrank gives memory back."""
        rows = list(space.slots.values())
        vectors = np.zeros((max(2 * len(rows), 1), space.vectors.shape[1]), np.float32)
        vectors[: len(rows)] = space.vectors[rows]
        space.keys = [space.keys[r] for r in rows]
        space.feats = [space.feats[r] for r in rows]
        for new, key in enumerate(space.slots):
            space.slots[key] = new
        space.vectors, space.free, space.high = vectors, [], len(rows)

    def _count(self, vetoed: str | None) -> None:  # holds the lock
        self._misses += 1
        if vetoed is not None:
            self._vetoed[vetoed] += 1

    def _vector(self, text: str, vector: np.ndarray | None) -> tuple[np.ndarray, Features]:
        with self._lock:
            known = self._recent.get(text)
            if known is not None:
                self._recent.move_to_end(text)
                return known
        if vector is None:
            vector = np.asarray(self._blocking([text])[0], dtype=np.float32)  # type: ignore[misc]
        norm = float(np.linalg.norm(vector))
        entry = (vector / norm if norm else vector, features(text))
        with self._lock:
            self._recent[text] = entry
            if len(self._recent) > self._recent_max:
                self._recent.popitem(last=False)
        return entry

    async def _embed_async(self, text: str) -> np.ndarray:
        with self._lock:
            known = self._recent.get(text)
        if known is not None:
            return known[0]
        response = await self._embedder.embed([text])
        return np.asarray(response.vectors[0], dtype=np.float32)


def _normalise(text: str) -> str:
    return " ".join(text.split())


# -- which chat requests may be looked up semantically -------------------------------------------------
_FOLLOW_UP_OPENERS = re.compile(
    r"^(?:and|also|but|so|then|ok|okay|yes|yeah|no|nope|thanks|thank you|same|again|what about|how about|"
    r"tell me more|more|another|continue|go on|why not|and then|instead|actually|what else)(?![\w-])", re.I)
_CONTEXT_REFERENCES = re.compile(
    r"\b(?:it|its|it's|they|them|their|theirs|he|she|him|her|his|above|previous|previously|earlier|before that|"
    r"you said|you mentioned|you suggested|your (?:answer|last|previous|suggestion|list)|as before|the same|"
    r"that one|this one|these ones|those ones|the first one|the second one|the last one|the other one|"
    r"the following|below|here is|here are|this (?:text|code|article|document|message|list|recipe|one|email)|"
    r"these|those)\b", re.I)
_DEMONSTRATIVE_START = re.compile(r"^(?:\w+\s+)?(?:this|that)\b(?!\s+(?:week|weekend|month|year|morning|afternoon|"
                                  r"evening|night|season|summer|winter|spring|autumn|fall|\w+day)\b)", re.I)
_OPERAND = re.compile(r"[\"“”`]|(?:^|\s)'[^']+'|:\s|\n")  # quoted or pasted material: the question is about it
_GREETINGS = {"hi", "hello", "hey", "thanks", "thank you", "ok", "okay", "bye", "good morning", "good night"}


def standalone_question(messages: Sequence[Any], *, tools: Any = None, json_schema: Any = None,
                        max_chars: int = 300) -> bool:
    """True when a chat request may be answered by a semantic hit: a single user turn (optionally after one
    system prompt), no tools, no JSON schema, and a text that reads as a question standing on its own — not a
    follow-up ("what about the vegan one?"), not about pasted or quoted material, no pronoun pointing elsewhere,
    at most `max_chars` characters and more than one word. `messages`: `core.types.Message`s or OpenAI dicts."""
    if tools or json_schema:
        return False
    roles = [_field(m, "role") for m in messages]
    if roles not in (["user"], ["system", "user"]):
        return False
    if any(_field(m, "tool_calls") or _field(m, "tool_call_id") for m in messages):
        return False
    text = _field(messages[-1], "content")
    if not isinstance(text, str):
        return False  # multi-part content (images, files)
    text = text.strip()
    if not text or len(text) > max_chars or len(text.split()) < 2 or text.lower().strip("!.?") in _GREETINGS:
        return False
    return not (_FOLLOW_UP_OPENERS.search(text) or _CONTEXT_REFERENCES.search(text) or _OPERAND.search(text)
                or _DEMONSTRATIVE_START.search(text))


def question_of(request: Any, *, max_chars: int = 300) -> str | None:
    """The text to look a chat request up by (its user message), or None when it is not a standalone question."""
    if not standalone_question(request.messages, tools=request.tools, json_schema=request.json_schema,
                               max_chars=max_chars) or request.extra.get("response_format"):
        return None
    return _normalise(_field(request.messages[-1], "content"))


def chat_scope(request: Any) -> str:
    """A short digest of what besides the question decides a chat answer: the system prompt and the sampling
    parameters (put it in the namespace, with the tenant and the model version that would serve)."""
    system = next((_field(m, "content") for m in request.messages if _field(m, "role") == "system"), None)
    parts = [system, request.temperature, request.top_p, request.max_tokens, request.seed, request.stop,
             request.repeat_penalty]
    return hashlib.blake2b(json.dumps(parts, default=str).encode(), digest_size=8).hexdigest()


def _field(message: Any, name: str) -> Any:
    return message.get(name) if isinstance(message, Mapping) else getattr(message, name, None)
