"""Alert rules against a local webhook receiver: firing once (de-duplicated), recovery notices, severities."""
import logging
import random

import pytest_asyncio
from aiohttp import web

from nlweb_local.config.settings import AlertSettings, load_settings
from nlweb_local.core.errors import ProviderConnectionError
from nlweb_local.core.types import ChatRequest, Message
from nlweb_local.providers.testing import ScriptedProvider
from nlweb_local.router.breaker import BreakerSettings, CircuitBreaker
from nlweb_local.router.model import DeploymentInfo
from nlweb_local.router.router import Route, Router
from nlweb_local.telemetry import build_telemetry
from nlweb_local.telemetry.alerts import AlertEngine, Signals, WebhookNotifier, _month_start


@pytest_asyncio.fixture(loop_scope="function")
async def receiver():
    """A webhook receiver on 127.0.0.1: collects the JSON bodies it is sent; /broken answers 500."""
    got: list[dict] = []

    async def hook(request):
        got.append(await request.json())
        return web.json_response({"ok": True})

    async def broken(request):
        return web.Response(status=500)

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/broken", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", got
    await runner.cleanup()


def stats(calls=0, errors=0, p95=None, local_share=None):
    return {"calls": calls, "errors": errors, "window_s": 300.0, "latency_s": {"p50": None, "p95": p95, "p99": None},
            "share": {"local_calls": local_share}}


async def test_firing_once_then_resolved_with_severities(receiver, caplog):
    url, got = receiver
    hook = WebhookNotifier([f"{url}/hook", f"{url}/broken"])
    t = AlertSettings(error_rate=0.2, min_calls=10, p95_latency_s=2.0, monthly_budget_usd=100.0)
    engine = AlertEngine(t, notify=[hook], clock=lambda: 1000.0)
    bad = Signals(stats(calls=50, errors=20, p95=3.5), breakers={"local": "open", "cloud": "closed"},
                  healthy={"local": True, "cloud": True}, month_spend_usd=85.0)
    with caplog.at_level(logging.WARNING, logger="nlweb_local.telemetry.alerts"):
        changes = await engine.evaluate(bad)
    assert sorted((s, a.key, a.severity) for s, a in changes) == [
        ("firing", "budget", "warning"), ("firing", "deployment_down:local", "critical"),
        ("firing", "error_rate", "critical"), ("firing", "p95_latency", "warning")]
    assert [a["severity"] for a in engine.active()] == ["critical", "critical", "warning", "warning"]
    assert "alert firing [critical] deployment local is down (breaker open)" in caplog.text
    assert len(got) == 4 and {b["status"] for b in got} == {"firing"}
    assert hook.failures == 4  # the broken webhook failed each time and did not stop the other one
    budget = next(b for b in got if b["alert"]["rule"] == "budget")["alert"]
    assert budget["value"] == 85.0 and budget["threshold"] == 80.0 and "85%" in budget["summary"]

    assert await engine.evaluate(bad) == []  # still firing: de-duplicated, nothing sent
    assert len(got) == 4

    calm = Signals(stats(calls=50, errors=1, p95=0.5), breakers={"local": "closed", "cloud": "closed"},
                   healthy={"local": True, "cloud": True}, month_spend_usd=85.0)
    changes = await engine.evaluate(calm)
    assert sorted((s, a.key) for s, a in changes) == [("resolved", "deployment_down:local"), ("resolved", "error_rate"),
                                                      ("resolved", "p95_latency")]
    assert [b["alert"]["key"] for b in got[4:] if b["status"] == "resolved"] == [a.key for _, a in changes]
    assert all(b["alert"]["since"] == 1000.0 for b in got)
    assert [a["key"] for a in engine.active()] == ["budget"]
    await hook.close()


async def test_service_down_memory_and_info_rules():
    t = AlertSettings(min_calls=10, memory_percent=90, cloud_share_info=0.5)
    engine = AlertEngine(t)
    s = Signals(stats(calls=20, local_share=0.25), breakers={"a": "open", "b": "closed"},
                healthy={"a": True, "b": False}, memory_percent=95.0)
    keys = {a.key: a.severity for _, a in await engine.evaluate(s)}
    assert keys == {"service_down": "critical", "deployment_down:a": "critical", "deployment_down:b": "critical",
                    "memory": "warning", "cloud_share": "info"}
    few = Signals(stats(calls=5, errors=5))  # too few calls to judge an error rate
    assert [a.key for _, a in await engine.evaluate(few)] == ["service_down", "deployment_down:a", "deployment_down:b",
                                                              "memory", "cloud_share"]  # all resolved
    assert engine.active() == []


async def test_monitor_watches_the_router_and_the_window(receiver, tmp_path):
    """The background monitor over real parts: failing calls raise the error rate, a forced-open breaker
    is a deployment down, spending counts against the budget; each recovers with a notice."""
    url, got = receiver
    settings = load_settings(environ={
        "NLWEB_LOCAL_DATA_DIR": str(tmp_path), "NLWEB_LOCAL_TELEMETRY__ALERTS__WEBHOOKS": f"['{url}/hook']",
        "NLWEB_LOCAL_TELEMETRY__ALERTS__MIN_CALLS": "4", "NLWEB_LOCAL_TELEMETRY__ALERTS__ERROR_RATE": "0.5",
        "NLWEB_LOCAL_TELEMETRY__ALERTS__MONTHLY_BUDGET_USD": "0.00001", "NLWEB_LOCAL_TELEMETRY__ALERTS__WINDOW_S": "60",
        "NLWEB_LOCAL_TELEMETRY__ALERTS__MEMORY_PERCENT": "100"})
    tel = build_telemetry(settings)
    local = ScriptedProvider("local", "fine thanks")
    cloud = ScriptedProvider("cloud", "cloud answer " * 50, local=False)
    cloud.model = "gpt-4o"
    bs = BreakerSettings(min_calls=1000)
    router = Router([Route(DeploymentInfo("local", True), tel.wrap(local), CircuitBreaker("local", bs)),
                     Route(DeploymentInfo("cloud", False), tel.wrap(cloud), CircuitBreaker("cloud", bs))],
                    rounds=1, rng=random.Random(0))
    tel.watch(router)
    monitor = tel.monitor
    req = ChatRequest([Message("user", "hi")])
    try:
        local.fail_with = ProviderConnectionError("down", deployment="local")
        for _ in range(4):
            await router.complete(req)  # local fails, cloud serves: 4 failures in 8 calls
        tel.ledger.flush()
        router.force_open("local", 60)
        changes = {(s, a.key) for s, a in await monitor.run_once()}
        assert changes == {("firing", "error_rate"), ("firing", "deployment_down:local"), ("firing", "budget")}
        assert {(b["status"], b["alert"]["key"]) for b in got} == changes
        assert await monitor.run_once() == []  # nothing new

        router.reset("local")
        local.fail_with = None
        for _ in range(8):
            await router.complete(req)  # 4 failures in 16 calls: 25 %, under the threshold
        changes = {(s, a.key) for s, a in await monitor.run_once()}
        assert changes == {("resolved", "error_rate"), ("resolved", "deployment_down:local")}
        assert [a["key"] for a in monitor.engine.active()] == ["budget"]  # the money stays spent this month
    finally:
        await tel.stop(None)
        tel.close()


def test_month_start_is_utc():
    assert _month_start(1_754_006_400 + 86400 * 10.5) == 1_754_006_400  # 2025-08-11 12:00 UTC → 2025-08-01
