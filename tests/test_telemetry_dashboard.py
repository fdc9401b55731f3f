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
