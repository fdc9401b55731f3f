"""POST /mcp: the official MCP SDK client against a real uvicorn server, then every bad input.

The tools behind the endpoint are a plain fake: this endpoint is an adapter, the search is wired elsewhere.
"""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.testclient import TestClient

from nlweb_local.core.errors import OverloadedError
from nlweb_local.server import jsonrpc
from nlweb_local.server.mcp import PROTOCOL_VERSIONS, McpServer, mcp_routes

PARSE, INVALID_REQUEST, NO_METHOD, BAD_PARAMS = -32700, -32600, -32601, -32602
HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


class FakeTools:
    def __init__(self):
        self.calls: list[tuple] = []

    async def ask(self, query: str, sites: list[str] | None, generate_mode: str) -> str:
        self.calls.append(("ask", query, sites, generate_mode))
        if query == "explode":
            raise RuntimeError("the search backend exploded")
        if query == "busy":
            raise OverloadedError("the model is busy; retry in 2 s", retry_after=2)
        return f"answer to {query} from {','.join(sites) if sites else 'all'} ({generate_mode})"

    async def list_sites(self) -> list[str]:
        return ["seriouseats", "imdb"]

    async def who(self, query: str) -> str:
        return f"seriouseats: recipes and techniques (for {query})"


def make_app(tools=None, **kw) -> Starlette:
    return Starlette(routes=mcp_routes(tools or FakeTools(), version="1.2.3", **kw))


@pytest.fixture()
def client():
    with TestClient(make_app(max_body_bytes=10_000)) as c:
        yield c


def rpc(method: str, params: dict | None = None, id: int | str = 1) -> dict:
    message = {"jsonrpc": "2.0", "id": id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def post(client: TestClient, payload=None, *, content: bytes | None = None, headers: dict | None = None):
    body = content if content is not None else json.dumps(payload).encode()
    return client.post("/mcp", content=body, headers={**HEADERS, **(headers or {})})


def assert_error(response, status: int, code: int, id=None):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["jsonrpc"] == "2.0"
    assert body["id"] == id
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body


# --- (a) the official MCP SDK client over a real socket ------------------------------------------

@pytest.fixture(scope="module")
def mcp_url():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(make_app(), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/mcp"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


async def check_tools(session) -> None:
    """List and call every tool through an SDK session (ClientSession or Client: same methods)."""
    listed = await session.list_tools()
    tools = {tool.name: tool for tool in listed.tools}
    assert set(tools) == {"ask", "list_sites", "who"}
    assert tools["ask"].input_schema["required"] == ["query"]
    assert tools["ask"].input_schema["properties"]["site"]["type"] == "array"
    assert tools["ask"].input_schema["properties"]["generate_mode"]["enum"] == ["list", "summarize", "generate"]
    assert tools["who"].input_schema["required"] == ["query"]
    assert all(tool.description for tool in listed.tools)

    arguments = {"query": "spicy soup", "site": ["seriouseats"], "generate_mode": "summarize"}
    result = await session.call_tool("ask", arguments)
    assert result.is_error is False
    assert [c.type for c in result.content] == ["text"]
    assert result.content[0].text == "answer to spicy soup from seriouseats (summarize)"

    result = await session.call_tool("ask", {"query": "spicy soup"})
    assert result.content[0].text == "answer to spicy soup from all (list)"

    result = await session.call_tool("list_sites", {})
    assert result.is_error is False
    assert json.loads(result.content[0].text) == {"sites": ["seriouseats", "imdb"]}

    result = await session.call_tool("who", {"query": "ramen"})
    assert result.content[0].text == "seriouseats: recipes and techniques (for ramen)"

    result = await session.call_tool("ask", {"query": "explode"})
    assert result.is_error is True  # an unexpected exception's text stays in the server log
    assert result.content[0].text == "internal error in tool ask (RuntimeError); see the server log"

    result = await session.call_tool("ask", {"query": "ramen", "site": "seriouseats"})  # NLWeb's clients send a string
    assert result.content[0].text == "answer to ramen from seriouseats (list)"

    prompts = {p.name: p for p in (await session.list_prompts()).prompts}
    assert set(prompts) == {"search", "find_site"}
    assert [(a.name, a.required) for a in prompts["search"].arguments] == [("query", True), ("site", False)]
    got = await session.get_prompt("search", {"query": "ramen", "site": "seriouseats"})
    assert got.messages[0].role == "user"
    assert "ramen" in got.messages[0].content.text and "`ask`" in got.messages[0].content.text


async def test_official_sdk_session_over_streamable_http(mcp_url):
    """The low-level SDK path: streamable HTTP transport + ClientSession, initialize handshake."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp_types.version import LATEST_HANDSHAKE_VERSION

    async with streamable_http_client(mcp_url) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            assert init.protocol_version == LATEST_HANDSHAKE_VERSION
            assert (init.server_info.name, init.server_info.version) == ("nlweb-local", "1.2.3")
            assert init.capabilities.tools is not None
            await check_tools(session)
            await session.send_ping()


async def test_official_sdk_client_auto_mode_falls_back_to_initialize(mcp_url):
    """`mcp.Client(url)` first probes server/discover at the newest (initialize-less) revision; this
    server answers -32022 with its versions, and the client falls back to the handshake."""
    from mcp import Client
    from mcp_types.version import LATEST_HANDSHAKE_VERSION

    async with Client(mcp_url) as client:
        assert client.protocol_version == LATEST_HANDSHAKE_VERSION
        assert client.server_info.name == "nlweb-local"
        await check_tools(client)


def test_sdk_protocol_versions_are_supported():
    from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION

    assert PROTOCOL_VERSIONS[0] == LATEST_HANDSHAKE_VERSION
    assert set(HANDSHAKE_PROTOCOL_VERSIONS) <= set(PROTOCOL_VERSIONS)
    assert {"2024-11-05", "2025-03-26", "2025-06-18"} <= set(PROTOCOL_VERSIONS)


# --- the dispatch alone, without HTTP ------------------------------------------------------------

async def test_dispatch_is_pure():
    server = McpServer(FakeTools(), version="1.2.3")
    reply = await server.handle(json.dumps(rpc("tools/call", {"name": "who", "arguments": {"query": "q"}})).encode())
    assert reply.status == 200
    assert reply.body["result"]["content"][0]["text"].startswith("seriouseats")
    assert reply.answered == ("tools/call",)

    reply = await server.handle(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
    assert (reply.status, reply.body) == (202, None)

    reply = await server.handle(b"{")
    assert reply.status == 400 and reply.body["error"]["code"] == PARSE


async def test_handler_bug_is_an_internal_error_not_a_crash():
    async def broken(params):
        raise KeyError("oops")

    reply = await jsonrpc.handle(json.dumps(rpc("broken")).encode(), {"broken": broken})
    assert reply.status == 200
    assert reply.body["error"]["code"] == jsonrpc.INTERNAL_ERROR
    assert "oops" not in reply.body["error"]["message"]


# --- the MCP methods over HTTP -------------------------------------------------------------------

@pytest.mark.parametrize("version", ["2024-11-05", "2025-03-26", "2025-06-18", PROTOCOL_VERSIONS[0]])
def test_initialize_echoes_a_supported_version(client, version):
    response = post(client, rpc("initialize", {"protocolVersion": version, "capabilities": {}}))
    assert response.status_code == 200
    result = response.json()["result"]
    assert result["protocolVersion"] == version
    assert result["capabilities"] == {"tools": {}, "prompts": {}}
    assert result["serverInfo"] == {"name": "nlweb-local", "version": "1.2.3"}
    assert response.headers["mcp-session-id"]


def test_initialize_offers_the_newest_for_an_unknown_version(client):
    response = post(client, rpc("initialize", {"protocolVersion": "2099-01-01"}))
    assert response.json()["result"]["protocolVersion"] == PROTOCOL_VERSIONS[0]


def test_session_id_is_issued_and_accepted_back(client):
    first = post(client, rpc("initialize", {"protocolVersion": "2025-06-18"}))
    second = post(client, rpc("initialize", {"protocolVersion": "2025-06-18"}))
    session = first.headers["mcp-session-id"]
    assert session != second.headers["mcp-session-id"]
    response = post(
        client, rpc("ping", id="p"), headers={"Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-06-18"}
    )
    assert response.status_code == 200
    assert response.json() == {"jsonrpc": "2.0", "id": "p", "result": {}}
    assert response.headers["mcp-session-id"] == session


def test_tools_list_and_call(client):
    names = [tool["name"] for tool in post(client, rpc("tools/list")).json()["result"]["tools"]]
    assert names == ["ask", "list_sites", "who"]
    response = post(client, rpc("tools/call", {"name": "ask", "arguments": {"query": "pho", "site": ["imdb"]}}))
    assert response.status_code == 200
    assert response.json()["result"] == {
        "content": [{"type": "text", "text": "answer to pho from imdb (list)"}],
        "isError": False,
    }


def test_a_project_error_in_a_tool_is_a_tool_error(client):
    response = post(client, rpc("tools/call", {"name": "ask", "arguments": {"query": "busy"}}))
    assert response.status_code == 200
    result = response.json()["result"]
    assert result["isError"] is True
    # an engine's own words stay in the server log; the caller learns what happened and what to do
    assert result["content"][0]["text"].startswith("the model is overloaded; retry later")


def test_notification_is_accepted_without_a_body(client):
    response = post(client, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert response.status_code == 202
    assert response.content == b""
    response = post(client, {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}})
    assert response.status_code == 202


def test_client_response_is_accepted(client):
    assert post(client, {"jsonrpc": "2.0", "id": 7, "result": {}}).status_code == 202


def test_batch_answers_each_request_in_order(client):
    batch = [
        rpc("ping", id=1),
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        5,
        rpc("resources/list", id=3),
        rpc("tools/call", {"name": "nope"}, id="x"),
    ]
    response = post(client, batch)
    assert response.status_code == 200
    body = response.json()
    assert [(r["id"], r.get("error", {}).get("code")) for r in body] == [
        (1, None), (None, INVALID_REQUEST), (3, NO_METHOD), ("x", BAD_PARAMS)
    ]


def test_batch_of_notifications_is_accepted(client):
    notification = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    response = post(client, [notification, notification])
    assert (response.status_code, response.content) == (202, b"")


def test_batch_with_initialize_issues_a_session(client):
    response = post(client, [rpc("initialize", {"protocolVersion": "2025-03-26"}), rpc("ping", id=2)])
    assert response.status_code == 200
    assert response.headers["mcp-session-id"]


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_get_and_delete_are_not_allowed(client, method):
    response = client.request(method, "/mcp", headers=HEADERS)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


# --- (b) bad input: exact JSON-RPC code and HTTP status, never a 500 ------------------------------

@pytest.mark.parametrize(
    "body",
    [b"{not json", b"", b"\xff\xfe\x00\x81binary", b'{"jsonrpc": "2.0", "id": 1, "method": "ping"',
     b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":NaN}}', b"[" * 100_000],
    ids=["garbage", "empty", "binary", "truncated", "nan", "deep"],
)
def test_parse_error(body):
    with TestClient(make_app(max_body_bytes=200_000)) as client:
        assert_error(post(client, content=body), 400, PARSE)


@pytest.mark.parametrize(
    ("payload", "id"),
    [
        (42, None),
        ("ping", None),
        (None, None),
        ({"id": 1, "method": "ping"}, 1),
        ({"jsonrpc": "1.0", "id": 1, "method": "ping"}, 1),
        ({"jsonrpc": "2.0", "id": None, "method": "ping"}, None),
        ({"jsonrpc": "2.0", "id": 1.5, "method": "ping"}, None),
        ({"jsonrpc": "2.0", "id": True, "method": "ping"}, None),
        ({"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"}, None),
        ({"jsonrpc": "2.0", "id": 1, "method": 5}, 1),
        ({"jsonrpc": "2.0", "id": 1}, 1),
        ({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": "x"}, 1),
        ([], None),
        ([rpc("ping", id=i) for i in range(jsonrpc.MAX_BATCH + 1)], None),
    ],
    ids=["number", "string", "null", "no-jsonrpc", "jsonrpc-1.0", "null-id", "float-id", "bool-id",
         "object-id", "method-not-string", "no-method", "params-string", "empty-batch", "batch-too-long"],
)
def test_invalid_request(client, payload, id):
    assert_error(post(client, payload), 400, INVALID_REQUEST, id)


def test_unknown_method(client):
    assert_error(post(client, rpc("resources/list", id="r1")), 200, NO_METHOD, "r1")


@pytest.mark.parametrize(
    "params",
    [
        {"name": "search", "arguments": {"query": "x"}},
        {"arguments": {"query": "x"}},
        {"name": "ask"},
        {"name": "ask", "arguments": {}},
        {"name": "ask", "arguments": {"query": ""}},
        {"name": "ask", "arguments": {"query": 42}},
        {"name": "ask", "arguments": {"query": "x", "site": 5}},
        {"name": "ask", "arguments": {"query": "x", "site": ["a", 1]}},
        {"name": "ask", "arguments": {"query": "x", "generate_mode": "poem"}},
        {"name": "ask", "arguments": ["x"]},
        {"name": "who", "arguments": {"q": "x"}},
    ],
    ids=["unknown-tool", "no-name", "no-arguments", "no-query", "empty-query", "query-int", "site-number",
         "site-mixed", "bad-mode", "arguments-list", "who-no-query"],
)
def test_bad_tool_params(client, params):
    body = assert_error(post(client, rpc("tools/call", params, id=9)), 200, BAD_PARAMS, 9)
    assert body["error"]["message"].startswith("Invalid params")


def test_bad_params_for_methods(client):
    assert_error(post(client, {"jsonrpc": "2.0", "id": 2, "method": "ping", "params": []}), 200, BAD_PARAMS, 2)
    assert_error(post(client, rpc("initialize", {"capabilities": {}}, id=3)), 200, BAD_PARAMS, 3)


def test_oversized_body_is_413(client):
    big = json.dumps(rpc("tools/call", {"name": "ask", "arguments": {"query": "x" * 20_000}})).encode()
    body = assert_error(post(client, content=big), 413, INVALID_REQUEST)
    assert "10000 bytes" in body["error"]["message"]


def test_oversized_chunked_body_is_413(client):
    def chunks():
        yield b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"'
        for _ in range(20):
            yield b"x" * 1000
        yield b'"}}'

    response = client.post("/mcp", content=chunks(), headers=HEADERS)
    assert_error(response, 413, INVALID_REQUEST)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_wrong_content_type_is_415(client, content_type):
    headers = {"Accept": HEADERS["Accept"]}
    if content_type:
        headers["Content-Type"] = content_type
    response = client.post("/mcp", content=json.dumps(rpc("ping")).encode(), headers=headers)
    assert_error(response, 415, INVALID_REQUEST)


def test_content_type_with_charset_is_fine(client):
    response = post(client, rpc("ping"), headers={"Content-Type": "application/json; charset=utf-8"})
    assert response.status_code == 200


def test_accept_without_json_is_406(client):
    assert_error(post(client, rpc("ping"), headers={"Accept": "text/html"}), 406, INVALID_REQUEST)


@pytest.mark.parametrize("accept", ["text/event-stream", "text/event-stream;q=1.0", "application/json, text/event-stream",
                                    "*/*", "application/json"])
def test_streaming_accept_is_never_406(client, accept):
    """The transport lets the server answer a POST with JSON or with an SSE stream; a client that accepts only
    the stream gets the same response as one `message` event."""
    response = post(client, rpc("tools/call", {"name": "who", "arguments": {"query": "ramen"}}, id=4),
                     headers={"Accept": accept})
    assert response.status_code == 200
    if response.headers["content-type"].startswith("text/event-stream"):
        assert accept.startswith("text/event-stream")
        assert response.text.startswith("event: message\ndata: ") and response.text.endswith("\n\n")
        body = json.loads(response.text.split("data: ", 1)[1])
    else:
        body = response.json()
    assert body["id"] == 4 and body["result"]["content"][0]["text"].startswith("seriouseats")


def test_site_as_string_comma_list_or_all(client):
    tools = FakeTools()
    with TestClient(make_app(tools)) as c:
        for site in ("seriouseats", "seriouseats, imdb", "all", ["all"], []):
            post(c, rpc("tools/call", {"name": "ask", "arguments": {"query": "q", "site": site}}))
    assert [call[2] for call in tools.calls] == [["seriouseats"], ["seriouseats", "imdb"], None, None, None]


def test_prompts_over_http(client):
    listed = post(client, rpc("prompts/list")).json()["result"]["prompts"]
    assert [p["name"] for p in listed] == ["search", "find_site"]
    body = post(client, rpc("prompts/get", {"name": "find_site", "arguments": {"query": "ramen"}})).json()
    assert "`who`" in body["result"]["messages"][0]["content"]["text"]
    bad = assert_error(post(client, rpc("prompts/get", {"name": "find_site"}, id=5)), 200, BAD_PARAMS, 5)
    assert '"query"' in bad["error"]["message"]
    bad = assert_error(post(client, rpc("prompts/get", {"name": "nope"}, id=6)), 200, BAD_PARAMS, 6)
    assert "search, find_site" in bad["error"]["message"]


@pytest.mark.parametrize(("name", "method", "params"), [
    ("ask", "tools/call", {"name": "ask", "arguments": {"query": "ramen", "site": ["seriouseats"]}}),
    ("get_sites", "tools/call", {"name": "list_sites", "arguments": {}}),
    ("list_tools", "tools/list", {}),
])
def test_legacy_function_call_body_says_what_to_send(client, name, method, params):
    arguments = json.dumps(params.get("arguments", {}))
    response = post(client, {"function_call": {"name": name, "arguments": arguments}})
    body = assert_error(response, 400, INVALID_REQUEST)
    assert "function_call" in body["error"]["message"] and method in body["error"]["message"]
    assert body["error"]["data"]["send_instead"] == {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    # what it says to send works
    assert post(client, body["error"]["data"]["send_instead"]).json()["id"] == 1


def test_unsupported_protocol_version_header_is_400(client):
    response = post(client, rpc("server/discover"), headers={"MCP-Protocol-Version": "2026-07-28"})
    body = assert_error(response, 400, -32022)
    assert body["error"]["data"] == {"supported": list(PROTOCOL_VERSIONS), "requested": "2026-07-28"}
    assert "2025-06-18" in body["error"]["message"]


def test_malformed_session_id_is_400(client):
    assert_error(post(client, rpc("ping"), headers={"Mcp-Session-Id": "has space"}), 400, INVALID_REQUEST)


@pytest.mark.parametrize(
    "body",
    [b"0", b"true", b"{}", b"[[]]", b"[{}]", b'{"jsonrpc":"2.0","method":"tools/call"}',
     b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":null}',
     b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"ask","arguments":null}}',
     b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":["ask"]}}',
     b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":7}}',
     "\ufeff{}".encode(), b'{"jsonrpc":"2.0","id":99999999999999999999999,"method":"ping"}'],
)
def test_odd_bodies_never_500(client, body):
    assert post(client, content=body).status_code < 500


# --- (c) bounded work: batch size, batch admission, cancellation on disconnect ----------------------

def ask_call(i: int, query: str = "soup") -> dict:
    return rpc("tools/call", {"name": "ask", "arguments": {"query": f"{query} {i}"}}, id=i)


class AdmittingTools(FakeTools):
    """FakeTools with admission: room for `room` ask calls."""

    def __init__(self, room: int):
        super().__init__()
        self.room = room
        self.admitted: list[int] = []

    def admit(self, calls: int) -> None:
        if calls > self.room:
            raise OverloadedError(f"{calls} searches asked for, room for {self.room}", retry_after=2.5)
        self.admitted.append(calls)


def test_a_batch_over_the_limit_runs_nothing():
    tools = AdmittingTools(room=100)
    with TestClient(make_app(tools, max_batch=4)) as client:
        assert_error(post(client, [ask_call(i) for i in range(5)]), 400, INVALID_REQUEST)
        assert tools.calls == [] and tools.admitted == []
        assert post(client, [ask_call(i) for i in range(4)]).status_code == 200
    assert len(tools.calls) == 4 and tools.admitted == [4]


def test_the_default_batch_limit_is_small():
    assert jsonrpc.MAX_BATCH <= 16  # one 64-call batch occupied the model for 215 s


def test_a_batch_of_asks_is_admitted_as_a_whole_or_refused_as_a_whole():
    tools = AdmittingTools(room=2)
    with TestClient(make_app(tools)) as client:
        batch = [ask_call(1), rpc("ping", id="p"), ask_call(2), ask_call(3),
                 {"jsonrpc": "2.0", "method": "notifications/initialized"}]
        response = post(client, batch)
        assert response.status_code == 200 and response.headers["retry-after"] == "3"
        body = response.json()
        assert [r["id"] for r in body] == [1, "p", 2, 3]  # every request answered, the notification not
        assert all(r["error"]["code"] == jsonrpc.SERVER_BUSY and r["error"]["data"] == {"retry_after": 3} for r in body)
        assert "none of the 3" in body[0]["error"]["message"]
        assert tools.calls == []  # nothing ran, not even the ping
        response = post(client, [ask_call(1), rpc("ping", id="p"), ask_call(2)])
        assert response.status_code == 200 and "retry-after" not in response.headers
        assert [("error" in r) for r in response.json()] == [False, False, False]
        assert tools.admitted == [2] and len(tools.calls) == 2
        # a single call is a batch of one
        single = post(client, ask_call(9))
        assert single.status_code == 200 and single.json()["result"]["isError"] is False


def test_search_tools_admit_through_the_pipeline(tmp_path):
    """The real tools over the real pipeline: a full queue refuses the batch before any search."""
    from nlweb_local.config.settings import load_settings
    from nlweb_local.providers.testing import FunctionLLM
    from nlweb_local.retrieval.qdrant_store import QdrantStore
    from nlweb_local.search.pipeline import AskPipeline
    from nlweb_local.search.who import SiteDirectory
    from nlweb_local.server.mcp_tools import SearchTools
    from stand_ins import NoEmbedder

    llm = FunctionLLM(lambda t, p, s: '{"score": 90, "description": "x"}', max_queue=0)
    store = QdrantStore(dimension=2, path=tmp_path / "q")
    pipeline = AskPipeline(llm, NoEmbedder(), store, load_settings(environ={}).search)
    tools = SearchTools(pipeline, store, SiteDirectory(NoEmbedder(), store))
    with TestClient(make_app(tools)) as client:
        response = post(client, [ask_call(1), ask_call(2)])
    store.close()
    assert response.headers["retry-after"] == "2"
    assert [r["error"]["code"] for r in response.json()] == [jsonrpc.SERVER_BUSY] * 2
    assert llm.calls == []


class SlowTools(FakeTools):
    def __init__(self):
        super().__init__()
        self.started = asyncio.Event()
        self.cancelled = False

    async def ask(self, query, sites, generate_mode):
        self.started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return "too late"


async def call_then_leave(app, body: bytes, left: asyncio.Event) -> list[dict]:
    """One POST /mcp over raw ASGI whose client disconnects once `left` is set; the messages sent back."""
    messages = iter([{"type": "http.request", "body": body, "more_body": False}])
    sent: list[dict] = []

    async def receive():
        message = next(messages, None)
        if message is not None:
            return message
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/mcp", "raw_path": b"/mcp", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"accept", b"application/json"),
                         (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 5), "server": ("127.0.0.1", 80)}
    await asyncio.wait_for(app(scope, receive, send), 30)  # (a guard: without cancellation it would take 60 s)
    return sent


async def test_a_client_that_disconnects_cancels_its_running_tool_call():
    tools = SlowTools()
    left = asyncio.Event()

    async def leave_when_started():
        await tools.started.wait()
        left.set()

    leaving = asyncio.create_task(leave_when_started())
    await call_then_leave(make_app(tools), json.dumps(ask_call(1)).encode(), left)
    await leaving
    assert tools.cancelled


async def test_a_disconnect_cancels_a_slow_search_in_the_pipeline(tmp_path):
    """Through the real tools and pipeline: the LLM call in flight is cancelled, the queue is freed."""
    from nlweb_local.config.settings import load_settings
    from nlweb_local.core.types import Item
    from nlweb_local.providers.testing import FunctionLLM
    from nlweb_local.retrieval.qdrant_store import QdrantStore
    from nlweb_local.search.pipeline import AskPipeline
    from nlweb_local.search.who import SiteDirectory
    from nlweb_local.server.mcp_tools import SearchTools
    from stand_ins import NoEmbedder

    llm = FunctionLLM(lambda t, p, s: '{"score": 90, "description": "x"}', delay_s=60)
    store = QdrantStore(dimension=2, path=tmp_path / "q")
    store.upsert([Item("https://e.example/a", "Apple pie", "e", json.dumps({"name": "Apple pie"}))], [[1.0, 0.0]])
    pipeline = AskPipeline(llm, NoEmbedder(), store, load_settings(environ={}).search)
    tools = SearchTools(pipeline, store, SiteDirectory(NoEmbedder(), store))
    left = asyncio.Event()

    async def leave_when_the_model_runs():
        while llm.pending == 0:
            await asyncio.sleep(0.01)
        left.set()

    leaving = asyncio.create_task(leave_when_the_model_runs())
    try:
        await call_then_leave(make_app(tools), json.dumps(ask_call(1)).encode(), left)
    finally:
        await leaving
        store.close()
    assert llm.calls and llm.pending == 0  # the call started, and was cancelled rather than left running
