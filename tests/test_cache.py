"""`core.cache.BoundedCache` (a bounded LRU behind the async `Cache` port) and its hit/miss metrics:
nlweb_cache_requests_total and the cache figures of /admin/stats."""
import asyncio
import threading

import httpx
import pytest
from starlette.applications import Starlette

from nlweb_local.config.settings import load_settings
from nlweb_local.core.cache import BoundedCache, CacheStats
from nlweb_local.telemetry import build_telemetry
from nlweb_local.server.admin import telemetry_routes
from nlweb_local.telemetry.metrics import GatewayMetrics, new_registry


async def test_least_recently_used_entry_goes_first():
    c = BoundedCache(2)
    await c.set("a", 1)
    await c.set("b", 2)
    assert await c.get("a") == 1  # a is now the most recently used
    await c.set("c", 3)  # evicts b
    assert await c.get("b") is None and await c.get("a") == 1 and await c.get("c") == 3
    assert len(c) == 2 and "a" in c and "b" not in c
    await c.set("a", 10)  # replacing refreshes and does not evict
    assert len(c) == 2 and await c.get("a") == 10
    assert c.stats() == CacheStats(hits=4, misses=1, evictions=1, entries=2, max_entries=2)
    assert c.stats().hit_ratio == pytest.approx(0.8)


async def test_memory_stays_bounded():
    c = BoundedCache(100)
    for i in range(10_000):
        await c.set(f"rank\x1fmodel-v1\x1f{i}\x1fquestion", float(i))  # the ranking cache's kind of key
    assert len(c) == 100 and c.stats().evictions == 9_900
    assert await c.get("rank\x1fmodel-v1\x1f9999\x1fquestion") == 9_999.0
    assert await c.get("rank\x1fmodel-v1\x1f0\x1fquestion") is None


async def test_on_lookup_sees_every_get_and_nothing_else():
    seen = []
    c = BoundedCache(4, on_lookup=seen.append)
    await c.get("x")
    await c.set("x", "v")
    await c.get("x")
    "x" in c  # noqa: B015 - membership is not a lookup
    await c.delete("x")
    await c.get("x")
    assert seen == [False, True, False]


async def test_bad_use_is_refused():
    with pytest.raises(ValueError):
        BoundedCache(0)
    with pytest.raises(ValueError):
        await BoundedCache(1).set("k", None)
    with pytest.raises(ValueError):
        await BoundedCache(1).set("k", 1, ttl_s=0)
    assert BoundedCache(1).stats().hit_ratio is None


def test_threads_share_one_cache():
    """Each thread drives the cache from its own event loop (as worker threads would)."""
    c = BoundedCache(50)

    async def calls(n):
        for i in range(2_000):
            await c.set((n, i % 80), i)
            await c.get((n, (i * 7) % 80))

    def work(n):
        asyncio.run(calls(n))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = c.stats()
    assert len(c) == s.entries <= 50 and s.hits + s.misses == 8_000


async def test_metrics_count_hits_and_misses_per_cache_with_bounded_labels():
    m = GatewayMetrics(new_registry())
    ranking = BoundedCache(10, on_lookup=m.cache_lookups("ranking"))
    await ranking.set("k", 0.9)
    await ranking.get("k"), await ranking.get("k"), await ranking.get("other")
    assert m.cache_lookups("ranking") is m.cache_lookups("ranking")  # one tally per name
    for i in range(40):  # names past the label bound fold into "other"
        m.cache_lookups(f"cache-{i}")(False)
    from prometheus_client import generate_latest

    text = generate_latest(m.registry).decode()
    assert 'nlweb_cache_requests_total{cache="ranking",result="hit"} 2.0' in text
    assert 'nlweb_cache_requests_total{cache="ranking",result="miss"} 1.0' in text
    assert 'nlweb_cache_requests_total{cache="other",result="miss"} 9.0' in text  # 40 - (32 - 1) names
    assert len({line.split('cache="')[1].split('"')[0] for line in text.splitlines()
                if line.startswith("nlweb_cache_requests_total")}) == 32 + 1  # + "other"
    assert m.cache_stats()["ranking"] == {"hits": 2, "misses": 1, "hit_ratio": pytest.approx(2 / 3), "corrupt": 0,
                                          "saved_usd": None}  # a cache of scores, not costs: not priced


async def test_admin_stats_shows_cache_hit_ratios(tmp_path):
    tel = build_telemetry(load_settings(environ={"NLWEB_LOCAL_DATA_DIR": str(tmp_path)}), ledger=False)
    cache = BoundedCache(10, on_lookup=tel.metrics.cache_lookups("ranking"))
    await cache.set("q", 1)
    for key in ("q", "q", "q", "nope"):
        await cache.get(key)
    app = Starlette(routes=telemetry_routes(tel))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
        stats = (await client.get("/admin/stats")).json()
    assert stats["caches"] == {"ranking": {"hits": 3, "misses": 1, "hit_ratio": 0.75, "corrupt": 0, "saved_usd": None}}


async def test_an_expired_entry_is_a_miss_and_leaves():
    now = [0.0]
    seen = []
    c = BoundedCache(4, on_lookup=seen.append, clock=lambda: now[0])
    await c.set("a", 1, ttl_s=10)
    await c.set("b", 2)  # no ttl: until evicted
    now[0] = 9.9
    assert await c.get("a") == 1 and "a" in c
    now[0] = 10.0
    assert "a" not in c
    assert await c.get("a") is None and await c.get("b") == 2
    assert seen == [True, False, True] and len(c) == 1
    await c.set("b", 3, ttl_s=1)
    await c.set("b", 4)  # set again without a ttl: the old expiry goes with the old value
    now[0] = 1_000.0
    assert await c.get("b") == 4
    assert c.stats() == CacheStats(hits=3, misses=1, evictions=0, entries=1, max_entries=4)


async def test_the_ranking_cache_awaits_its_backend():
    """Any `Cache` serves the ranker, e.g. one that suspends on every call and keeps only strings, as a
    Redis-backed one would: the ranker's second run of a question is answered from it."""
    import asyncio
    import json

    from nlweb_local.core.types import Item, ScoredItem, TaskKind
    from nlweb_local.providers.testing import FunctionLLM
    from nlweb_local.search.ranking import Ranker, RankStats

    class RemoteLike:
        def __init__(self):
            self.data: dict[str, str] = {}
            self.calls: list[str] = []

        async def get(self, key):
            assert isinstance(key, str)
            await asyncio.sleep(0)
            self.calls.append("get")
            raw = self.data.get(key)
            return None if raw is None else json.loads(raw)

        async def set(self, key, value, ttl_s=None):
            await asyncio.sleep(0)
            self.calls.append("set")
            self.data[key] = json.dumps(value)

        async def delete(self, key):
            self.data.pop(key, None)

    llm = FunctionLLM(lambda task, prompt, schema: '{"score": 80, "description": "d"}')
    cache = RemoteLike()
    ranker = Ranker(llm, llm_rank_limit=2, calibrate=False, cache=cache, model_version="m1")
    items = [ScoredItem(Item(f"https://t.example/{i}", f"n{i}", "t", json.dumps({"@type": "Thing", "name": f"n{i}"})),
                        0.5 - i / 10) for i in range(3)]

    async def run():
        stats = RankStats()
        ranked = [r async for r in ranker.rank("q", items, stats)]
        return ranked, stats

    first, s1 = await run()
    asked = len([c for c in llm.calls if c[0] is TaskKind.RANK])
    again, s2 = await run()
    assert s1.cache_hits == 0 and s2.cache_hits == 2 and len(cache.data) == 2
    assert len([c for c in llm.calls if c[0] is TaskKind.RANK]) == asked  # no second LLM call
    assert sorted((r.item.url, r.score) for r in first) == sorted((r.item.url, r.score) for r in again)
    assert cache.calls.count("set") == 2 and cache.calls.count("get") == 4
