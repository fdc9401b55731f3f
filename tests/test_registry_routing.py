"""Registry aliases in the running gateway (in process, scripted engines): an alias switch or a rollback
applies to the next request without a restart, a request in flight finishes on the version it started
with, x-nlweb-route and the ledger name the version, and switching under concurrent load fails nothing."""
from __future__ import annotations

import asyncio
import hashlib
import json

import httpx
import pytest
import pytest_asyncio

from nlweb_local.core.errors import BadRequestError
from nlweb_local.providers.testing import ScriptedProvider
from nlweb_local.registry import build_registry
from nlweb_local.server.app import create_app
from nlweb_local.telemetry import build_telemetry
from stand_ins import scripted_service, service_settings

SERVED = ({"name": "smol-v1", "engine": "llama_cpp", "serves": "smol@v1"},
          {"name": "smol-v2", "engine": "llama_cpp", "serves": "smol@v2"})


def registered(tmp_path, settings, versions=("v1", "v2"), alias="v1"):
    """Register smol@<versions> (small files) and point chat-default at smol@<alias>, as the CLI would."""
    registry = build_registry(settings)
    try:
        for v in versions:
            path = tmp_path / f"smol-{v}.gguf"
            path.write_bytes(f"weights {v}".encode())
            registry.register("smol", v, file=path, by="ci")
        if alias:
            registry.set_alias("chat-default", "smol", alias, by="ci")
    finally:
        registry.close()


def settings_for(tmp_path, **llm):
    s = service_settings(tmp_path, *SERVED, embedded_enabled=False, **llm)
    s.registry.poll_s = 0.05
    s.llm.rounds = 1
    return s


@pytest_asyncio.fixture(loop_scope="function")
async def gateway(tmp_path):
    settings = settings_for(tmp_path)
    registered(tmp_path, settings)
    tel = build_telemetry(settings)
    engines = {"smol-v1": ScriptedProvider("smol-v1", "one says hi"), "smol-v2": ScriptedProvider("smol-v2", "two says hi")}
    comp = scripted_service(settings, engines, telemetry=tel)
    app = create_app(settings, comp, close_components=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
        yield client, comp, engines, settings
    await comp.close()
    tel.close()


def chat(text="hello", model="chat-default", **extra):
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def ask(client, **kw):
    r = await client.post("/v1/chat/completions", json=chat(**kw))
    assert r.status_code == 200, r.text
    return r.headers["x-nlweb-route"], r.json()["choices"][0]["message"]["content"]


async def test_an_alias_switch_and_a_rollback_apply_to_the_next_request(gateway):
    client, comp, engines, _ = gateway
    route, text = await ask(client)
    assert route.startswith("smol-v1;") and route.endswith("; version=smol@v1") and text == "one says hi"
    comp.registry.promote("smol", "v2", alias="chat-default", by="release-bot")
    route, text = await ask(client)
    assert route.startswith("smol-v2;") and route.endswith("; version=smol@v2") and text == "two says hi"
    comp.registry.rollback("chat-default", by="oncall")  # one command
    route, text = await ask(client)
    assert route.endswith("; version=smol@v1") and text == "one says hi"
    assert [(c.action, c.version, c.by) for c in comp.registry.history("chat-default")] == [
        ("set", "v1", "ci"), ("promote", "v2", "release-bot"), ("rollback", "v1", "oncall")]
    # a version by name, and the deployment by name, still work
    assert (await ask(client, model="smol@v2"))[0].startswith("smol-v2;")
    assert (await ask(client, model="smol-v1"))[0].startswith("smol-v1;")


async def test_the_ledger_names_the_version_that_served(gateway):
    client, comp, _, _ = gateway
    await ask(client)
    comp.registry.promote("smol", "v2", alias="chat-default", by="ci")
    await ask(client)
    ledger = comp.telemetry.ledger
    assert ledger.flush()
    assert [(r.deployment, r.model_version) for r in ledger.query()] == [("smol-v1", "smol@v1"), ("smol-v2", "smol@v2")]


async def test_a_change_made_elsewhere_is_picked_up_by_polling(gateway, tmp_path):
    client, comp, _, settings = gateway
    other = build_registry(settings)  # another process (the CLI, another replica) on the same database
    other.promote("smol", "v2", alias="chat-default", by="cli")
    other.close()
    routes = []
    for _ in range(200):  # each request may start a poll (every registry.poll_s); the snapshot updates off-path
        routes.append((await ask(client))[0])
        if routes[-1].endswith("smol@v2"):
            break
        await asyncio.sleep(0.02)
    assert routes[-1].endswith("version=smol@v2"), routes[-3:]
    assert comp.registry.view.polls >= 1


async def test_a_request_in_flight_finishes_on_the_version_it_started_with(gateway):
    client, comp, engines, _ = gateway
    engines["smol-v1"].text = "one " * 30
    engines["smol-v1"].token_delay_s = 0.01
    async with client.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as r:
        assert r.status_code == 200 and r.headers["x-nlweb-route"].endswith("version=smol@v1")
        lines = r.aiter_lines()
        first = await lines.__anext__()  # the stream has started on v1
        comp.registry.promote("smol", "v2", alias="chat-default", by="ci")
        next_route, next_text = await ask(client)  # meanwhile the next request goes to v2
        rest = [line async for line in lines]
    events = [line[6:] for line in [first, *rest] if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == engines["smol-v1"].text  # the whole answer, from v1
    assert next_route.endswith("version=smol@v2") and next_text == "two says hi"


async def test_alias_switches_under_concurrent_load_fail_no_request(gateway):
    client, comp, engines, _ = gateway
    for e, word in zip(engines.values(), ("alpha", "bravo")):
        e.token_delay_s = 0.002
        e.text = f"{word} says hi"
    stop = asyncio.Event()
    switches = 0

    async def switch():
        nonlocal switches
        target = "v2"
        while not stop.is_set():
            await asyncio.to_thread(comp.registry.promote, "smol", target, alias="chat-default", by="ci")
            switches += 1
            target = "v1" if target == "v2" else "v2"
            await asyncio.sleep(0.005)

    async def one(i):
        r = await client.post("/v1/chat/completions", json=chat(f"question {i}", stream=i % 2 == 0))
        return r.status_code, r.headers.get("x-nlweb-route", ""), r.text

    switcher = asyncio.create_task(switch())
    results, batches = [], 0
    while batches < 10 or (switches < 4 and batches < 500):  # >= 300 requests, 30 at a time, across switches
        results += await asyncio.gather(*(one(i) for i in range(30 * batches, 30 * batches + 30)))
        batches += 1
    stop.set()
    await switcher
    failed = [r for r in results if r[0] != 200]
    print(f"{len(results)} requests (half streamed), {switches} alias switches: {len(failed)} failed")
    assert failed == []  # 0 failed requests
    for _, route, text in results:  # each answer came whole from the version its route names
        v1 = route.endswith("version=smol@v1")
        assert v1 or route.endswith("version=smol@v2")
        assert ("alpha" in text) == v1 and ("bravo" in text) != v1
    served = {route.rsplit("=", 1)[1] for _, route, _ in results}
    assert served == {"smol@v1", "smol@v2"} and switches >= 4


async def test_an_alias_no_deployment_serves_is_a_clear_404(gateway, tmp_path):
    client, comp, _, _ = gateway
    path = tmp_path / "v3.gguf"
    path.write_bytes(b"v3")
    comp.registry.register("smol", "v3", file=path, by="ci")
    with pytest.raises(BadRequestError, match="no configured deployment serves smol@v3"):
        comp.registry.promote("smol", "v3", alias="chat-default", by="ci")
    comp.registry.promote("smol", "v3", alias="chat-default", by="ci", force=True)
    r = await client.post("/v1/chat/completions", json=chat())
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert "points at smol@v3, which no deployment here serves" in r.json()["error"]["message"]
    comp.registry.rollback("chat-default", by="oncall")
    assert (await ask(client))[0].endswith("version=smol@v1")


async def test_v1_models_lists_registry_aliases(gateway):
    client, _, _, _ = gateway
    data = (await client.get("/v1/models")).json()["data"]
    assert {"id": "chat-default", "root": "smol@v1"}.items() <= next(m for m in data if m["id"] == "chat-default").items()


async def test_admin_registry_reads_moves_and_rolls_back(gateway):
    client, _, _, _ = gateway
    state = (await client.get("/admin/registry")).json()
    assert [m["name"] for m in state["models"]] == ["smol"]
    assert [v["version"] for v in state["models"][0]["versions"]] == ["v1", "v2"]
    assert state["aliases"][0] | {"updated_at": ""} == {"alias": "chat-default", "name": "smol", "version": "v1",
                                                         "updated_at": "", "updated_by": "ci", "deployments": ["smol-v1"]}
    assert state["deployments"] == {"smol@v1": ["smol-v1"], "smol@v2": ["smol-v2"]}
    before = state["registry_version"]

    r = await client.post("/admin/registry/aliases/chat-default", json={"name": "smol", "version": "v9"})
    assert r.status_code == 404 and "smol@v9 is not registered" in r.json()["error"]["message"]
    r = await client.post("/admin/registry/aliases/chat-default", json={"model": "smol"})
    assert r.status_code == 400 and '"version"' in r.json()["error"]["message"]
    assert (await client.get("/admin/registry")).json()["registry_version"] == before  # nothing changed

    r = await client.post("/admin/registry/aliases/chat-default", json={"name": "smol", "version": "v2", "promote": True})
    assert r.status_code == 200 and r.json()["changed"] and r.json()["from"] == "smol@v1"
    assert r.json()["by"].startswith("http:")
    assert (await ask(client))[0].endswith("version=smol@v2")
    r = await client.post("/admin/registry/aliases/chat-default/rollback")
    assert r.status_code == 200 and r.json()["version"] == "v1" and r.json()["action"] == "rollback"
    assert (await ask(client))[0].endswith("version=smol@v1")
    history = (await client.get("/admin/registry?history=2")).json()["history"]
    assert [(h["action"], h["version"]) for h in history] == [("promote", "v2"), ("rollback", "v1")]
    assert (await client.get("/admin/registry?history=x")).status_code == 400


def test_a_deployment_must_serve_a_registered_version_on_its_engine(tmp_path):
    settings = settings_for(tmp_path)
    registered(tmp_path, settings, versions=("v1",), alias=None)
    engines = {"smol-v1": ScriptedProvider("smol-v1"), "smol-v2": ScriptedProvider("smol-v2")}
    with pytest.raises(BadRequestError, match=r"serves smol@v2, which is not registered: run nlweb-local models register"):
        scripted_service(settings, engines)
    settings.llm.deployments = settings.llm.deployments[:1]
    settings.llm.deployments[0].engine = "vllm"
    with pytest.raises(BadRequestError, match="runs on vllm, but smol@v1 was registered for llama_cpp"):
        scripted_service(settings, {"smol-v1": engines["smol-v1"]})


def test_a_deployment_without_a_model_gets_the_versions_file(tmp_path):
    settings = settings_for(tmp_path)
    registered(tmp_path, settings, alias=None)
    registry = build_registry(settings)
    try:
        d = registry.deployment(settings.llm.deployments[0])
        assert d.model == str((tmp_path / "smol-v1.gguf").resolve())
        v = registry.store.get_version("smol", "v1")
        assert v.sha256 == hashlib.sha256(b"weights v1").hexdigest()
    finally:
        registry.close()


async def test_two_replicas_share_a_postgresql_registry(tmp_path):
    """Two gateways on one PostgreSQL registry: an alias moved through one replica's /admin/registry serves
    the new version there at once, and on the other replica as soon as its poll sees the change."""
    from test_registry_store import pg_schema

    url, drop = pg_schema()
    comps = []
    try:
        settings = settings_for(tmp_path)
        settings.registry.database_url = url
        registered(tmp_path, settings)
        for _ in range(2):
            comps.append(scripted_service(settings, {"smol-v1": ScriptedProvider("smol-v1", "one"),
                                                     "smol-v2": ScriptedProvider("smol-v2", "two")}))
        clients = [httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(settings, c, close_components=False)),
                                     base_url="http://localhost") for c in comps]
        a, b = clients
        assert (await ask(b))[0].endswith("version=smol@v1")
        r = await a.post("/admin/registry/aliases/chat-default", json={"name": "smol", "version": "v2"})
        assert r.status_code == 200 and r.json()["from"] == "smol@v1"
        assert (await ask(a))[0].endswith("version=smol@v2")  # at once on the replica that made the change
        for _ in range(200):  # the other one polls registry.poll_s = 0.05 s
            if (await ask(b))[0].endswith("version=smol@v2"):
                break
            await asyncio.sleep(0.02)
        assert (await ask(b))[0].endswith("version=smol@v2")
        for c in clients:
            await c.aclose()
    finally:
        for c in comps:
            await c.close()
        drop()
