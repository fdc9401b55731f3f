"""The HTTP edge on a hostile network: trusted Host names (DNS rebinding), CORS only for listed origins,
cross-site writes refused (CSRF), 503 bodies without upstream URLs or exception text, caller request ids
namespaced, /ask queries out of the INFO log unless asked for, `config show` with secrets masked."""
from __future__ import annotations

import logging

import httpx
import pytest

from nlweb_local.core.errors import ProviderConnectionError, RateLimitedError
from nlweb_local.providers.testing import FunctionLLM, ScriptedProvider
from nlweb_local.server.app import create_app
from stand_ins import scripted_service, service_settings


def make(tmp_path, **server):
    settings = service_settings(tmp_path, {"name": "cloud", "engine": "openai", "model": "gpt-4o-mini",
                                           "url": "http://10.1.2.3:9999/v1"})
    settings.llm.rounds = 1
    settings.audit.enabled = False
    for k, v in server.items():
        setattr(settings.server, k, v)
    local, cloud = ScriptedProvider("local", "hi there"), ScriptedProvider("cloud", "cloud hi", local=False)
    comp = scripted_service(settings, {"local": local, "cloud": cloud}, telemetry=None,
                            llm=FunctionLLM(lambda t, p, s: '{"score": 80, "description": "x"}'))
    return create_app(settings, comp, close_components=False), local, cloud


def client(app, base="http://localhost:8000"):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base)


CHAT = {"model": "auto", "messages": [{"role": "user", "content": "hello"}]}


# -- trusted hosts ----------------------------------------------------------------------------------

@pytest.mark.parametrize("host, ok", [
    ("localhost:8000", True), ("127.0.0.1:8000", True), ("[::1]:8000", True), ("LOCALHOST", True),
    ("attacker.example", False), ("attacker.example:8000", False), ("localhost.attacker.example", False),
    ("nlweb.corp.example", True), ("a.b.internal.example:443", True), ("internal.example.evil", False)])
async def test_only_trusted_host_names_are_served(tmp_path, host, ok):
    app, *_ = make(tmp_path, allowed_hosts=["nlweb.corp.example", "*.internal.example"])
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", json=CHAT, headers={"host": host})
        if ok:
            assert r.status_code == 200
        else:
            assert r.status_code == 400 and "server.allowed_hosts" in r.json()["error"]["message"]
        r = await c.get("/sites", headers={"host": host})
        assert r.status_code == (200 if ok else 400)
        if not ok:
            assert "server.allowed_hosts" in r.json()["error"]  # (NLWeb's error shape on NLWeb endpoints)


async def test_the_configured_listen_host_and_a_wildcard_are_served(tmp_path):
    app, *_ = make(tmp_path, host="192.168.1.7")
    async with client(app) as c:
        assert (await c.get("/health", headers={"host": "192.168.1.7:8000"})).status_code == 200
        assert (await c.get("/health", headers={"host": "10.0.0.1"})).status_code == 400
    app, *_ = make(tmp_path, allowed_hosts=["*"])
    async with client(app) as c:
        assert (await c.get("/health", headers={"host": "anything.example"})).status_code == 200


# -- CSRF and CORS ----------------------------------------------------------------------------------

async def test_a_cross_site_form_post_cannot_open_a_breaker_or_spend_tokens(tmp_path):
    app, local, _ = make(tmp_path)
    async with client(app) as c:
        evil = {"origin": "https://attacker.example", "content-type": "application/x-www-form-urlencoded"}
        r = await c.post("/admin/breakers/local/open", headers=evil)
        assert r.status_code == 403 and "CSRF" in r.json()["error"]["message"]
        assert (await c.get("/admin/breakers")).json()  # still closed:
        assert all(b["state"] == "closed" for b in (await c.get("/admin/breakers")).json()["breakers"])
        r = await c.post("/v1/chat/completions", json=CHAT, headers={"origin": "https://attacker.example"})
        assert r.status_code == 403 and local.calls == 0
        r = await c.post("/ask", data={"query": "x"}, headers={"sec-fetch-site": "cross-site"})
        assert r.status_code == 403 and "server.cors_origins" in r.json()["error"]
        # the server's own page, and clients that are not browsers, pass
        r = await c.post("/admin/breakers/local/open", headers={"origin": "http://localhost:8000"})
        assert r.status_code == 200
        r = await c.post("/admin/breakers/local/reset", headers={"sec-fetch-site": "same-origin"})
        assert r.status_code == 200
        assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_cors_only_for_listed_origins(tmp_path):
    app, *_ = make(tmp_path)
    async with client(app) as c:  # none listed: no CORS at all
        r = await c.options("/v1/chat/completions", headers={"origin": "https://intranet.example",
                                                             "access-control-request-method": "POST"})
        assert "access-control-allow-origin" not in r.headers
    app, *_ = make(tmp_path, cors_origins=["https://intranet.example"])
    async with client(app) as c:
        pre = {"access-control-request-method": "POST", "access-control-request-headers": "content-type"}
        r = await c.options("/v1/chat/completions", headers={"origin": "https://intranet.example", **pre})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://intranet.example"
        r = await c.options("/v1/chat/completions", headers={"origin": "https://attacker.example", **pre})
        assert r.headers.get("access-control-allow-origin") != "https://attacker.example"
        r = await c.post("/v1/chat/completions", json=CHAT, headers={"origin": "https://intranet.example"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://intranet.example"
        assert "x-request-id" in r.headers["access-control-expose-headers"]
        r = await c.post("/v1/chat/completions", json=CHAT, headers={"origin": "https://attacker.example"})
        assert r.status_code == 403


# -- what error bodies tell -------------------------------------------------------------------------

async def test_503_bodies_do_not_relay_upstream_urls_or_exception_text(tmp_path, caplog):
    app, local, cloud = make(tmp_path)
    secret = "cloud: cannot reach http://10.1.2.3:9999/v1/chat/completions: ClientConnectorError(Errno 111)"
    local.fail_with = ProviderConnectionError("local: cannot reach http://127.0.0.1:8081 (refused)", deployment="local")
    cloud.fail_with = ProviderConnectionError(secret, deployment="cloud")
    with caplog.at_level(logging.WARNING, logger="nlweb_local.server.errors"):
        async with client(app) as c:
            r = await c.post("/v1/chat/completions", json=CHAT)
            s = await c.post("/v1/chat/completions", json={**CHAT, "stream": True})
    for resp in (r, s):
        assert resp.status_code == 503
        body = resp.text
        assert "10.1.2.3" not in body and "127.0.0.1" not in body and "Errno" not in body and "http://" not in body
        assert "local: failed" in body and "cloud: failed" in body  # which deployments, not their internals
    assert "10.1.2.3" in caplog.text and r.headers["x-request-id"] in caplog.text  # the whole story, in the log


async def test_an_upstream_429_is_summarised_but_a_local_limit_is_told(tmp_path):
    from nlweb_local.server.errors import openai_error_body

    upstream = RateLimitedError("cloud: upstream 429: Rate limit reached for org-abc123 on tokens per min",
                                deployment="cloud", body='{"error": "org-abc123"}', retry_after=2)
    assert "org-abc123" not in str(openai_error_body(upstream))
    mine = RateLimitedError("key k1 is over its limit of 10 requests/minute; it resets in 12 s", retry_after=12)
    assert openai_error_body(mine)["error"]["message"] == mine.message


# -- request ids ------------------------------------------------------------------------------------

async def test_a_caller_chosen_request_id_is_namespaced_and_unique(tmp_path):
    from nlweb_local.telemetry import build_telemetry

    settings = service_settings(tmp_path)
    settings.audit.enabled = False
    tel = build_telemetry(settings)
    comp = scripted_service(settings, {"local": ScriptedProvider("local")}, telemetry=tel)
    app = create_app(settings, comp, close_components=False)
    async with client(app) as c:
        ids = [(await c.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "same"})).headers["x-request-id"]
               for _ in range(2)]
    assert ids[0] != ids[1] and all(i.startswith("same/") for i in ids)
    tel.ledger.flush()
    assert sorted(r.request_id for r in tel.ledger.query()) == sorted(ids)  # no row under the bare caller's id
    tel.close()


# -- query logging ----------------------------------------------------------------------------------

@pytest.mark.parametrize("log_queries", [False, True])
async def test_ask_queries_reach_the_info_log_only_when_asked(tmp_path, caplog, log_queries):
    app, *_ = make(tmp_path, log_queries=log_queries)
    with caplog.at_level(logging.INFO):
        async with client(app) as c:
            await c.get("/ask", params={"query": "my private medical question", "streaming": "false"})
    assert ("my private medical question" in caplog.text) is log_queries
    assert "ask " in caplog.text  # the request itself is still logged


# -- config show ------------------------------------------------------------------------------------

def test_config_show_masks_inline_secrets(tmp_path, capsys):
    from nlweb_local.cli.main import main

    config = tmp_path / "c.yaml"
    config.write_text(f"""data_dir: {tmp_path}
llm:
  deployments:
    - {{name: cloud, engine: openai, model: gpt-4o-mini, api_key: sk-live-SECRET1, api_key_env: OPENAI_API_KEY}}
store: {{api_key: qdrant-SECRET2}}
cache_store: {{redis_url: "redis://default:SECRET3@cache.internal:6379/0"}}
audit: {{database_url: "postgresql://audit:SECRET4@db.internal/audit"}}
telemetry:
  alerts: {{webhooks: ["https://hooks.slack.com/services/T000/B000/SECRET5"]}}
""")
    assert main(["--config", str(config), "config", "show"]) == 0
    out = capsys.readouterr().out
    for n in range(1, 6):
        assert f"SECRET{n}" not in out
    assert "api_key_env: OPENAI_API_KEY" in out  # a variable's name is not a secret
    assert "redis://default:***@cache.internal:6379/0" in out and "https://hooks.slack.com/***" in out
