"""Per-request priority: `PriorityGate` orders the calls waiting for an engine (higher first, FIFO within
a priority), and the gateway's `x-nlweb-priority` header reaches the engine as `ChatRequest.context.priority`."""
import asyncio

import pytest

from nlweb_local.providers.priority import PriorityGate


async def test_waiting_calls_are_served_by_priority_then_in_arrival_order():
    gate = PriorityGate(capacity=1)
    served: list[str] = []

    async def call(name: str, priority: int) -> None:
        await gate.acquire(priority)
        try:
            served.append(name)
            await asyncio.sleep(0)  # hold the engine for a moment, as a real call would
        finally:
            gate.release()

    await gate.acquire(0)  # the engine is busy: everyone below has to queue
    tasks = []
    for name, priority in [("low-1", 0), ("high-1", 5), ("low-2", 0), ("mid", 2), ("high-2", 5)]:
        tasks.append(asyncio.create_task(call(name, priority)))
        await asyncio.sleep(0)  # arrival order is creation order
    assert gate.waiting == 5
    gate.release()
    await asyncio.gather(*tasks)
    assert served == ["high-1", "high-2", "mid", "low-1", "low-2"]
    assert gate.running == 0 and gate.waiting == 0


async def test_a_cancelled_waiter_leaves_the_queue_and_never_holds_the_slot():
    gate = PriorityGate(capacity=1)
    await gate.acquire()
    gone = asyncio.create_task(gate.acquire(9))
    stays = asyncio.create_task(gate.acquire(1))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    assert gate.waiting == 1
    gate.release()
    await asyncio.wait_for(stays, 1)  # the slot skipped the cancelled waiter
    gate.release()
    assert gate.running == 0


async def test_the_queue_is_bounded():
    gate = PriorityGate(capacity=1, max_waiting=2)
    await gate.acquire()
    waiters = [asyncio.create_task(gate.acquire()) for _ in range(2)]
    await asyncio.sleep(0)
    assert gate.full()
    with pytest.raises(asyncio.QueueFull):
        await gate.acquire()
    for _ in range(3):
        gate.release()
        await asyncio.sleep(0)
    await asyncio.gather(*waiters)
    assert gate.running == 0 and not gate.full()


def _recording_service(tmp_path, **auth):
    from nlweb_local.server.app import create_app
    from governance_app import RecordingProvider
    from stand_ins import scripted_service, service_settings

    settings = service_settings(tmp_path)
    settings.cache.enabled = False
    for k, v in auth.items():
        setattr(settings.auth, k, v)
    local = RecordingProvider("local", "hi")
    comp = scripted_service(settings, {"local": local}, telemetry=None)
    return comp, local, create_app(settings, comp)  # (closed when the test client's lifespan ends)


def test_the_priority_header_names_a_class_or_an_integer_and_reaches_the_engine(tmp_path):
    from starlette.testclient import TestClient

    comp, local, app = _recording_service(tmp_path)
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    with TestClient(app, base_url="http://localhost") as c:
        for value in ("interactive", "batch", "7", None, " Batch ", "-3"):
            headers = {"x-nlweb-priority": value} if value is not None else {}
            assert c.post("/v1/chat/completions", json=body, headers=headers).status_code == 200
        bad = c.post("/v1/chat/completions", json=body, headers={"x-nlweb-priority": "urgent"})
    assert [ctx.priority for ctx in local.contexts] == [10, -10, 7, 0, -10, -3]
    err = bad.json()["error"]
    assert bad.status_code == 400 and err["param"] == "x-nlweb-priority"
    assert "interactive (10), default (0), batch (-10)" in err["message"] and "'urgent'" in err["message"]


def test_a_bad_priority_is_refused_in_every_endpoints_wire_format(tmp_path):
    from starlette.testclient import TestClient

    comp, local, app = _recording_service(tmp_path)
    bad = {"x-nlweb-priority": "asap"}
    with TestClient(app, base_url="http://localhost") as c:
        ask = c.get("/ask", params={"query": "soup"}, headers=bad)
        mcp = c.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=bad)
        huge = c.post("/v1/completions", json={"model": "auto", "prompt": "x"}, headers={"x-nlweb-priority": "9" * 30})
    assert ask.status_code == 400 and "x-nlweb-priority" in ask.json()["error"] and ask.json()["status"] == 400
    assert "batch (-10)" in ask.json()["error"]
    assert mcp.status_code == 400 and mcp.json()["error"]["data"]["status"] == 400
    assert "interactive (10)" in mcp.json()["error"]["message"]
    assert huge.status_code == 400
    assert local.contexts == []  # nothing reached the engine


async def test_a_keys_and_teams_class_applies_without_a_header_and_caps_what_a_header_asks(tmp_path):
    from governance_app import client, governed_service

    svc = governed_service(tmp_path, auth={"teams": {"etl": {"max_priority": "batch"},
                                                     "support": {"priority": "interactive"}}})
    svc.key("bulk", priority="batch")  # its own class, no ceiling
    svc.key("nightly", max_priority="default")
    svc.key("etl-job", team="etl")
    svc.key("agent", team="support")
    svc.key("plain")
    asks = [("bulk", None), ("bulk", "interactive"), ("nightly", "interactive"), ("nightly", "batch"),
            ("etl-job", "interactive"), ("etl-job", None), ("agent", None), ("agent", "batch"), ("plain", None)]
    body = {"model": "local", "messages": [{"role": "user", "content": "hi"}]}
    try:
        async with client(svc) as c:
            for name, value in asks:
                headers = {**svc.headers(name), **({"x-nlweb-priority": value} if value else {})}
                r = await c.post("/v1/chat/completions", json=body, headers=headers)
                assert r.status_code == 200, r.text
    finally:
        await svc.comp.close()
    got = [ctx.priority for ctx in svc.local.contexts]
    assert got == [-10, 10, 0, -10, -10, -10, 10, -10, 0]
    teams = [ctx.team for ctx in svc.local.contexts]  # the tenant the gates share fairly between
    assert teams[4:8] == ["etl", "etl", "support", "support"] and all(ctx.caller for ctx in svc.local.contexts)


async def test_a_key_with_a_class_that_is_not_one_is_refused_when_made(tmp_path):
    from governance_app import client, governed_service

    svc = governed_service(tmp_path)
    admin = svc.key("root", role="admin")
    try:
        async with client(svc) as c:
            bad = await c.post("/admin/keys", json={"name": "x", "role": "user", "priority": "urgent"},
                               headers={"authorization": f"Bearer {admin}"})
            ok = await c.post("/admin/keys", json={"name": "y", "role": "user", "max_priority": "batch"},
                              headers={"authorization": f"Bearer {admin}"})
    finally:
        await svc.comp.close()
    assert bad.status_code == 400 and "batch (-10)" in bad.json()["error"]["message"]
    assert ok.status_code == 201 and ok.json()["max_priority"] == "batch" and ok.json()["priority"] is None


def test_an_ask_requests_llm_calls_run_at_its_priority(store, embedder, tmp_path):
    """/ask builds its own calls (rank, summarise, ...): the request's class reaches each of them."""
    import json

    from starlette.testclient import TestClient

    from nlweb_local.core.types import Item
    from nlweb_local.server.app import create_app
    from governance_app import RecordingProvider
    from stand_ins import scripted_service, service_settings

    names = ["Chickpea curry", "Lemon tart"]
    store.upsert([Item(f"https://d.example/{i}", n, "d", json.dumps({"@type": "Recipe", "name": n}))
                  for i, n in enumerate(names)], embedder.embed(names))
    settings = service_settings(tmp_path)
    settings.cache.ask_enabled = False
    settings.search.rank_cache_entries = 0
    seen: list[int] = []

    class Recording(RecordingProvider):
        async def classify(self, request, labels):
            seen.append(request.context.priority)
            return await super().classify(request, labels)

    local = Recording("local", '{"score": 80, "description": "ok"}', classify=True)
    comp = scripted_service(settings, {"local": local}, embedder=embedder, store=store, telemetry=None)
    with TestClient(create_app(settings, comp), base_url="http://localhost") as c:
        r = c.get("/ask", params={"query": "curry", "streaming": "false", "min_score": 0},
                  headers={"x-nlweb-priority": "batch"})
    assert r.status_code == 200
    calls = seen + [ctx.priority for ctx in local.contexts]
    assert calls and set(calls) == {-10}


def test_the_keys_cli_gives_a_key_a_class_and_refuses_one_that_is_none(tmp_path, capsys):
    import json
    import sqlite3

    from nlweb_local.cli.main import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data_dir: {tmp_path}\n")
    assert main(["--config", str(cfg), "keys", "create", "--name", "k", "--role", "user", "--priority", "asap"]) == 2
    assert "batch (-10)" in capsys.readouterr().err
    assert main(["--config", str(cfg), "keys", "create", "--name", "k", "--role", "user", "--priority", "batch",
                 "--max-priority", "default"]) == 0
    capsys.readouterr()
    assert main(["--config", str(cfg), "keys", "list"]) == 0
    assert "priority=batch max_priority=default" in capsys.readouterr().out
    # a key store made before keys had classes gains the columns, its keys none
    old = tmp_path / "old.sqlite"
    db = sqlite3.connect(old)
    db.execute("CREATE TABLE api_keys (key_id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, team TEXT NOT "
               "NULL, models TEXT NOT NULL, sites TEXT NOT NULL, limits TEXT NOT NULL, allow_from TEXT NOT NULL, hash "
               "TEXT NOT NULL UNIQUE, created_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION, revoked_at "
               "DOUBLE PRECISION, privacy TEXT NOT NULL DEFAULT 'any')")
    db.execute("INSERT INTO api_keys VALUES ('abc', 'n', 'user', '', '[]', '[]', '{}', '[]', 'h', 0, NULL, NULL, 'any')")
    db.commit()
    db.close()
    from nlweb_local.governance.key_store import SqliteKeyStore

    store = SqliteKeyStore(old)
    try:
        (record,) = store.all()
        assert record.priority == "" and record.identity().max_priority == ""
        assert json.loads(json.dumps(record.public()))["priority"] is None
    finally:
        store.close()
