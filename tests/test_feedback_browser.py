"""The chat page's thumbs control, in headless Chromium: an answered turn offers thumbs up / down, a click
POSTs /feedback with the answer's request id (its x-request-id) and query id, and both buttons lock."""
from __future__ import annotations

import json
from urllib.parse import parse_qs, urlparse

import pytest

pytest.importorskip("playwright.sync_api")
from playwright.sync_api import expect  # noqa: E402

from test_browser import ask, browser, canned_stream, context, install_canned_server, wait_turn_finished  # noqa: E402,F401

pytestmark = pytest.mark.browser


def test_thumbs_send_feedback_for_the_answer(context):  # noqa: F811
    page = context.new_page()
    install_canned_server(page)
    sent = []

    def answer(route):
        q = {k: v[0] for k, v in parse_qs(urlparse(route.request.url).query).items()}
        status, ctype, body = canned_stream(q.get("query", ""), q.get("generate_mode", "list"), [])
        route.fulfill(status=status, content_type=ctype, body=body, headers={"x-request-id": "req-42"})

    def feedback(route):
        sent.append(json.loads(route.request.post_data or "{}"))
        route.fulfill(status=201, json={"recorded": True, "model_version": "smol@v2", "experiment": 3})

    page.route("http://nlweb.test/ask?**", answer)
    page.route("http://nlweb.test/feedback", feedback)
    page.goto("http://nlweb.test/")
    ask(page, "vegetarian curry", "list")
    turn = wait_turn_finished(page, 1)
    up = turn.get_by_role("button", name="Good answer")
    down = turn.get_by_role("button", name="Bad answer")
    expect(up).to_be_visible()
    down.click()
    expect(turn.locator(".rate-note")).to_have_text("Thanks for the feedback.")
    assert sent == [{"rating": -1, "request_id": "req-42"}]  # (the canned stream carries no query_id)
    expect(up).to_be_disabled()
    expect(down).to_have_attribute("aria-pressed", "true")
    # a failed answer offers no rating
    ask(page, "boom", "list")
    failed = wait_turn_finished(page, 2)
    expect(failed.get_by_role("button", name="Good answer")).to_have_count(0)
