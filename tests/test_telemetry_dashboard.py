"""/dashboard in headless Chromium: live figures and charts from /admin/stats, breaker states and alerts.

A real server (uvicorn, lifespan on: the alert monitor runs) over scripted deployments; traffic flows
while the page is open; a forced-open breaker must show up as a breaker state and a critical alert.
Saves test-artifacts/dashboard.png to look at.
"""
from __future__ import annotations

import threading
import time

import httpx
import pytest

pytest.importorskip("playwright.sync_api")
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from browser_util import PageWatch, launch_chromium, screenshot  # noqa: E402
from conftest import LiveServer  # noqa: E402
from nlweb_local.config.settings import DeploymentSettings, load_settings  # noqa: E402
from nlweb_local.core.errors import ProviderConnectionError  # noqa: E402
from nlweb_local.providers.testing import ScriptedProvider  # noqa: E402
from nlweb_local.server.app import create_app  # noqa: E402
from stand_ins import scripted_service  # noqa: E402
from nlweb_local.telemetry import build_telemetry  # noqa: E402

pytestmark = pytest.mark.browser


class Nothing:
    dimension = 2

    def embed(self, texts):
        return [[1.0, 0.0] for _ in texts]

    def sites(self):
        return []

    def count(self):
        return 0


@pytest.fixture()
def server(tmp_path):
    settings = load_settings(environ={"NLWEB_LOCAL_DATA_DIR": str(tmp_path),
                                      "NLWEB_LOCAL_TELEMETRY__ALERTS__INTERVAL_S": "0.2",
                                      "NLWEB_LOCAL_TELEMETRY__ALERTS__MEMORY_PERCENT": "100"})
    tel = build_telemetry(settings)
    local = ScriptedProvider("local", "local says hello", token_delay_s=0.002)
    cloud = ScriptedProvider("cloud", "cloud says hello there", local=False, token_delay_s=0.004)
    cloud.model = "gpt-4o-mini"
    settings.llm.deployments = [DeploymentSettings(name="cloud", engine="openai", model=cloud.model)]
    settings.llm.breaker.min_calls = 1000
    settings.llm.rounds = 1
    comp = scripted_service(settings, {"local": local, "cloud": cloud}, embedder=Nothing(), store=Nothing(), telemetry=tel)
    srv = LiveServer(create_app(settings, comp, close_components=False))
    yield srv, local
    srv.stop()
    tel.close()


def traffic(url: str, local: ScriptedProvider, stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=10) as c:
        i = 0
        while not stop.is_set():
            local.fail_with = ProviderConnectionError("flaky", deployment="local") if i % 5 == 4 else None
            c.post("/v1/chat/completions", json={"model": "cloud" if i % 3 == 2 else "auto",
                                                 "messages": [{"role": "user", "content": f"question {i}"}]})
            i += 1
            time.sleep(0.01)
        local.fail_with = None


def test_dashboard_shows_live_figures_breakers_and_alerts(server):
    srv, local = server
    stop = threading.Event()
    feeder = threading.Thread(target=traffic, args=(srv.url, local, stop), daemon=True)
    feeder.start()
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": 1280, "height": 1000}, locale="en-US", timezone_id="UTC")
            watch = PageWatch().attach(page)
            page.goto(f"{srv.url}/dashboard?interval=300&window=300")
            expect(page.locator("#status")).to_contain_text("updated", timeout=10_000)
            page.wait_for_function("Number(document.body.dataset.updates || 0) >= 4", timeout=15_000)
            calls = int(page.locator("#kpi-calls").inner_text().replace(",", ""))
            assert calls > 10
            expect(page.locator("#kpi-local")).to_contain_text("%")
            expect(page.locator("#kpi-savings-label")).to_have_text("Savings vs gpt-4o")
            for chart in ("latency", "tps", "share", "cost"):
                assert int(page.locator(f"#chart-{chart}").get_attribute("data-points")) > 0
            row = page.locator('#deployments tr[data-deployment="local"]')
            expect(row.locator(".state")).to_have_text("closed")
            expect(page.locator('#deployments tr[data-deployment="cloud"] td').nth(1)).to_have_text("cloud")
            instance = page.locator('#instances tr[data-instance="local"] td')  # /admin/fleet: one row per instance
            expect(instance.nth(2)).to_have_text("up")

            httpx.post(f"{srv.url}/admin/breakers/local/open", params={"seconds": "60"})
            expect(row.locator(".state")).to_have_text("open", timeout=5_000)
            expect(instance.nth(2)).to_have_text("down", timeout=5_000)
            alert = page.locator('#alerts li[data-key="deployment_down:local"]')
            expect(alert).to_contain_text("deployment local is down (breaker open)", timeout=5_000)
            expect(alert.locator(".sev")).to_have_text("critical")
            stop.set()
            feeder.join(10)
            page.wait_for_timeout(700)
            screenshot(page, "dashboard.png")

            httpx.post(f"{srv.url}/admin/breakers/local/reset")
            expect(row.locator(".state")).to_have_text("closed", timeout=5_000)
            expect(alert).to_have_count(0, timeout=5_000)  # recovered: the alert is gone
            # the page's figures are the server's figures
            stats = httpx.get(f"{srv.url}/admin/stats", params={"window": "300"}).json()
            page.wait_for_timeout(700)
            assert page.locator("#kpi-calls").inner_text().replace(",", "") == str(stats["calls"])
            assert watch.errors == []
            browser.close()
    finally:
        stop.set()
        feeder.join(10)


def test_dashboard_shows_each_caches_hit_rate_and_savings(server):
    srv, _ = server
    body = {"model": "cloud", "temperature": 0, "messages": [{"role": "user", "content": "what does a hit save?"}]}
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        assert [c.post("/v1/chat/completions", json=body).headers["x-nlweb-cache"] for _ in range(4)] == \
            ["miss", "hit", "hit", "hit"]
        stats = c.get("/admin/stats").json()
    saved = stats["caches"]["response"]["saved_usd"]
    assert saved > 0
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1280, "height": 1200}, locale="en-US", timezone_id="UTC")
        watch = PageWatch().attach(page)
        page.goto(f"{srv.url}/dashboard?interval=300&window=300")
        row = page.locator('#caches tr[data-cache="response"]')
        expect(row.locator(".hit-rate")).to_have_text("75.0 %", timeout=10_000)
        expect(row.locator("td").nth(1)).to_have_text("4")
        shown = row.locator(".saved").inner_text()
        assert shown.startswith("$") and float(shown[1:]) == pytest.approx(saved, rel=0.01)
        expect(row.locator("td").nth(4)).to_have_text("3")  # hits in the window, from the ledger rows
        screenshot(page, "dashboard-caches.png")
        assert watch.errors == []
        browser.close()


@pytest.fixture()
def fleet_server(tmp_path):
    """Two listed instances (wire-faithful OpenAI-compatible fakes) behind an admission gate, and a launched
    deployment whose replica is a stand-in process (tests/test_fleet_memory.py) reserving its model's memory."""
    from fakes.openai_fake import OpenAIFake
    from nlweb_local.config.settings import AutoscaleSettings, MemorySettings
    from nlweb_local.fleet.autoscaler import Autoscaler
    from nlweb_local.fleet.fleet import Fleet
    from nlweb_local.fleet.replicas import ReplicaSet, ReplicaSets
    from nlweb_local.providers.wrapper import find
    from test_fleet_memory import StandInLauncher

    fakes = [OpenAIFake().start(), OpenAIFake().start()]
    settings = load_settings(environ={"NLWEB_LOCAL_DATA_DIR": str(tmp_path)})
    settings.llm.deployments = [
        DeploymentSettings(name="pool", engine="llama_cpp_server", model="fake-model", api_key="sk-test",
                           instances=[f"{f.url}/v1" for f in fakes], fleet={"slots": 2}),
        DeploymentSettings(name="smol", engine="llama_cpp_server", replicas=1)]
    settings.llm.health_interval_s = 0.3
    settings.llm.memory = MemorySettings(budget_mb=1000)
    settings.llm.embedded_enabled = False
    tel = build_telemetry(settings)  # (it serves the dashboard)
    comp = scripted_service(settings, {}, embedder=Nothing(), store=Nothing(), telemetry=tel)
    fleet = find(comp.router.provider("smol"), Fleet)
    launcher = StandInLauncher("smol", fleet, lambda url: ScriptedProvider("smol", text="hi"),
                               comp.replicas.get("smol").launcher.model_path, "smol", memory=comp.memory, size_mb=300)
    scaler = Autoscaler("smol", fleet, launcher, AutoscaleSettings(min_replicas=1, max_replicas=2, interval_s=0.2))
    comp.replicas = ReplicaSets([ReplicaSet("smol", launcher, scaler, 1)])  # (in place of real llama_cpp.server ones)
    srv = LiveServer(create_app(settings, comp, close_components=True))
    yield srv, fakes
    srv.stop()
    tel.close()
    for f in fakes:
        f.stop()


def test_dashboard_shows_instances_models_launched_replicas_autoscaler_and_admission_gate(fleet_server):
    srv, fakes = fleet_server
    fleet = httpx.get(f"{srv.url}/admin/fleet").json()
    (replica,) = next(d for d in fleet["deployments"] if d["deployment"] == "smol")["replicas"]["launched"]
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1280, "height": 1600}, locale="en-US", timezone_id="UTC")
        watch = PageWatch().attach(page)
        page.goto(f"{srv.url}/dashboard?interval=300&window=300")
        for f in fakes:  # the listed instances, with what their /v1/models says they have loaded
            row = page.locator(f'#instances tr[data-instance="{f.url}/v1"]')
            expect(row.locator(".models")).to_have_text("fake-model", timeout=10_000)
            expect(row.locator("td").nth(2)).to_have_text("up")
        expect(page.locator(f'#instances tr[data-instance="{replica["url"]}"] td').nth(0)).to_have_text("smol")
        launched = page.locator(f'#replicas tr[data-replica="{replica["pid"]}"] td')
        expect(launched.nth(0)).to_have_text("smol")
        expect(launched.nth(2)).to_have_text(str(replica["port"]))
        expect(launched.nth(3)).to_have_text("serving")
        expect(launched.nth(5)).to_have_text("300 MiB")  # its model's memory, reserved in the host's budget
        expect(page.locator('#autoscalers tr[data-autoscaler="smol"] .replicas')).to_have_text("1 → 1")
        expect(page.locator('#autoscalers tr[data-autoscaler="smol"] td').nth(2)).to_have_text("1–2")
        gate = page.locator('#gates tr[data-gate="pool"]')
        expect(gate.locator("td").nth(1)).to_have_text("0 / 4")  # two instances x fleet.slots 2
        expect(gate.locator(".waiting")).to_have_text("0 / 64")
        expect(gate.locator(".drain")).to_have_text("not measured")
        expect(page.locator('#gates tr[data-gate="smol"]')).to_have_count(0)  # no gate: no row
        screenshot(page, "dashboard-fleet.png")
        assert watch.errors == []
        browser.close()
    assert httpx.get(f"{srv.url}/admin/memory").json()["reserved"][0]["size_mb"] == 300
