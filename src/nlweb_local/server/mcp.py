"""`POST /mcp`: MCP (JSON-RPC 2.0) over the streamable HTTP transport, answered with plain JSON (or, to a
client that accepts only `text/event-stream`, the same responses as one short SSE stream).

Two layers, each testable alone:

- `McpServer`: the MCP methods (initialize, ping, tools/list, tools/call, prompts/list, prompts/get) as
  JSON-RPC handlers;
  `await McpServer(...).handle(body)` answers one body with no HTTP involved.
- `mcp_routes(...)`: the HTTP edge. It checks size, Content-Type, Accept and the MCP headers, then
  hands the body to `McpServer`, and cancels that work if the client disconnects before the answer.

Bounded work: a batch holds at most `max_batch` messages, and its `ask` calls are admitted as a whole
before any runs (`McpTools.admit(calls)`): all start, or all are refused with -32000 and `retry_after`.

The server is stateless: it issues an `Mcp-Session-Id` on `initialize` and accepts any well-formed id
back, but keeps nothing per session (so several workers can serve one client). Hence GET (no
server-initiated stream) and DELETE (no session to end) both answer 405, as the transport allows.
Checking Host/Origin against DNS rebinding is left to the app's middleware (TrustedHost, CORS).
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..core.errors import NlwebError, OverloadedError, PayloadTooLargeError, RequestTimeoutError
from . import jsonrpc
from .body import ClientGone, Receive, read_request_body
from .jsonrpc import INVALID_PARAMS, INVALID_REQUEST, JsonRpcError
from .mcp_prompts import PROMPTS, get_prompt

log = logging.getLogger(__name__)

PROTOCOL_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
"""Supported MCP revisions, newest first. `initialize` echoes the client's if listed, else the newest."""

UNSUPPORTED_PROTOCOL_VERSION = -32022
"""MCP's code for an MCP-Protocol-Version the server does not speak (data: supported, requested)."""

GENERATE_MODES = ("list", "summarize", "generate")
SESSION_HEADER = "mcp-session-id"
VERSION_HEADER = "mcp-protocol-version"


class McpTools(Protocol):
    """The backend. It may also offer `admit(calls: int) -> None`: raise `OverloadedError` unless `calls`
    more ask calls may start now (the server asks before running any of a body's ask calls)."""

    async def ask(self, query: str, sites: list[str] | None, generate_mode: str) -> str:
        """The text answer to `query`, searching `sites` (None: all sites)."""
        ...

    async def list_sites(self) -> list[str]: ...

    async def who(self, query: str) -> str:
        """Which sites can answer `query`, as text."""
        ...


@dataclass(frozen=True)
class McpTool:
    name: str
    description: str
    input_schema: dict[str, Any]
    run: Callable[[McpTools, dict[str, Any]], Awaitable[str]]
    """Checks the arguments (raising a -32602 JsonRpcError) and calls the backend."""

    def listing(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "inputSchema": self.input_schema}


# --- argument checks: each raises -32602 with a message that says what to send --------------------

def _bad_params(message: str) -> JsonRpcError:
    return JsonRpcError(INVALID_PARAMS, f"Invalid params: {message}")


def _query(arguments: dict[str, Any]) -> str:
    query = arguments.get("query")
    if not isinstance(query, str) or not query.strip():
        raise _bad_params('"query" is required and must be a non-empty string')
    return query


def _sites(arguments: dict[str, Any]) -> list[str] | None:
    """An array of site names, or (as NLWeb's own server accepts) one name or a comma list; "all" = every site."""
    sites = arguments.get("site")
    if sites is None:
        return None
    if isinstance(sites, str):
        sites = sites.split(",")
    if not isinstance(sites, list) or not all(isinstance(s, str) for s in sites):
        raise _bad_params('"site" must be an array of strings (or one string), e.g. ["example.com"]')
    sites = [s.strip() for s in sites if s.strip() and s.strip().lower() != "all"]
    return sites or None


def _generate_mode(arguments: dict[str, Any]) -> str:
    mode = arguments.get("generate_mode", "list")
    if mode not in GENERATE_MODES:
        raise _bad_params(f'"generate_mode" must be one of {", ".join(GENERATE_MODES)}')
    return mode


async def _run_ask(tools: McpTools, arguments: dict[str, Any]) -> str:
    query, sites, mode = _query(arguments), _sites(arguments), _generate_mode(arguments)
    return await tools.ask(query, sites, mode)


async def _run_list_sites(tools: McpTools, arguments: dict[str, Any]) -> str:
    return json.dumps({"sites": list(await tools.list_sites())}, ensure_ascii=False)


async def _run_who(tools: McpTools, arguments: dict[str, Any]) -> str:
    return await tools.who(_query(arguments))


_QUERY_SCHEMA = {"type": "string", "minLength": 1, "description": "The question or search, in natural language."}

TOOLS: tuple[McpTool, ...] = (
    McpTool(
        "ask",
        "Search the sites indexed by this NLWeb server and answer in natural language. Returns the "
        "matching items (name, URL, why they match), a summary of them, or a generated answer.",
        {
            "type": "object",
            "properties": {
                "query": _QUERY_SCHEMA,
                "site": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Search only these sites (names from list_sites); omit to search all.",
                },
                "generate_mode": {
                    "type": "string",
                    "enum": list(GENERATE_MODES),
                    "default": "list",
                    "description": "list: ranked items; summarize: items plus a summary; "
                    "generate: an answer written from the items.",
                },
            },
            "required": ["query"],
        },
        _run_ask,
    ),
    McpTool(
        "list_sites",
        'List the sites this server can search, as JSON {"sites": [...]}.',
        {"type": "object", "properties": {}},
        _run_list_sites,
    ),
    McpTool(
        "who",
        "Find which sites are most likely to answer a query, ranked, with their descriptions.",
        {"type": "object", "properties": {"query": _QUERY_SCHEMA}, "required": ["query"]},
        _run_who,
    ),
)


class McpServer:
    """The MCP methods as JSON-RPC handlers. Pure: no HTTP, no per-session state."""

    def __init__(self, tools: McpTools, *, server_name: str = "nlweb-local", version: str,
                 max_batch: int = jsonrpc.MAX_BATCH):
        self._tools = tools
        self._max_batch = max_batch
        self._server_info = {"name": server_name, "version": version}
        self._by_name = {tool.name: tool for tool in TOOLS}
        self.handlers: dict[str, jsonrpc.Handler] = {
            "initialize": self.initialize,
            "ping": self.ping,
            "tools/list": self.list_tools,
            "tools/call": self.call_tool,
            "prompts/list": self.list_prompts,
            "prompts/get": self.get_prompt,
        }

    async def handle(self, body: bytes) -> jsonrpc.Reply:
        legacy = legacy_function_call(body)
        if legacy is not None:
            return jsonrpc.Reply(400, jsonrpc.error_response(legacy))
        return await jsonrpc.handle(body, self.handlers, max_batch=self._max_batch, admit=self.admit)

    def admit(self, requests: list[dict[str, Any]]) -> None:
        """All of a body's ask calls start, or none does (`jsonrpc.Busy`, with when to retry)."""
        asks = sum(1 for r in requests if r["method"] == "tools/call" and r.get("params", {}).get("name") == "ask")
        admit = getattr(self._tools, "admit", None)
        if not asks or admit is None:
            return
        try:
            admit(asks)
        except OverloadedError as e:
            wait = max(1, math.ceil(e.retry_after)) if math.isfinite(e.retry_after) else 1
            raise jsonrpc.Busy(f"Server busy: {e.public_message}; none of the {asks} ask call(s) ran, retry after {wait} s",
                               wait) from None

    async def initialize(self, params: dict[str, Any]) -> dict[str, Any]:
        requested = params.get("protocolVersion")
        if not isinstance(requested, str):
            raise _bad_params('"protocolVersion" is required and must be a string, e.g. "2025-06-18"')
        return {
            "protocolVersion": requested if requested in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[0],
            "capabilities": {"tools": {}, "prompts": {}},
            "serverInfo": self._server_info,
            "instructions": "Search the sites indexed by this NLWeb server: call list_sites to see "
            "them, who to pick sites for a query, and ask to search and answer.",
        }

    async def ping(self, params: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def list_tools(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"tools": [tool.listing() for tool in TOOLS]}

    async def list_prompts(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"prompts": [prompt.listing() for prompt in PROMPTS]}

    async def get_prompt(self, params: dict[str, Any]) -> dict[str, Any]:
        return get_prompt(params)

    async def call_tool(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params.get("name")
        if not isinstance(name, str):
            raise _bad_params('"name" is required: one of ' + ", ".join(self._by_name))
        tool = self._by_name.get(name)
        if tool is None:
            raise _bad_params(f"Unknown tool: {name}; the tools are " + ", ".join(self._by_name))
        arguments = params.get("arguments", {})
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise _bad_params('"arguments" must be an object')
        try:
            text = await tool.run(self._tools, arguments)
        except JsonRpcError:
            raise
        except NlwebError as e:  # expected failures (overloaded, no such site, ...): the model may retry
            if e.public_message != e.message:
                log.warning("MCP tool %s: %s", name, e.message)
            return _tool_result(e.public_message, is_error=True)
        except Exception as e:
            log.exception("MCP tool %s failed", name)  # (the exception's text stays in the log)
            return _tool_result(f"internal error in tool {name} ({type(e).__name__}); see the server log", is_error=True)
        return _tool_result(text, is_error=False)


def _tool_result(text: str, *, is_error: bool) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": is_error}


_LEGACY_METHODS = {"ask": ("tools/call", "ask"), "ask_nlw": ("tools/call", "ask"), "query": ("tools/call", "ask"),
                   "search": ("tools/call", "ask"), "get_sites": ("tools/call", "list_sites"),
                   "list_tools": ("tools/list", None), "list_prompts": ("prompts/list", None),
                   "get_prompt": ("prompts/get", None)}


def legacy_function_call(body: bytes) -> JsonRpcError | None:
    """NLWeb's pre-MCP body `{"function_call": {"name": ..., "arguments": "<JSON>"}}` → an Invalid Request
    error whose message says what to send instead, with that JSON-RPC request in `data.send_instead`."""
    if b'"function_call"' not in body:
        return None
    try:
        doc = jsonrpc.decode(body)
    except JsonRpcError:
        return None
    if not isinstance(doc, dict) or "jsonrpc" in doc or not isinstance(doc.get("function_call"), dict):
        return None
    call = doc["function_call"]
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            arguments = {}
    method, tool = _LEGACY_METHODS.get(str(call.get("name")), ("tools/call", "ask"))
    params: dict[str, Any] = {}
    if tool is not None:
        params = {"name": tool, "arguments": arguments if isinstance(arguments, dict) else {}}
    elif method == "prompts/get" and isinstance(arguments, dict):
        params = {"name": arguments.get("prompt_id", arguments.get("name", "search")), "arguments": {}}
    instead = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    return JsonRpcError(INVALID_REQUEST, "Invalid Request: the legacy {\"function_call\": ...} body is not supported; "
                        "this endpoint speaks MCP (JSON-RPC 2.0, streamable HTTP). Send " + json.dumps(instead)
                        + " (an MCP client sends initialize first), or POST the question to /ask.",
                        {"send_instead": instead})


# --- HTTP edge -----------------------------------------------------------------------------------

class McpEndpoint:
    """The streamable HTTP transport, JSON responses only."""

    def __init__(self, server: McpServer, *, max_body_bytes: int, body_timeout_s: float | None = None):
        self._server = server
        self._max_body_bytes = max_body_bytes
        self._body_timeout_s = body_timeout_s

    async def respond(self, request: Request) -> Response:
        if request.method != "POST":
            # No server-initiated SSE stream (GET), no session state to delete (DELETE).
            return Response(status_code=405, headers={"Allow": "POST"})
        refusal = self._check_headers(request)
        if refusal is not None:
            return refusal
        try:
            body = await read_request_body(request, self._max_body_bytes, self._body_timeout_s)
        except ClientGone:
            return Response(status_code=400)  # nobody is left to read it
        except PayloadTooLargeError:
            message = f"Invalid Request: the body exceeds {self._max_body_bytes} bytes; send a smaller request"
            return _error(413, message)
        except RequestTimeoutError as e:
            return _error(408, f"Invalid Request: {e.message}")
        reply = await _unless_client_leaves(request.receive, self._server.handle(body))
        if reply is None:
            return Response(status_code=400)  # the client left; its work was cancelled
        headers = {}
        if reply.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(reply.retry_after)))
        if "initialize" in reply.answered:
            headers["Mcp-Session-Id"] = uuid.uuid4().hex
        elif SESSION_HEADER in request.headers:
            headers["Mcp-Session-Id"] = request.headers[SESSION_HEADER]
        if reply.body is None:
            return Response(status_code=202, headers=headers)
        if not _accepts_json(request.headers.get("accept", "*/*")):  # it accepts only an event stream
            return Response(_as_events(reply.body), reply.status, headers, media_type="text/event-stream")
        return Response(jsonrpc.encode(reply.body), reply.status, headers, media_type="application/json")

    @staticmethod
    def _check_headers(request: Request) -> Response | None:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            return _error(415, "Invalid Request: send the JSON-RPC message with Content-Type: application/json")
        accept = request.headers.get("accept")
        if accept is not None and not _accepts_json(accept) and not _accepts_event_stream(accept):
            return _error(406, "Invalid Request: this server answers application/json or text/event-stream; "
                          "add one to Accept")
        version = request.headers.get(VERSION_HEADER)
        if version is not None and version not in PROTOCOL_VERSIONS:
            # -32022 with the supported list is how MCP says it; an SDK client probing a newer,
            # initialize-less revision (server/discover) reads it and falls back to `initialize`.
            supported = ", ".join(PROTOCOL_VERSIONS)
            message = f"Unsupported MCP-Protocol-Version {version!r}; use one of {supported} (via initialize)"
            data = {"supported": list(PROTOCOL_VERSIONS), "requested": version}
            return _error(400, message, code=UNSUPPORTED_PROTOCOL_VERSION, data=data)
        session = request.headers.get(SESSION_HEADER)
        if session is not None and not _is_session_id(session):
            return _error(400, "Invalid Request: Mcp-Session-Id must be 1-128 visible ASCII characters")
        return None


async def _unless_client_leaves(receive: Receive, work: Awaitable[jsonrpc.Reply]) -> jsonrpc.Reply | None:
    """`work`'s result, or None when the client disconnected first (the work is then cancelled: nobody
    would read its answer). Call after the whole body was read: `receive` then only reports a disconnect."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled() or not task.done():
        try:
            await task  # let the cancelled work unwind (its finally blocks run) before answering
        except asyncio.CancelledError:
            pass
        log.info("MCP client disconnected; its request was cancelled")
        return None
    return task.result()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def mcp_routes(
    tools: McpTools, *, server_name: str = "nlweb-local", version: str, max_body_bytes: int = 1_000_000,
    body_timeout_s: float | None = None, max_batch: int = jsonrpc.MAX_BATCH,
) -> list[BaseRoute]:
    server = McpServer(tools, server_name=server_name, version=version, max_batch=max_batch)
    endpoint = McpEndpoint(server, max_body_bytes=max_body_bytes, body_timeout_s=body_timeout_s)
    return [Route("/mcp", endpoint.respond, methods=["POST", "GET", "DELETE"])]


def _error(status: int, message: str, *, code: int = INVALID_REQUEST, data: Any = None) -> Response:
    body = jsonrpc.error_response(JsonRpcError(code, message, data))
    return Response(jsonrpc.encode(body), status, media_type="application/json")


def _media_types(accept: str) -> set[str]:
    return {part.split(";")[0].strip().lower() for part in accept.split(",")}


def _accepts_json(accept: str) -> bool:
    types = _media_types(accept)
    return bool(types & {"application/json", "application/*", "*/*"}) or not any(types)


def _accepts_event_stream(accept: str) -> bool:
    return bool(_media_types(accept) & {"text/event-stream", "text/*"})


def _as_events(body: dict[str, Any] | list[dict[str, Any]]) -> bytes:
    """The reply as the transport's SSE stream: one `message` event per JSON-RPC response, then the end."""
    messages = body if isinstance(body, list) else [body]
    return b"".join(b"event: message\ndata: " + jsonrpc.encode(m) + b"\n\n" for m in messages)


def _is_session_id(value: str) -> bool:
    return 0 < len(value) <= 128 and all("\x21" <= c <= "\x7e" for c in value)
