"""NLWeb's chat transport, single-user: `GET /chat/sse?message=<JSON>` (EventSource) and `/chat/ws` (WebSocket).

NLWeb's chat page (`chat-interface-unified.js`) sends one chat message per question:

    {"message_id": "...", "conversation_id": "...", "type": "message", "message_type": "user",
     "content": {"query": "...", "site": "all", "mode": "list", "prev_queries": [...]},
     "sender_info": {"id": "...", "name": "..."}}

and reads back, per question, the /ask answer framed by `begin-nlweb-response` ... `end-nlweb-response`
(v3 messages, each with `conversation_id`, `message_id`, `timestamp`, `sender_info`; for site "all" an
`asking_sites` message first), preceded by a `{"type": "message_ack"}`. Over SSE the stream then ends;
over a WebSocket the connection stays open for the next question (it opens with `{"type": "connected"}`
and also answers `ping`, `sites_request`, `join`, `leave`).

Each message is translated into an /ask request (content.query, site, mode, prev_queries → query, site,
generate_mode, prev) and answered by the same pipeline; the chat dialect differs from v3 only where that page
reads other fields: a summary is `{"message_type": "summary", "content": text}`, errors and "no results" carry
their text in `content`, and in generate mode the items come once, inside `nlws`.

Not implemented (NLWeb's multi-participant chat): several humans in one conversation, broadcasting a
message to the others, join/share links, stored conversation history (`join` answers an empty history).
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..config.settings import Settings
from ..core.errors import BadRequestError, NlwebError
from ..governance.scopes import sites_in_scope
from ..search.events import AskRequest, Begin, Event, Failure, NoResults, Results, Summary
from ..search.pipeline import AskPipeline
from ..search.ports import VectorStore
from .ask import guarded, sse_frame, with_keepalive
from .body import parse_json
from .errors import nlweb_error
from .params import parse_ask, prev_texts
from .wire import V3Renderer

log = logging.getLogger(__name__)

MAX_QUEUED = 4
"""Questions one WebSocket may have waiting behind the one being answered; more are refused (`queue_full`)."""


class ChatRenderer(V3Renderer):
    """v3 messages, with the fields NLWeb's chat page reads (see the module docstring)."""

    def asking_sites(self, names: list[str]) -> dict[str, Any]:
        return self._msg(message_type="asking_sites", query=self._req.query, content=", ".join(names),
                         sites=[{"domain": n, "name": n} for n in names])

    def render(self, event: Event) -> list[dict[str, Any]]:
        match event:
            case Results() if self._req.mode == "generate":
                return []  # the page would render them, then again from `nlws`
            case Summary(text=t):
                return [self._msg(message_type="summary", sender_type="assistant", content=t)]
            case NoResults(message=m):
                return [self._msg(message_type="no_results", message=m, content=m)]
            case Failure(message=m, status=s):
                return [self._msg(message_type="error", error=m, status=s, content=f"Error: {m}")]
        return super().render(event)


@dataclass(slots=True)
class ChatMessage:
    ask: AskRequest
    message_id: str


def chat_message(data: Any, settings: Settings) -> ChatMessage:
    """The /ask request a chat message stands for; `BadRequestError` saying what to fix."""
    example = ('{"conversation_id": "c1", "type": "message", "content": {"query": "spicy snacks", "site": "all", '
               '"mode": "list"}}')
    if not isinstance(data, dict):
        raise BadRequestError(f"a chat message is a JSON object, e.g. {example}")
    content = data.get("content")
    if isinstance(content, str):
        content = {"query": content}
    if not isinstance(content, dict):
        raise BadRequestError(f"a chat message needs a 'content' object with the question in 'query', e.g. {example}")
    query = content.get("query")
    if not isinstance(query, str) or not query.strip():
        raise BadRequestError(f"the chat message's content.query must hold the question, e.g. {example}")
    mode = content.get("mode", content.get("generate_mode", "list"))
    if mode not in (None, "", "list", "none", "summarize", "summary", "generate"):
        raise BadRequestError(f"content.mode must be list, summarize or generate, got {mode!r}")
    params: dict[str, Any] = {"query": query, "generate_mode": mode or "list",
                              "site": content.get("site"), "conversation_id": data.get("conversation_id") or "",
                              "query_id": data.get("message_id") or ""}
    for key in ("min_score", "max_results", "decontextualized_query"):
        if key in content:
            params[key] = content[key]
    params = {k: v if isinstance(v, (str, list)) or v is None else str(v) for k, v in params.items()}
    ask = parse_ask(params, None, settings.search, "v3").ask
    ask.sites = sites_in_scope(ask.sites)  # a key made with --sites searches only those
    prev = content.get("prev_queries", content.get("prev"))
    if prev is not None and not isinstance(prev, (list, str)):
        raise BadRequestError("content.prev_queries must be a list of earlier questions")
    ask.prev = prev_texts(prev, "content.prev_queries")
    return ChatMessage(ask, str(data.get("message_id") or ask.query_id))


class ChatEndpoint:
    def __init__(self, pipeline: AskPipeline, store: VectorStore, settings: Settings, *,
                 outcome: Callable[[str], None] | None = None):
        self._pipeline = pipeline
        self._store = store
        self._settings = settings
        self._outcome = outcome

    def routes(self) -> list[BaseRoute]:
        return [Route("/chat/sse", self.sse, methods=["GET"]), WebSocketRoute("/chat/ws", self.websocket)]

    async def _answer(self, message: ChatMessage) -> AsyncIterator[dict[str, Any] | None]:
        """The chat messages of one answer, acknowledgement first; None where a keep-alive is due."""
        ask = message.ask
        yield {"type": "message_ack", "message_id": message.message_id, "conversation_id": ask.conversation_id}
        log.info("chat %r sites=%s mode=%s", ask.query[:80], ask.sites or "all", ask.mode)
        renderer = ChatRenderer(ask)
        events = guarded(self._pipeline.run(ask), self._outcome)
        async for ev in with_keepalive(events, self._settings.server.keepalive_s):
            if ev is None:
                yield None
                continue
            for msg in renderer.render(ev):
                yield msg
            if isinstance(ev, Begin) and not ask.sites:
                yield await self._asking_sites(renderer)

    async def _asking_sites(self, renderer: ChatRenderer) -> dict[str, Any]:
        """Which sites "all" searches. The page shows them, and only this message clears its first spinner
        when the question is for all sites."""
        names = [s.name for s in await asyncio.to_thread(self._store.sites)]
        return renderer.asking_sites(names)

    # --- SSE -------------------------------------------------------------------------------------

    async def sse(self, request: Request) -> Response:
        raw = request.query_params.get("message")
        try:
            if not raw:
                raise BadRequestError("missing required parameter 'message': the chat message as JSON, e.g. "
                                      '/chat/sse?message={"content":{"query":"spicy snacks"}}')
            if len(raw) > self._settings.server.max_body_bytes:
                raise BadRequestError(f"parameter 'message' is longer than {self._settings.server.max_body_bytes} characters")
            message = chat_message(parse_json(raw, "parameter 'message'"), self._settings)
            self._pipeline.admit()
        except NlwebError as e:
            return nlweb_error(e)
        return StreamingResponse(self._sse_frames(message), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _sse_frames(self, message: ChatMessage) -> AsyncIterator[bytes]:
        async for msg in self._answer(message):
            yield b": keepalive\n\n" if msg is None else sse_frame(msg)

    # --- WebSocket -------------------------------------------------------------------------------

    async def websocket(self, ws: WebSocket) -> None:
        await ws.accept()
        send = _Sender(ws)
        user = ws.query_params.get("user_id") or ws.query_params.get("anon_user_id") or "anonymous"
        await send({"type": "connected", "participant_id": user})
        queue: asyncio.Queue[ChatMessage] = asyncio.Queue(MAX_QUEUED)
        worker = asyncio.ensure_future(self._answer_queued(send, queue))
        try:
            while True:
                reply = await self._receive(ws, queue)
                if reply is not None:
                    await send(reply)
        except WebSocketDisconnect:
            pass
        finally:
            worker.cancel()
            try:
                await worker
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 (the socket is gone either way)
                pass

    async def _receive(self, ws: WebSocket, queue: asyncio.Queue[ChatMessage]) -> dict[str, Any] | None:
        """Read one frame; queue a question, or return the direct reply to anything else."""
        text = await ws.receive_text()
        if len(text) > self._settings.server.max_body_bytes:
            return _ws_error("too_large", f"a message may be at most {self._settings.server.max_body_bytes} bytes")
        try:
            data = parse_json(text, "the WebSocket message")
        except BadRequestError as e:
            return _ws_error("invalid_json", e.message)
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "ping":
            return {"type": "pong"}
        if kind == "sites_request":
            sites = await asyncio.to_thread(self._store.sites)
            return {"type": "sites_response", "sites": [s.name for s in sites]}
        if kind == "join":  # no stored history here: an empty one, so the page carries on
            return {"type": "end-conversation-history", "conversation_id": data.get("conversation_id"),
                    "message_count": 0}
        if kind == "leave":
            return None
        if kind not in ("message", None) and not (isinstance(data, dict) and data.get("message_type") == "user"):
            return _ws_error("unknown_type", f"unknown message type {kind!r}; send type 'message' with the "
                             "question in content.query (also understood: ping, sites_request, join, leave)")
        try:
            message = chat_message(data, self._settings)
            self._pipeline.admit()
        except NlwebError as e:
            return _ws_error("bad_request" if e.status < 500 else "busy", e.message, e.status)
        try:
            queue.put_nowait(message)
        except asyncio.QueueFull:
            return _ws_error("queue_full", "Conversation queue is full. Please wait for the answers in progress.", 429)
        return None

    async def _answer_queued(self, send: _Sender, queue: asyncio.Queue[ChatMessage]) -> None:
        """Answers one question at a time, in the order asked."""
        while True:
            message = await queue.get()
            async for msg in self._answer(message):
                if msg is not None:  # (WebSocket keep-alive is the server's ping, not a message)
                    await send(msg)


class _Sender:
    """Whole messages onto one WebSocket from two tasks (the reader's replies, the answers)."""

    def __init__(self, ws: WebSocket):
        self._ws = ws
        self._lock = asyncio.Lock()

    async def __call__(self, msg: dict[str, Any]) -> None:
        async with self._lock:
            await self._ws.send_text(json.dumps(msg, ensure_ascii=False))


def _ws_error(code: str, message: str, status: int = 400) -> dict[str, Any]:
    return {"type": "error", "error": code, "message": message, "code": status}
