"""Score retrieved candidates: the LLM scores the most similar ones, similarity scores the rest.

The LLM's score is 100 × P(Yes) to "is this item a good answer?", read from the model's next-token
probabilities in one forward pass (no decoding; the question comes before the item, so consecutive
calls share a KV prefix). Measured on ../shared/eval with SmolLM2-135M: generating NLWeb's
`{"score", "description"}` JSON took 1–1.5 s per item and scored nearly everything 0; the yes/no
probability takes ~0.45 s per item and, fused with similarity, edges past similarity alone.
The card's description is the item's own description until a model worth asking writes "why it fits".

Final score = llm_weight × LLM score + (1 − llm_weight) × similarity score (both 0–100; see `_calibrated`). An LLM
answer of the wrong shape drops that item (counted); an engine fault falls back to similarity for
that item (counted, and reported once as a notice) so a sick engine degrades ranking instead of
breaking the answer.

Hybrid ranking, per candidate: the `llm_rank_limit` most similar candidates are the uncertain band —
the ones that can make the shown list — and only they cost an LLM call, each marked difficulty 1.0 so
the router's quality strategy sends them to the strongest tier (a cloud model, when one is
configured); the rest are ordered by similarity *below* the lowest score the LLM gave, since an item
the model did not read should not outrank one it read and judged (measured on ../shared/eval with the
replay model: 0.935 vs 0.899 NDCG@10 for a band of 25). The band size is calibrated from a labelled
file to a target share of cloud tokens with `nlweb-local eval curve`.

LLM answers are cached by (question, item text hash, model version) in a `core.cache.Cache` (bounded,
in-process by default; awaited, so a shared backend fits), so a repeated question or a follow-up over
the same items costs no second call. An answer from a fallback deployment (the router's first choice
failed) is used for that request but not kept.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Sequence

from ..core.cache import Cache
from ..core.errors import ModelOutputError, ProviderError
from ..core.item_text import item_text
from ..core.types import Item, Privacy, ScoredItem, TaskKind
from .events import RankedItem
from .ports import StructuredLLM
from .prompts import RANK_LABELS, rank_prompt

log = logging.getLogger(__name__)

# Cosine similarity of all-MiniLM-L6-v2 between a question and item text: ~0.1 unrelated, ~0.65+ on topic.
_SIM_LOW, _SIM_HIGH = 0.10, 0.70


def similarity_score(cos: float) -> int:
    return int(round(100 * min(1.0, max(0.0, (cos - _SIM_LOW) / (_SIM_HIGH - _SIM_LOW)))))


def _fallback_description(c: ScoredItem) -> str:
    obj = c.item.schema_object
    if isinstance(obj, list):
        obj = obj[0] if obj else {}
    desc = obj.get("description", "") if isinstance(obj, dict) else ""
    return (desc if isinstance(desc, str) else "")[:200]


def rank_cache_key(query: str, text: str, model_version: str) -> str:
    """The ranking cache's key: model version, a hash of the item text the model read, the question
    (last, so no separator inside it can make two keys collide)."""
    return f"rank\x1f{model_version}\x1f{hashlib.blake2b(text.encode(), digest_size=12).hexdigest()}\x1f{query}"


@dataclass
class RankStats:
    llm_scored: int = 0
    cache_hits: int = 0
    similarity_only: int = 0
    dropped_bad_output: int = 0
    engine_faults: int = 0
    notices: list[str] = field(default_factory=list)
    faulted: set[str] = field(default_factory=set)  # urls whose LLM call failed (they keep their similarity score)


class Ranker:
    def __init__(self, llm: StructuredLLM, *, llm_rank_limit: int = 10, llm_weight: float = 0.5,
                 calibrate: bool = True, concurrency: int = 4, item_chars: int = 480,
                 cache: Cache[float] | None = None, model_version: str = ""):
        self._llm = llm
        self._cache = cache
        self._version = model_version
        self._limit = llm_rank_limit
        self._w = llm_weight
        self._concurrency = concurrency
        self._item_chars = item_chars
        self._calibrate = calibrate
        self._recent: deque[float] = deque(maxlen=512)  # recent P(Yes) logits, for calibration (bounded)

    def _calibrated(self, p_yes: float) -> float:
        """100·sigmoid(logit(P(Yes)) − median recent logit): a model's P(Yes) has its own bias (SmolLM2-135M
        says Yes with ~0.1–0.2 to nearly anything), so the LLM score is its preference relative to what it
        usually says, centred on 50, and comparable with the similarity scale that min_score applies to."""
        p = min(max(p_yes, 1e-6), 1 - 1e-6)
        logit = math.log(p / (1 - p))
        self._recent.append(logit)
        centre = statistics.median(self._recent)
        return 100.0 / (1.0 + math.exp(-(logit - centre)))

    async def _score_one(self, query: str, c: ScoredItem, sem: asyncio.Semaphore, stats: RankStats,
                         privacy: Privacy = Privacy.ANY) -> RankedItem | None:
        sim = similarity_score(c.similarity)
        text = item_text(c.item.schema_object, self._item_chars)
        key = rank_cache_key(query, text, self._version)
        p_yes = await self._cache.get(key) if self._cache is not None else None
        if p_yes is not None:
            stats.cache_hits += 1
        else:
            answer = await self._ask_llm(query, text, c, sem, stats, privacy)
            if answer is None:  # faulted: similarity stands in; wrong-shaped answer: dropped
                return RankedItem(c.item, sim, _fallback_description(c), c.similarity) if c.item.url in stats.faulted else None
            p_yes, failover = answer
            if self._cache is not None and not failover:  # a stand-in deployment's answer is used once, not kept
                await self._cache.set(key, p_yes)
        stats.llm_scored += 1
        llm_score = self._calibrated(p_yes) if self._calibrate else 100.0 * p_yes
        score = int(round(self._w * llm_score + (1 - self._w) * sim))
        return RankedItem(c.item, score, _fallback_description(c), c.similarity)

    async def _ask_llm(self, query: str, text: str, c: ScoredItem, sem: asyncio.Semaphore,
                       stats: RankStats, privacy: Privacy = Privacy.ANY) -> tuple[float, bool] | None:
        """(P(Yes), whether a fallback deployment answered) from the LLM, or None: a wrong-shaped answer (item
        dropped) or an engine fault (recorded in `stats.faulted`; the item keeps its similarity score)."""
        async with sem:
            try:
                probs = await self._llm.classify(TaskKind.RANK, rank_prompt(query, text), RANK_LABELS, difficulty=1.0,
                                                 privacy=privacy)
            except ModelOutputError as e:
                stats.dropped_bad_output += 1
                log.info("dropped %s: %s", c.item.url, e)
                return None
            except ProviderError as e:
                stats.engine_faults += 1
                if stats.engine_faults == 1:
                    stats.notices.append(f"The language model is unavailable ({type(e).__name__}); "
                                         "some results are ordered by similarity only.")
                stats.similarity_only += 1
                stats.faulted.add(c.item.url)
                return None
        return float(probs.probs[RANK_LABELS[0]]), probs.served is not None and probs.served.failover

    async def rank(self, query: str, candidates: Sequence[ScoredItem], stats: RankStats,
                   privacy: Callable[[Item], Privacy] | None = None) -> AsyncIterator[RankedItem]:
        """Yield ranked items as they are known: LLM-scored ones in completion order, then the rest.
        `privacy(item)`: the class of the call that ranks `item` (None: ANY)."""
        ordered = sorted(candidates, key=lambda c: -c.similarity)
        head, tail = ordered[: self._limit], ordered[self._limit:]
        sem = asyncio.Semaphore(self._concurrency)
        tasks = [asyncio.create_task(self._score_one(query, c, sem, stats,
                                                     privacy(c.item) if privacy is not None else Privacy.ANY))
                 for c in head]
        floor: int | None = None  # the lowest score the LLM gave: unread items stay below it
        try:
            for fut in asyncio.as_completed(tasks):
                ranked = await fut
                if ranked is not None:
                    if ranked.item.url not in stats.faulted:
                        floor = ranked.score if floor is None else min(floor, ranked.score)
                    yield ranked
        finally:
            for t in tasks:
                t.cancel()
        for c in tail:
            stats.similarity_only += 1
            score = similarity_score(c.similarity)
            if floor is not None:
                score = max(0, min(score, floor - 1))
            yield RankedItem(c.item, score, _fallback_description(c), c.similarity)
