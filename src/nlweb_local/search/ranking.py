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
"""
from __future__ import annotations

import asyncio
import logging
import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import AsyncIterator, Sequence

from ..core.errors import ModelOutputError, ProviderError
from ..core.item_text import item_text
from ..core.types import ScoredItem, TaskKind
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


@dataclass
class RankStats:
    llm_scored: int = 0
    similarity_only: int = 0
    dropped_bad_output: int = 0
    engine_faults: int = 0
    notices: list[str] = field(default_factory=list)


class Ranker:
    def __init__(self, llm: StructuredLLM, *, llm_rank_limit: int = 10, llm_weight: float = 0.5,
                 calibrate: bool = True, concurrency: int = 4, item_chars: int = 480):
        self._llm = llm
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

    async def _score_one(self, query: str, c: ScoredItem, sem: asyncio.Semaphore, stats: RankStats) -> RankedItem | None:
        sim = similarity_score(c.similarity)
        async with sem:
            try:
                probs = await self._llm.classify(TaskKind.RANK, rank_prompt(query, item_text(c.item.schema_object, self._item_chars)),
                                                 RANK_LABELS)
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
                return RankedItem(c.item, sim, _fallback_description(c), c.similarity)
        stats.llm_scored += 1
        p_yes = probs[RANK_LABELS[0]]
        llm_score = self._calibrated(p_yes) if self._calibrate else 100.0 * p_yes
        score = int(round(self._w * llm_score + (1 - self._w) * sim))
        return RankedItem(c.item, score, _fallback_description(c), c.similarity)

    async def rank(self, query: str, candidates: Sequence[ScoredItem], stats: RankStats) -> AsyncIterator[RankedItem]:
        """Yield ranked items as they are known: LLM-scored ones in completion order, then the rest."""
        ordered = sorted(candidates, key=lambda c: -c.similarity)
        head, tail = ordered[: self._limit], ordered[self._limit:]
        sem = asyncio.Semaphore(self._concurrency)
        tasks = [asyncio.create_task(self._score_one(query, c, sem, stats)) for c in head]
        try:
            for fut in asyncio.as_completed(tasks):
                ranked = await fut
                if ranked is not None:
                    yield ranked
        finally:
            for t in tasks:
                t.cancel()
        for c in tail:
            stats.similarity_only += 1
            yield RankedItem(c.item, similarity_score(c.similarity), _fallback_description(c), c.similarity)
