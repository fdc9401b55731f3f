"""The fleet: several instances of one deployment behind one provider — balancing, failover before the first
token, per-instance breakers and scraped health (with the wire-faithful llama-server fake), /admin/fleet."""
import asyncio
from collections import Counter

import pytest

from fakes.openai_fake import LLAMA_SERVER_METRICS, OpenAIFake
from nlweb_local.config.settings import BreakerSettings, DeploymentSettings, FleetSettings
from nlweb_local.core.errors import BadRequestError, OverloadedError, ProviderConnectionError
from nlweb_local.core.types import CallContext, ChatRequest, Message
from nlweb_local.fleet.fleet import Fleet
from nlweb_local.providers.testing import ScriptedProvider
from nlweb_local.router.breaker import CircuitBreaker
from nlweb_local.server.components import build_adapter


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def ask(text="hello", conversation=""):
    return ChatRequest([Message("user", text)], context=CallContext(conversation=conversation))


QUICK = BreakerSettings(window=4, min_calls=2, failure_rate=0.5, open_s=5.0, probe_calls=1, restore_shares=[])


def scripted_fleet(n=2, policy="round-robin", clock=None, **fleet):
    clock = clock or Clock()
    members = [(f"http://i{k}", ScriptedProvider("engine", text=f"from i{k}")) for k in range(n)]
    f = Fleet("engine", members, FleetSettings(policy=policy, **fleet),
              breaker=lambda name: CircuitBreaker(name, QUICK, clock=clock), clock=clock)
    return f, [p for _, p in members], clock


async def test_calls_spread_over_the_instances():
    fleet, engines, _ = scripted_fleet(3, "round-robin")
    answers = Counter([(await fleet.complete(ask())).content for _ in range(9)])
    assert answers == {"from i0": 3, "from i1": 3, "from i2": 3}
    assert [s.served for s in fleet.status()] == [3, 3, 3]


async def test_an_instance_failing_before_its_first_token_is_replaced_and_its_breaker_opens():
    fleet, (a, b), clock = scripted_fleet(2, "round-robin")
    a.fail_with = ProviderConnectionError("engine: cannot reach http://i0: refused", deployment="engine")
    a.healthy = False  # dead: its scrape fails too
    texts = [(await fleet.complete(ask())).content]
    await asyncio.sleep(0.01)  # the scrape the refused call triggered
    i0 = fleet.status()[0]
    assert not i0.up and not i0.healthy and i0.scrape_age_s is not None  # down after one failed call
    texts += [(await fleet.complete(ask())).content for _ in range(5)]
    texts += ["".join([c.delta async for c in fleet.stream(ask())]) for _ in range(4)]
    assert set(texts) == {"from i1"}  # no call failed
    assert a.calls == 1 and fleet.status()[1].up


async def test_a_fleet_of_one_keeps_its_bookkeeping_and_its_breaker_decides():
    fleet, (a,), clock = scripted_fleet(1)
    assert (await fleet.complete(ask())).content == "from i0"
    a.fail_with = ProviderConnectionError("engine: cannot reach http://i0: refused", deployment="engine")
    with pytest.raises(ProviderConnectionError):  # one failure of two calls: QUICK opens its breaker
        await fleet.complete(ask())
    (s,) = fleet.status()
    assert (s.served, s.failed, s.in_flight, s.breaker) == (1, 1, 0, "open")
    with pytest.raises(OverloadedError, match="breaker open"):  # its breaker refuses: no call reaches it
        await fleet.complete(ask())
    assert a.calls == 2
    a.fail_with, clock.t = None, clock.t + 6  # open period over: a probe closes it (QUICK: one probe)
    a.healthy = True
    await fleet.health()
    assert (await fleet.complete(ask())).content == "from i0" and fleet.status()[0].breaker == "closed"


async def test_a_dropped_keep_alive_connection_does_not_take_a_live_instance_out():
    fleet, (a, b), _ = scripted_fleet(2, "round-robin")
    a.fail_with = lambda: ProviderConnectionError("engine: Server disconnected", deployment="engine") if a.calls == 1 else None
    texts = [(await fleet.complete(ask())).content for _ in range(2)]
    await asyncio.sleep(0.01)  # the scrape says it is up
    assert fleet.status()[0].up and fleet.status()[0].scrape_age_s is not None
    texts += [(await fleet.complete(ask())).content for _ in range(4)]
    assert "from i0" in texts[2:]  # it takes traffic again


async def test_a_failed_scrape_of_a_busy_instance_is_not_a_death():
    fleet, (a, b), _ = scripted_fleet(2, "round-robin")
    a.token_delay_s = 0.05
    call = asyncio.create_task(fleet.complete(ask()))  # goes to i0 (round robin) and stays in flight
    await asyncio.sleep(0.01)
    a.healthy = False  # its health endpoint does not answer while it works
    await fleet.health()
    assert fleet.status()[0].up and "busy" in fleet.status()[0].detail
    await call
    a.healthy = False
    await fleet.health()  # it answered since: still busy, not dead
    assert fleet.status()[0].up
    await fleet.health()  # nothing in flight, no answer since the last scrape: down
    assert not fleet.status()[0].up


async def test_a_5xx_instance_opens_its_breaker_then_returns_after_probes():
    from nlweb_local.core.errors import ProviderError

    fleet, (a, b), clock = scripted_fleet(2, "round-robin")
    a.fail_with = ProviderError("engine: 500 internal error", deployment="engine")
    assert {(await fleet.complete(ask())).content for _ in range(6)} == {"from i1"}
    assert fleet.status()[0].breaker == "open"
    calls = a.calls
    assert {(await fleet.complete(ask())).content for _ in range(4)} == {"from i1"}
    assert a.calls == calls  # open: not tried at all
    a.fail_with = None
    clock.t += 6  # past open_s: one half-open probe, then closed
    assert Counter([(await fleet.complete(ask())).content for _ in range(6)]) == {"from i0": 3, "from i1": 3}
    assert fleet.status()[0].breaker == "closed"


async def test_mid_stream_failure_is_not_retried_elsewhere():
    fleet, (a, b), _ = scripted_fleet(2, "round-robin")
    a.fail_after_tokens = b.fail_after_tokens = 1
    with pytest.raises(ProviderConnectionError):
        [c async for c in fleet.stream(ask())]
    assert a.calls + b.calls == 1
    assert sum(s.in_flight for s in fleet.status()) == 0


async def test_nothing_up_is_a_503_naming_each_instance():
    fleet, (a, b), _ = scripted_fleet(2)
    a.healthy = b.healthy = False
    snap = await fleet.health()
    assert not snap.healthy and "0/2 instances up" in snap.detail
    with pytest.raises(OverloadedError, match="http://i0.*http://i1") as e:
        await fleet.complete(ask())
    assert e.value.status == 503
    with pytest.raises(OverloadedError):
        fleet.admit(ask())


async def test_scraped_health_ages_out():
    fleet, (a, b), clock = scripted_fleet(2, "round-robin", stale_s=30)
    a.healthy = False
    await fleet.health()
    assert {(await fleet.complete(ask())).content for _ in range(4)} == {"from i1"}
    clock.t += 31  # the scrape that said "down" is now too old to keep it out
    assert {(await fleet.complete(ask())).content for _ in range(4)} == {"from i0", "from i1"}
    a.healthy = True
    await fleet.health()
    assert fleet.status()[0].up and fleet.status()[0].scrape_age_s == 0


async def test_affinity_keeps_a_conversation_on_one_instance():
    fleet, engines, _ = scripted_fleet(4, "affinity")
    for conv in ("alice", "bob", "carol"):
        homes = {(await fleet.complete(ask(f"turn {n}", conversation=conv))).content for n in range(5)}
        assert len(homes) == 1, conv
    prompts = {(await fleet.complete(ask("The same long system prompt " * 20 + f"question {n}"))).content
               for n in range(5)}
    assert len(prompts) == 1  # no conversation id: the prompt's first characters


async def test_a_down_instance_is_never_picked_concurrently():
    fleet, (a, b), _ = scripted_fleet(2, "p2c")
    a.token_delay_s = b.token_delay_s = 0.001
    a.healthy = False
    await fleet.health()
    await asyncio.gather(*(fleet.complete(ask()) for _ in range(20)))
    assert a.calls == 0 and b.calls == 20


def test_settings_refuse_url_and_instances_together_and_duplicates():
    with pytest.raises(ValueError, match="not both"):
        DeploymentSettings(name="e", engine="llama_server", url="http://a/v1", instances=["http://b/v1"])
    with pytest.raises(ValueError, match="distinct"):
        DeploymentSettings(name="e", engine="llama_server", instances=["http://b/v1", "http://b/v1"])


def test_an_in_process_engine_has_no_instances():
    d = DeploymentSettings(name="e", engine="llama_cpp", instances=["http://a/v1", "http://b/v1"])
    with pytest.raises(BadRequestError, match="runs inside nlweb-local"):
        build_adapter(d, BreakerSettings())


def test_one_url_is_no_fleet_at_all():
    d = DeploymentSettings(name="e", engine="llama_server", model="m", url="http://127.0.0.1:9/v1")
    assert not isinstance(build_adapter(d, BreakerSettings()), Fleet)


# -- over the wire, with the llama-server fake -----------------------------------------------------------
@pytest.fixture()
def two_engines():
    fakes = [OpenAIFake().start(), OpenAIFake().start()]
    for f in fakes:
        f.metrics_text = LLAMA_SERVER_METRICS
    yield fakes
    for f in fakes:
        f.stop()


def wire_fleet(urls, policy="least-outstanding"):
    d = DeploymentSettings(name="engine", engine="llama_server", model="fake-model", api_key="sk-test",
                           instances=[f"{u}/v1" for u in urls], fleet=FleetSettings(policy=policy))
    return build_adapter(d, QUICK)


def chats(fake):
    return sum(r["path"] == "/v1/chat/completions" for r in fake.requests)


async def test_over_the_wire_balancing_scraping_and_a_dead_instance(two_engines):
    a, b = two_engines
    fleet = wire_fleet([a.url, b.url])
    try:
        snap = await fleet.health()  # scrapes /health, /metrics, /slots of both
        assert snap.healthy and "2/2 instances up" in snap.detail
        st = fleet.status()
        assert [s.running for s in st] == [2, 2] and all(s.scrape_age_s is not None for s in st)  # llamacpp:requests_processing
        out = await asyncio.gather(*(fleet.complete(ask()) for _ in range(10)))
        assert all(r.content == "Hello! I am a fake model." for r in out)
        assert chats(a) > 0 and chats(b) > 0

        b.stop()  # dead: connection refused
        served = [r.content for r in await asyncio.gather(*(fleet.complete(ask()) for _ in range(8)))]
        streamed = ["".join([c.delta async for c in fleet.stream(ask())]) for _ in range(4)]
        assert len(served) == 8 and set(streamed) == {"Hello! I am a fake model."}  # 0 failed calls
        assert not fleet.status()[1].up
        snap = await fleet.health()
        assert snap.healthy and "1/2 instances up" in snap.detail and "health probe" not in fleet.status()[0].detail
    finally:
        await fleet.close()


async def test_over_the_wire_a_loading_instance_leaves_and_returns(two_engines):
    a, b = two_engines
    fleet = wire_fleet([a.url, b.url], policy="round-robin")
    try:
        b.loading = True  # llama-server's 503 "Loading model"
        await fleet.health()
        assert not fleet.status()[1].up and "Loading" in fleet.status()[1].detail
        before = chats(b)
        await asyncio.gather(*(fleet.complete(ask()) for _ in range(6)))
        assert chats(b) == before
        b.loading = False
        await fleet.health()
        await asyncio.gather(*(fleet.complete(ask()) for _ in range(6)))
        assert chats(b) > before
    finally:
        await fleet.close()


async def test_admin_fleet_lists_every_instance(tmp_path, two_engines):
    from starlette.testclient import TestClient

    from nlweb_local.server.app import create_app
    from stand_ins import scripted_service, service_settings

    a, b = two_engines
    settings = service_settings(tmp_path, {"name": "pool", "engine": "llama_server", "model": "fake-model",
                                           "api_key": "sk-test", "instances": [f"{a.url}/v1", f"{b.url}/v1"]},
                                embedded_enabled=False)
    settings.llm.deployments.append(DeploymentSettings(name="single", engine="openai", model="fake-model",
                                                       url=f"{a.url}/v1", api_key="sk-test"))
    comp = scripted_service(settings, {}, telemetry=None)
    with TestClient(create_app(settings, comp, close_components=True), base_url="http://localhost") as c:
        r = c.post("/v1/chat/completions", json={"model": "pool", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
        body = c.get("/admin/fleet").json()
    pool, single = body["deployments"]
    assert pool["deployment"] == "pool" and pool["policy"] == "p2c"
    assert [i["url"] for i in pool["instances"]] == [f"{a.url}/v1", f"{b.url}/v1"]
    assert sum(i["served"] for i in pool["instances"]) == 1
    assert {"healthy", "breaker", "in_flight", "waiting", "ewma_latency_s", "scrape_age_s"} <= set(pool["instances"][0])
    assert single["deployment"] == "single" and len(single["instances"]) == 1 and single["policy"] is None


async def test_models_list_describes_a_fleet_by_its_instances(two_engines):
    from nlweb_local.cli.models import _describe

    a, b = two_engines
    b.stop()
    d = DeploymentSettings(name="pool", engine="llama_server", model="fake-model", api_key="sk-test",
                           instances=[f"{a.url}/v1", f"{b.url}/v1"])
    row = await _describe(d)
    assert row["healthy"] and "1/2 instances up" in row["detail"] and a.url in row["url"] and b.url in row["url"]


def test_through_the_gateway_a_dead_instance_fails_no_request_and_the_deployment_stays_closed(tmp_path, two_engines):
    from starlette.testclient import TestClient

    from nlweb_local.server.app import create_app
    from stand_ins import scripted_service, service_settings

    a, b = two_engines
    settings = service_settings(tmp_path, {"name": "pool", "engine": "llama_server", "model": "fake-model",
                                           "api_key": "sk-test", "instances": [f"{a.url}/v1", f"{b.url}/v1"],
                                           "fleet": {"policy": "round-robin"}}, embedded_enabled=False)
    comp = scripted_service(settings, {}, telemetry=None)
    b.stop()
    with TestClient(create_app(settings, comp, close_components=True), base_url="http://localhost") as c:
        codes = [c.post("/v1/chat/completions", json={"model": "auto", "stream": n % 2 == 1,
                                                      "messages": [{"role": "user", "content": f"hi {n}"}]}).status_code
                 for n in range(10)]
        breakers = c.get("/admin/breakers").json()["breakers"]
        fleet = c.get("/admin/fleet").json()["deployments"][0]
    assert codes == [200] * 10
    assert [br["state"] for br in breakers] == ["closed"]  # the deployment's breaker never saw a failure
    assert [i["up"] for i in fleet["instances"]] == [True, False] and fleet["instances"][0]["served"] == 10
