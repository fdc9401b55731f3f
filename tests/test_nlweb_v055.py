"""NLWeb's newest chat page (late 2025) on /ask: it POSTs a v0.5-shaped body with `meta.version: "0.55"` and
reads the SSE body by event name (`start`, `result` with `{item}`, `complete`, `error`; events without a name
pass through as chat messages). Asserted on the wire, parsed the way that page parses it."""
from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from test_nlweb_clients import kitchen_app


@pytest.fixture()
def client(tmp_path):
    with kitchen_app(tmp_path) as app, TestClient(app, raise_server_exceptions=False, base_url="http://localhost") as c:
        yield c


def page_body(text: str, *, mode: str = "list", site: str = "all", prev=(), version="0.55", streaming=True) -> dict:
    """What that page's connectSSE builds from its chat message."""
    body = {"query": {"text": text, "site": site}, "prefer": {"streaming": streaming, "mode": mode},
            "meta": {"version": version, "session_context": {"conversation_id": "1764180000000"}}}
    if prev:
        body["context"] = {"prev": [{"query": q, "user_id": "u1", "timestamp": "2026-11-26T17:00:00.000Z"} for q in prev]}
    return body


def named_events(response) -> list[tuple[str | None, dict]]:
    """(event name or None, data) per SSE event; any other line than event/data/comment fails."""
    assert response.headers["content-type"].startswith("text/event-stream"), response.text
    assert response.text.endswith("\n\n")
    out = []
    for block in response.text.split("\n\n")[:-1]:
        name, data = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:].strip()
            elif line.startswith("data: "):
                data = json.loads(line[6:])
            else:
                assert line.startswith(":"), f"unexpected SSE line {line!r}"
        if data is not None:
            out.append((name, data))
    return out


def post(client, body: dict):
    return client.post("/ask", json=body, headers={"Content-Type": "application/json"})  # the page sets no Accept


def test_v055_list_streams_start_one_result_per_item_then_complete(client):
    events = named_events(post(client, page_body("apple desserts", site="kitchen")))
    names = [n for n, _ in events]
    assert names[0] == "start" and names[-1] == "complete"
    assert names.count("start") == 1 and names.count("complete") == 1
    items = [d["item"] for n, d in events if n == "result"]
    assert [it["name"] for it in sorted(items, key=lambda i: -i["score"])] == ["Apple pie", "Lentil curry", "Pear tart"]
    for it in items:  # the fields the page renders a card from
        assert it["url"].startswith("https://e.example/") and it["site"] == "kitchen"
        assert it["schema_object"]["@type"] == "Recipe" and isinstance(it["description"], str)
    assert [d["index"] for n, d in events if n == "result"] == [0, 1, 2]
    assert events[0][1]["_meta"] == {"version": "0.55", "response_type": "answer", "mode": "list", "site": "kitchen"}
    assert events[0][1]["conversation_id"] == "1764180000000"
    assert events[-1][1]["_meta"] == {"version": "0.55"}


def test_v055_summary_and_generate_pass_through_unnamed(client):
    events = named_events(post(client, page_body("desserts", mode="summarize", site="kitchen")))
    summaries = [d for n, d in events if n is None and d.get("message_type") == "summary"]
    assert [d["content"] for d in summaries] == ["The Apple pie and the Pear tart are desserts."]
    assert sum(n == "result" for n, _ in events) == 3

    events = named_events(post(client, page_body("what should I bake?", mode="generate", site="kitchen")))
    assert "result" not in [n for n, _ in events], "generate mode: the items come once, in nlws"
    nlws = [d for n, d in events if n is None and d.get("message_type") == "nlws"]
    assert len(nlws) == 1 and nlws[0]["answer"] == "Bake the apple pie [1]."
    urls = [it["url"] for it in nlws[0]["items"]]
    assert urls and len(set(urls)) == len(urls)
    assert events[-1][0] == "complete"


def test_v055_follow_up_and_no_results(client):
    events = named_events(post(client, page_body("only vegan ones", site="kitchen", prev=["apple pie recipes"])))
    dq = [d for n, d in events if n is None and d.get("message_type") == "decontextualized_query"]
    assert dq and dq[0]["decontextualized_query"] == "vegan apple pie"
    assert any(n == "result" for n, _ in events)

    events = named_events(post(client, page_body("apple pie", site="elsewhere")))
    assert [d["content"] for n, d in events if n is None and d.get("message_type") == "no_results"]
    assert events[-1][0] == "complete"


def test_older_v05_versions_keep_unnamed_events_and_api_overrides(client):
    r = post(client, page_body("apple desserts", site="kitchen", version="0.54"))
    assert "event:" not in r.text and '"results"' in r.text
    r = client.post("/ask?api=v0.55", json=page_body("apple desserts", site="kitchen", version="0.54"))
    assert "event: result" in r.text
    r = client.post("/ask?api=v0.5", json=page_body("apple desserts", site="kitchen"))
    assert "event:" not in r.text


def test_v055_not_streamed_is_one_json_answer(client):
    r = post(client, page_body("apple desserts", site="kitchen", streaming=False))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["_meta"] == {"version": "0.55", "response_type": "answer"}
    assert [it["name"] for it in body["results"]] == ["Apple pie", "Lentil curry", "Pear tart"]


def test_v055_missing_text_is_a_clear_400(client):
    r = post(client, {"query": {"site": "kitchen"}, "prefer": {"streaming": True}, "meta": {"version": "0.55"}})
    assert r.status_code == 400 and "query.text" in r.text
