"""/ask end to end: real SmolLM2 (llama.cpp), real MiniLM embeddings, real embedded Qdrant, real HTTP."""
import json

import httpx
import pytest

pytestmark = pytest.mark.slow
TIMEOUT = httpx.Timeout(180.0)
COMMON = ("message_id", "timestamp", "conversation_id", "sender_info")


def sse_messages(resp: httpx.Response) -> list[dict]:
    assert resp.headers["content-type"].startswith("text/event-stream")
    out = []
    for block in resp.text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))
            else:
                assert line.startswith(":") or not line, f"unexpected SSE line {line!r}"
    return out


def check_item(it: dict) -> None:
    assert it["@type"] == "Item"
    assert it["url"].startswith("https://fixture.example/")
    assert it["site"] == "fixture" and it["siteUrl"] == "fixture"
    assert isinstance(it["name"], str) and it["name"]
    assert isinstance(it["score"], int) and 0 <= it["score"] <= 100
    assert isinstance(it["description"], str)
    assert isinstance(it["schema_object"], dict) and it["schema_object"].get("@type")


def check_v3_sequence(msgs: list[dict], conversation_id: str = "") -> list[dict]:
    assert msgs[0]["message_type"] == "begin-nlweb-response"
    assert msgs[-1]["message_type"] == "end-nlweb-response" and "error" not in msgs[-1]
    for m in msgs[1:-1]:
        for key in COMMON:
            assert key in m, f"{m['message_type']} lacks {key}"
        assert m["conversation_id"] == conversation_id
        assert m["sender_info"] == {"id": "nlweb_assistant", "name": "NLWeb Assistant"}
    items = [it for m in msgs if m["message_type"] == "result" and isinstance(m["content"], list) for it in m["content"]]
    for it in items:
        check_item(it)
    return items


def ask(server, **params):
    return httpx.get(f"{server.url}/ask", params=params, timeout=TIMEOUT)


def test_list_streamed(live_server):
    r = ask(live_server, query="vegetarian curry recipes", site="fixture", conversation_id="c1", max_results=4)
    assert r.status_code == 200
    items = check_v3_sequence(sse_messages(r), "c1")
    assert 1 <= len(items) <= 4
    assert all(it["score"] > 51 for it in items)
    assert len({it["url"] for it in items}) == len(items)
    assert any("Recipe" == it["schema_object"]["@type"] for it in items)


def test_list_not_streamed_is_the_same_messages_as_json(live_server):
    r = ask(live_server, query="waterproof jacket", streaming="false", min_score=0, max_results=3)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    msgs = r.json()
    items = check_v3_sequence(msgs)
    assert 1 <= len(items) <= 3


def test_summarize(live_server):
    msgs = sse_messages(ask(live_server, query="spicy dishes", generate_mode="summarize", min_score=0, max_results=3))
    check_v3_sequence(msgs)
    kinds = [m["message_type"] + ("/" + m["@type"] if "@type" in m else "") for m in msgs]
    assert "result/Summary" in kinds
    summary = next(m for m in msgs if m.get("@type") == "Summary")
    assert isinstance(summary["content"], str) and len(summary["content"]) > 10
    assert kinds.index("result/Summary") > kinds.index("result")  # after the list


def test_generate(live_server):
    msgs = sse_messages(ask(live_server, query="what can I cook with lentils?", generate_mode="generate", min_score=0, max_results=3))
    check_v3_sequence(msgs)
    nlws = [m for m in msgs if m["message_type"] == "nlws"]
    assert len(nlws) == 1 and nlws[0]["@type"] == "GeneratedAnswer"
    assert isinstance(nlws[0]["answer"], str) and nlws[0]["answer"]
    assert nlws[0]["items"]
    for it in nlws[0]["items"]:
        check_item(it)


def test_follow_up_with_prev_is_decontextualised(live_server):
    r = ask(live_server, query="which of them are vegan?", prev=json.dumps(["curry recipes"]), min_score=0, max_results=3)
    msgs = sse_messages(r)
    check_v3_sequence(msgs)
    dq = [m for m in msgs if m["message_type"] == "decontextualized_query"]
    assert len(dq) == 1
    assert dq[0]["original_query"] == "which of them are vegan?"
    assert dq[0]["decontextualized_query"] and dq[0]["decontextualized_query"] != "which of them are vegan?"
    assert [m["message_type"] for m in msgs].index("decontextualized_query") == 1


def test_v1_format_streamed_and_not(live_server):
    msgs = sse_messages(ask(live_server, query="tent", api="v1", min_score=0, max_results=2, generate_mode="summarize"))
    types = [m["message_type"] for m in msgs]
    assert types[-1] == "complete" and "result_batch" in types and "summary" in types
    for m in msgs:
        if m["message_type"] == "result_batch":
            for it in m["results"]:
                check_item(it)
    body = ask(live_server, query="tent", api="v1", streaming="false", min_score=0, max_results=2, query_id="q9").json()
    assert body["query_id"] == "q9" and 1 <= len(body["results"]) <= 2
    scores = [it["score"] for it in body["results"]]
    assert scores == sorted(scores, reverse=True)


def test_v05_dialect(live_server):
    req = {"query": {"text": "camping stove", "site": "fixture", "num_results": 2},
           "prefer": {"streaming": False, "mode": "list"}, "meta": {"api_version": "0.5"}}
    r = httpx.post(f"{live_server.url}/ask", json=req, timeout=TIMEOUT)
    body = r.json()
    assert r.status_code == 200 and body["_meta"]["response_type"] == "Answer"
    assert body["results"], body
    for res in body["results"]:
        assert {"@type", "url", "name", "site", "score", "description", "grounding"} <= res.keys()
    req["prefer"]["streaming"] = True
    r = httpx.post(f"{live_server.url}/ask", json=req, timeout=TIMEOUT)
    lines = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert lines[0]["_meta"]["response_type"] == "Answer"
    assert lines[-1]["_meta"]["nlweb/streaming_status"] == "finished"


def test_sites_who_health_ready(live_server):
    assert httpx.get(f"{live_server.url}/sites").json() == {"message-type": "sites", "sites": ["fixture"]}
    who = httpx.get(f"{live_server.url}/who", params={"query": "recipes"}).json()
    assert who["sites"][0]["site"] == "fixture" and who["sites"][0]["item_count"] == 24
    assert httpx.get(f"{live_server.url}/health").json()["status"] == "healthy"
    ready = httpx.get(f"{live_server.url}/ready")
    assert ready.status_code == 200 and ready.json()["checks"]["store"].startswith("ok")


async def test_mcp_sdk_client_against_the_real_search(live_server):
    """The official MCP SDK client, over streamable HTTP, calling the tools of the real search."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with streamable_http_client(f"{live_server.url}/mcp") as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            names = {t.name for t in (await session.list_tools()).tools}
            assert names == {"ask", "list_sites", "who"}
            result = await session.call_tool("ask", {"query": "backpacking tent", "site": ["fixture"]})
            assert result.is_error is False
            text = result.content[0].text
            assert "https://fixture.example/" in text and "score" in text
            sites = await session.call_tool("list_sites", {})
            assert json.loads(sites.content[0].text) == {"sites": ["fixture"]}
            who = await session.call_tool("who", {"query": "cooking classes"})
            assert who.content[0].text.startswith("fixture")
            bad = await session.call_tool("ask", {"query": "tent", "site": ["nosuchsite"]})
            assert bad.is_error is False and "No items found" in bad.content[0].text


def test_cli_ask_streams_from_a_running_server(live_server, capsys):
    from nlweb_local.cli.main import main

    assert main(["ask", "camping stove", "--server", live_server.url, "--max-results", "3"]) == 0
    out = capsys.readouterr().out
    assert "https://fixture.example/" in out
    assert main(["ask", "camping stove", "--server", live_server.url, "--json", "--mode", "summarize"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["message_type"] == "begin-nlweb-response" and lines[-1]["message_type"] == "end-nlweb-response"
    assert any(m.get("@type") == "Summary" for m in lines)
