"""NLWeb's browser transports against a served nlweb-local, in headless Chromium: a real `EventSource` and a
real `WebSocket`, used the way NLWeb's pages use them (the JavaScript below is this project's own).

- the 2025 pages: `new EventSource('/ask?...')`, closed when `complete` arrives;
- the current chat page: `new EventSource('/chat/sse?message=<JSON>')` and `new WebSocket('/chat/ws')`,
  reading up to `end-nlweb-response`;
- who.html: `new EventSource('/who?query=...&streaming=true')`, closed on `complete`.

The app is `test_nlweb_clients.kitchen_app` (scripted LLM), served by uvicorn on a free port.
"""
from __future__ import annotations

import json
from urllib.parse import urlparse

import pytest

pytest.importorskip("playwright.sync_api")  # part of the [test] extra
from playwright.sync_api import sync_playwright  # noqa: E402

from browser_util import launch_chromium  # noqa: E402
from conftest import LiveServer  # noqa: E402
from test_nlweb_clients import chat_envelope, kitchen_app  # noqa: E402

pytestmark = pytest.mark.browser

# Opens an EventSource, keeps every message, and settles when `last` arrives (closing it, as NLWeb's pages
# do) or when the browser reports an error (then with what arrived so far and the error flag).
READ_EVENTSOURCE = """([url, last]) => new Promise((resolve) => {
  const got = [];
  const es = new EventSource(url);
  es.onmessage = (e) => {
    const m = JSON.parse(e.data);
    got.push(m);
    if (m.message_type === last) { es.close(); resolve({messages: got, error: false}); }
  };
  es.onerror = () => { es.close(); resolve({messages: got, error: true}); };
})"""

READ_WEBSOCKET = """([path, envelopes]) => new Promise((resolve) => {
  const got = [];
  let answered = 0;
  const ws = new WebSocket(`ws://${location.host}${path}`);
  ws.onopen = () => envelopes.forEach((m) => ws.send(JSON.stringify(m)));
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    got.push(m);
    if (m.message_type === 'end-nlweb-response' && ++answered === envelopes.length) { ws.close(); resolve(got); }
  };
  ws.onerror = () => resolve(got);
})"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with kitchen_app(tmp_path_factory.mktemp("kitchen")) as app:
        srv = LiveServer(app)
        yield srv
        srv.stop()


@pytest.fixture()
def page(served):
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page()
        page.requests = []  # type: ignore[attr-defined]
        page.on("request", lambda r: page.requests.append(urlparse(r.url).path))  # type: ignore[attr-defined]
        page.goto(served.url + "/health")  # any same-origin page: the transports below use relative URLs
        yield page
        browser.close()


def test_eventsource_on_ask_gets_complete_and_asks_once(page):
    for mode in ("list", "summarize", "generate"):
        got = page.evaluate(READ_EVENTSOURCE, [f"/ask?query=apple+desserts&site=kitchen&generate_mode={mode}"
                                               "&query_id=q1&prev=%5B%5D", "complete"])
        assert got["error"] is False, got
        kinds = [m["message_type"] for m in got["messages"]]
        assert kinds[-1] == "complete" and all(m.get("query_id") == "q1" for m in got["messages"])
        shown = [it["url"] for m in got["messages"] for it in m.get("results", []) + m.get("items", [])]
        assert shown and len(shown) == len(set(shown)), f"{mode}: an item would be shown twice"
    assert page.requests.count("/ask") == 3  # one request per question: no EventSource reconnection


def test_chat_page_transports(page):
    envelope = chat_envelope("apple desserts", conversation_id="conv-browser")
    got = page.evaluate(READ_EVENTSOURCE, ["/chat/sse?message=" + json.dumps(envelope), "end-nlweb-response"])
    assert got["error"] is False
    kinds = [m.get("message_type", m.get("type")) for m in got["messages"]]
    assert kinds[:2] == ["message_ack", "begin-nlweb-response"] and kinds[-1] == "end-nlweb-response"
    assert sum(len(m["content"]) for m in got["messages"] if m.get("message_type") == "result") == 3

    follow = chat_envelope("only vegan ones", conversation_id="conv-browser", prev=["apple desserts"])
    got = page.evaluate(READ_WEBSOCKET, ["/chat/ws", [envelope, follow]])
    assert got[0]["type"] == "connected"
    assert [m.get("message_type") for m in got].count("end-nlweb-response") == 2
    assert all(m["conversation_id"] == "conv-browser" for m in got[1:])


def test_who_page_transport(page):
    got = page.evaluate(READ_EVENTSOURCE, ["/who?query=apple+pie&streaming=true", "complete"])
    assert got["error"] is False
    assert [m["message_type"] for m in got["messages"]] == ["result", "complete"]
    assert got["messages"][0]["content"][0]["name"] == "kitchen"
