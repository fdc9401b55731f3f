"""OpenTelemetry tracing (telemetry.tracing) through the real app: two OpenAI-compatible deployments on
the wire-faithful fake, built by the same composition code as `serve` (build_telemetry, build_components),
spans caught by the SDK's in-memory exporter. And with tracing off: no span, no OpenTelemetry at all.
"""
import subprocess
import sys
import textwrap

import httpx
import pytest
import pytest_asyncio

from fakes.openai_fake import OpenAIFake
from nlweb_local.config.settings import DeploymentSettings, load_settings
from nlweb_local.server.app import create_app
from nlweb_local.server.components import build_components
from nlweb_local.telemetry import build_telemetry
from stand_ins import NoEmbedder, NoStore

pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402


def settings_for(tmp_path, fake_url: str, *, tracing: bool):
    s = load_settings(environ={"NLWEB_LOCAL_DATA_DIR": str(tmp_path),
                               "NLWEB_LOCAL_TELEMETRY__TRACING": "true" if tracing else "false"})
    s.llm.embedded_enabled = False
    s.llm.deployments = [
        DeploymentSettings(name=name, engine="openai", url=fake_url + "/v1", model="fake-model", api_key="sk-test",
                           price_in_per_m=1.0, price_out_per_m=2.0, location="cloud")  # (a loopback stand-in for a cloud API)
        for name in ("primary", "backup")]
    s.llm.breaker.min_calls = 1000  # one injected failure must not open a breaker
    return s


async def app_client(settings, exporter=None):
    tel = build_telemetry(settings, span_exporters=(exporter,) if exporter is not None else ())
    comp = build_components(settings, embedder=NoEmbedder(), store=NoStore(), telemetry=tel)
    app = create_app(settings, comp, close_components=False)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost"), tel, comp


@pytest.fixture()
def fake():
    with OpenAIFake() as f:
        yield f


@pytest_asyncio.fixture(loop_scope="function")
async def traced(tmp_path, fake):
    exporter = InMemorySpanExporter()
    client, tel, comp = await app_client(settings_for(tmp_path, fake.url, tracing=True), exporter)
    async with client:
        yield client, exporter, tel, fake, comp
    await comp.close()
    tel.close()


def chat(text, **extra):
    return {"model": "auto", "messages": [{"role": "user", "content": text}], "max_tokens": 16, **extra}


def tree(exporter):
    """(server span, route span, [engine spans]) of the one request the exporter holds, checking parentage."""
    spans = exporter.get_finished_spans()
    server = [s for s in spans if s.kind == SpanKind.SERVER]
    assert len(server) == 1, [s.name for s in spans]
    server = server[0]
    route = [s for s in spans if s.name == "nlweb.route"]
    assert len(route) == 1
    route = route[0]
    engines = sorted((s for s in spans if s.name.startswith("nlweb.llm ")), key=lambda s: s.start_time)
    assert len(spans) == 2 + len(engines)
    assert server.parent is None or server.parent.is_remote
    assert route.parent.span_id == server.context.span_id
    for e in engines:
        assert e.parent.span_id == route.context.span_id and e.kind == SpanKind.CLIENT
    assert len({s.context.trace_id for s in spans}) == 1
    return server, route, engines


async def ledger_rows(tel):
    assert tel.ledger.flush()
    return tel.ledger.query()


async def test_span_tree_attributes_and_request_id_follow_a_chat_completion(traced):
    client, exporter, tel, fake, _ = traced
    r = await client.post("/v1/chat/completions", json=chat("Name a colour."), headers={"x-request-id": "trace-1"})
    assert r.status_code == 200 and r.headers["x-request-id"].startswith("trace-1/")  # namespaced: <caller's>/<server's>
    server, route, engines = tree(exporter)

    assert server.name == "POST /v1/chat/completions"
    assert server.attributes["nlweb.request_id"] == r.headers["x-request-id"]
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["http.request.method"] == "POST"

    a = route.attributes
    assert a["nlweb.request_id"] == r.headers["x-request-id"]
    assert a["nlweb.route.strategy"] == "local-first"
    assert list(a["nlweb.route.candidates"]) == ["primary", "backup"]
    assert a["nlweb.route.reason"] in r.headers["x-nlweb-route"]
    assert a["nlweb.route.deployment"] == "primary" and list(a["nlweb.route.fallbacks"]) == []
    assert a["nlweb.outcome"] == "ok"

    (call,) = engines
    e = call.attributes
    usage = r.json()["usage"]
    assert e["nlweb.deployment"] == "primary" and e["nlweb.engine"] == "openai"
    assert e["gen_ai.request.model"] == "fake-model" and e["nlweb.task"] == "chat" and e["nlweb.local"] is False
    assert e["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert e["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert e["nlweb.outcome"] == "ok" and e["nlweb.request_id"] == r.headers["x-request-id"]
    (event,) = [ev for ev in call.events if ev.name == "nlweb.ledger_row"]
    assert event.attributes["nlweb.request_id"] == r.headers["x-request-id"]

    (row,) = await ledger_rows(tel)
    assert row.request_id == r.headers["x-request-id"] == e["nlweb.request_id"]
    assert (row.deployment, row.tokens_in, row.tokens_out) == ("primary", usage["prompt_tokens"],
                                                                usage["completion_tokens"])


async def test_failover_shows_as_a_failed_and_a_served_engine_span_under_one_route(traced):
    client, exporter, tel, fake, _ = traced
    fake.fault("overloaded")  # the next chat request (primary's) gets a 503
    r = await client.post("/v1/chat/completions", json=chat("hi"))
    assert r.status_code == 200 and "after failover from primary" in r.headers["x-nlweb-route"]
    rid = r.headers["x-request-id"]
    server, route, engines = tree(exporter)
    assert [s.attributes["nlweb.deployment"] for s in engines] == ["primary", "backup"]
    failed, served = engines
    assert failed.status.status_code == StatusCode.ERROR and failed.attributes["nlweb.outcome"] != "ok"
    assert served.attributes["nlweb.outcome"] == "ok"
    assert route.attributes["nlweb.route.deployment"] == "backup"
    assert list(route.attributes["nlweb.route.fallbacks"]) == ["primary"]
    assert {s.attributes["nlweb.request_id"] for s in (server, route, *engines)} == {rid}
    rows = await ledger_rows(tel)
    assert [(x.request_id, x.deployment, bool(x.error)) for x in rows] == [(rid, "primary", True), (rid, "backup", False)]


async def test_streamed_completion_is_traced_to_its_end(traced, caplog):
    client, exporter, tel, fake, _ = traced
    r = await client.post("/v1/chat/completions", json=chat("stream it", stream=True,
                                                             stream_options={"include_usage": True}))
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
    server, route, (call,) = tree(exporter)
    assert server.end_time >= route.end_time >= call.end_time
    assert call.attributes["nlweb.outcome"] == "ok" and call.attributes["nlweb.ttft_s"] >= 0
    assert call.attributes["gen_ai.usage.output_tokens"] > 0
    assert route.attributes["nlweb.route.deployment"] == "primary"
    (row,) = await ledger_rows(tel)
    assert row.request_id == r.headers["x-request-id"] == server.attributes["nlweb.request_id"]
    exporter.clear()

    fake.fault("mid_stream")  # the engine breaks after the answer has started: no failover, an error span
    r = await client.post("/v1/chat/completions", json=chat("stream it", stream=True))
    assert "stream_interrupted" in r.text
    server, route, (call,) = tree(exporter)
    assert call.status.status_code == StatusCode.ERROR and route.status.status_code == StatusCode.ERROR
    assert route.attributes["nlweb.outcome"] == "StreamInterruptedError"
    assert "Failed to detach context" not in caplog.text  # the span is never current across a yield


async def test_request_id_and_traceparent_from_the_caller(traced):
    client, exporter, tel, fake, _ = traced
    r = await client.post("/v1/chat/completions", json=chat("hi"), headers={"x-request-id": "no spaces allowed"})
    made = r.headers["x-request-id"]
    assert made != "no spaces allowed"  # not a plain token: replaced by one the server makes
    server, _, _ = tree(exporter)
    assert server.attributes["nlweb.request_id"] == made
    exporter.clear()

    r = await client.post("/v1/chat/completions", json=chat("hi"), headers={"x-request-id": "x" * 65})
    assert r.headers["x-request-id"] != "x" * 65
    exporter.clear()

    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    await client.post("/v1/chat/completions", json=chat("hi"), headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
    server, _, _ = tree(exporter)
    assert f"{server.context.trace_id:032x}" == trace_id and f"{server.parent.span_id:016x}" == parent_id


async def test_only_the_request_paths_get_spans(traced):
    client, exporter, tel, fake, _ = traced
    assert (await client.get("/metrics")).status_code == 200
    assert (await client.get("/health")).status_code == 200
    assert exporter.get_finished_spans() == ()
    assert (await client.get("/v1/models")).status_code == 200
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET /v1/models" and span.attributes["http.response.status_code"] == 200
    exporter.clear()
    r = await client.get("/ask")  # /ask without a query: 400, traced all the same
    assert r.status_code == 400
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET /ask" and span.attributes["http.response.status_code"] == 400
    assert span.attributes["nlweb.request_id"] == r.headers["x-request-id"]


async def test_the_search_pipelines_llm_calls_get_route_and_engine_spans(traced):
    """/ask's LLM port (StructuredLLM over the traced router): classify and complete calls are traced."""
    client, exporter, tel, fake, comp = traced
    from nlweb_local.core.types import TaskKind

    llm = comp.llm  # the port over the traced router, as build_components hands it to the pipeline
    out = await llm.write(TaskKind.SUMMARIZE, "Summarize: hello")
    assert out
    spans = exporter.get_finished_spans()
    route = [s for s in spans if s.name == "nlweb.route"]
    assert len(route) == 1 and route[0].attributes["nlweb.task"] == "summarize"
    (call,) = [s for s in spans if s.name.startswith("nlweb.llm ")]
    assert call.parent.span_id == route[0].context.span_id and call.attributes["nlweb.task"] == "summarize"


async def test_tracing_off_creates_no_span_and_no_wrapper(tmp_path, fake):
    exporter = InMemorySpanExporter()
    client, tel, comp = await app_client(settings_for(tmp_path, fake.url, tracing=False), exporter)
    async with client:
        r = await client.post("/v1/chat/completions", json=chat("hi"))
        assert r.status_code == 200 and r.headers["x-request-id"]
    assert tel.tracing is None
    # no TracedRouter, no TracedProvider: the plain path (the audit trail, governance, the request's priority,
    # the privacy floor, the A/B split, the response cache, the canary split, the router)
    chain, p = [], comp.gateway
    while p is not None:
        chain.append(type(p).__name__)
        p = getattr(p, "inner", None)
    assert chain == ["AuditedProvider", "GovernedProvider", "RequestPriority", "PrivacyFloor", "ExperimentSplit", "ResponseCache",
                     "CanarySplit", "Router"], chain
    assert all(type(comp.router.provider(n)).__name__ == "MeteredProvider" for n in comp.router.names())
    assert exporter.get_finished_spans() == ()
    await comp.close()
    tel.close()


def test_tracing_off_never_imports_opentelemetry(tmp_path):
    """In a fresh interpreter: build the app as `serve` does (tracing off), answer a request; no
    `opentelemetry` module may have been imported."""
    code = textwrap.dedent(f"""
        import asyncio, sys
        import httpx
        from nlweb_local.config.settings import load_settings
        from nlweb_local.providers.testing import ScriptedProvider
        from nlweb_local.server.app import create_app
        from nlweb_local.server.components import build_components
        from nlweb_local.telemetry import build_telemetry

        class NoStore:
            def sites(self): return []
            def count(self): return 0

        async def main():
            s = load_settings(environ={{"NLWEB_LOCAL_DATA_DIR": {str(tmp_path)!r}}})
            tel = build_telemetry(s)
            comp = build_components(s, providers={{"local": ScriptedProvider("local", "hello")}}, embedder=None,
                                    store=NoStore(), telemetry=tel)
            app = create_app(s, comp, close_components=False)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as c:
                r = await c.post("/v1/chat/completions", json={{"model": "auto", "messages": [{{"role": "user", "content": "hi"}}]}})
                assert r.status_code == 200, r.text
            tel.close()
            print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))

        asyncio.run(main())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


async def test_tracing_on_without_the_sdk_is_a_warning_and_no_spans(tmp_path, fake, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # as if opentelemetry-sdk were not installed
    client, tel, comp = await app_client(settings_for(tmp_path, fake.url, tracing=True))
    assert tel.tracing is None and "nlweb-local[tracing]" in caplog.text
    async with client:
        assert (await client.post("/v1/chat/completions", json=chat("hi"))).status_code == 200
    await comp.close()
    tel.close()


def test_otlp_endpoint_gets_the_traces_path():
    from nlweb_local.telemetry.tracing import otlp_traces_url

    assert otlp_traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert otlp_traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert otlp_traces_url("https://x/v1/traces") == "https://x/v1/traces"
