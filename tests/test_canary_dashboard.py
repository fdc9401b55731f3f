"""A canary in a real server (uvicorn, lifespan on: the canary watch runs every registry.canary_check_s),
watched on /dashboard in headless Chromium: traffic flows, the stages advance by themselves, the alias
moves at 100 %, and the page shows the release and its last decision."""
from __future__ import annotations

import threading
import time

import httpx
import pytest

pytest.importorskip("playwright.sync_api")
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from browser_util import launch_chromium, screenshot  # noqa: E402
from conftest import LiveServer  # noqa: E402
from nlweb_local.providers.testing import ScriptedProvider  # noqa: E402
from nlweb_local.registry.canary import start_canary  # noqa: E402
from nlweb_local.server.app import create_app  # noqa: E402
from nlweb_local.telemetry import build_telemetry  # noqa: E402
from stand_ins import scripted_service  # noqa: E402
from test_registry_routing import registered, settings_for  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_the_server_advances_a_canary_by_itself_and_the_dashboard_shows_it(tmp_path):
    settings = settings_for(tmp_path)
    settings.registry.canary_check_s = 0.2
    registered(tmp_path, settings)
    tel = build_telemetry(settings)
    comp = scripted_service(settings, {"smol-v1": ScriptedProvider("smol-v1", "one"),
                                       "smol-v2": ScriptedProvider("smol-v2", "two")}, telemetry=tel)
    srv = LiveServer(create_app(settings, comp, close_components=False))
    stop = threading.Event()

    def traffic():
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            i = 0
            while not stop.is_set():
                c.post("/v1/chat/completions", json={"model": "chat-default", "messages": [{"role": "user", "content": "hi"}]},
                       headers={"x-nlweb-conversation": f"c{i}"})
                i += 1
    feeder = threading.Thread(target=traffic, daemon=True)
    try:
        start_canary(comp.registry, "smol", "v2", alias="chat-default", stages="20,50,100", guards="error_rate<2%",
                     min_requests=15, by="ci")
        feeder.start()
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": 1280, "height": 1200}, locale="en-US", timezone_id="UTC")
            page.goto(f"{srv.url}/dashboard?interval=300")
            row = page.locator("#canaries tr[data-canary]").first
            expect(row.locator("td").nth(1)).to_have_text("smol@v1 → smol@v2", timeout=10_000)
            expect(row.locator(".state")).to_have_text("promoted", timeout=30_000)
            expect(row.locator("td").nth(6)).to_contain_text("promote: stage 2 passed")
            screenshot(page, "dashboard-canary.png")
            browser.close()
        assert comp.registry.aliases()[0].key == "smol@v2"
        decisions = comp.registry.canaries.decisions(comp.registry.canaries.canaries()[0].id)
        assert [d["action"] for d in decisions] == ["start", "advance", "promote"]
        assert decisions[-1]["by"].startswith("canary-watch:")
    finally:
        stop.set()
        if feeder.is_alive():
            feeder.join(10)
        srv.stop()
        tel.close()
        time.sleep(0)
