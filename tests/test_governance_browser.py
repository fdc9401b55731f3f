"""The chat page with auth on, in headless Chromium: the first 401 asks for an API key once, the page keeps
it and sends it (x-api-key) on /sites and /ask from then on."""
from __future__ import annotations

import pytest

pytest.importorskip("playwright.sync_api")
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from browser_util import launch_chromium  # noqa: E402
from conftest import LiveServer  # noqa: E402
from governance_app import governed_service  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # (Chromium and a live server: ~15 s)


def test_the_chat_page_asks_for_a_key_once_and_sends_it(tmp_path):
    svc = governed_service(tmp_path)
    key = svc.key("browser", "user")
    srv = LiveServer(svc.app)
    prompts: list[str] = []
    seen: list[tuple[str, int, str | None]] = []
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page()

            def on_dialog(dialog):
                prompts.append(dialog.message)
                dialog.accept(key)

            page.on("dialog", on_dialog)
            page.on("response", lambda r: seen.append((r.url.split("?")[0].removeprefix(srv.url), r.status,
                                                      r.request.headers.get("x-api-key"))))
            page.goto(srv.url + "/")
            expect(page.get_by_label("Your question")).to_be_enabled()
            page.wait_for_function("() => localStorage.getItem('nlweb-local.api-key') !== null")
            box = page.get_by_label("Your question")
            box.fill("soup")
            with page.expect_response(lambda r: "/ask?" in r.url) as asked:
                box.press("Enter")
            assert asked.value.status != 401 and asked.value.request.headers.get("x-api-key") == key
            browser.close()
    finally:
        srv.stop()
    assert len(prompts) == 1 and "API key" in prompts[0]
    sites = [s for s in seen if s[0] == "/sites"]
    assert sites[0][1] == 401 and sites[-1] == ("/sites", 200, key)
    assert all(s[1] != 401 for s in seen if s[0] == "/ask")
