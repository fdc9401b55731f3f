"""The chat page and the dashboard with auth on, in headless Chromium (a real server): the first 401 shows
the key field (static/auth.js); the key typed into it is kept in this tab's sessionStorage (never
localStorage) and sent as `Authorization: Bearer` on every request from then on — /sites, the /ask stream,
the dashboard's /admin/stats, /admin/fleet and /admin/canary — and the page then shows data."""
from __future__ import annotations

import pytest

pytest.importorskip("playwright.sync_api")
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from browser_util import launch_chromium  # noqa: E402
from conftest import LiveServer  # noqa: E402
from governance_app import governed_service  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # (Chromium and a live server: ~15 s)


def _watch(page, srv, seen):
    page.on("response", lambda r: seen.append((r.url.split("?")[0].removeprefix(srv.url), r.status,
                                              r.request.headers.get("authorization"))))


def test_the_chat_page_takes_a_key_in_its_key_field_and_sends_it_as_a_bearer_token(tmp_path):
    svc = governed_service(tmp_path)
    key = svc.key("browser", "user")
    srv = LiveServer(svc.app)
    seen: list[tuple[str, int, str | None]] = []
    dialogs: list[str] = []
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page()
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            _watch(page, srv, seen)
            page.goto(srv.url + "/")
            field = page.get_by_label("API key")
            expect(field).to_be_visible()  # /sites answered 401: the key field is shown, saying why
            expect(page.locator("#api-key-note")).to_contain_text("missing credentials")
            field.fill(key)
            with page.expect_response(lambda r: r.url.startswith(srv.url + "/sites") and r.status == 200):
                page.get_by_role("button", name="Use key").click()
            expect(field).to_be_hidden()
            assert page.evaluate("() => sessionStorage.getItem('nlweb-local.api-key')") == key
            assert page.evaluate("() => localStorage.getItem('nlweb-local.api-key')") is None
            box = page.get_by_label("Your question")
            box.fill("soup")
            with page.expect_response(lambda r: "/ask?" in r.url) as asked:
                box.press("Enter")
            assert asked.value.status == 200
            assert asked.value.request.headers.get("authorization") == f"Bearer {key}"
            expect(page.locator(".turn").last).to_contain_text("soup")
            browser.close()
    finally:
        srv.stop()
    assert dialogs == []  # no prompt() any more
    sites = [s for s in seen if s[0] == "/sites"]
    assert sites[0][1] == 401 and sites[-1] == ("/sites", 200, f"Bearer {key}")


def test_the_dashboard_shows_data_once_an_operator_key_is_entered(tmp_path):
    svc = governed_service(tmp_path, telemetry=True)
    user, operator = svc.key("reader", "user"), svc.key("ops", "operator")
    srv = LiveServer(svc.app)
    seen: list[tuple[str, int, str | None]] = []
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page()
            _watch(page, srv, seen)
            page.goto(srv.url + "/dashboard?interval=300")
            field = page.get_by_label("API key")
            expect(field).to_be_visible()  # the page loads (it holds no data); /admin/stats said 401
            expect(page.locator("#status")).to_contain_text("HTTP 401")
            field.fill(user)  # a user's key: the dashboard's data needs an operator
            page.get_by_role("button", name="Use key").click()
            expect(page.locator("#api-key-note")).to_contain_text("needs the operator role")
            field.fill(operator)
            page.get_by_role("button", name="Use key").click()
            expect(page.locator("#status")).to_contain_text("updated")
            expect(field).to_be_hidden()
            page.wait_for_function("() => Number(document.body.dataset.updates || 0) >= 2")
            expect(page.locator("#kpi-calls")).not_to_have_text("–")  # a figure from /admin/stats
            assert page.evaluate("() => sessionStorage.getItem('nlweb-local.api-key')") == operator
            browser.close()
    finally:
        srv.stop()
    stats = [s for s in seen if s[0] == "/admin/stats"]
    assert stats[0][1] == 401 and (403, f"Bearer {user}") in [(s[1], s[2]) for s in stats]
    assert stats[-1] == ("/admin/stats", 200, f"Bearer {operator}")
    assert ("/dashboard", 200, None) in seen
