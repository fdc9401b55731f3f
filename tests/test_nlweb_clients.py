"""What NLWeb's own front-ends read from this server (issue 13), asserted on the wire.

- the current chat page (`chat-interface-unified.js`): `GET /chat/sse?message=<JSON>` through an EventSource,
  or `/chat/ws`, sending NLWeb's chat envelope and reading begin-nlweb-response ... end-nlweb-response;
- the 2025 pages (index.html, str_chat.html, debug.html): an EventSource on /ask reading v1, which must end
  with `complete` (else the EventSource asks again) and must not repeat items in generate mode;
- who.html: an EventSource on `/who?...&streaming=true` reading `result` then `complete`.

The app is the one `serve` composes, with a scripted LLM and an inert embedder over a real embedded Qdrant.
"""
from __future__ import annotations

import json
from contextlib import contextmanager

import pytest
from starlette.testclient import TestClient

from nlweb_local.core.types import Item, TaskKind
from nlweb_local.providers.testing import FunctionLLM
from nlweb_local.server.app import create_app
from stand_ins import NoEmbedder, scripted_service, service_settings

SCORES = {"Apple pie": 90, "Lentil curry": 80, "Pear tart": 70, "Rain jacket": 20}
ASSISTANT = {"id": "nlweb_assistant", "name": "NLWeb Assistant"}
EVENTSOURCE = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}  # what a browser's EventSource sends


def answer(task: TaskKind, prompt: str, schema) -> str:
    if task is TaskKind.RANK:
        name = next(n for n in SCORES if n in prompt)
        return json.dumps({"score": SCORES[name], "description": f"{name} fits"})
    if task is TaskKind.DECONTEXTUALIZE:
        return json.dumps({"decontextualized_query": "vegan apple pie"})
    if task is TaskKind.SUMMARIZE:
        return "The Apple pie and the Pear tart are desserts."
    return "Bake the apple pie [1]."


@contextmanager
def kitchen_app(tmp_path):
    """The served app over a four-item site `kitchen`, scored by `answer`."""
    from nlweb_local.retrieval.qdrant_store import QdrantStore

    settings = service_settings(tmp_path)
    settings.search.llm_rank_limit = 10
    settings.search.llm_weight, settings.search.calibrate_llm = 1.0, False  # the scores are the scripted ones
    embedder = NoEmbedder()
    store = QdrantStore(dimension=2, path=tmp_path / "q")
    items = [Item(f"https://e.example/{i}", name, "kitchen", json.dumps({"@type": "Recipe", "name": name}))
             for i, name in enumerate(SCORES)]
    store.upsert(items, embedder.embed([i.name for i in items]))
    comp = scripted_service(settings, {}, embedder=embedder, store=store, telemetry=None, llm=FunctionLLM(answer))
    try:
        yield create_app(settings, comp, close_components=False)
    finally:
        store.close()


@pytest.fixture()
def client(tmp_path):
    with kitchen_app(tmp_path) as app, TestClient(app, raise_server_exceptions=False, base_url="http://localhost") as c:
        yield c


def sse(response) -> list[dict]:
    """The `data:` messages of an SSE body; fails on any line that is not data, a comment or a separator."""
    assert response.headers["content-type"].startswith("text/event-stream"), response.text
    out = []
    for line in response.text.split("\n"):
        if line.startswith("data: "):
            out.append(json.loads(line[6:]))
        else:
            assert line == "" or line.startswith(":"), f"unexpected SSE line {line!r}"
    assert response.text.endswith("\n\n")
    return out


def chat_envelope(query: str, *, mode: str = "list", site="all", prev=(), conversation_id="1764180000000") -> dict:
    """The message chat-interface-unified.js builds (createUserMessage)."""
    return {"message_id": "msg_1764180000001_abcdefghi", "conversation_id": conversation_id, "type": "message",
            "message_type": "user",
            "content": {"query": query, "site": site, "mode": mode,
                        "prev_queries": [{"query": q, "user_id": "user_1", "timestamp": "2026-11-26T17:00:00.000Z"}
                                         for q in prev]},
            "timestamp": "2026-11-26T17:00:01.000Z", "sender_info": {"id": "user_1", "name": "user_1"}}


def chat_sse(client, envelope: dict):
    return client.get("/chat/sse", params={"message": json.dumps(envelope)}, headers=EVENTSOURCE)


def items_of(messages: list[dict]) -> list[dict]:
    return [it for m in messages if m.get("message_type") == "result" for it in m["content"]]


# --- /chat/sse -----------------------------------------------------------------------------------

def test_chat_sse_answers_in_nlweb_chat_framing(client):
    r = chat_sse(client, chat_envelope("apple desserts"))
    assert r.status_code == 200
    msgs = sse(r)
    assert msgs[0] == {"type": "message_ack", "message_id": "msg_1764180000001_abcdefghi",
                       "conversation_id": "1764180000000"}
    assert msgs[1]["message_type"] == "begin-nlweb-response" and msgs[1]["query"] == "apple desserts"
    # site "all": which sites are searched (the page clears its first spinner only on this message)
    assert msgs[2]["message_type"] == "asking_sites" and msgs[2]["sites"] == [{"domain": "kitchen", "name": "kitchen"}]
    assert msgs[-1]["message_type"] == "end-nlweb-response" and "error" not in msgs[-1]
    assert all(m["conversation_id"] == "1764180000000" for m in msgs)  # the page files every message by it
    for m in msgs[2:-1]:
        assert m["sender_info"] == ASSISTANT and isinstance(m["timestamp"], int) and m["message_id"]
    items = items_of(msgs)
    assert [it["name"] for it in sorted(items, key=lambda i: -i["score"])] == ["Apple pie", "Lentil curry", "Pear tart"]
    for it in items:  # the page renders each card from these fields, and sorts the groups by content[0].score
        assert it["@type"] == "Item" and it["url"].startswith("https://e.example/") and it["site"] == "kitchen"
        assert it["schema_object"]["@type"] == "Recipe" and isinstance(it["description"], str)
    assert len({it["url"] for it in items}) == len(items)


def test_chat_sse_summary_and_generate_are_what_the_page_reads(client):
    msgs = sse(chat_sse(client, chat_envelope("desserts", mode="summarize")))
    summaries = [m for m in msgs if m.get("message_type") == "summary"]
    assert [m["content"] for m in summaries] == ["The Apple pie and the Pear tart are desserts."]
    assert len(items_of(msgs)) == 3  # the list still comes first, as cards

    msgs = sse(chat_sse(client, chat_envelope("what should I bake?", mode="generate")))
    kinds = [m.get("message_type") for m in msgs]
    assert "result" not in kinds, "generate mode: the items come once, in nlws (else the page shows them twice)"
    nlws = [m for m in msgs if m.get("message_type") == "nlws"]
    assert len(nlws) == 1 and nlws[0]["answer"] == "Bake the apple pie [1]."
    urls = [it["url"] for it in nlws[0]["items"]]
    assert urls and len(set(urls)) == len(urls)
    assert kinds[-1] == "end-nlweb-response"


def test_v05_body_with_chat_style_prev(client):
    """NLWeb's newest page posts a v0.5-style body whose context.prev holds its prev_queries objects."""
    body = {"query": {"text": "only vegan ones", "site": "kitchen"}, "prefer": {"streaming": False, "mode": "list"},
            "context": {"prev": [{"query": "apple pie, with cream", "user_id": "u", "timestamp": "t"}]},
            "meta": {"version": "0.55"}}
    r = client.post("/ask", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["results"]


def test_chat_sse_follow_up_uses_prev_queries_and_site(client):
    msgs = sse(chat_sse(client, chat_envelope("only vegan ones", site="kitchen", prev=["apple pie recipes"])))
    assert "asking_sites" not in [m.get("message_type") for m in msgs]  # one site named
    dq = [m for m in msgs if m.get("message_type") == "decontextualized_query"]
    assert dq and dq[0]["original_query"] == "only vegan ones"
    assert dq[0]["decontextualized_query"] == "vegan apple pie"
    assert items_of(msgs)
    none = sse(chat_sse(client, chat_envelope("apple pie", site="elsewhere")))
    assert [m["content"] for m in none if m.get("message_type") == "no_results"]  # the page shows `content`
    assert none[-1]["message_type"] == "end-nlweb-response"


@pytest.mark.parametrize(("params", "needle"), [
    ({}, "'message'"),
    ({"message": "{not json"}, "'message'"),
    ({"message": json.dumps({"type": "message", "content": {"site": "all"}})}, "content.query"),
    ({"message": json.dumps({"content": {"query": "x", "mode": "poem"}})}, "content.mode"),
    ({"message": json.dumps(["x"])}, "JSON object"),
])
def test_chat_sse_bad_message_is_a_clear_400(client, params, needle):
    r = client.get("/chat/sse", params=params, headers=EVENTSOURCE)
    assert r.status_code == 400
    assert needle in json.dumps(r.json())


# --- /chat/ws --------------------------------------------------------------------------------------

def receive_answer(ws) -> list[dict]:
    """Messages up to and including end-nlweb-response."""
    out = []
    while not out or out[-1].get("message_type") != "end-nlweb-response":
        out.append(ws.receive_json())
    return out


def test_chat_ws_round_trip(client):
    with client.websocket_connect("/chat/ws?anon_user_id=anon_42") as ws:
        assert ws.receive_json() == {"type": "connected", "participant_id": "anon_42"}
        ws.send_json({"type": "ping"})
        assert ws.receive_json() == {"type": "pong"}
        ws.send_json({"type": "sites_request"})
        assert ws.receive_json() == {"type": "sites_response", "sites": ["kitchen"]}

        ws.send_json(chat_envelope("apple desserts", conversation_id="conv-ws"))
        first = receive_answer(ws)
        assert first[0]["type"] == "message_ack"
        assert first[1]["message_type"] == "begin-nlweb-response"
        assert len(items_of(first)) == 3
        assert all(m["conversation_id"] == "conv-ws" for m in first)

        # the same socket carries the next question of the conversation
        ws.send_json(chat_envelope("only vegan ones", conversation_id="conv-ws", prev=["apple desserts"]))
        second = receive_answer(ws)
        assert any(m.get("message_type") == "decontextualized_query" for m in second)

        ws.send_text("{oops")
        error = ws.receive_json()
        assert error["type"] == "error" and error["error"] == "invalid_json"
        ws.send_json({"type": "message", "conversation_id": "conv-ws", "content": {"query": ""}})
        error = ws.receive_json()
        assert error["type"] == "error" and "content.query" in error["message"]
        ws.send_json({"type": "join", "conversation_id": "conv-ws"})
        assert ws.receive_json()["type"] == "end-conversation-history"


# --- /who -------------------------------------------------------------------------------------------

def test_who_streams_when_asked_and_answers_json_otherwise(client):
    msgs = sse(client.get("/who", params={"query": "apple pie", "streaming": "true"}, headers=EVENTSOURCE))
    assert [m["message_type"] for m in msgs] == ["result", "complete"]
    (site,) = msgs[0]["content"]
    assert site["name"] == "kitchen" and site["url"] == "kitchen" and isinstance(site["score"], int)
    assert site["description"] and site["item_count"] == 4

    body = client.get("/who", params={"query": "apple pie"}).json()
    assert body["message_type"] == "who" and [s["site"] for s in body["sites"]] == ["kitchen"]
    assert client.get("/who", params={"streaming": "true"}).status_code == 400


# --- /ask: which dialect, and the `complete` an EventSource needs ---------------------------------

def test_eventsource_gets_v1_ending_with_complete(client):
    msgs = sse(client.get("/ask", params={"query": "apple desserts", "generate_mode": "summarize"}, headers=EVENTSOURCE))
    kinds = [m["message_type"] for m in msgs]
    assert kinds[-1] == "complete" and kinds.count("complete") == 1
    assert "result_batch" in kinds and "summary" in kinds and "begin-nlweb-response" not in kinds
    assert next(m for m in msgs if m["message_type"] == "summary")["message"] == "The Apple pie and the Pear tart are desserts."


def test_dialect_rule_and_api_override(client):
    plain = sse(client.get("/ask", params={"query": "apple"}))  # no Accept: text/event-stream (curl, fetch)
    assert plain[0]["message_type"] == "begin-nlweb-response" and plain[-1]["message_type"] == "end-nlweb-response"
    forced = sse(client.get("/ask", params={"query": "apple", "api": "v3"}, headers=EVENTSOURCE))
    assert forced[-1]["message_type"] == "end-nlweb-response"
    posted = client.post("/ask", json={"query": "apple", "api": "v1"}, headers={"Accept": "text/event-stream"})
    assert sse(posted)[-1]["message_type"] == "complete"
    assert sse(client.post("/ask", json={"query": "apple"}, headers=EVENTSOURCE))[-1]["message_type"] == "end-nlweb-response"


def test_eventsource_error_still_ends_with_complete(client):
    msgs = sse(client.get("/ask", params={"query": "apple", "site": "elsewhere"}, headers=EVENTSOURCE))
    assert [m["message_type"] for m in msgs] == ["no_results", "complete"]


def test_v1_generate_sends_each_item_once(client):
    """NLWeb's 2025 pages add `nlws` items to every `result_batch` item they hold: each item must come once."""
    msgs = sse(client.get("/ask", params={"query": "what to bake", "generate_mode": "generate"}, headers=EVENTSOURCE))
    kinds = [m["message_type"] for m in msgs]
    assert "result_batch" not in kinds and kinds[-1] == "complete"
    shown = [it["url"] for m in msgs for it in m.get("results", []) + m.get("items", [])]
    assert shown and len(shown) == len(set(shown))
    body = client.get("/ask", params={"query": "what to bake", "generate_mode": "generate", "api": "v1",
                                      "streaming": "false"}).json()
    assert body["nlws"]["answer"] == "Bake the apple pie [1]."
    assert [it["url"] for it in body["results"]] == [it["url"] for it in body["nlws"]["items"]]


def test_v1_decontextualized_query_names_the_original(client):
    """The 2025 pages show "Query interpreted as ..." only when both fields are present."""
    msgs = sse(client.get("/ask", params={"query": "vegan ones", "prev": json.dumps(["apple pie"])}, headers=EVENTSOURCE))
    dq = next(m for m in msgs if m["message_type"] == "decontextualized_query")
    assert dq["original_query"] == "vegan ones" and dq["decontextualized_query"] == "vegan apple pie"
