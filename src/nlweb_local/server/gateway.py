"""The OpenAI-compatible face: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models.

Every request goes through the router; every answer says which deployment served it and why
(`x-nlweb-route`). Per request: `x-nlweb-strategy`, `x-nlweb-privacy: local_only`,
`x-nlweb-deadline-ms`, `x-nlweb-priority`, `x-nlweb-conversation`. Errors use OpenAI's format.
"""
from __future__ import annotations

import logging
import time
import itertools
import os

import orjson
from typing import Any, AsyncIterator, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse


class FastJSONResponse(JSONResponse):
    """orjson-rendered JSON: the gateway's hot path (measured ~15–25 µs less per request than json)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
from starlette.routing import Route as HttpRoute

from ..core.errors import BadRequestError, NlwebError, OverloadedError, RateLimitedError
from ..core.types import ChatRequest, Message, TaskKind
from ..retrieval.base import Embedder
from ..router.model import Privacy
from ..router.router import RouteContext, Router
from .params import read_body

log = logging.getLogger(__name__)
_ROLES = {"system", "user", "assistant", "tool", "developer"}


def openai_error(e: NlwebError) -> JSONResponse:
    headers = {}
    retry = getattr(e, "retry_after", None)
    if isinstance(e, (OverloadedError, RateLimitedError)) and retry:
        headers["retry-after"] = str(max(1, int(round(retry))))
    code = getattr(e, "openai_code", None) or e.openai_type
    return JSONResponse({"error": {"message": e.message, "type": e.openai_type, "param": getattr(e, "param", None),
                                   "code": code}}, status_code=e.status, headers=headers)


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list):  # content parts: keep the text ones
        return "".join(p.get("text", "") for p in value if isinstance(p, dict) and p.get("type") in ("text", "input_text"))
    raise BadRequestError(f"{where}.content must be a string or a list of content parts")


def parse_chat(body: dict[str, Any]) -> ChatRequest:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequestError("'messages' must be a non-empty array of {role, content}")
    messages = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            raise BadRequestError(f"messages[{i}].role must be one of {', '.join(sorted(_ROLES))}")
        role = "system" if m["role"] == "developer" else m["role"]
        calls = m.get("tool_calls") or ()
        if not isinstance(calls, (list, tuple)):
            raise BadRequestError(f"messages[{i}].tool_calls must be an array")
        messages.append(Message(role, _content(m.get("content"), f"messages[{i}]"), tool_calls=tuple(calls),
                                tool_call_id=m.get("tool_call_id"), name=m.get("name")))
    fmt = body.get("response_format") or {}
    schema = None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise BadRequestError("response_format.json_schema.schema must be a JSON Schema object")
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        schema = {"type": "object"}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", 512))
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequestError("'max_tokens' must be a positive integer")
    temperature = body.get("temperature", 1.0)
    if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise BadRequestError("'temperature' must be a number between 0 and 2")
    stop = body.get("stop")
    return ChatRequest(messages=messages, model=body.get("model"), max_tokens=max_tokens, temperature=float(temperature),
                       json_schema=schema, stop=[stop] if isinstance(stop, str) else stop, top_p=body.get("top_p"),
                       seed=body.get("seed"), tools=body.get("tools"), tool_choice=body.get("tool_choice"),
                       task=TaskKind.JSON if schema else TaskKind.CHAT)


def route_context(request: Request, model: str | None, router: Router) -> RouteContext:
    h = request.headers
    privacy = h.get("x-nlweb-privacy", "any").strip().lower()
    if privacy not in ("any", "local_only"):
        raise BadRequestError("x-nlweb-privacy must be 'local_only' or 'any'")
    deployments = router.groups.get(model, ()) if model else ()
    if model and not deployments and model in router.routes:
        deployments = (model,)
    return RouteContext(strategy=h.get("x-nlweb-strategy") or None, privacy=Privacy(privacy),
                        priority=int(h.get("x-nlweb-priority", "0") or 0), conversation=h.get("x-nlweb-conversation", ""),
                        deployments=deployments)


def _deadline(request: Request) -> float | None:
    ms = request.headers.get("x-nlweb-deadline-ms")
    if not ms:
        return None
    try:
        return max(0.001, float(ms) / 1000.0)
    except ValueError:
        raise BadRequestError("x-nlweb-deadline-ms must be a number of milliseconds") from None


class Gateway:
    def __init__(self, router: Router, embedder: Embedder | None, *, max_body_bytes: int = 4_000_000,
                 embedder_name: str = "all-MiniLM-L6-v2", clock: Callable[[], float] = time.time):
        self._router = router
        self._embedder = embedder
        self._max_body = max_body_bytes
        self._embedder_name = embedder_name
        self._clock = clock
        self._id_prefix = os.urandom(6).hex()  # ids: a per-process random prefix + a counter (cheaper than uuid4)
        self._ids = itertools.count(1)

    def routes(self) -> list[HttpRoute]:
        return [HttpRoute("/v1/chat/completions", self.chat, methods=["POST"]),
                HttpRoute("/v1/completions", self.completions, methods=["POST"]),
                HttpRoute("/v1/embeddings", self.embeddings, methods=["POST"]),
                HttpRoute("/v1/models", self.models, methods=["GET"])]

    async def _json(self, request: Request) -> dict[str, Any]:
        raw = await read_body(request, self._max_body)
        try:
            body = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError as e:
            raise BadRequestError(f"request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise BadRequestError("request body must be a JSON object")
        return body

    async def chat(self, request: Request) -> Response:
        return await self._serve(request, "chat.completion", lambda body: body)

    async def completions(self, request: Request) -> Response:
        def as_chat(body: dict[str, Any]) -> dict[str, Any]:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1:
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise BadRequestError("'prompt' must be a string")
            return {**body, "messages": [{"role": "user", "content": prompt}]}

        return await self._serve(request, "text_completion", as_chat)

    async def _serve(self, request: Request, obj: str, to_chat: Callable[[dict[str, Any]], dict[str, Any]]) -> Response:
        """Both completion endpoints: parse, route (streamed or not), answer in OpenAI's shape."""
        try:
            body = await self._json(request)
            req = parse_chat(to_chat(body))
            req.deadline_s = _deadline(request)
            ctx = route_context(request, req.model, self._router)
            if body.get("stream"):
                return await self._stream_chat(req, ctx, body, "chat.completion.chunk" if obj == "chat.completion" else obj)
            resp = await self._router.complete(req, ctx)
        except NlwebError as e:
            return openai_error(e)
        if obj == "text_completion":
            choice: dict[str, Any] = {"index": 0, "text": resp.content, "finish_reason": resp.finish_reason, "logprobs": None}
        else:
            message: dict[str, Any] = {"role": "assistant", "content": resp.content}
            if resp.tool_calls:
                message["tool_calls"] = resp.tool_calls
            choice = {"index": 0, "message": message, "finish_reason": resp.finish_reason}
        return FastJSONResponse(self._envelope(obj, req, resp.deployment, [choice], resp.usage),
                                headers={"x-nlweb-route": resp.route})

    def _envelope(self, obj: str, req: ChatRequest, deployment: str, choices: list, usage=None) -> dict[str, Any]:
        out: dict[str, Any] = {"id": f"{'chatcmpl' if obj.startswith('chat') else 'cmpl'}-{self._id_prefix}{next(self._ids):x}",
                               "object": obj, "created": int(self._clock()), "model": req.model or deployment,
                               "system_fingerprint": deployment, "choices": choices}
        if usage is not None:
            out["usage"] = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                            "total_tokens": usage.total_tokens}
        return out

    async def _stream_chat(self, req: ChatRequest, ctx: RouteContext, body: dict[str, Any], obj: str) -> Response:
        """Wait for the first chunk (the failover boundary) so the route is known before the headers go out."""
        chunks = self._router.stream(req, ctx)
        try:
            first = await chunks.__anext__()  # errors before the first token become a proper HTTP error
        except StopAsyncIteration:
            from ..core.errors import ProviderError

            raise ProviderError("the deployment closed the stream without answering", deployment="router") from None
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        route = first.route or ""
        deployment = route.split(";", 1)[0]

        def piece(ch) -> dict[str, Any]:
            if obj == "text_completion":
                choice = {"index": 0, "text": ch.delta, "finish_reason": ch.finish_reason, "logprobs": None}
            else:
                delta: dict[str, Any] = {"content": ch.delta} if ch.delta else {}
                if ch.tool_calls:
                    delta["tool_calls"] = ch.tool_calls
                choice = {"index": 0, "delta": delta, "finish_reason": ch.finish_reason}
            return self._envelope(obj, req, deployment, [choice])

        async def events() -> AsyncIterator[bytes]:
            usage = first.usage
            first_piece = piece(first)
            if obj != "text_completion":
                first_piece["choices"][0]["delta"]["role"] = "assistant"
            yield _sse(first_piece)
            try:
                async for ch in chunks:
                    usage = ch.usage or usage
                    yield _sse(piece(ch))
                if include_usage and usage is not None:
                    yield _sse(self._envelope(obj, req, deployment, [], usage))
            except NlwebError as e:
                log.warning("stream from %s ended with an error: %s", deployment, e.message)
                yield _sse({"error": {"message": e.message, "type": e.openai_type, "code": "stream_interrupted"}})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"x-nlweb-route": route, "cache-control": "no-cache"})

    async def embeddings(self, request: Request) -> Response:
        try:
            body = await self._json(request)
            inp = body.get("input")
            texts = [inp] if isinstance(inp, str) else inp
            if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
                raise BadRequestError("'input' must be a string or a non-empty array of strings")
            if len(texts) > 2048:
                raise BadRequestError("'input' may hold at most 2048 strings")
            if self._router.capabilities.embeddings:
                out = await self._router.embed(texts)
                vectors, model, route = out.vectors, out.model, f"{out.deployment}; embedding deployment"
            elif self._embedder is not None:
                import asyncio

                vectors = await asyncio.to_thread(self._embedder.embed, texts)
                model, route = self._embedder_name, "embedded; in-process sentence-transformers"
            else:
                raise BadRequestError("no embedding model is configured")
        except NlwebError as e:
            return openai_error(e)
        tokens = sum(len(t) for t in texts) // 4
        return FastJSONResponse({"object": "list", "model": body.get("model") or model,
                             "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}, headers={"x-nlweb-route": route})

    async def models(self, request: Request) -> Response:
        created = int(self._clock())
        data = [{"id": "auto", "object": "model", "created": created, "owned_by": "nlweb-local"}]
        for alias, members in self._router.groups.items():
            data.append({"id": alias, "object": "model", "created": created, "owned_by": "nlweb-local",
                         "root": ",".join(members)})
        for name, r in self._router.routes.items():
            data.append({"id": name, "object": "model", "created": created,
                         "owned_by": "local" if r.info.local else "cloud", "root": r.provider.model})
        if self._embedder is not None:
            data.append({"id": self._embedder_name, "object": "model", "created": created, "owned_by": "local"})
        return JSONResponse({"object": "list", "data": data})


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"
