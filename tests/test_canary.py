"""Canary releases in the running gateway (in process, scripted engines): a broken candidate rolls back
within its first stage and fires an alert; a healthy one reaches 100 % and the alias moves; a rollback
during a canary under concurrent load fails no request; the CLI and /admin/canary show stages and decisions."""
from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
import pytest
import pytest_asyncio

from nlweb_local.core.errors import BadRequestError, ProviderConnectionError
from nlweb_local.providers.testing import ScriptedProvider
from nlweb_local.registry.canary import start_canary
from nlweb_local.server.app import create_app
from nlweb_local.telemetry import build_telemetry
from stand_ins import scripted_service
import test_registry_cli
from test_registry_routing import registered, settings_for

cli = test_registry_cli.cli  # (the fixture: `nlweb-local --config ... models ARGS`)


@pytest_asyncio.fixture(loop_scope="function")
async def gateway(tmp_path):
    settings = settings_for(tmp_path)
    registered(tmp_path, settings)
    tel = build_telemetry(settings)
    engines = {"smol-v1": ScriptedProvider("smol-v1", "one says hi"), "smol-v2": ScriptedProvider("smol-v2", "two says hi")}
    comp = scripted_service(settings, engines, telemetry=tel)
    app = create_app(settings, comp, close_components=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
        yield client, comp, engines
    await comp.close()
    tel.close()


async def traffic(client, start, n, *, stream=False):
    """n requests from n conversations, 25 at a time (below a deployment's max_concurrency); returns
    [(status, version that served)]."""
    async def one(i):
        body = {"model": "chat-default", "messages": [{"role": "user", "content": f"q{i}"}], "stream": stream}
        r = await client.post("/v1/chat/completions", json=body, headers={"x-nlweb-conversation": f"conv-{i}"})
        return r.status_code, r.headers.get("x-nlweb-route", "").rpartition("version=")[2]
    out = []
    for at in range(start, start + n, 25):
        out += await asyncio.gather(*(one(i) for i in range(at, min(at + 25, start + n))))
    return out


async def test_a_broken_candidate_rolls_back_within_its_first_stage(gateway):
    client, comp, engines = gateway
    rng = random.Random(7)
    engines["smol-v2"].fail_with = lambda: ProviderConnectionError("v2 broke", deployment="smol-v2") \
        if rng.random() < 0.3 else None
    alerts = []

    async def notify(status, alert, since):
        alerts.append((status, alert))
    comp.canary.notifiers.append(notify)
    start_canary(comp.registry, "smol", "v2", alias="chat-default", stages="5,25,50,100",
                 guards="error_rate<2%,p95_ttft<1.5x,quality>=-0.02", min_requests=40, by="ci")
    results, sent = [], 0
    while comp.registry.canaries.running() and sent < 4000:
        results += await traffic(client, sent, 100)
        sent += 100
        await comp.canary.tick()
    (c,) = comp.registry.canaries.canaries("chat-default")
    decisions = comp.registry.canaries.decisions(c.id)
    print(f"broken candidate: rolled back after {sent} requests ({sum(v == 'smol@v2' for _, v in results)} served by "
          f"v2), decisions {[(d['action'], d['weight']) for d in decisions]}")
    assert c.status == "rolled_back" and [d["action"] for d in decisions] == ["start", "rollback"]
    assert decisions[-1]["stage"] == 1 and decisions[-1]["weight"] == 5  # within its first stage
    assert "error_rate<2%" in decisions[-1]["reason"]
    assert [r for r in results if r[0] != 200] == []  # a candidate failure is answered by the baseline
    assert len(alerts) == 1 and alerts[0][1].rule == "canary_rollback" and "smol@v2" in alerts[0][1].summary
    assert [h.action for h in comp.registry.history("chat-default")] == ["set", "canary-start", "canary-rollback"]
    assert comp.registry.aliases()[0].key == "smol@v1"
    after = await traffic(client, 10_000, 60)
    assert {v for _, v in after} == {"smol@v1"}  # all traffic back on the baseline


async def test_a_healthy_candidate_reaches_100_percent(gateway):
    client, comp, _ = gateway
    start_canary(comp.registry, "smol", "v2", alias="chat-default", stages="10,50,100",
                 guards="error_rate<2%,p95_ttft<1.5x,quality>=-0.02", min_requests=20, by="ci")
    shares, sent = [], 0
    while comp.registry.canaries.running() and sent < 3000:
        batch = await traffic(client, sent, 100)
        sent += 100
        assert all(s == 200 for s, _ in batch)
        shares.append(sum(v == "smol@v2" for _, v in batch))
        await comp.canary.tick()
    (c,) = comp.registry.canaries.canaries("chat-default")
    decisions = comp.registry.canaries.decisions(c.id)
    print(f"healthy candidate: promoted after {sent} requests; v2 share per batch {shares}")
    assert c.status == "promoted" and [d["action"] for d in decisions] == ["start", "advance", "promote"]
    assert "quality>=-0.02 (skipped: 0 candidate and 0 baseline ratings (fewer than 5 each))" in decisions[-1]["reason"]
    assert 0 < shares[0] < 40  # ~10 % in the first stage
    history = comp.registry.history("chat-default")
    assert (history[-1].action, history[-1].version, history[-1].by) == ("promote", "v2", "ci (canary)")
    assert {v for _, v in await traffic(client, 10_000, 40)} == {"smol@v2"}
    comp.registry.rollback("chat-default", by="oncall")  # an ordinary rollback after the release
    assert comp.registry.aliases()[0].key == "smol@v1"


async def test_rollback_during_a_canary_under_load_fails_no_request(gateway):
    client, comp, engines = gateway
    for e in engines.values():
        e.token_delay_s = 0.002
    start_canary(comp.registry, "smol", "v2", alias="chat-default", stages="50,100", guards="error_rate<2%",
                 min_requests=10**6, by="ci")
    stop = asyncio.Event()
    log: list[tuple[float, int, str]] = []
    rolled: list[float] = []

    async def load(worker):
        i = 0
        while not stop.is_set():
            i += 1
            t0 = time.perf_counter()
            (status, version), = await traffic(client, worker * 100_000 + i, 1, stream=i % 2 == 0)
            log.append((t0, status, version))

    workers = [asyncio.create_task(load(w)) for w in range(20)]
    while len(log) < 200:
        await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    change = await asyncio.to_thread(comp.registry.rollback, "chat-default", by="oncall")
    rolled.append(time.perf_counter())
    n = len(log)
    while len(log) < n + 200:
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.gather(*workers)
    failed = [r for r in log if r[1] != 200]
    late = [r for r in log if r[0] > rolled[0] and r[2] != "smol@v1"]
    print(f"{len(log)} requests (half streamed), rollback took {(rolled[0] - t0) * 1000:.1f} ms to apply; "
          f"{len(failed)} failed; {len(late)} started after it on v2")
    assert change.action == "canary-rollback" and change.version == "v1"
    assert failed == [] and late == []
    assert {r[2] for r in log if r[0] < t0} == {"smol@v1", "smol@v2"}  # both sides served before it


async def test_alias_moves_are_refused_during_a_canary_and_admin_shows_it(gateway):
    client, comp, _ = gateway
    r = await client.post("/admin/canary/chat-default", json={"name": "smol", "version": "v2", "stages": "5,50",
                                                              "guards": "error_rate<2%"})
    assert r.status_code == 400 and "must end at 100" in r.json()["error"]["message"]
    r = await client.post("/admin/canary/chat-default", json={"name": "smol", "version": "v2", "guards": "latency<1s"})
    assert r.status_code == 400 and "unknown metric 'latency'" in r.json()["error"]["message"]
    assert comp.registry.canaries.canaries() == []  # nothing started
    r = await client.post("/admin/canary/chat-default", json={"name": "smol", "version": "v2", "stages": "20,100",
                                                              "min_requests": 1000})
    assert r.status_code == 200 and r.json()["weight"] == 20 and r.json()["status"] == "running"
    r = await client.post("/admin/canary/chat-default", json={"name": "smol", "version": "v2"})
    assert r.status_code == 400 and "already running" in r.json()["error"]["message"]
    with pytest.raises(BadRequestError, match="a canary of smol@v2 is running on chat-default"):
        comp.registry.promote("smol", "v2", alias="chat-default", by="someone")
    await traffic(client, 0, 50)
    state = (await client.get("/admin/canary")).json()["canaries"][0]
    assert state["candidate"] == "smol@v2" and state["baseline"] == "smol@v1" and state["stage"] == 1
    assert state["now"]["candidate"]["requests"] == 0  # not flushed yet: the watch's next tick does
    await comp.canary.tick()
    (running,) = (await client.get("/admin/registry")).json()["canaries"]
    now = running["now"]
    assert now["candidate"]["requests"] > 0 and now["candidate"]["requests"] + now["baseline"]["requests"] == 50
    assert now["next"] == "hold" and "/1000 candidate calls" in now["why"]
    r = await client.post("/admin/registry/aliases/chat-default/rollback")
    assert r.status_code == 200 and r.json()["action"] == "canary-rollback"
    assert (await client.get("/admin/registry")).json()["canaries"] == []
    decisions = (await client.get("/admin/canary?alias=chat-default")).json()["canaries"][0]["decisions"]
    assert [d["action"] for d in decisions] == ["start", "rollback"] and decisions[-1]["by"].startswith("http:")


def test_cli_canary_from_ci_and_status(cli, tmp_path):
    from test_registry_cli import weights

    v1, _ = weights(tmp_path, "smol-v1.gguf", b"first")
    v2, _ = weights(tmp_path, "smol-v2.gguf", b"second")
    assert cli("register", "smol", "v1", "--file", v1, "--by", "ci")[0] == 0
    assert cli("alias", "chat-default", "smol", "v1", "--by", "ci")[0] == 0
    rc, _, err = cli("promote", "smol", "v2", "--alias", "chat-default", "--canary", "5,25,50,100")
    assert rc != 0 and "smol@v2 is not registered" in err
    rc, out, err = cli("register", "smol", "v2", "--file", v2, "--promote-canary", "--alias", "chat-default",
                       "--canary", "5,25,100", "--guard", "error_rate<2%,p95_ttft<1.5x", "--min-requests", "50",
                       "--by", "ci")
    assert rc == 0, err
    assert "canary 4: chat-default smol@v1 -> smol@v2, stages 5,25,100%, guards error_rate<2%,p95_ttft<1.5x, 50 " \
        "calls per stage; now 5%" in out.splitlines()[-1]
    rc, out, _ = cli("canary", "status")
    assert rc == 0 and "canary 4 on chat-default: smol@v1 -> smol@v2  running, stage 1/3 (5%)" in out
    assert "now: waiting: 0/50 candidate calls, 0/50 baseline calls" in out
    rc, out, _ = cli("canary", "status", "--format", "json")
    assert json.loads(out)[0]["decisions"][0]["action"] == "start"
    rc, _, err = cli("alias", "chat-default", "smol", "v2")
    assert rc != 0 and "a canary of smol@v2 is running on chat-default" in err
    rc, out, _ = cli("rollback", "chat-default", "--by", "oncall")
    assert out == "chat-default: smol@v2 -> smol@v1 (canary-rollback, by oncall)\n"
    rc, out, _ = cli("history", "chat-default", "--format", "json")
    assert [h["action"] for h in json.loads(out)] == ["set", "canary-start", "canary-rollback"]
    rc, _, err = cli("promote", "smol", "v2", "--alias", "chat-default", "--canary", "5,25", "--guard", "x<1")
    assert rc != 0 and "must end at 100" in err
    rc, _, err = cli("promote", "smol", "v2", "--alias", "chat-default", "--canary", "5,100", "--guard", "error_rate>1%")
    assert rc != 0 and "use < or <=" in err


async def test_two_replicas_share_a_canary_through_postgresql(tmp_path):
    """Two gateways on one PostgreSQL registry: the stage is judged on both replicas' counts together, one
    replica's decision is the other's at its next check, and a rollback made on one reaches the other."""
    from test_registry_store import pg_schema

    url, drop = pg_schema()
    comps, clients = [], []
    try:
        settings = settings_for(tmp_path)
        settings.registry.database_url = url
        registered(tmp_path, settings)
        for _ in range(2):
            comps.append(scripted_service(settings, {"smol-v1": ScriptedProvider("smol-v1", "one"),
                                                     "smol-v2": ScriptedProvider("smol-v2", "two")}))
        clients = [httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(settings, c, close_components=False)),
                                     base_url="http://localhost") for c in comps]
        a, b = comps
        start_canary(a.registry, "smol", "v2", alias="chat-default", stages="50,100", guards="error_rate<2%",
                     min_requests=30, by="ci")
        await b.canary.tick()  # b sees the canary at its next check
        first = await traffic(clients[1], 0, 40)
        assert 0 < sum(v == "smol@v2" for _, v in first) < 40
        await traffic(clients[0], 1000, 40)
        await b.canary.tick()  # b's counts alone (~20 candidate calls) are short of 30
        assert [d["action"] for d in b.registry.canaries.decisions(1)] in (["start"], [])
        assert (await a.canary.tick()) != []  # a flushes its own and judges both replicas' counts: 100 %
        await b.canary.tick()
        assert {v for _, v in await traffic(clients[1], 2000, 20)} == {"smol@v2"}
        assert b.registry.aliases()[0].key == "smol@v2"

        b.registry.set_alias("chat-default", "smol", "v1", by="ci")  # again, and roll back through the other replica
        start_canary(b.registry, "smol", "v2", alias="chat-default", stages="50,100", guards="error_rate<2%",
                     min_requests=10**6, by="ci")
        await a.canary.tick()
        assert "smol@v2" in {v for _, v in await traffic(clients[0], 3000, 40)}
        b.registry.rollback("chat-default", by="oncall")
        await a.canary.tick()
        assert {v for _, v in await traffic(clients[0], 4000, 40)} == {"smol@v1"}
    finally:
        for c in clients:
            await c.aclose()
        for c in comps:
            await c.close()
        drop()


async def test_with_a_feedback_source_the_quality_guard_rolls_back_a_worse_candidate(gateway):
    """The quality guard judges mean ratings per version over the stage (a stand-in feedback source)."""
    client, comp, _ = gateway
    scores = {"smol@v1": (4.0, 10), "smol@v2": (2.0, 10)}  # (sum, count): means 0.4 and 0.2
    comp.canary.ratings = lambda key, since, until: scores[key]
    start_canary(comp.registry, "smol", "v2", alias="chat-default", stages="30,100", guards="quality>=-0.02",
                 min_requests=10, by="ci")
    for batch in range(20):
        await traffic(client, batch * 50, 50)
        if await comp.canary.tick():
            break
    (c,) = comp.registry.canaries.canaries()
    last = comp.registry.canaries.decisions(c.id)[-1]
    assert c.status == "rolled_back" and "quality>=-0.02 broken: mean rating 0.200 vs 0.400 (delta -0.200)" in last["reason"]


async def test_feedback_through_post_feedback_drives_the_quality_guard(gateway):
    """Users rate answers (POST /feedback with the answer's x-request-id): the candidate's answers rated
    down, the baseline's up; the quality guard rolls the canary back."""
    client, comp, _ = gateway
    start_canary(comp.registry, "smol", "v2", alias="chat-default", stages="40,100", guards="quality>=-0.02",
                 min_requests=10, by="ci")
    for i in range(80):
        r = await client.post("/v1/chat/completions", json={"model": "chat-default", "messages": [
            {"role": "user", "content": f"q{i}"}]}, headers={"x-nlweb-conversation": f"rate-{i}"})
        assert r.status_code == 200
        worse = r.headers["x-nlweb-route"].endswith("version=smol@v2")
        f = await client.post("/feedback", json={"request_id": r.headers["x-request-id"], "rating": -1 if worse else 1})
        assert f.status_code == 201 and f.json()["model_version"] == ("smol@v2" if worse else "smol@v1")
    applied = await comp.canary.tick()
    assert [d.action for _, d in applied] == ["rollback"]
    assert "quality>=-0.02 broken: mean rating 0.000 vs 1.000" in applied[0][1].reason
