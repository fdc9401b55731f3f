"""`cache.redis.RedisCache` against a real Redis server of the test's own (tests/redis_server.py): the `Cache`
port (get/set/delete, expiry by Redis), compression, corrupt entries, two replicas sharing entries, and
outages — a killed server and a frozen one — that must turn caching off (misses, dropped stores, one
warning each way) without an exception and without a slow call per request (the circuit)."""
import json
import logging

import pytest

from nlweb_local.cache.redis import PLAIN, ZLIB, RedisCache
from nlweb_local.core.cache import BoundedCache
from nlweb_local.telemetry.metrics import GatewayMetrics, new_registry

from redis_server import RedisServer


@pytest.fixture()
def redis_server(tmp_path):
    with RedisServer(tmp_path / "redis") as server:
        yield server


class Tally:
    def __init__(self):
        self.lookups: list[bool] = []
        self.errors: list[str] = []


def cache_on(server, name="test", *, clock=None, tally=None, **kw):
    tally = tally or Tally()
    extra = {"clock": clock} if clock is not None else {}
    c = RedisCache(server.url, name, on_lookup=tally.lookups.append, on_error=tally.errors.append, **kw, **extra)
    return c, tally


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "nlweb_local.cache.redis" and r.levelno == logging.WARNING]


async def test_get_set_delete_and_expiry_by_redis(redis_server):
    c, tally = cache_on(redis_server, default_ttl_s=3600)
    assert await c.get("question\x1fitem") is None
    await c.set("question\x1fitem", 0.75)
    await c.set("doc", {"answer": "Try the curry [1].", "items": [1, 2.5, "x", None, True]})
    assert await c.get("question\x1fitem") == 0.75
    assert await c.get("doc") == {"answer": "Try the curry [1].", "items": [1, 2.5, "x", None, True]}
    assert tally.lookups == [False, True, True] and tally.errors == []
    raw = redis_server.client()
    key = c.redis_key("question\x1fitem")
    assert key.startswith("nlweb:cache:test:") and "question" not in key  # no user text in the key space
    assert 3_500_000 < raw.pttl(key) <= 3_600_000  # stored without a TTL: the default expiry, set by Redis
    await c.set("short", "lived", ttl_s=0.2)
    assert 0 < raw.pttl(c.redis_key("short")) <= 200
    await c.delete("doc")
    assert await c.get("doc") is None and raw.exists(c.redis_key("doc")) == 0
    await c.set("a lone surrogate \ud800 from a JSON body", 1)  # any str is a key
    assert await c.get("a lone surrogate \ud800 from a JSON body") == 1
    import asyncio

    await asyncio.sleep(0.3)  # past its TTL: Redis has expired it
    assert await c.get("short") is None
    assert await c.get("question\x1fitem") == 0.75
    await c.close()


async def test_large_values_are_compressed_and_round_trip(redis_server):
    c, _ = cache_on(redis_server, compress_over=1024)
    big = {"choices": [{"message": {"content": "All work and no play. " * 2_000}}], "usage": {"prompt_tokens": 12}}
    await c.set("big", big)
    await c.set("small", {"content": "hi"})
    raw = redis_server.client()
    stored = raw.get(c.redis_key("big"))
    assert stored[:1] == ZLIB and len(stored) < len(json.dumps(big)) / 10
    assert raw.get(c.redis_key("small")) == PLAIN + b'{"content":"hi"}'
    assert await c.get("big") == big and await c.get("small") == {"content": "hi"}
    await c.close()


async def test_a_value_over_the_size_bound_is_not_stored_and_is_counted(redis_server, caplog):
    import os

    c, tally = cache_on(redis_server, max_value_bytes=2048)
    await c.set("fits", {"text": "a b c " * 2_000})  # 12 KB that compresses far below the bound
    await c.set("too big", {"text": os.urandom(4096).hex()})  # 8 KB that does not compress
    await c.set("too big again", {"text": os.urandom(4096).hex()})
    assert await c.get("fits") == {"text": "a b c " * 2_000}
    assert await c.get("too big") is None and redis_server.client().exists(c.redis_key("too big")) == 0
    assert tally.errors == ["too_large", "too_large"]
    assert len([m for m in warnings_of(caplog) if "max_value_bytes" in m]) == 1  # logged once
    with pytest.raises(ValueError):
        RedisCache(redis_server.url, "x", max_value_bytes=0)
    await c.close()


@pytest.mark.parametrize("stored", [b"j{not json", b"z" + b"not zlib at all", b"?unknown marker", b""])
async def test_an_entry_that_does_not_decode_is_deleted_and_counted_never_served(redis_server, stored):
    c, tally = cache_on(redis_server)
    raw = redis_server.client()
    raw.set(c.redis_key("k"), stored)
    assert await c.get("k") is None
    assert tally.errors == ["corrupt"] and tally.lookups == [False]
    assert raw.exists(c.redis_key("k")) == 0  # dropped, so the next lookup is a plain miss
    assert await c.get("k") is None and tally.errors == ["corrupt"]
    await c.close()


async def test_two_replicas_share_entries_and_names_keep_caches_apart(redis_server):
    a, _ = cache_on(redis_server, "ranking")
    b, tally_b = cache_on(redis_server, "ranking")
    other, _ = cache_on(redis_server, "responses")
    await a.set("q\x1fitem", 0.9)
    assert await b.get("q\x1fitem") == 0.9 and tally_b.lookups == [True]
    assert await other.get("q\x1fitem") is None
    await b.delete("q\x1fitem")
    assert await a.get("q\x1fitem") is None
    await a.set("x", 1)
    await a.set("y", 2)
    await other.set("x", 3)
    assert await b.clear() == 2 and await a.get("y") is None and await other.get("x") == 3
    for c in (a, b, other):
        await c.close()


async def test_bad_use_is_refused_like_the_in_process_cache(redis_server):
    c, tally = cache_on(redis_server)
    with pytest.raises(ValueError):
        await c.set("k", None)
    with pytest.raises(ValueError):
        await c.set("k", 1, ttl_s=0)
    with pytest.raises(ValueError):
        RedisCache(redis_server.url, "t", timeout_s=0)
    await c.set("k", {1, 2})  # not JSON-shaped: not cached, counted, never an exception
    assert tally.errors == ["encode"] and await c.get("k") is None
    await c.close()


async def test_a_killed_server_turns_caching_off_quietly_and_back_on_when_it_returns(redis_server, caplog):
    caplog.set_level(logging.WARNING, logger="nlweb_local.cache.redis")
    now = [0.0]
    c, tally = cache_on(redis_server, clock=lambda: now[0], retry_s=5.0, timeout_s=0.5)
    await c.set("kept", "before the outage")
    assert await c.get("kept") == "before the outage" and c.available

    redis_server.kill()
    assert await c.get("kept") is None  # a miss, not an exception
    assert tally.errors == ["unavailable"] and not c.available
    for i in range(200):  # every request meanwhile: a miss or a dropped store, and Redis is not tried again
        assert await c.get(f"k{i}") is None
        await c.set(f"k{i}", i)
        await c.delete(f"k{i}")
    assert tally.errors == ["unavailable"]  # one try in the whole outage so far: the circuit held the rest
    assert len(warnings_of(caplog)) == 1 and "failed" in warnings_of(caplog)[0]

    now[0] = 5.1  # the circuit lets one call try again: still down, still quiet
    assert await c.get("kept") is None
    assert tally.errors == ["unavailable"] * 2 and len(warnings_of(caplog)) == 1

    redis_server.start()  # back, empty, on the same port
    assert await c.get("kept") is None and tally.errors == ["unavailable"] * 2  # the circuit is still open
    now[0] = 10.2
    await c.set("kept", "after the outage")  # the pooled connections died with the old server: reconnects
    assert await c.get("kept") == "after the outage" and c.available
    assert len(warnings_of(caplog)) == 2 and "answers again" in warnings_of(caplog)[1]
    assert tally.lookups.count(True) == 2
    await c.close()


async def test_a_hung_server_costs_one_timeout_not_one_per_request(redis_server, caplog):
    caplog.set_level(logging.WARNING, logger="nlweb_local.cache.redis")
    now = [0.0]
    c, tally = cache_on(redis_server, clock=lambda: now[0], retry_s=5.0, timeout_s=0.2)
    await c.set("k", 1)
    redis_server.freeze()
    try:
        assert await c.get("k") is None  # the reply never comes: a timeout, counted, not raised
        assert tally.errors == ["unavailable"]
        for _ in range(100):
            assert await c.get("k") is None
        assert tally.errors == ["unavailable"]  # the others did not wait for Redis at all
    finally:
        redis_server.thaw()
    now[0] = 6.0
    assert await c.get("k") == 1
    assert len(warnings_of(caplog)) == 2
    await c.close()


async def test_build_cache_picks_the_backend_and_counts_errors_in_metrics(redis_server, tmp_path):
    from nlweb_local.config.settings import load_settings
    from nlweb_local.server.components import build_cache

    settings = load_settings(environ={"NLWEB_LOCAL_DATA_DIR": str(tmp_path)})
    metrics = GatewayMetrics(new_registry())
    local = build_cache("ranking", settings, metrics, max_entries=10, ttl_s=60)
    assert isinstance(local, BoundedCache) and local.max_entries == 10 and local.default_ttl_s == 60

    settings.cache_store.redis_url = redis_server.url
    shared = build_cache("responses", settings, metrics, max_entries=10)
    assert isinstance(shared, RedisCache) and shared.prefix == "nlweb:cache:responses:"
    await shared.set("k", {"v": 1})
    assert await shared.get("k") == {"v": 1}
    redis_server.client().set(shared.redis_key("k"), b"j{broken")
    assert await shared.get("k") is None
    from prometheus_client import generate_latest

    text = generate_latest(metrics.registry).decode()
    assert 'nlweb_cache_requests_total{cache="responses",result="hit"} 1.0' in text
    assert 'nlweb_cache_errors_total{cache="responses",error="corrupt"} 1.0' in text
    assert metrics.cache_stats()["responses"]["errors"] == {"corrupt": 1}
    await shared.close()


async def test_two_app_instances_share_ranking_answers_through_redis(redis_server, tmp_path, store, embedder):
    """Two replicas composed as `serve` composes them, one Redis: the second answers the first's question
    without asking its LLM to rank anything."""
    from nlweb_local.core.types import Item, TaskKind
    from nlweb_local.providers.testing import FunctionLLM, ScriptedProvider
    from nlweb_local.search.events import AskRequest, Results

    from stand_ins import scripted_service, service_settings

    docs = [("https://t.example/curry", "Chickpea curry", "A vegetarian chickpea curry"),
            ("https://t.example/dal", "Red lentil dal", "Vegetarian lentil dal"),
            ("https://t.example/tent", "Ridge 2 tent", "Two-person backpacking tent")]
    store.upsert([Item(u, n, "t", json.dumps({"@type": "Thing", "name": n, "description": d})) for u, n, d in docs],
                 embedder.embed([f"{n}. {d}" for _, n, d in docs]))
    settings = service_settings(tmp_path)
    settings.cache_store.redis_url = redis_server.url
    settings.search.llm_rank_limit = 3
    settings.cache.ask_enabled = False  # whole answers would be shared too (test_cache_shared.py): watch the ranking

    def answer(task, prompt, schema):
        if task is TaskKind.RANK:
            return '{"score": 80, "description": "d"}'
        return '{"decontextualized_query": "vegetarian curry"}'

    replicas = []
    for _ in range(2):
        llm = FunctionLLM(answer)
        comp = scripted_service(settings, {"local": ScriptedProvider("local")}, embedder=embedder, store=store,
                                llm=llm, telemetry=None)
        replicas.append((comp, llm))

    async def ask(comp):
        events = [e async for e in comp.pipeline.run(AskRequest("vegetarian curry"))]
        return events[-1].stats, sorted(r.item.url for e in events if isinstance(e, Results) for r in e.items)

    ranks = lambda llm: len([c for c in llm.calls if c[0] is TaskKind.RANK])  # noqa: E731
    stats_a, urls_a = await ask(replicas[0][0])
    stats_b, urls_b = await ask(replicas[1][0])
    assert ranks(replicas[0][1]) == 3 and stats_a["cache_hits"] == 0
    assert ranks(replicas[1][1]) == 0 and stats_b["cache_hits"] == 3  # all from the first replica's answers
    assert urls_a == urls_b
    assert len(redis_server.client().keys("nlweb:cache:ranking:*")) == 3
    for comp, _ in replicas:
        await comp.close()
