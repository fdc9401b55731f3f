"""The /ask pipeline: decontextualise → retrieve → rank (streaming good items early) → summarise or generate."""
from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import AsyncIterator, Callable, Sequence

from ..config.settings import SearchSettings
from ..core.cache import BoundedCache, Cache
from ..core.errors import NlwebError, NoDeploymentError, OverloadedError, ProviderError
from ..core.privacy import strictest
from ..core.types import Item, Privacy, ScoredItem, TaskKind
from .answer_cache import AnswerCache
from .cutoff import Cutoff
from .followup import refers_back
from .grounding import Evidence, extractive, fact_line, ground
from .events import (AskRequest, Begin, Decontextualized, End, Event, Failure, Generated, NoResults, Notice, RankedItem,
                     Results, Summary)
from .ports import Embedder, StructuredLLM, VectorStore
from .prompts import DECONTEXTUALIZE_SCHEMA, decontextualize_prompt, generate_prompt, summarize_prompt
from .ranking import Ranker, RankStats, similarity_score

log = logging.getLogger(__name__)


_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset("""a an and are as at be but by can do does for from has have how i in is it its me my of on or
show some such than that the them these they this those to us was we what which who why will with would you your
about any also more most only other want wants need needs find like please give get tell""".split())
_META = ("you asked", "i'm not sure", "i am not sure", "i can't", "i cannot", "sorry", "as an ai", "the user")


def _score(r: RankedItem) -> int:
    return r.score


def _similarity(r: RankedItem) -> int:
    return similarity_score(r.similarity)


def _content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) > 2 and w not in _STOP}


def plausible_rewrite(rewrite: str, query: str, prev: list[str]) -> bool:
    """A rewrite is kept only if it reads as a query, keeps most of the follow-up's own content words and
    brings in context from earlier questions; small models otherwise answer, refuse or talk about the user."""
    low = rewrite.lower()
    if len(rewrite) < 3 or any(m in low for m in _META):
        return False
    words, own = _content_words(rewrite), _content_words(query)
    context = _content_words(" ".join(prev)) - own
    kept = len(words & own) / len(own) if own else 1.0
    return kept >= 0.5 and (not context or bool(words & context))


class AskPipeline:
    def __init__(self, llm: StructuredLLM, embedder: Embedder, store: VectorStore, settings: SearchSettings, *,
                 rank_cache: Cache[float] | None = None, model_version: str = "",
                 answer_cache: AnswerCache | None = None):
        """`rank_cache`: a `core.cache.Cache` of LLM ranking answers by (question, item text hash,
        `model_version`); None = a private in-process one of `settings.rank_cache_entries` (0 = no cache).
        `answer_cache`: whole answers to non-personalised questions, replayed (None: none)."""
        self._answers = answer_cache
        self._llm = llm
        self._embedder = embedder
        self._store = store
        self._s = settings
        self._cutoff = Cutoff(settings.score_margin, settings.score_floor, settings.min_score)
        if rank_cache is None and settings.rank_cache_entries > 0:
            rank_cache = BoundedCache(settings.rank_cache_entries)
        self._ranker = Ranker(llm, llm_rank_limit=settings.llm_rank_limit, llm_weight=settings.llm_weight,
                             calibrate=settings.calibrate_llm, cache=rank_cache, model_version=model_version)

    # -- privacy: a local_only site's items never reach a cloud deployment (search.site_privacy) --------------
    def _sites_privacy(self, sites: Sequence[str]) -> Privacy:
        table = self._s.site_privacy
        return strictest(*(Privacy(table[s]) for s in sites if s in table)) if table else Privacy.ANY

    def _named(self, req: AskRequest) -> Privacy:
        """The class of every call a question makes: that of the sites it names."""
        return self._sites_privacy(req.sites)

    def _scope(self, req: AskRequest) -> Privacy:
        """The class of a call about the question alone (decontextualising): the sites it names, or for a
        question to all sites, every site's (an earlier answer may quote any of them)."""
        return self._sites_privacy(req.sites or list(self._s.site_privacy))

    def _item_privacy(self, named: Privacy) -> Callable[[Item], Privacy]:
        return lambda item: strictest(named, self._sites_privacy((item.site,)))

    def _about(self, named: Privacy, items: Sequence[RankedItem]) -> Privacy:
        """The class of a call that quotes `items` (a summary, a generated answer)."""
        return strictest(named, self._sites_privacy([r.item.site for r in items]))

    def admit(self) -> None:
        """Refuse a new request up front (OverloadedError) when the LLM queue is full. When no LLM can
        serve at all (every breaker open), admit anyway: ranking degrades to similarity and says so."""
        if self._s.llm_rank_limit > 0:
            try:
                self._llm.admit()
            except NoDeploymentError:
                log.warning("no LLM deployment can serve; /ask answers by similarity only")

    async def rank_fixed(self, req: AskRequest, candidates: Sequence[ScoredItem]) -> tuple[str, list[RankedItem], RankStats]:
        """The ranking half of `run` over given candidates (retrieval skipped): decontextualise, then
        rank exactly as /ask does. For evaluation (`nlweb-local eval rank`)."""
        query = await self._decontextualize(req)
        stats = RankStats()
        ranked = [r async for r in self._ranker.rank(query, candidates, stats, self._item_privacy(self._named(req)))]
        return query, sorted(ranked, key=lambda r: -r.score), stats

    async def _decontextualize(self, req: AskRequest) -> str:
        if req.decontextualized_query:
            return req.decontextualized_query
        if not req.prev or not refers_back(req.query):  # a new topic is searched as asked, never merged
            return req.query
        answers = [str(a.get("title") or a.get("name") or "") for a in req.last_ans if isinstance(a, dict)]
        try:
            out = await self._llm.ask(TaskKind.DECONTEXTUALIZE, decontextualize_prompt(req.query, req.prev, answers),
                                      DECONTEXTUALIZE_SCHEMA, max_tokens=60, privacy=self._scope(req))
            text = out["decontextualized_query"].strip()
            if plausible_rewrite(text, req.query, req.prev):
                return text
            log.debug("decontextualisation %r rejected; using the conversation as context", text)  # (a query: not at INFO)
        except ProviderError as e:
            log.info("decontextualisation failed (%s); using the conversation as context", e)
        # A standalone query the retriever can still use: the last earlier question plus this one.
        return f"{req.prev[-1]} {req.query}"

    async def run(self, req: AskRequest) -> AsyncIterator[Event]:
        """The answer's events: from the answer cache when it holds this question (the first event,
        `Begin`, says "hit" or "miss"), else computed (and kept, if it completes cleanly)."""
        cache = self._answers
        if cache is None or not cache.applies(req):
            async for ev in self._run(req, Begin(req.query)):
                yield ev
            return
        started = time.perf_counter()
        key = await cache.key(req)
        found = await cache.find(key)
        if found is not None:
            events = found.value
            end = events[-1]
            assert isinstance(end, End)
            end.stats = {**end.stats, "seconds": round(time.perf_counter() - started, 4), "cache": events[0].cache}
            cache.record_hit(found)
            for ev in events:
                yield ev
            return
        spent = cache.spent()
        kept: list[Event] = []
        async for ev in self._run(req, Begin(req.query, cache="miss")):
            kept.append(ev)
            yield ev
        await cache.keep(key, kept, spent)

    async def _run(self, req: AskRequest, begin: Begin) -> AsyncIterator[Event]:
        started = time.perf_counter()
        yield begin
        stats = RankStats()
        try:
            query = await self._decontextualize(req)
            if req.prev and not req.decontextualized_query:
                yield Decontextualized(req.query, query)
            vector = (await asyncio.to_thread(self._embedder.embed, [query]))[0]
            candidates = await asyncio.to_thread(self._store.search, vector, req.sites or None, self._s.num_candidates)
            if not candidates:
                where = ", ".join(req.sites) if req.sites else "any site"
                yield NoResults(f"No items found for “{req.query}” in {where}.")
                yield End(stats={"seconds": round(time.perf_counter() - started, 3)})
                return
            sent: set[str] = set()
            kept: list[RankedItem] = []
            notified = 0
            named = self._named(req)
            async for ranked in self._ranker.rank(query, candidates, stats, self._item_privacy(named)):
                kept.append(ranked)
                while notified < len(stats.notices):
                    yield Notice(stats.notices[notified])
                    notified += 1
                if ranked.score > max(self._s.early_send_score, req.min_score or 0) and len(sent) < req.max_results:
                    sent.add(ranked.item.url)
                    yield Results([ranked])
            while notified < len(stats.notices):
                yield Notice(stats.notices[notified])
                notified += 1
            final = self._cutoff.keep(sorted(kept, key=lambda r: -r.score), _score, req.min_score, _similarity)[: req.max_results]
            rest = [r for r in final if r.item.url not in sent][: max(0, req.max_results - len(sent))]
            if rest:
                yield Results(rest)
            shown = sorted([r for r in kept if r.item.url in sent] + rest, key=lambda r: -r.score)
            if not shown:
                yield NoResults(f"Nothing relevant enough was found for “{req.query}”.")
            written: dict = {}
            if shown and req.mode == "summarize":
                yield Summary(await self._summarize(query, shown, named, written), shown[:5])
            elif shown and req.mode == "generate":
                answer, used = await self._generate(query, shown, named, written)
                yield Generated(answer, used)
            yield End(stats={"seconds": round(time.perf_counter() - started, 3), "llm_scored": stats.llm_scored,
                             "cache_hits": stats.cache_hits, "similarity_only": stats.similarity_only,
                             "dropped": stats.dropped_bad_output, "engine_faults": stats.engine_faults, **written},
                      degraded=stats.engine_faults > 0)
        except OverloadedError as e:
            log.warning("ask refused, busy: %s", e.message)
            yield Failure(f"The service is busy: {e.public_message}", 503)
            yield End(error=True)
        except NlwebError as e:
            log.warning("ask failed: %s", e)
            yield Failure(e.public_message, e.status)  # (an engine's own words stay in the log)
            yield End(error=True)

    def _evidence(self, query: str, items: list[RankedItem]) -> tuple[Evidence, list[str]]:
        """The items as the writing model reads them (search/grounding.py's compact lines) and as the
        grounding pass checks them."""
        objs = [r.item.schema_object for r in items]
        lines = [fact_line(o) for o in objs]
        return Evidence(objs, query, rendered=lines), lines

    async def _write(self, task: TaskKind, prompt: str, max_tokens: int, privacy: Privacy) -> str:
        try:
            return await self._llm.write(task, prompt, max_tokens=max_tokens, privacy=privacy)
        except ProviderError as e:
            log.info("%s failed: %s", task.value, e)
        return ""

    def _grounded(self, text: str, ev: Evidence, cite: bool, stats: dict) -> str:
        if not self._s.ground_answers:
            return text or extractive(ev, cite=cite)
        out = ground(text, ev, cite=cite)
        stats["grounding"] = {"kept": out.kept, "dropped": out.dropped, "recited": out.recited, "fallback": out.fallback}
        return out.text

    async def _summarize(self, query: str, shown: list[RankedItem], named: Privacy = Privacy.ANY,
                         stats: dict | None = None) -> str:
        used = shown[:5]
        ev, lines = self._evidence(query, used)
        text = await self._write(TaskKind.SUMMARIZE, summarize_prompt(query, lines), self._s.summary_max_tokens,
                                 self._about(named, used))
        return self._grounded(text, ev, False, stats if stats is not None else {})

    async def _generate(self, query: str, shown: list[RankedItem], named: Privacy = Privacy.ANY,
                        stats: dict | None = None) -> tuple[str, list[RankedItem]]:
        used = shown[:4]
        ev, lines = self._evidence(query, used)
        text = await self._write(TaskKind.GENERATE, generate_prompt(query, lines), self._s.generate_max_tokens,
                                 self._about(named, used))
        return self._grounded(text, ev, True, stats if stats is not None else {}), used
