"""The audit log through the real app: one row per audited request with who, what served it, tokens, cost,
status and latency; no content unless audit.log_content; the identity authentication leaves in the scope."""
from __future__ import annotations

import json
from dataclasses import dataclass

import httpx
import pytest
from starlette.middleware import Middleware

from nlweb_local.governance.audit import verify
from nlweb_local.providers.testing import ScriptedProvider
from nlweb_local.server.app import create_app
from nlweb_local.telemetry import build_telemetry
from stand_ins import scripted_service, service_settings


@dataclass(frozen=True)
class Identity:  # the shape authentication puts on scope["state"]["identity"]
    key_id: str
    name: str
    role: str
    team: str
    subject: str


class FakeAuth:
    """Stands in for the authentication middleware: a request with `x-test-user` gets that identity."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        for k, v in scope.get("headers", ()):
            if k == b"x-test-user":
                user = v.decode()
                scope["state"]["identity"] = Identity(f"k-{user}", f"{user}'s key", "user", "search", user)
        await self.app(scope, receive, send)


def app_with_audit(tmp_path, **audit):
    settings = service_settings(tmp_path, {"name": "cloud", "engine": "openai", "model": "gpt-4o-mini"})
    for k, v in audit.items():
        setattr(settings.audit, k, v)
    settings.llm.rounds = 1
    local, cloud = ScriptedProvider("local", "local says hi"), ScriptedProvider("cloud", "cloud answers", local=False)
    cloud.model = "gpt-4o-mini"  # priced by the shipped table
    tel = build_telemetry(settings, ledger=False)
    comp = scripted_service(settings, {"local": local, "cloud": cloud}, telemetry=tel)
    app = create_app(settings, comp, close_components=False)
    app.user_middleware.append(Middleware(FakeAuth))  # innermost, where authentication sits
    return app, comp, local


def chat(text, model="auto"):
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def rows(comp):
    comp.audit.flush()
    return [r for r in comp.audit.store.scan()]


async def test_one_row_per_audited_request_with_what_served_it(tmp_path):
    app, comp, local = app_with_audit(tmp_path)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
        r = await c.post("/v1/chat/completions", json=chat("secret question"), headers={"x-test-user": "alice"})
        assert r.status_code == 200
        r2 = await c.post("/v1/chat/completions", json=chat("to the cloud", model="cloud"),
                          headers={"x-nlweb-privacy": "any"})
        assert r2.status_code == 200
        bad = await c.post("/v1/chat/completions", json=chat("x", model="no-such-model"))
        assert bad.status_code == 404
        assert (await c.get("/health")).status_code == 200  # not audited
        assert (await c.get("/admin/breakers")).status_code == 200  # a read: not audited
        assert (await c.post("/admin/breakers/cloud/open")).status_code == 200  # a change: audited
    got = rows(comp)
    assert [(x.method, x.endpoint, x.status) for x in got] == [
        ("POST", "/v1/chat/completions", 200), ("POST", "/v1/chat/completions", 200),
        ("POST", "/v1/chat/completions", 404), ("POST", "/admin/breakers/cloud/open", 200)]
    first, second = got[0], got[1]
    assert first.request_id == r.headers["x-request-id"] and first.latency_s > 0
    assert (first.subject, first.key_id, first.name, first.role, first.team) == ("alice", "k-alice", "alice's key", "user", "search")
    assert first.deployment == "local" and first.route_reason and first.model == "auto" and first.privacy == "any"
    assert first.tokens_in == len("secret question") // 4 + 1 and first.tokens_out == 3
    assert first.content == ""  # data minimisation: no prompt, no answer
    assert "secret question" not in json.dumps([x._asdict() for x in got])
    assert second.deployment == "cloud" and second.role == "anonymous" and second.subject == ""
    assert second.cost_usd > 0 and first.cost_usd >= 0
    assert verify(comp.audit.store).ok
    await comp.close()


async def test_content_is_kept_only_with_log_content(tmp_path):
    app, comp, _ = app_with_audit(tmp_path, log_content=True, max_content_chars=300)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
        r = await c.post("/v1/chat/completions", json=chat("what is in the box?"), headers={"x-test-user": "bob"})
        assert r.status_code == 200
    (row,) = rows(comp)
    content = json.loads(row.content)
    assert "what is in the box?" in content["request"] and "local says hi" in content["answer"]
    n = comp.audit.store.erase(subject="bob")  # GDPR: the content goes with the identity
    assert n == 1 and all(not x.content for x in rows(comp) if x.kind == "request")
    assert verify(comp.audit.store).ok
    await comp.close()


async def test_ask_is_audited_with_its_llm_calls(tmp_path, embedder, store):
    from nlweb_local.ingest.pipeline import Ingestor
    from conftest import FIXTURE_SITE

    settings = service_settings(tmp_path)
    settings.search.llm_rank_limit = 2
    settings.server.autoload_demo = False
    Ingestor(embedder, store, settings.ingest, progress=False).ingest(FIXTURE_SITE, "fixture")
    comp = scripted_service(settings, {"local": ScriptedProvider("local", '{"score": 80, "description": "ok"}')},
                            embedder=embedder, store=store, telemetry=None)
    app = create_app(settings, comp, close_components=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as c:
        r = await c.get("/ask", params={"query": "trout fishing", "site": "fixture", "streaming": "false"})
        assert r.status_code == 200
    (row,) = rows(comp)
    assert row.endpoint == "/ask" and row.status == 200 and row.deployment == "local" and row.tokens_in > 0
    comp.audit.close()
    await comp.close()


def test_audit_off_builds_no_log_and_no_wrapper(tmp_path):
    settings = service_settings(tmp_path)
    settings.audit.enabled = False
    comp = scripted_service(settings, {"local": ScriptedProvider("local")}, telemetry=None)
    assert comp.audit is None and not (tmp_path / "audit.sqlite").exists()
    from nlweb_local.governance.audit_trail import AuditedProvider

    assert not isinstance(comp.gateway, AuditedProvider)


@pytest.mark.parametrize("method, path, expected", [
    ("POST", "/v1/chat/completions", True), ("GET", "/v1/models", True), ("GET", "/ask", True),
    ("POST", "/mcp", True), ("POST", "/chat/send", True), ("POST", "/admin/breakers/x/open", True),
    ("DELETE", "/admin/keys/k1", True), ("GET", "/admin/stats", False), ("GET", "/health", False),
    ("GET", "/metrics", False), ("OPTIONS", "/v1/chat/completions", False), ("GET", "/", False)])
def test_which_requests_are_audited(method, path, expected):
    from nlweb_local.governance.audit_middleware import audited

    assert audited(method, path) is expected


def test_a_trail_sums_its_calls_when_read_in_the_order_they_ended():
    """Completions are kept as they ended and summed when the row is made (on the writer thread); a
    stream's note in between keeps the deployments in order of first use; past the pending bound they
    are summed at once, and nothing is lost."""
    from nlweb_local.core.types import CallContext, ChatRequest, ChatResponse, Message, Privacy, Served, Usage
    from nlweb_local.governance.audit_trail import _MAX_PENDING, RequestTrail

    def call(deployment, tin, tout, privacy=Privacy.ANY):
        req = ChatRequest([Message("user", "x" * 40)], model="auto", context=CallContext(privacy=privacy))
        return req, ChatResponse("y" * 8, usage=Usage(tin, tout), deployment=deployment,
                                 served=Served(deployment, reason=f"chose {deployment}"))

    trail = RequestTrail()
    trail.completed(*call("a", 10, 2))
    trail.note(call("b", 0, 0)[0], Served("b", reason="stream"), 5, 1)  # a stream ended
    trail.completed(*call("c", 7, 3, Privacy.LOCAL_ONLY))
    trail.completed(*call("a", 1, 1))
    assert trail.pending and trail.calls == 2  # (the stream's note summed the completion before it)
    t = trail.settled()
    assert (t.calls, t.tokens_in, t.tokens_out) == (4, 23, 7)
    assert t.deployments == ["a", "b", "c"] and t.reason == "chose a" and t.model == "auto"
    assert t.privacy == "local_only" and not t.pending

    many = RequestTrail()
    for i in range(_MAX_PENDING * 3 + 1):
        many.completed(*call(f"d{i % 3}", 2, 1))
    assert len(many.pending) <= _MAX_PENDING
    assert many.settled().calls == _MAX_PENDING * 3 + 1 and many.tokens_in == 2 * (_MAX_PENDING * 3 + 1)
    assert RequestTrail().settled().deployments == [] and RequestTrail().privacy == ""


async def test_the_row_s_status_is_the_one_the_response_started_with():
    """The audit middleware reads the status the request-id middleware saw (it does not wrap the
    response itself): a refusal's status, and 500 for a request that raised before answering."""
    from nlweb_local.governance.audit_middleware import AuditMiddleware
    from nlweb_local.telemetry.context import RequestIdMiddleware

    queued = []

    class Log:
        def record_later(self, make, args):
            queued.append(make(*args))

    async def refuse(scope, receive, send):
        await send({"type": "http.response.start", "status": 429, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def crash(scope, receive, send):
        raise RuntimeError("boom")

    async def send(message):
        pass

    for inner, expected, outer in ((refuse, 429, True), (crash, 500, True), (refuse, 429, False), (crash, 500, False)):
        app = AuditMiddleware(inner, audit=Log())  # without the request-id middleware: it notes the status itself
        app = RequestIdMiddleware(app) if outer else app
        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}
        try:
            await app(scope, None, send)
        except RuntimeError:
            assert expected == 500
        assert queued[-1].status == expected and queued[-1].role == "anonymous"
    assert len(queued) == 4


async def test_the_recorder_audits_through_the_request_id_middleware_without_a_layer_of_its_own():
    """With `audit.log_content` off the audit log rides on the request-id middleware (`AuditRecorder`): the
    row has the response's status (500 when the app raised before answering), the request id the response
    carried, the identity authentication left on the scope, and the LLM calls noted on the request's trail;
    an unaudited path leaves no row and no trail."""
    from nlweb_local.core.types import ChatRequest, ChatResponse, Message, Served, Usage
    from nlweb_local.governance.audit_middleware import AuditRecorder
    from nlweb_local.governance.audit_trail import AuditedProvider
    from nlweb_local.governance.identity import Identity, Role
    from nlweb_local.providers.testing import ScriptedProvider
    from nlweb_local.telemetry.context import SPEND, RequestIdMiddleware

    queued, sent, trails = [], [], []

    class Log:
        def record_later(self, make, args):
            queued.append(make(*args))

    class Engine(ScriptedProvider):
        async def complete(self, request):
            return ChatResponse("hello", usage=Usage(11, 3), deployment="local", served=Served("local", reason="local-first"))

    audited_engine = AuditedProvider(Engine("local"))

    async def answer(scope, receive, send):
        trails.append(SPEND.get().trail)
        scope["state"]["identity"] = Identity(key_id="k1", name="alice's key", role=Role.USER, team="search")
        await audited_engine.complete(ChatRequest([Message("user", "hi")], model="auto"))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def crash(scope, receive, send):
        raise RuntimeError("boom")

    async def send(message):
        sent.append(message)

    recorder = AuditRecorder(Log())
    app = RequestIdMiddleware(answer, recorder=recorder)
    await app({"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}, None, send)
    row = queued[-1]
    rid = dict(sent[0]["headers"])[b"x-request-id"].decode()
    assert (row.status, row.request_id, row.role, row.key_id, row.team) == (200, rid, "user", "k1", "search")
    assert (row.tokens_in, row.tokens_out, row.deployment, row.route_reason) == (11, 3, "local", "local-first")
    with pytest.raises(RuntimeError):
        await RequestIdMiddleware(crash, recorder=recorder)(
            {"type": "http", "method": "POST", "path": "/ask", "headers": []}, None, send)
    assert queued[-1].status == 500 and queued[-1].endpoint == "/ask" and queued[-1].role == "anonymous"
    await RequestIdMiddleware(answer, recorder=recorder)({"type": "http", "method": "GET", "path": "/sites",
                                                           "headers": [], "state": {}}, None, send)
    assert len(queued) == 2 and trails[-1] is None  # /sites is not audited: no row, no trail


def test_a_one_call_request_s_row_is_the_row_its_summed_trail_gives():
    """The writer makes the row of a request with one completion without summing its trail (the common
    case, written out); it must be the row the summed trail gives, with and without reported usage, a
    route reason, a failover and a privacy class."""
    from nlweb_local.core.types import CallContext, ChatRequest, ChatResponse, Message, Privacy, Served, Usage
    from nlweb_local.governance.audit_middleware import AuditRecorder
    from nlweb_local.governance.audit_trail import RequestTrail
    from nlweb_local.providers.wrapper import call_tokens

    rows = AuditRecorder(None)
    answers = [
        ChatResponse("y" * 30, usage=Usage(11, 4), deployment="local", served=Served("local", reason="local-first")),
        ChatResponse("y" * 30, usage=Usage(0, 0), deployment="cloud",
                     served=Served("cloud", reason="cheapest", failover_from=("local", "other"))),
        ChatResponse("y" * 30, usage=Usage(0, 0), deployment="raw"),  # no Served: the answer's own deployment
    ]
    for privacy in (Privacy.ANY, Privacy.LOCAL_ONLY):
        for out in answers:
            req = ChatRequest([Message("user", "x" * 41)], model="auto", context=CallContext(privacy=privacy))
            fast, summed = RequestTrail(), RequestTrail()
            fast.completed(req, out)  # one pending completion: the written-out path
            summed.note(req, out.served, *call_tokens(out.usage, req, len(out.content)), out.deployment)  # summed
            args = (1.0, "r1", "POST", "/v1/chat/completions", [], 200, 0.01, None)
            assert rows._row(*args, fast, 0.5, None) == rows._row(*args, summed, 0.5, None)
            row = rows._row(*args, fast, 0.5, None)
            assert row.privacy == privacy.value and row.deployment == (out.served or out).deployment
    assert rows._row(1.0, "r", "GET", "/v1/models", [(b"x-nlweb-privacy", b"local_only")], 200, 0.0, None, None,
                     0.0, None).privacy == "local_only"  # no call: the header's class
