"""The response cache and the /ask answer cache in Redis (`cache.redis_url`, or `cache_store.redis_url`), against a
real Redis server of each test's own (tests/redis_server.py): two replicas composed as `serve` composes them
share entries — one answers from what the other stored, on each endpoint, streamed and not; namespaces stay
apart; ingesting into a site invalidates its /ask answers for every replica; a corrupt entry is dropped and
counted, never served; Redis dying mid-run turns caching off (one warning, no errors) and caching resumes when
Redis is back."""
import contextlib
import json
import logging
from dataclasses import dataclass

import httpx
import pytest

from conftest import FIXTURE_SITE
from nlweb_local.cache.near import NearCache
from nlweb_local.cache.redis import RedisCache
from nlweb_local.cache.response import ResponseCache
from nlweb_local.core.errors import BadRequestError
from nlweb_local.providers.testing import ScriptedProvider
from nlweb_local.providers.wrapper import find
from nlweb_local.server.app import create_app
from redis_server import RedisServer
from stand_ins import scripted_service, service_settings
from test_response_cache import Embedder, chat, sse_choices


@pytest.fixture()
def redis_server(tmp_path):
    with RedisServer(tmp_path / "redis") as server:
        yield server


@dataclass
class Replica:
    client: httpx.AsyncClient
    local: ScriptedProvider
    comp: object
    embedding_model: object


def replica_settings(folder, redis_url):
    settings = service_settings(folder)
    settings.cache.redis_url = redis_url  # the name for it (cache_store.redis_url is the same)
    settings.llm.rounds = 1
    return settings


@contextlib.asynccontextmanager
async def replicas(tmp_path, redis_url, n=2, **settings_keys):
    """`n` services, each with its own data folder (ledger), engine and app, sharing one Redis."""
    out, stack = [], contextlib.AsyncExitStack()
    async with stack:
        for i in range(n):
            settings = replica_settings(tmp_path / f"replica{i}", redis_url)
            for k, v in settings_keys.items():
                setattr(settings.cache_store, k, v)
            local, embedder = ScriptedProvider("local", "local says hello to you"), Embedder()
            comp = scripted_service(settings, {"local": local}, embedder=embedder)
            stack.push_async_callback(comp.close)
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(settings, comp, close_components=False)),
                                       base_url="http://localhost")
            stack.push_async_callback(client.aclose)
            out.append(Replica(client, local, comp, embedder.provider))
        yield out


ENDPOINTS = [
    ("/v1/chat/completions", chat("what is a replica?")),
    ("/v1/chat/completions", chat("stream it", stream=True, stream_options={"include_usage": True})),
    ("/v1/completions", {"model": "auto", "prompt": "Once upon a time", "temperature": 0, "max_tokens": 20}),
    ("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": ["one", "three"]}),
]


def body_of(r):
    if r.headers["content-type"].startswith("text/event-stream"):
        return sse_choices(r.text)
    data = r.json()
    return data.get("choices") or data["data"]


async def test_a_replica_answers_from_what_another_stored(redis_server, tmp_path):
    async with replicas(tmp_path, redis_server.url) as (a, b):
        for path, body in ENDPOINTS:
            first = await a.client.post(path, json=body)
            second = await b.client.post(path, json=body)
            assert first.status_code == second.status_code == 200, (first.text, second.text)
            assert (first.headers["x-nlweb-cache"], second.headers["x-nlweb-cache"]) == ("miss", "hit"), path
            assert body_of(second) == body_of(first)
        assert (a.local.calls, b.local.calls) == (3, 0)
        assert (a.embedding_model.calls, b.embedding_model.calls) == (1, 0)
        raw = redis_server.client()
        keys = raw.keys("nlweb:cache:response:*")
        assert len(keys) == 4
        assert all(0 < raw.pttl(k) <= 3_600_000 for k in keys)  # the expiry is Redis's (cache.ttl_s)
        cache = find(b.comp.gateway, ResponseCache)
        assert isinstance(cache._store, NearCache) and isinstance(cache._store.far, RedisCache)  # near copies
        assert (cache.hits, cache.misses) == (3, 0)
        stats = (await b.client.get("/admin/stats")).json()
        assert stats["caches"]["response"]["hits"] == 4 and stats["cache_hits"]["response"]["hits"] == 4
        # a streamed request is answered from a non-streamed answer's entry too, and the other way round
        streamed = await b.client.post("/v1/chat/completions", json=chat("what is a replica?", stream=True))
        assert streamed.headers["x-nlweb-cache"] == "hit"
        text = "".join(c[0]["delta"].get("content", "") for c in sse_choices(streamed.text) if isinstance(c, list) and c)
        assert text == "local says hello to you"


async def test_namespaces_stay_apart_across_replicas(redis_server, tmp_path):
    async with replicas(tmp_path, redis_server.url) as (a, b):
        def ask(client, namespace):
            return client.post("/v1/chat/completions", json=chat("our roadmap"),
                               headers={"x-nlweb-cache-namespace": namespace})

        assert (await ask(a.client, "team-a")).headers["x-nlweb-cache"] == "miss"
        assert (await ask(b.client, "team-b")).headers["x-nlweb-cache"] == "miss"
        assert (await ask(b.client, "team-a")).headers["x-nlweb-cache"] == "hit"
        plain = await b.client.post("/v1/chat/completions", json=chat("our roadmap"))  # no namespace: a third one
        assert plain.headers["x-nlweb-cache"] == "miss"
        assert (a.local.calls, b.local.calls) == (1, 2)


async def test_a_corrupt_entry_in_redis_is_dropped_and_counted_never_served(redis_server, tmp_path):
    async with replicas(tmp_path, redis_server.url, n=1, near_entries=0) as (a,):  # (a near copy would answer)
        await a.client.post("/v1/chat/completions", json=chat("fragile"))
        raw = redis_server.client()
        (key,) = raw.keys("nlweb:cache:response:*")
        raw.set(key, b"z" + b"not zlib")  # bytes that do not decode
        r = await a.client.post("/v1/chat/completions", json=chat("fragile"))
        assert r.headers["x-nlweb-cache"] == "miss" and a.local.calls == 2
        raw.set(key, b'j{"v": 1, "ts": 0}')  # JSON, but not an entry
        r = await a.client.post("/v1/chat/completions", json=chat("fragile"))
        assert r.headers["x-nlweb-cache"] == "miss" and a.local.calls == 3
        r = await a.client.post("/v1/chat/completions", json=chat("fragile"))  # the miss stored a sound entry again
        assert r.headers["x-nlweb-cache"] == "hit" and a.local.calls == 3
        stats = (await a.client.get("/admin/stats")).json()["caches"]["response"]
        assert stats["corrupt"] == 1 and stats["errors"] == {"corrupt": 1}


async def test_a_redis_outage_mid_run_turns_caching_off_without_errors_and_it_comes_back(redis_server, tmp_path,
                                                                                        caplog):
    caplog.set_level(logging.WARNING, logger="nlweb_local.cache.redis")
    async with replicas(tmp_path, redis_server.url, n=1, redis_retry_s=0.0, near_entries=0) as (a,):
        async def ask(text="steady"):
            r = await a.client.post("/v1/chat/completions", json=chat(text))
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "local says hello to you"
            return r.headers["x-nlweb-cache"]

        assert [await ask(), await ask()] == ["miss", "hit"]
        redis_server.kill()
        assert [await ask(), await ask(), await ask("another")] == ["miss", "miss", "miss"]  # answered, uncached
        embedded = await a.client.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": ["x"]})
        assert embedded.status_code == 200 and embedded.headers["x-nlweb-cache"] == "miss"
        assert a.local.calls == 4
        down = [m for m in (r.getMessage() for r in caplog.records) if "failed" in m]
        assert len(down) == 1 and "caching is off" in down[0]  # one warning, not one per request
        stats = (await a.client.get("/admin/stats")).json()["caches"]["response"]
        assert stats["errors"]["unavailable"] >= 1
        redis_server.start()  # back, empty
        assert [await ask(), await ask()] == ["miss", "hit"]
        assert a.local.calls == 5
        assert len([r for r in caplog.records if "answers again" in r.getMessage()]) == 1


def test_cache_redis_url_is_another_name_for_cache_store_redis_url(tmp_path):
    from nlweb_local.config.settings import load_settings
    from nlweb_local.server.components import build_cache

    env = {"NLWEB_LOCAL_DATA_DIR": str(tmp_path), "NLWEB_LOCAL_CACHE__REDIS_URL": "redis://127.0.0.1:6379/3"}
    settings = load_settings(environ=env)
    cache = build_cache("response", settings)
    assert isinstance(cache, RedisCache) and cache.url == "redis://127.0.0.1:6379/3"
    same = load_settings(environ={**env, "NLWEB_LOCAL_CACHE_STORE__REDIS_URL": "redis://127.0.0.1:6379/3"})
    assert build_cache("response", same).url == "redis://127.0.0.1:6379/3"
    with pytest.raises(BadRequestError, match="cache.redis_url .* cache_store.redis_url"):
        load_settings(environ={**env, "NLWEB_LOCAL_CACHE_STORE__REDIS_URL": "redis://127.0.0.1:6379/4"})


OTHER_SITE = [{"url": "https://other.example/tea", "@type": "Recipe", "name": "Iced green tea",
               "description": "Green tea over ice with mint."}]


async def test_ask_answers_are_shared_and_an_ingest_through_one_replica_invalidates_them_for_all(
        redis_server, tmp_path, embedder):
    """Replicas that share the index (here one store object; in production a Qdrant server, store.url) and
    Redis: the index version in the key is read from the shared store at each question."""
    from nlweb_local.ingest.pipeline import Ingestor
    from nlweb_local.providers.testing import FunctionLLM
    from nlweb_local.retrieval.qdrant_store import QdrantStore
    from test_answer_cache import answer

    store = QdrantStore(dimension=embedder.dimension, path=tmp_path / "q")
    ingestor = Ingestor(embedder, store, service_settings(tmp_path).ingest, progress=False)
    ingestor.ingest(FIXTURE_SITE, "fixture")
    clients, llms, comps = [], [], []
    try:
        for i in range(2):
            settings = replica_settings(tmp_path / f"replica{i}", redis_server.url)
            settings.search.llm_rank_limit = 3
            settings.cache_store.near_entries = 0  # (the corrupt entry below must be read from Redis)
            llm = FunctionLLM(answer)
            comp = scripted_service(settings, {"local": ScriptedProvider("local")}, embedder=embedder, store=store,
                                    llm=llm, telemetry=None)
            comps.append(comp)
            llms.append(llm)
            clients.append(httpx.AsyncClient(transport=httpx.ASGITransport(
                app=create_app(settings, comp, close_components=False)), base_url="http://localhost"))
        a, b = clients
        params = {"query": "spicy ginger tea", "site": "fixture", "streaming": "false", "mode": "summarize"}
        first, second = await a.get("/ask", params=params), await b.get("/ask", params=params)
        assert (first.headers["x-nlweb-cache"], second.headers["x-nlweb-cache"]) == ("miss", "hit")
        assert llms[1].calls == []  # the second replica asked its LLM nothing
        results = lambda r: [m["content"] for m in r.json() if m.get("message_type") == "result"]  # noqa: E731
        assert results(first) == results(second) and results(first)
        streamed = await b.get("/ask", params={**params, "streaming": "true"})
        assert streamed.headers["x-nlweb-cache"] == "hit" and "end-nlweb-response" in streamed.text
        assert len(redis_server.client().keys("nlweb:cache:ask:*")) == 1

        source = tmp_path / "other.jsonl"
        source.write_text("\n".join(json.dumps(x) for x in OTHER_SITE))
        ingestor.ingest(str(source), "other")  # another site: this answer stands
        assert (await b.get("/ask", params=params)).headers["x-nlweb-cache"] == "hit"
        ingestor.ingest(FIXTURE_SITE, "fixture")  # into the site: every replica's answer for it is gone
        assert (await b.get("/ask", params=params)).headers["x-nlweb-cache"] == "miss"
        assert (await a.get("/ask", params=params)).headers["x-nlweb-cache"] == "hit"  # b's new answer

        raw = redis_server.client()
        for key in raw.keys("nlweb:cache:ask:*"):
            raw.set(key, b'j{"v": 1, "ev": [["B", "q"]], "c": 0, "r": 0}')  # JSON, but no answer
        assert (await a.get("/ask", params=params)).headers["x-nlweb-cache"] == "miss"
        assert comps[0].pipeline._answers.corrupt == 1
    finally:
        for c in clients:
            await c.aclose()
        for comp in comps:
            await comp.close()
        store.close()
