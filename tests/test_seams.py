"""The seams the next capabilities build on: the wrapper base and its fold, the call context on the
request, typed `Served` answers, the router's typed API over a state store, and the composition root."""
import math
import random

import pytest
from starlette.testclient import TestClient

from nlweb_local.config.settings import load_settings
from nlweb_local.core.errors import BadRequestError, NotFoundError, ProviderConnectionError
from nlweb_local.core.types import CallContext, ChatRequest, LabelProbs, Message, Privacy, TaskKind
from nlweb_local.providers.base import ModelLifecycle
from nlweb_local.providers.testing import ScriptedProvider
from nlweb_local.providers.wrapper import WrapperProvider, compose, find
from nlweb_local.router.breaker import BreakerSettings, CircuitBreaker
from nlweb_local.router.model import DeploymentInfo
from nlweb_local.router.router import Route, Router
from nlweb_local.router.state import InProcessRouterState
from nlweb_local.server.app import create_app
from stand_ins import scripted_service, service_settings


def req(text="hi", **kw):
    return ChatRequest([Message("user", text)], **kw)


class Recorder(WrapperProvider):
    """A wrapper that notes what its hooks see, under a label (to check the fold's order)."""

    def __init__(self, inner, label, log):
        super().__init__(inner)
        self.label, self.log = label, log

    async def around_call(self, kind, subject, run):
        self.log.append((self.label, kind))
        return await run()

    async def around_stream(self, request, chunks):
        self.log.append((self.label, "stream"))
        async for ch in chunks:
            yield ch


class Sleepy(ScriptedProvider):
    """An engine with a model lifecycle (as vLLM's sleep mode)."""

    def __init__(self, name):
        super().__init__(name)
        self.sleeping = False

    async def load(self, model=None):
        return None

    async def unload(self, model=None):
        return None

    async def sleep(self, level=1):
        self.sleeping = True

    async def wake(self):
        self.sleeping = False

    async def is_sleeping(self):
        return self.sleeping


async def test_the_fold_wraps_innermost_first_and_every_call_goes_through_the_hooks():
    log = []
    inner = ScriptedProvider("local", "one two", classify=True)
    chain = compose(inner, [lambda p: Recorder(p, "inner", log), lambda p: Recorder(p, "outer", log)])
    assert chain.inner.inner is inner and (chain.name, chain.model, chain.capabilities) == (
        inner.name, inner.model, inner.capabilities)
    assert (await chain.complete(req())).content == "one two"
    assert [c.delta async for c in chain.stream(req())] == ["one ", "two"]
    assert (await chain.classify(req(task=TaskKind.RANK), ["Yes", "No"]))["Yes"] == 1.0
    assert (await chain.embed(["abc"])).vectors == [[3.0, 1.0]]
    assert log == [("outer", "complete"), ("inner", "complete"), ("outer", "stream"), ("inner", "stream"),
                   ("outer", "classify"), ("inner", "classify"), ("outer", "embed"), ("inner", "embed")]
    assert (await chain.health()).healthy and chain.admit() is None
    assert not hasattr(chain, "fail_with")  # nothing is forwarded implicitly


async def test_optional_capabilities_are_explicit_protocols_found_through_the_wrappers():
    engine = Sleepy("gpu")
    chain = compose(engine, [lambda p: Recorder(p, "a", []), lambda p: Recorder(p, "b", [])])
    assert not isinstance(chain, ModelLifecycle)  # a wrapper does not pretend to have it
    lifecycle = find(chain, ModelLifecycle)
    assert lifecycle is engine
    await lifecycle.sleep(1)
    assert await lifecycle.is_sleeping()
    assert find(compose(ScriptedProvider("x"), [lambda p: Recorder(p, "a", [])]), ModelLifecycle) is None
    plain = type("NoClassify", (), {"name": "n", "model": "m", "capabilities": ScriptedProvider("n").capabilities})()
    with pytest.raises(BadRequestError, match="cannot classify"):
        await Recorder(plain, "a", []).classify(req(), ["Yes", "No"])


def two_routes(clock=None):
    bs = BreakerSettings(min_calls=2, window=4, open_s=30)
    local = ScriptedProvider("local", "local answer")
    cloud = ScriptedProvider("cloud", "cloud answer", local=False, classify=True)
    kw = {"clock": clock} if clock else {}
    return [Route(DeploymentInfo("local", True, model="local-model"), local, CircuitBreaker("local", bs, **kw)),
            Route(DeploymentInfo("cloud", False, model="cloud-model"), cloud, CircuitBreaker("cloud", bs, **kw))], local, cloud


async def test_the_context_reaches_the_engine_unchanged_and_the_answer_says_who_served():
    seen = []

    class Engine(ScriptedProvider):
        def stream(self, request):
            seen.append(request.context)
            return super().stream(request)

    engine = Engine("local")
    router = Router([Route(DeploymentInfo("local", True, model="m", model_version="v1"),
                           compose(engine, [lambda p: Recorder(p, "metered", [])]))], rng=random.Random(0))
    ctx = CallContext(strategy="cost", privacy=Privacy.LOCAL_ONLY, conversation="c1", priority=3, deadline_s=9.0,
                      difficulty=0.2, caller="key-1", team="search", role="reader", budget_usd=1.5)
    resp = await router.complete(req(context=ctx))
    assert seen == [ctx] and seen[0] is ctx  # the frozen context itself, through the wrapper and the attempt copy
    assert (resp.served.deployment, resp.served.model, resp.served.model_version) == ("local", "m", "v1")
    assert resp.served.reason.startswith("cost") and not resp.served.failover
    chunks = [c async for c in router.stream(req(context=ctx))]
    assert chunks[0].served == resp.served and all(c.served is None for c in chunks[1:])


async def test_the_router_api_commands_and_reads_by_name():
    routes, local, cloud = two_routes()
    router = Router(routes, rng=random.Random(0), backoff_s=0.0)
    assert router.names() == ["local", "cloud"] and router.resolve_model("cloud") == ("cloud",)
    assert router.resolve_model("auto") == () and router.resolve_model("nope") == ()
    snap = router.force_open("local", 60)
    assert snap.state == "open" and 59 <= snap.retry_after_s <= 60
    assert [v.breaker for v in router.deployments()] == ["open", "closed"]
    assert (await router.complete(req())).served.deployment == "cloud"
    assert router.reset("local").state == "closed"
    for bad in (math.nan, math.inf, -1.0, 0.0):
        with pytest.raises(BadRequestError, match="seconds"):
            router.force_open("local", bad)
    assert router.breaker("local").state == "closed"  # a refused command changed nothing
    with pytest.raises(NotFoundError, match="no deployment 'ghost'"):
        router.force_open("ghost", 5)
    with pytest.raises(NotFoundError):
        router.view("ghost")


async def test_two_routers_over_one_state_store_agree_on_breakers_and_load():
    """The seam a shared (Redis) store plugs into: replicas that share router state see one breaker."""
    routes_a, local_a, _ = two_routes()
    routes_b, local_b, _ = two_routes()
    shared = InProcessRouterState(lambda name: CircuitBreaker(name, BreakerSettings(min_calls=2, window=4)))
    a = Router([Route(r.info, r.provider) for r in routes_a], state=shared, rng=random.Random(0), backoff_s=0.0)
    b = Router([Route(r.info, r.provider) for r in routes_b], state=shared, rng=random.Random(0), backoff_s=0.0)
    local_a.fail_with = ProviderConnectionError("down", deployment="local")
    for _ in range(2):  # local fails, cloud serves: two failures on replica a open the shared breaker
        assert (await a.complete(req())).served.failover_from == ("local",)
    assert b.breaker("local").state == "open"
    r = await b.complete(req())
    assert r.served.deployment == "cloud" and local_b.calls == 0  # replica b never tried it
    local_b.healthy = False
    await b.probe()
    assert not a.view("local").healthy  # a probe by one replica is seen by the other


async def test_classify_answers_carry_who_served():
    routes, local, cloud = two_routes()
    router = Router(routes, rng=random.Random(0))
    out = await router.classify(req(task=TaskKind.RANK), ["Yes", "No"])
    assert isinstance(out, LabelProbs) and dict(out) == {"Yes": 1.0, "No": 0.0}
    assert out.served.deployment == "cloud"  # the only deployment that can classify


# -- the composition root and the HTTP edge ------------------------------------------------------------
def service(tmp_path, **server):
    settings = service_settings(tmp_path, {"name": "cloud", "engine": "openai", "model": "gpt-4.1", "tier": 2})
    for k, v in server.items():
        setattr(settings.server, k, v)
    local, cloud = ScriptedProvider("local", "local answer"), ScriptedProvider("cloud", "cloud answer", local=False)
    comp = scripted_service(settings, {"local": local, "cloud": cloud}, telemetry=None)
    return settings, comp, local, cloud


def test_build_components_derives_deployments_from_the_adapters(tmp_path):
    settings, comp, local, cloud = service(tmp_path)
    views = {v.name: v.info for v in comp.router.deployments()}
    assert views["local"].local and not views["cloud"].local and views["cloud"].tier == 2
    assert views["cloud"].model == cloud.model and views["cloud"].context_window == cloud.capabilities.context_window
    assert views["local"].model_version and views["local"].model_version != views["cloud"].model_version
    assert comp.router.provider("local") is local  # telemetry off: the adapter itself, no wrapper


def test_the_gateway_honours_the_body_limit_and_renders_admin_errors(tmp_path):
    settings, comp, local, cloud = service(tmp_path, max_body_bytes=2048)
    body = {"model": "auto", "messages": [{"role": "user", "content": "x" * 5000}]}
    with TestClient(create_app(settings, comp, close_components=False), base_url="http://localhost") as c:
        r = c.post("/v1/chat/completions", json=body)
        assert r.status_code == 413 and "server.max_body_bytes" in r.json()["error"]["message"]
        assert c.post("/v1/completions", json={"model": "auto", "prompt": "x" * 5000}).status_code == 413
        assert c.post("/v1/embeddings", json={"input": "x" * 5000}).status_code == 413
        assert local.calls == 0
        for bad in ("abc", "nan", "inf", "-5"):
            r = c.post(f"/admin/breakers/local/open?seconds={bad}")
            assert r.status_code == 400 and "seconds" in r.json()["error"]["message"], bad
            assert r.json()["error"]["type"] == "invalid_request_error"
        r = c.post("/admin/breakers/ghost/open?seconds=5")
        assert r.status_code == 404 and "ghost" in r.json()["error"]["message"]
        assert c.get("/admin/breakers").status_code == 200
        ok = c.post("/v1/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]})
        assert ok.status_code == 200 and ok.headers["x-nlweb-route"].startswith("local; local-first")
        assert ok.headers["x-request-id"]  # the neutral middleware runs with telemetry off too


def test_an_escalated_quality_request_gets_an_ascii_route_header(tmp_path):
    """The quality strategy's reason says "≥"; the header is rendered ASCII-safe, not a 500 after the call."""
    settings, comp, local, cloud = service(tmp_path)
    body = {"model": "auto", "messages": [{"role": "user", "content": "Explain why, step by step, and compare " * 40}]}
    with TestClient(create_app(settings, comp, close_components=False), base_url="http://localhost") as c:
        r = c.post("/v1/chat/completions", json=body, headers={"x-nlweb-strategy": "quality"})
        s = c.post("/v1/chat/completions", json={**body, "stream": True}, headers={"x-nlweb-strategy": "quality"})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "cloud answer"
    assert r.headers["x-nlweb-route"].startswith("cloud; ") and r.headers["x-nlweb-route"].isascii()
    assert s.status_code == 200 and s.headers["x-nlweb-route"] == r.headers["x-nlweb-route"]


async def test_search_deployment_pins_the_pipelines_calls(tmp_path):
    settings = service_settings(tmp_path, {"name": "cloud", "engine": "openai", "model": "gpt-4.1"},
                                search_deployment="cloud")
    local, cloud = ScriptedProvider("local"), ScriptedProvider("cloud", "cloud summary.", local=False)
    comp = scripted_service(settings, {"local": local, "cloud": cloud}, telemetry=None)
    assert await comp.llm.write(TaskKind.SUMMARIZE, "Summarize: tea") == "cloud summary."
    assert cloud.calls == 1 and local.calls == 0  # local-first would have chosen local
    settings = load_settings(environ={"NLWEB_LOCAL_DATA_DIR": str(tmp_path)})
    settings.llm.search_deployment = "ghost"
    with pytest.raises(BadRequestError, match="'ghost' is not a deployment"):
        scripted_service(settings, {"local": ScriptedProvider("local")}, telemetry=None)


async def test_when_the_search_deployment_is_down_ask_falls_back_to_the_embedded_engine(tmp_path):
    """`llm.search_deployment` pins /ask's calls, but a deployment that cannot serve (down, breaker open)
    must not turn every answer into a similarity-only one while the embedded engine is healthy; a
    wrong-shaped answer from it is still its answer (not retried elsewhere)."""
    from nlweb_local.core.errors import ModelOutputError, ProviderConnectionError

    settings = service_settings(tmp_path, {"name": "cloud", "engine": "openai", "model": "gpt-4.1"},
                                search_deployment="cloud")
    local = ScriptedProvider("local", "local summary.", classify=True)
    cloud = ScriptedProvider("cloud", "cloud summary.", local=False, classify=True)
    comp = scripted_service(settings, {"local": local, "cloud": cloud}, telemetry=None)
    cloud.fail_with = ProviderConnectionError("connection refused", deployment="cloud")
    assert await comp.llm.write(TaskKind.SUMMARIZE, "Summarize: tea") == "local summary."
    probs = await comp.llm.classify(TaskKind.RANK, "Is tea a drink?", ["Yes", "No"])
    assert probs.served.deployment == "local" and sum(probs.probs.values()) == pytest.approx(1.0)
    comp.llm.admit()  # /ask is admitted: the embedded engine can take its calls
    assert local.calls >= 1 and cloud.calls >= 1
    cloud.fail_with = None
    comp.router.reset("cloud")
    assert await comp.llm.write(TaskKind.SUMMARIZE, "Summarize: tea") == "cloud summary."  # back when it is
    before = local.calls
    with pytest.raises(ModelOutputError):  # "cloud summary." is no {"score": ...} object: its answer, not retried
        await comp.llm.ask(TaskKind.RANK, "Score tea", {"type": "object", "properties": {"score": {"type": "integer"}},
                                                        "required": ["score"]})
    assert local.calls == before


async def test_an_embedding_only_deployment_is_never_offered_a_chat_call():
    from nlweb_local.providers.base import Capabilities

    embedder = ScriptedProvider("minilm")
    embedder.capabilities = Capabilities(context_window=256, embeddings=True, streaming=False, chat=False)
    chat = ScriptedProvider("chat", "an answer", local=False)
    router = Router([Route(DeploymentInfo("minilm", True), embedder), Route(DeploymentInfo("chat", False), chat)],
                    rng=random.Random(0))
    r = await router.complete(req("hi", max_tokens=10))  # local-first would have picked the local one
    assert r.served.deployment == "chat" and embedder.calls == 0
    assert (await router.embed(["abc"])).deployment == "minilm"
