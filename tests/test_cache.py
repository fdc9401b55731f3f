"""`core.cache.BoundedCache` (a bounded LRU) and its hit/miss metrics: nlweb_cache_requests_total and
the cache figures of /admin/stats."""
import threading

import httpx
import pytest
from starlette.applications import Starlette

from nlweb_local.config.settings import load_settings
from nlweb_local.core.cache import BoundedCache, CacheStats
from nlweb_local.telemetry import build_telemetry
from nlweb_local.server.admin import telemetry_routes
from nlweb_local.telemetry.metrics import GatewayMetrics, new_registry


def test_least_recently_used_entry_goes_first():
    c = BoundedCache(2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1  # a is now the most recently used
    c.put("c", 3)  # evicts b
    assert c.get("b") is None and c.get("a") == 1 and c.get("c") == 3
    assert len(c) == 2 and "a" in c and "b" not in c
    c.put("a", 10)  # replacing refreshes and does not evict
    assert len(c) == 2 and c.get("a") == 10
    assert c.stats() == CacheStats(hits=4, misses=1, evictions=1, entries=2, max_entries=2)
    assert c.stats().hit_ratio == pytest.approx(0.8)


def test_memory_stays_bounded():
    c = BoundedCache(100)
    for i in range(10_000):
        c.put(("question", i, "model-v1"), float(i))  # the ranking cache's kind of key
    assert len(c) == 100 and c.stats().evictions == 9_900
    assert c.get(("question", 9_999, "model-v1")) == 9_999.0 and c.get(("question", 0, "model-v1")) is None


def test_on_lookup_sees_every_get_and_nothing_else():
    seen = []
    c = BoundedCache(4, on_lookup=seen.append)
    c.get("x")
    c.put("x", "v")
    c.get("x")
    "x" in c  # noqa: B015 - membership is not a lookup
    c.pop("x")
    c.get("x")
    assert seen == [False, True, False]


def test_bad_use_is_refused():
    with pytest.raises(ValueError):
        BoundedCache(0)
    with pytest.raises(ValueError):
        BoundedCache(1).put("k", None)
    assert BoundedCache(1).stats().hit_ratio is None


def test_threads_share_one_cache():
    c = BoundedCache(50)

    def work(n):
        for i in range(2_000):
            c.put((n, i % 80), i)
            c.get((n, (i * 7) % 80))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = c.stats()
    assert len(c) == s.entries <= 50 and s.hits + s.misses == 8_000


def test_metrics_count_hits_and_misses_per_cache_with_bounded_labels():
    m = GatewayMetrics(new_registry())
    ranking = BoundedCache(10, on_lookup=m.cache_lookups("ranking"))
    ranking.put("k", 0.9)
    ranking.get("k"), ranking.get("k"), ranking.get("other")
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
    assert m.cache_stats()["ranking"] == {"hits": 2, "misses": 1, "hit_ratio": pytest.approx(2 / 3)}


async def test_admin_stats_shows_cache_hit_ratios(tmp_path):
    tel = build_telemetry(load_settings(environ={"NLWEB_LOCAL_DATA_DIR": str(tmp_path)}), ledger=False)
    cache = BoundedCache(10, on_lookup=tel.metrics.cache_lookups("ranking"))
    cache.put("q", 1)
    for key in ("q", "q", "q", "nope"):
        cache.get(key)
    app = Starlette(routes=telemetry_routes(tel))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        stats = (await client.get("/admin/stats")).json()
    assert stats["caches"] == {"ranking": {"hits": 3, "misses": 1, "hit_ratio": 0.75}}
