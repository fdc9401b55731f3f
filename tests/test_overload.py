"""Reliability under overload: the breaker judges the deployment, not the caller or nlweb-local's own
queue; back-pressure says honestly when to come back; low priorities age instead of starving."""
import asyncio
import math
import random

import pytest

from nlweb_local.core.errors import (BadRequestError, OverloadedError, ProviderConnectionError, ProviderTimeoutError,
                                     QueueFullError, RateLimitedError)
from nlweb_local.core.types import CallContext, ChatRequest, Message, Usage
from nlweb_local.providers.http import retry_after_s
from nlweb_local.providers.priority import PriorityGate
from nlweb_local.providers.testing import ScriptedProvider
from nlweb_local.router.breaker import BreakerSettings, BreakerState, CircuitBreaker, Outcome, outcome
from nlweb_local.router.model import DeploymentInfo
from nlweb_local.router.router import Route, Router


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def breaker(**kw):
    clock = Clock()
    s = BreakerSettings(**{"window": 10, "min_calls": 3, "failure_rate": 0.5, "open_s": 30, "probe_calls": 1,
                           "restore_shares": [0.5], "calls_per_stage": 2, "slow_call_s": 5.0, **kw})
    return CircuitBreaker("local", s, clock=clock, rng=lambda: 0.0), clock


def test_the_servers_own_overload_and_client_deadlines_never_open_the_breaker():
    b, _ = breaker()
    full = QueueFullError("queue full", retry_after=2600.0, deployment="local")
    for _ in range(20):
        b.record(full)  # nlweb-local's own queue: back-pressure, not a sick engine
        b.record(ProviderTimeoutError("deadline", deployment="local"), 0.02, budget_s=0.02)  # x-nlweb-deadline-ms: 20
        b.record(BadRequestError("'stop' must be a list of strings"))  # the request's fault
    snap = b.snapshot()  # only the 4xx count, as successes of the deployment
    assert b.state is BreakerState.CLOSED and snap.window_calls == 10 and snap.failure_rate == 0.0
    assert outcome(asyncio.CancelledError()) is Outcome.IGNORED  # a client that went away says nothing either


def test_a_timeout_with_a_fair_budget_and_engine_faults_still_open_it():
    b, _ = breaker()
    for _ in range(3):
        b.record(ProviderTimeoutError("hung", deployment="local"), 5.0, budget_s=60.0)
    assert b.state is BreakerState.OPEN
    b2, _ = breaker()
    for _ in range(3):
        b2.record(ProviderConnectionError("refused", deployment="local"))
    assert b2.state is BreakerState.OPEN


def test_an_ignored_call_during_half_open_frees_its_probe_slot():
    b, clock = breaker()
    b.force_open(10)
    clock.t = 11
    assert b.allows() and not b.allows()  # the one probe slot is taken
    b.record(QueueFullError("full", deployment="local"))  # it proved nothing: the slot is free again
    assert b.state is BreakerState.HALF_OPEN and b.allows()


@pytest.mark.parametrize("hint", [2600.0, math.inf, math.nan, -5.0])
def test_an_upstream_retry_after_is_capped_and_nonsense_is_ignored(hint):
    b, _ = breaker(max_retry_after_s=120.0)
    err = OverloadedError("busy", deployment="local")
    err.retry_after = hint  # as an upstream body or header could say it
    for _ in range(3):
        b.record(err)
    assert b.state is BreakerState.OPEN
    expected = 120.0 if hint == 2600.0 else 30.0  # capped; NaN, inf and negative fall back to open_s
    assert b.snapshot().retry_after_s == pytest.approx(expected)


def test_retry_after_values_from_upstreams_are_sanitised():
    assert retry_after_s({"retry-after": "12"}) == 12.0
    assert retry_after_s({"retry-after-ms": "1500"}) == 1.5
    for bad in ("nan", "inf", "-3", "Wed, 21 Oct 2026 07:28:00 GMT", "1e400"):
        assert retry_after_s({"retry-after": bad}) is None, bad
    assert RateLimitedError("slow down", retry_after=math.nan).retry_after is None
    assert OverloadedError("busy", retry_after=math.inf).retry_after == 1.0


class Queued(ScriptedProvider):
    """An engine whose calls report that they waited `queue_s` in nlweb-local's queue and then ran fast."""

    def __init__(self, name, queue_s):
        super().__init__(name, "ok")
        self.queue_s = queue_s

    async def stream(self, request):
        async for ch in super().stream(request):
            if ch.usage is not None:
                ch.usage = Usage(ch.usage.prompt_tokens, ch.usage.completion_tokens, queue_s=self.queue_s)
            yield ch


async def test_time_waiting_in_our_own_queue_is_not_slowness():
    clock = Clock()
    engine = Queued("local", queue_s=40.0)
    b = CircuitBreaker("local", BreakerSettings(min_calls=2, window=4, slow_call_s=30.0, slow_rate=0.5), clock=clock)
    router = Router([Route(DeploymentInfo("local", True), engine, b)], clock=clock, rng=random.Random(0))

    real_stream = engine.stream

    def slow_stream(request):  # each call "takes" 41 s on the router's clock, 40 of them queued
        async def gen():
            clock.t += 41.0
            async for ch in real_stream(request):
                yield ch
        return gen()

    engine.stream = slow_stream
    for _ in range(4):
        assert (await router.complete(ChatRequest([Message("user", "hi")]))).content == "ok"
    assert router.breaker("local").state == "closed"  # 1 s of service each: not slow
    engine.queue_s = 0.0
    for _ in range(2):
        await router.complete(ChatRequest([Message("user", "hi")]))
    assert router.breaker("local").state == "open"  # 41 s of service: slow, and the breaker says so


async def test_the_router_fails_over_past_a_full_local_queue_without_blaming_it():
    local, cloud = ScriptedProvider("local"), ScriptedProvider("cloud", "cloud ok", local=False)
    local.fail_with = QueueFullError("queue full", retry_after=3.0, deployment="local")
    bs = BreakerSettings(min_calls=2, window=4)
    router = Router([Route(DeploymentInfo("local", True), local, CircuitBreaker("local", bs)),
                     Route(DeploymentInfo("cloud", False), cloud, CircuitBreaker("cloud", bs))],
                    rng=random.Random(0), backoff_s=0.0, rounds=1)
    for _ in range(5):
        r = await router.complete(ChatRequest([Message("user", "hi")]))
        assert r.served.deployment == "cloud" and r.served.failover_from == ("local",)
    assert router.breaker("local").state == "closed"


async def test_low_priorities_age_instead_of_starving():
    clock = Clock()
    gate = PriorityGate(capacity=1, max_waiting=10, ageing_s=10.0, clock=clock)
    order: list[str] = []

    async def call(name, priority):
        await gate.acquire(priority)
        order.append(name)

    await gate.acquire(0)  # the engine is busy
    low = asyncio.create_task(call("low", 0))
    await asyncio.sleep(0)
    clock.t = 25.0  # the low-priority call has waited 25 s: it now ranks as priority 2.5
    high = asyncio.create_task(call("high-2", 2))
    higher = asyncio.create_task(call("high-3", 3))
    await asyncio.sleep(0)
    assert gate.ahead(4) == 0 and gate.ahead(3) == 1 and gate.ahead(2) == 3  # (an equal key queues behind)
    for _ in range(3):
        gate.release()
        await asyncio.sleep(0)
    await asyncio.gather(low, high, higher)
    assert order == ["high-3", "low", "high-2"]


def test_the_gate_refuses_nonsense_ageing():
    with pytest.raises(ValueError):
        PriorityGate(ageing_s=0)


async def test_a_context_priority_orders_waiting_calls_without_a_header():
    ctx = CallContext(priority=5)
    assert ChatRequest([Message("user", "x")], context=ctx).with_deadline(3.0).context.priority == 5


def test_degraded_answers_are_marked_in_every_dialect_and_counted(store, embedder, tmp_path):
    import json

    from starlette.testclient import TestClient

    from nlweb_local.core.types import Item
    from nlweb_local.server.app import create_app
    from stand_ins import scripted_service, service_settings

    names = ["Chickpea curry", "Lemon tart"]
    store.upsert([Item(f"https://d.example/{i}", n, "d", json.dumps({"@type": "Recipe", "name": n}))
                  for i, n in enumerate(names)], embedder.embed(names))
    settings = service_settings(tmp_path)
    settings.llm.breaker.min_calls = 1000
    settings.search.rank_cache_entries = 0  # every answer asks the LLM
    settings.cache.ask_enabled = False  # (and is not the answer kept from the first time)
    local = ScriptedProvider("local", classify=True)
    comp = scripted_service(settings, {"local": local}, embedder=embedder, store=store)
    q = {"query": "curry", "streaming": "false", "min_score": 0}
    with TestClient(create_app(settings, comp, close_components=False), base_url="http://localhost") as c:
        ok = c.get("/ask", params=q).json()
        local.fail_with = QueueFullError("queue full", retry_after=3.0, deployment="local")
        v3 = c.get("/ask", params=q).json()
        v1 = c.get("/ask", params={**q, "api": "v1"}).json()
        v05 = c.post("/ask", json={"query": {"text": "curry"}, "prefer": {"streaming": False}}).json()
        metrics = c.get("/metrics").text
    assert "degraded" not in ok[-1] and ok[-1]["message_type"] == "end-nlweb-response"
    assert v3[-1]["message_type"] == "end-nlweb-response" and v3[-1]["degraded"] is True
    assert v3[-1].get("error") is None and [m for m in v3 if m["message_type"] == "result"]  # still an answer
    assert v1["degraded"] is True and v1["results"]
    assert v05["_meta"]["degraded"] is True and v05["_meta"]["response_type"] == "Answer"
    assert 'nlweb_ask_answers_total{outcome="ok"} 1.0' in metrics
    assert 'nlweb_ask_answers_total{outcome="degraded"} 3.0' in metrics
    comp.telemetry.close()


async def test_a_stream_its_consumer_abandons_is_closed_at_once_in_its_own_task():
    """A client that goes away mid-stream: every layer closes its stream right there (not later, from the
    garbage collector in another task — the old "aclose(): asynchronous generator is already running")."""
    from nlweb_local.providers.wrapper import WrapperProvider, compose

    closed: list[str] = []

    class Engine(ScriptedProvider):
        async def stream(self, request):
            try:
                async for ch in super().stream(request):
                    yield ch
            finally:
                closed.append("engine")

    engine = Engine("local", "one two three four")
    router = Router([Route(DeploymentInfo("local", True), compose(engine, [WrapperProvider]))], rng=random.Random(0))
    chunks = router.stream(ChatRequest([Message("user", "hi")]))
    assert (await chunks.__anext__()).served.deployment == "local"
    assert router.view("local").in_flight == 1
    await chunks.aclose()
    assert closed == ["engine"] and router.view("local").in_flight == 0


def test_a_search_deployment_that_is_down_leaves_ask_ranked_by_the_embedded_engine(store, embedder, tmp_path):
    """`llm.search_deployment` names a deployment that refuses connections: /ask's answers are still
    LLM-ranked (by the embedded engine), not degraded to similarity order."""
    import json

    from starlette.testclient import TestClient

    from nlweb_local.core.errors import ProviderConnectionError
    from nlweb_local.core.types import Item
    from nlweb_local.server.app import create_app
    from stand_ins import scripted_service, service_settings

    names = ["Chickpea curry", "Lemon tart"]
    store.upsert([Item(f"https://f.example/{i}", n, "f", json.dumps({"@type": "Recipe", "name": n}))
                  for i, n in enumerate(names)], embedder.embed(names))
    settings = service_settings(tmp_path, {"name": "big", "engine": "ollama", "model": "llama3.2:3b"},
                                search_deployment="big")
    settings.cache.ask_enabled = False
    local, big = ScriptedProvider("local", classify=True), ScriptedProvider("big", classify=True)
    big.fail_with = ProviderConnectionError("big: connection refused", deployment="big")
    comp = scripted_service(settings, {"local": local, "big": big}, embedder=embedder, store=store, telemetry=None)
    with TestClient(create_app(settings, comp, close_components=False), base_url="http://localhost") as c:
        answer = c.get("/ask", params={"query": "curry", "streaming": "false", "min_score": 0}).json()
    assert answer[-1]["message_type"] == "end-nlweb-response" and "degraded" not in answer[-1]
    assert not [m for m in answer if m["message_type"] == "intermediate_message"]  # no "LLM unavailable" note
    assert [m for m in answer if m["message_type"] == "result"] and local.calls > 0 and big.calls > 0
