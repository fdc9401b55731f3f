"""The exact response cache through the real gateway app (scripted engines): a hit after a miss on each
endpoint, streamed and not; what is (not) cacheable; the controls and their 400s; namespace and
local_only isolation; corrupt entries; the ledger row of a hit and /admin/stats."""
import json

import httpx
import pytest
import pytest_asyncio

from nlweb_local.cache.response import ResponseCache
from nlweb_local.core.errors import ProviderConnectionError
from nlweb_local.core.types import EmbeddingResponse
from nlweb_local.providers.base import Capabilities
from nlweb_local.providers.testing import ScriptedProvider
from nlweb_local.providers.wrapper import find
from nlweb_local.server.app import create_app
from stand_ins import scripted_service, service_settings


class EmbeddingModel:
    """An in-process embedding model stand-in that counts its calls."""

    name, model = "minilm", "all-MiniLM-L6-v2"
    capabilities = Capabilities(context_window=512, embeddings=True, chat=False)

    def __init__(self):
        self.calls = 0

    async def embed(self, texts):
        self.calls += 1
        return EmbeddingResponse([[float(len(t)), 0.5] for t in texts], model=self.model,
                                 prompt_tokens=sum(len(t) for t in texts) // 4, deployment=self.name)

    async def close(self):
        return None


class Embedder:
    dimension = 2

    def __init__(self):
        self.provider = EmbeddingModel()

    def embed(self, texts):
        raise AssertionError("the gateway embeds through the provider")


@pytest_asyncio.fixture(loop_scope="function")
async def gw(tmp_path):
    local = ScriptedProvider("local", "local says hello to you")
    cloud = ScriptedProvider("cloud", "cloud says hello there", local=False)
    settings = service_settings(tmp_path, {"name": "cloud", "engine": "openai", "price_in_per_m": 2.5,
                                           "price_out_per_m": 10.0})
    settings.llm.breaker.min_calls = 1000  # breakers stay closed: these tests fail engines on purpose
    settings.llm.rounds = 1
    embedder = Embedder()
    comp = scripted_service(settings, {"local": local, "cloud": cloud}, embedder=embedder)
    app = create_app(settings, comp, close_components=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
        yield client, local, cloud, comp, embedder.provider
    await comp.close()


def chat(text="hello", **extra):
    return {"model": extra.pop("model", "auto"), "messages": [{"role": "user", "content": text}],
            "temperature": extra.pop("temperature", 0), **extra}


def sse_choices(text):
    """The `choices` of each SSE event, and the [DONE] marker (ids and timestamps left out)."""
    out = []
    for block in text.strip().split("\n\n"):
        data = block.removeprefix("data: ")
        out.append(data if data == "[DONE]" else json.loads(data).get("choices", json.loads(data).get("usage")))
    return out


async def test_a_chat_answer_is_a_miss_then_a_hit(gw):
    client, local, _, comp, _ = gw
    first = await client.post("/v1/chat/completions", json=chat())
    second = await client.post("/v1/chat/completions", json=chat())
    assert first.status_code == second.status_code == 200
    assert first.headers["x-nlweb-cache"] == "miss" and second.headers["x-nlweb-cache"] == "hit"
    assert local.calls == 1
    a, b = first.json(), second.json()
    assert a["choices"] == b["choices"] and a["usage"] == b["usage"]
    assert b["choices"][0]["message"]["content"] == "local says hello to you"
    assert second.headers["x-nlweb-route"].startswith("local; cache hit")
    cache = find(comp.gateway, ResponseCache)
    assert (cache.hits, cache.misses) == (1, 1)


async def test_a_stream_is_replayed_chunk_for_chunk(gw):
    client, local, _, _, _ = gw
    body = chat("stream me", stream=True, stream_options={"include_usage": True})
    first = await client.post("/v1/chat/completions", json=body)
    second = await client.post("/v1/chat/completions", json=body)
    assert first.headers["x-nlweb-cache"] == "miss" and second.headers["x-nlweb-cache"] == "hit"
    assert local.calls == 1
    original, replayed = sse_choices(first.text), sse_choices(second.text)
    assert replayed == original
    assert len(original) == 5 + 2  # one event per word, the usage event, [DONE]
    assert original[-3][0]["finish_reason"] == "stop"
    # a non-streamed request is answered from the streamed entry, assembled
    plain = await client.post("/v1/chat/completions", json=chat("stream me"))
    assert plain.headers["x-nlweb-cache"] == "hit" and local.calls == 1
    assert plain.json()["choices"][0]["message"]["content"] == "local says hello to you"


async def test_an_interrupted_stream_is_not_kept(gw):
    client, local, _, _, _ = gw
    local.fail_after_tokens = 2
    broken = await client.post("/v1/chat/completions", json=chat("cut", stream=True))
    assert "stream_interrupted" in broken.text
    local.fail_after_tokens = None
    again = await client.post("/v1/chat/completions", json=chat("cut", stream=True))
    assert again.headers["x-nlweb-cache"] == "miss" and local.calls == 2


async def test_completions_are_cached(gw):
    client, local, _, _, _ = gw
    body = {"model": "auto", "prompt": "Once upon a time", "temperature": 0, "max_tokens": 20}
    first = await client.post("/v1/completions", json=body)
    second = await client.post("/v1/completions", json=body)
    assert (first.headers["x-nlweb-cache"], second.headers["x-nlweb-cache"]) == ("miss", "hit")
    assert first.json()["choices"] == second.json()["choices"] and local.calls == 1
    changed = await client.post("/v1/completions", json={**body, "max_tokens": 21})  # another sampling parameter
    assert changed.headers["x-nlweb-cache"] == "miss" and local.calls == 2


async def test_embeddings_are_cached(gw):
    client, _, _, _, model = gw
    body = {"model": "all-MiniLM-L6-v2", "input": ["one", "three"]}
    first = await client.post("/v1/embeddings", json=body)
    second = await client.post("/v1/embeddings", json=body)
    assert (first.headers["x-nlweb-cache"], second.headers["x-nlweb-cache"]) == ("miss", "hit")
    assert first.json()["data"] == second.json()["data"] and model.calls == 1
    other = await client.post("/v1/embeddings", json={**body, "cache": {"namespace": "b"}})
    assert other.headers["x-nlweb-cache"] == "miss" and model.calls == 2
    fresh = await client.post("/v1/embeddings", json=body, headers={"Cache-Control": "no-cache"})
    assert fresh.headers["x-nlweb-cache"] == "miss" and model.calls == 3


async def test_sampling_is_not_cached_unless_the_request_opts_in(gw):
    client, local, _, _, _ = gw
    for _ in range(2):
        r = await client.post("/v1/chat/completions", json=chat(temperature=0.7))
        assert "x-nlweb-cache" not in r.headers
    assert local.calls == 2
    opted = chat(temperature=0.7, cache={"ttl": 60})
    outcomes = [(await client.post("/v1/chat/completions", json=opted)).headers["x-nlweb-cache"] for _ in range(2)]
    assert outcomes == ["miss", "hit"] and local.calls == 3


async def test_no_cache_no_store_and_max_age(gw):
    client, local, _, _, _ = gw

    async def ask(**kw):
        r = await client.post("/v1/chat/completions", json=chat("controls", **kw.pop("body", {})), **kw)
        assert r.status_code == 200, r.text
        return r.headers["x-nlweb-cache"]

    assert await ask(body={"cache": {"no-store": True}}) == "miss"
    assert await ask() == "miss"  # nothing was kept
    assert local.calls == 2
    assert await ask() == "hit"
    assert await ask(body={"cache": {"no-cache": True}}) == "miss"  # not read, but the answer is kept
    assert await ask(headers={"Cache-Control": "no-cache"}) == "miss"
    assert await ask(headers={"Cache-Control": "max-age=0"}) == "miss"
    assert await ask(headers={"Cache-Control": "max-age=3600, no-transform"}) == "hit"
    assert local.calls == 5


async def test_namespaces_never_share_entries(gw):
    client, local, _, _, _ = gw

    async def ask(**kw):
        return (await client.post("/v1/chat/completions", json=chat("tenant data", **kw.pop("body", {})), **kw)
                ).headers["x-nlweb-cache"]

    assert await ask(body={"cache": {"namespace": "team-a"}}) == "miss"
    assert await ask(body={"cache": {"namespace": "team-b"}}) == "miss"
    assert await ask() == "miss"  # the default namespace is a namespace too
    assert await ask(headers={"x-nlweb-cache-namespace": "team-a"}) == "hit"
    assert await ask(body={"cache": {"namespace": "team-b"}}) == "hit"
    assert local.calls == 3


async def test_local_only_never_reads_what_a_cloud_deployment_produced(gw):
    client, local, cloud, _, _ = gw
    local.fail_with = ProviderConnectionError("local is down", deployment="local")
    produced = await client.post("/v1/chat/completions", json=chat("private"))
    assert produced.json()["choices"][0]["message"]["content"] == "cloud says hello there"
    local.fail_with = None
    private = await client.post("/v1/chat/completions", json=chat("private"), headers={"x-nlweb-privacy": "local_only"})
    assert private.headers["x-nlweb-cache"] == "miss"
    assert private.json()["choices"][0]["message"]["content"] == "local says hello to you"
    # the local answer replaced the entry: now everyone, local_only too, reads it
    again = await client.post("/v1/chat/completions", json=chat("private"), headers={"x-nlweb-privacy": "local_only"})
    assert again.headers["x-nlweb-cache"] == "hit" and (local.calls, cloud.calls) == (2, 1)


async def test_a_corrupt_entry_is_dropped_and_counted_never_served(gw):
    client, local, _, comp, _ = gw
    await client.post("/v1/chat/completions", json=chat("fragile"))
    cache = find(comp.gateway, ResponseCache)
    store = cache._store
    for key in list(store._data):
        await store.set(key, {"v": 1, "ts": 0.0, "d": "local", "l": True, "c": 0, "r": 0, "ti": 1, "to": 1,
                              "ch": [["text", "stop", "not a list", None]]})
    r = await client.post("/v1/chat/completions", json=chat("fragile"))
    assert r.headers["x-nlweb-cache"] == "miss" and r.json()["choices"][0]["message"]["content"] == "local says hello to you"
    assert cache.corrupt == 1 and local.calls == 2
    metrics = (await client.get("/metrics")).text
    assert 'nlweb_cache_corrupt_entries_total{cache="response"} 1.0' in metrics
    assert (await client.post("/v1/chat/completions", json=chat("fragile"))).headers["x-nlweb-cache"] == "hit"


async def test_a_hit_is_a_zero_cost_ledger_row_with_the_cost_it_saved(gw):
    client, _, cloud, comp, _ = gw
    for _ in range(2):
        await client.post("/v1/chat/completions", json=chat("what does it cost?", model="cloud"))
    assert cloud.calls == 1
    ledger = comp.telemetry.ledger
    assert ledger.flush()
    call, hit = ledger.query()
    assert (call.cache, call.deployment) == ("", "cloud") and call.cost_usd > 0
    assert hit.cache == "response" and hit.cost_usd == 0 and hit.deployment == "cloud"
    assert hit.saved_usd == pytest.approx(call.cost_usd)
    assert hit.reference_usd == pytest.approx(call.reference_usd)
    assert (hit.tokens_in, hit.tokens_out) == (call.tokens_in, call.tokens_out)
    stats = (await client.get("/admin/stats")).json()
    assert stats["caches"]["response"]["hits"] == 1 and stats["caches"]["response"]["misses"] == 1
    assert stats["caches"]["response"]["hit_ratio"] == 0.5
    assert stats["caches"]["response"]["saved_usd"] == pytest.approx(call.cost_usd)
    assert stats["cache_hits"]["response"]["saved_usd"] == pytest.approx(call.cost_usd)
    assert stats["calls"] == 1 and stats["cost_usd"] == pytest.approx(call.cost_usd)  # LLM calls only


@pytest.mark.parametrize(("body", "headers", "param"), [
    ({"cache": {"no-cache": "yes"}}, {}, "cache.no-cache"),
    ({"cache": {"no-store": 1}}, {}, "cache.no-store"),
    ({"cache": {"ttl": -5}}, {}, "cache.ttl"),
    ({"cache": {"ttl": 0}}, {}, "cache.ttl"),
    ({"cache": {"ttl": "600"}}, {}, "cache.ttl"),
    ({"cache": {"ttl": True}}, {}, "cache.ttl"),
    ({"cache": {"ttl": 1e400}}, {}, None),  # JSON reads it as infinity, or refuses the number: 400 either way
    ({"cache": {"s-maxage": 5}}, {}, "cache.s-maxage"),
    ({"cache": {"namespace": "a b"}}, {}, "cache.namespace"),
    ({"cache": "no-cache"}, {}, "cache"),
    ({}, {"Cache-Control": "max-age=-1"}, "cache-control"),
    ({}, {"Cache-Control": "max-age=NaN"}, "cache-control"),
    ({}, {"Cache-Control": "private"}, "cache-control"),
    ({}, {"x-nlweb-cache-namespace": "x" * 65}, "x-nlweb-cache-namespace"),
])
async def test_bad_controls_are_400s_naming_the_field(gw, body, headers, param):
    client, local, _, _, _ = gw
    raw = json.dumps(chat(**body)).replace("Infinity", "1e400")
    r = await client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json", **headers})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    if param is not None:
        assert err["param"] == param and param in err["message"].lower()
    assert local.calls == 0
    e = await client.post("/v1/embeddings", content=json.dumps({"input": "x", **body}).replace("Infinity", "1e400"),
                          headers={"content-type": "application/json", **headers})
    assert e.status_code == 400


async def test_a_semantic_index_plugs_in_and_is_said_with_its_similarity(tmp_path):
    """The semantic index is another part's; here a stand-in that maps one paraphrase to its original."""
    from nlweb_local.config.settings import CacheSettings
    from nlweb_local.core.cache import BoundedCache
    from nlweb_local.core.types import ChatRequest, Message

    class Paraphrases:
        def __init__(self):
            self.keys = {}

        async def lookup(self, namespace, text):
            key = self.keys.get((namespace, text.replace("tell me", "what is")))
            return (key, 0.97) if key else None

        async def add(self, namespace, text, key):
            self.keys[(namespace, text)] = key

    engine = ScriptedProvider("local", "Paris")
    cache = ResponseCache(engine, BoundedCache(10), CacheSettings(), semantic=Paraphrases())

    def ask(text):
        return ChatRequest([Message("user", text)], max_tokens=5)

    assert (await cache.complete(ask("what is the capital of France"))).served.cache == "miss"
    near = await cache.complete(ask("tell me the capital of France"))
    assert near.served.cache == "semantic-hit; similarity=0.97" and near.content == "Paris" and engine.calls == 1
    assert (await cache.complete(ask("what is the capital of Spain"))).served.cache == "miss"


def test_the_key_names_the_model_versions_that_would_serve():
    from nlweb_local.cache.keys import ServingVersions, cacheable, chat_key
    from nlweb_local.core.types import CacheControl, CallContext, ChatRequest, Message
    from nlweb_local.router.model import DeploymentInfo
    from nlweb_local.router.router import Route, Router

    def router(version_b, groups=None):
        return Router([Route(DeploymentInfo("a", True, model_version="a1"), ScriptedProvider("a")),
                       Route(DeploymentInfo("b", False, model_version=version_b), ScriptedProvider("b", local=False))],
                      groups=groups or {})

    def key(r, **ctx):
        req = ChatRequest([Message("user", "hi")], context=CallContext(**ctx))
        return chat_key(req, ServingVersions(r).for_request(req))

    assert key(router("b1")) == key(router("b1"))
    assert key(router("b1")) != key(router("b2"))  # a model change anywhere the request may go
    assert key(router("b1"), deployments=("a",)) == key(router("b2"), deployments=("a",))  # pinned elsewhere
    assert key(router("b1", {"fast": ["a"]}), deployments=("a",)) != key(router("b1"))
    assert key(router("b1"), cache=CacheControl(namespace="x")) != key(router("b1"))
    assert key(router("b1"), caller="key-1") != key(router("b1"), caller="key-2")  # tenants never share
    assert not cacheable(ChatRequest([Message("user", "hi")], temperature=0.3))
    assert cacheable(ChatRequest([Message("user", "hi")], temperature=0.3, context=CallContext(cache=CacheControl(ttl_s=5))))
    assert not cacheable(ChatRequest([Message("user", "hi")], context=CallContext(
        cache=CacheControl(no_cache=True, no_store=True))))


def test_hits_are_reported_apart_from_llm_calls():
    from nlweb_local.telemetry.ledger import CallRecord
    from nlweb_local.telemetry.prices import HardwareCost, Price
    from nlweb_local.telemetry.report import Assumptions, build_report, render_csv, render_table
    from nlweb_local.telemetry.stats import summarize

    call = CallRecord(100.0, "r1", "cloud", False, "chat", 100, 50, 2.0, 0.5, 0.003, 0.004, 0.001)
    hits = [CallRecord(101.0 + i, f"r{i + 2}", "cloud", False, "chat", 100, 50, 0.001, None, 0.0, 0.004, 0.004, "",
                       "response", 0.003) for i in range(3)]
    s = summarize([call, *hits], now=110.0, span_s=60.0)
    assert s["calls"] == 1 and s["requests"] == 4 and s["cost_usd"] == pytest.approx(0.003)
    assert s["latency_s"]["p50"] == 2.0  # hits do not flatter the deployments' latency
    assert s["cache_hits"]["response"]["hits"] == 3
    assert s["cache_hits"]["response"]["saved_usd"] == pytest.approx(0.009)
    rep = build_report([call, *hits], Assumptions("gpt-4o", Price(2.5, 10), HardwareCost(1500, 3, 100, 0.15)))
    assert rep["routes"]["hybrid"]["calls"] == 1
    assert rep["caches"]["response"] == {"hits": 3, "saved_usd": pytest.approx(0.009),
                                         "reference_usd": pytest.approx(0.012), "requests": 3, "request_share": 0.75}
    assert "Answered from caches" in render_table(rep) and "cache,response,hits,3" in render_csv(rep)


async def test_entries_survive_a_backend_that_stores_json():
    """A shared backend (Redis) holds values as bytes: every entry must come back from JSON the same."""
    from nlweb_local.config.settings import CacheSettings
    from nlweb_local.core.types import ChatRequest, Message

    class JsonCache:
        def __init__(self):
            self.data = {}

        async def get(self, key):
            raw = self.data.get(key)
            return None if raw is None else json.loads(raw)

        async def set(self, key, value, ttl_s=None):
            self.data[key] = json.dumps(value)

        async def delete(self, key):
            self.data.pop(key, None)

    engine = ScriptedProvider("local", "one two three")
    cache = ResponseCache(engine, JsonCache(), CacheSettings())
    req = ChatRequest([Message("user", "count")], max_tokens=5)
    original = [c async for c in cache.stream(req)]
    replayed = [c async for c in cache.stream(req)]
    assert engine.calls == 1 and replayed[0].served.cache == "hit"
    strip = lambda cs: [(c.delta, c.finish_reason, c.tool_calls, c.usage) for c in cs]  # noqa: E731
    assert strip(replayed) == strip(original)
    assert (await cache.complete(req)).content == "one two three" and engine.calls == 1
    first, again = await cache.embed(["a", "bcd"]), await cache.embed(["a", "bcd"])
    assert again.cache == "hit" and again.vectors == first.vectors


async def test_the_semantic_cache_when_enabled_answers_a_paraphrase_and_refuses_a_near_miss(tmp_path, embedder):
    """Composed as `serve` does with `semantic_cache.enabled`: the real MiniLM index behind the response cache."""
    local = ScriptedProvider("local", "Chickpeas, spinach and coconut milk.")
    settings = service_settings(tmp_path)
    settings.semantic_cache.enabled = True
    comp = scripted_service(settings, {"local": local}, embedder=embedder)
    app = create_app(settings, comp, close_components=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
        first = await client.post("/v1/chat/completions", json=chat("How do I make a quick vegetarian curry?"))
        para = await client.post("/v1/chat/completions", json=chat("How can I make a quick vegetarian curry?"))
        other = await client.post("/v1/chat/completions", json=chat("How do I make a quick vegan curry?"))
        follow = await client.post("/v1/chat/completions", json={**chat("What about that one?"),
                                   "messages": [{"role": "user", "content": "How do I make a quick vegetarian curry?"},
                                                {"role": "assistant", "content": "Chickpeas."},
                                                {"role": "user", "content": "How do I make a quick vegetarian curry?"}]})
    await comp.close()
    assert first.headers["x-nlweb-cache"] == "miss"
    assert para.headers["x-nlweb-cache"].startswith("semantic-hit; similarity=")
    assert para.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
    assert other.headers["x-nlweb-cache"] == "miss"  # vegan is not vegetarian: a veto, not a hit
    assert follow.headers["x-nlweb-cache"] == "miss"  # a conversation is no standalone question
    assert local.calls == 3
