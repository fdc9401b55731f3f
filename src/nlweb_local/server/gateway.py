"""The OpenAI-compatible face: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models.

Every request goes through the router; every answer says which deployment served it and why
(`x-nlweb-route`). Per request: `x-nlweb-strategy`, `x-nlweb-privacy: local_only`,
`x-nlweb-deadline-ms`, `x-nlweb-conversation`, `x-nlweb-priority` (read on every endpoint by
server/priority_middleware.py and put on each call by the gateway's RequestPriority); the response cache's controls
(`cache` in the body, `Cache-Control`, `x-nlweb-cache-namespace`: server/cache_controls.py), and its
outcome in `x-nlweb-cache` (hit, miss, semantic-hit; similarity=0.97). Errors use OpenAI's format.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route as HttpRoute

from ..config.settings import ServerSettings
from ..core.errors import BadRequestError, ContextLengthError, ModelNotFoundError, NlwebError, ProviderError
from ..cache.response import ResponseCache
from ..core.privacy import required
from ..governance.scopes import visible_models
from ..core.types import CacheControl, CallContext, ChatRequest, EmbeddingResponse, Privacy, Served
from ..providers.base import Provider
from ..retrieval.base import Embedder
from ..router.model import DeploymentInfo
from ..router.router import Router, estimate_tokens
from .body import BodyDeadlines, ClientGone, parse_json, read_body, read_request_body
from .cache_controls import HEADERS as CACHE_HEADERS
from .cache_controls import cache_control
from .errors import openai_error, send_json, send_openai_error
from .openai_schema import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, simple_chat, validate

log = logging.getLogger(__name__)
DEFAULT_MAX_TOKENS = 512  # what a request that names no max_tokens may generate (less when its prompt is long)
MAX_DEADLINE_MS = 86_400_000.0  # a day
_PRIVACY = {"any": Privacy.ANY, "local_only": Privacy.LOCAL_ONLY}
# what the completion endpoints read from a request's headers (one pass over the ASGI scope)
_READ_HEADERS = frozenset({b"content-length", b"x-nlweb-privacy", b"x-nlweb-strategy",
                           b"x-nlweb-conversation", b"x-nlweb-deadline-ms", *CACHE_HEADERS})
Send = Callable[[dict[str, Any]], Awaitable[None]]


class FastJSONResponse(JSONResponse):
    """orjson-rendered JSON (measured ~15–25 µs less per request than json)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def request_headers(scope: Mapping[str, Any]) -> dict[str, str]:
    """The headers the completion endpoints read (`_READ_HEADERS`), decoded; the first of repeats wins."""
    out: dict[str, str] = {}
    for k, v in scope["headers"]:
        if k in _READ_HEADERS:
            out.setdefault(k.decode("latin-1"), v.decode("latin-1"))
    return out


class _AsgiEndpoint:
    """Mounts `handle(scope, receive, send)` as a raw ASGI endpoint: Starlette routes a callable object
    as ASGI (a function or method would be wrapped as `request -> response`)."""

    __slots__ = ("handle",)

    def __init__(self, handle: Callable[..., Awaitable[None]]):
        self.handle = handle

    def __call__(self, scope, receive, send) -> Awaitable[None]:
        return self.handle(scope, receive, send)


def call_context(h: Mapping[str, str], model: str | None, router: Router,
                 cache: CacheControl | None = None) -> CallContext:
    """The call context from a request's headers (`request_headers`), its model name and its cache
    controls: a model that is neither `auto`, an alias nor a deployment is `ModelNotFoundError` (404
    `model_not_found`)."""
    privacy = _PRIVACY.get(h.get("x-nlweb-privacy", "any").strip().lower())
    if privacy is None:
        raise _bad_header("x-nlweb-privacy must be 'local_only' or 'any'", "x-nlweb-privacy")
    return CallContext(strategy=h.get("x-nlweb-strategy") or None, privacy=privacy,
                       conversation=h.get("x-nlweb-conversation", ""), deployments=resolve_model(router, model),
                       deadline_s=_deadline(h), cache=cache)


def resolve_model(router: Router, model: str | None, also: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The deployments `model` pins (() for none or `auto`); `ModelNotFoundError` for a name that is no
    alias or deployment (nor one of `also`)."""
    if not model or model == "auto" or model in also:
        return ()
    pinned = router.resolve_model(model)
    if not pinned:
        known = ["auto", *router.aliases(), *router.registry_aliases(), *router.names(), *also]
        err = ModelNotFoundError(f"the model {model!r} does not exist here; use one of {', '.join(known)} "
                                 "(GET /v1/models lists them)")
        err.param = "model"  # type: ignore[attr-defined]
        raise err
    return pinned


def route_header(served: Served | None) -> bytes:
    """`x-nlweb-route`, rendered from the typed `Served` (ASCII: headers are latin-1 on the wire)."""
    return served.header().encode("ascii") if served is not None else b""


def answer_headers(served: Served | None) -> list[tuple[bytes, bytes]]:
    """`x-nlweb-route`, and `x-nlweb-cache` when the response cache looked the request up."""
    out = [(b"x-nlweb-route", route_header(served))]
    if served is not None and served.cache:
        out.append((b"x-nlweb-cache", served.cache.encode("ascii", "replace")))
    return out


def _deadline(h: Mapping[str, str]) -> float | None:
    ms = h.get("x-nlweb-deadline-ms")
    if not ms:
        return None
    try:
        value = float(ms)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_DEADLINE_MS:  # (NaN fails the comparison too)
        raise _bad_header(f"x-nlweb-deadline-ms must be a number of milliseconds in (0, {MAX_DEADLINE_MS:.0f}], "
                          f"got {ms[:40]!r}", "x-nlweb-deadline-ms")
    return value / 1000.0


def _bad_param(message: str, name: str, error: type[BadRequestError] = BadRequestError) -> BadRequestError:
    """A 400 whose OpenAI `param` names the field (or header) at fault."""
    err = error(message)
    err.param = name  # type: ignore[attr-defined]
    return err


_bad_header = _bad_param


def _too_long(message: str, name: str) -> BadRequestError:
    return _bad_param(message, name, ContextLengthError)


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")


class Gateway:
    """`provider`: the composed chain every call goes through (the router, wrapped); `router`: its typed
    API (model names, aliases)."""

    def __init__(self, provider: Provider, router: Router, embedder: Embedder | None, *, server: ServerSettings,
                 embedder_name: str = "all-MiniLM-L6-v2", clock: Callable[[], float] = time.time,
                 embeddings: Provider | None = None):
        """`server`: the edge's limits (body size and read timeout, embedding inputs and tokens);
        `embeddings`: what serves /v1/embeddings when no deployment embeds (None: the embedder's provider)."""
        self._provider = provider
        self._embeddings = embeddings if embeddings is not None else getattr(embedder, "provider", None)
        self._router = router
        self._embedder = embedder
        self._limits = server
        self._embedder_name = embedder_name
        self._clock = clock
        self._id_prefix = os.urandom(6).hex()  # ids: a per-process random prefix + a counter (cheaper than uuid4)
        self._ids = itertools.count(1)
        # what never changes while the router runs: the chat deployments, for the checks no deployment would pass
        self._chat: dict[str, DeploymentInfo] = {v.name: v.info for v in router.deployments()
                                                 if router.provider(v.name).capabilities.chat}
        self._deadlines = BodyDeadlines()  # body-read timeouts without a timer per request
        self._plain: dict[str | None, CallContext] = {}  # the context of a request without x-nlweb-* headers, by model
        self._plain_generation = router.alias_generation()  # (a registry alias moved: forget the remembered contexts)

    def routes(self) -> list[HttpRoute]:
        """The completion endpoints are raw ASGI (the hot path: no Request/Response objects per call)."""
        return [HttpRoute("/v1/chat/completions", _AsgiEndpoint(self.chat), methods=["POST"]),
                HttpRoute("/v1/completions", _AsgiEndpoint(self.completions), methods=["POST"]),
                HttpRoute("/v1/embeddings", self.embeddings, methods=["POST"]),
                HttpRoute("/v1/models", self.models, methods=["GET"])]

    async def _json(self, request: Request) -> dict[str, Any]:
        raw = await read_request_body(request, self._limits.max_body_bytes, self._limits.body_timeout_s)
        return _json_object(raw)

    def _context(self, h: Mapping[str, str], model: str | None) -> CallContext:
        """`call_context`, remembered per model for requests that carry no x-nlweb-* header (most of them)."""
        if len(h) > ("content-length" in h):
            return call_context(h, model, self._router)
        generation = self._router.alias_generation()
        if generation != self._plain_generation:
            self._plain, self._plain_generation = {}, generation
        ctx = self._plain.get(model)
        if ctx is None:
            ctx = call_context(h, model, self._router)  # (an unknown model raises: never remembered)
            if len(self._plain) < 256:
                self._plain[model] = ctx
        return ctx

    async def chat(self, scope, receive, send) -> None:
        await self._serve(scope, receive, send, "chat.completion", ChatCompletionRequest)

    async def completions(self, scope, receive, send) -> None:
        await self._serve(scope, receive, send, "text_completion", CompletionRequest)

    async def _serve(self, scope, receive, send: Send, obj: str,
                     schema: type[ChatCompletionRequest] | type[CompletionRequest]) -> None:
        """Both completion endpoints (ASGI): parse, route (streamed or not), answer in OpenAI's shape."""
        h = request_headers(scope)
        try:
            raw = await read_body(receive, h.get("content-length"), self._limits.max_body_bytes,
                                  self._limits.body_timeout_s, self._deadlines)
            body = _json_object(raw)
            control = cache_control(body.pop("cache", None), h) if "cache" in body or _has_cache_headers(h) else None
            plain = simple_chat(body) if schema is ChatCompletionRequest else None  # the common shape, ~10x cheaper
            if plain is not None:
                req, stream, include_usage = plain, body.get("stream") is True, False
            else:
                wire = validate(schema, body)
                req, stream, include_usage = wire.chat_request(), bool(wire.stream), wire.include_usage
            # (the context remembered per model never carries one request's cache controls)
            req.context = self._context(h, req.model) if control is None else call_context(h, req.model, self._router,
                                                                                           control)
            self._check_servable(req)
            if stream:
                streamed = await self._stream_chat(req, include_usage,
                                                   "chat.completion.chunk" if obj == "chat.completion" else obj)
                resp = None
            else:
                resp = await self._provider.complete(req)
        except NlwebError as e:
            await send_openai_error(send, e)
            return
        except ClientGone:
            return
        if resp is None:
            await streamed(scope, receive, send)
            return
        if obj == "text_completion":
            choice: dict[str, Any] = {"index": 0, "text": resp.content, "finish_reason": resp.finish_reason, "logprobs": None}
        else:
            message: dict[str, Any] = {"role": "assistant", "content": resp.content}
            if resp.tool_calls:
                message["tool_calls"] = resp.tool_calls
            choice = {"index": 0, "message": message, "finish_reason": resp.finish_reason}
        await send_json(send, 200, orjson.dumps(self._envelope(obj, req, resp.deployment, [choice], resp.usage)),
                        answer_headers(resp.served))

    def _check_servable(self, req: ChatRequest) -> None:
        """Refuse (4xx) what no deployment the request may use could serve however idle it were — the
        router would only say "no deployment can serve this now" (503, which clients retry) — and give a
        request that named no `max_tokens` what fits: `DEFAULT_MAX_TOKENS`, less when its prompt is long.
        Mirrors the router's static eligibility (privacy, JSON output, tools, context window)."""
        ctx = req.context
        names = ctx.deployments or self._router.aliases().get(req.task.value) or tuple(self._chat)
        infos = [self._chat[n] for n in names if n in self._chat]
        if not infos:  # (e.g. an alias of embedding deployments: the router says why)
            req.max_tokens = req.max_tokens or DEFAULT_MAX_TOKENS
            return
        if ctx.privacy is Privacy.LOCAL_ONLY or required() is Privacy.LOCAL_ONLY:  # (the header's, the key's, the team's)
            infos = [i for i in infos if i.local]
            if not infos:
                raise _bad_header("no local deployment may serve this request, which is local_only (its "
                                  "x-nlweb-privacy header, or its key's or team's privacy); pick a local model "
                                  "(GET /v1/models)", "x-nlweb-privacy")
        if req.json_schema is not None:
            infos = [i for i in infos if i.json_schema]
            if not infos:
                raise _bad_param("no deployment this request may use gives JSON-schema output; drop response_format "
                                 "or pick another model", "response_format")
        if req.tools:
            infos = [i for i in infos if i.tools]
            if not infos:
                raise _bad_param("no deployment this request may use calls tools; drop 'tools' or pick another model",
                                 "tools")
        window = max(i.context_window for i in infos)
        prompt = estimate_tokens(req)
        if not req.max_tokens:  # the client named none
            req.max_tokens = max(1, min(DEFAULT_MAX_TOKENS, window - prompt))
        if req.max_tokens > window:
            raise _too_long(f"max_tokens is {req.max_tokens}, but the largest context window of the deployments this "
                            f"request may use is {window} tokens; lower max_tokens", "max_tokens")
        if prompt + req.max_tokens > window:
            raise _too_long(f"the messages (~{prompt} tokens at ~4 characters a token) plus max_tokens "
                            f"({req.max_tokens}) exceed the largest context window of the deployments this request "
                            f"may use ({window} tokens); shorten the messages or lower max_tokens", "messages")

    def _envelope(self, obj: str, req: ChatRequest, deployment: str, choices: list, usage=None) -> dict[str, Any]:
        out: dict[str, Any] = {"id": f"{'chatcmpl' if obj.startswith('chat') else 'cmpl'}-{self._id_prefix}{next(self._ids):x}",
                               "object": obj, "created": int(self._clock()), "model": req.model or deployment,
                               "system_fingerprint": deployment, "choices": choices}
        if usage is not None:
            out["usage"] = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                            "total_tokens": usage.total_tokens}
        return out

    async def _stream_chat(self, req: ChatRequest, include_usage: bool, obj: str) -> Response:
        """Wait for the first chunk (the failover boundary) so the route is known before the headers go out."""
        chunks = self._provider.stream(req)
        try:
            first = await chunks.__anext__()  # errors before the first token become a proper HTTP error
        except StopAsyncIteration:
            raise ProviderError("the deployment closed the stream without answering", deployment="router") from None
        route = route_header(first.served).decode("ascii")
        deployment = first.served.deployment if first.served is not None else ""
        # every event of one stream shares its id, created and model: serialise that head once
        # (`choices` is the envelope's last key, so an event is head + choices + "}")
        envelope = self._envelope(obj, req, deployment, [])
        head = b"data: " + orjson.dumps(envelope)[:-3] + b"["

        def event(choice: dict[str, Any]) -> bytes:
            return head + orjson.dumps(choice) + b"]}\n\n"

        def piece(ch) -> dict[str, Any]:
            if obj == "text_completion":
                return {"index": 0, "text": ch.delta, "finish_reason": ch.finish_reason, "logprobs": None}
            delta: dict[str, Any] = {"content": ch.delta} if ch.delta else {}
            if ch.tool_calls:
                delta["tool_calls"] = ch.tool_calls
            return {"index": 0, "delta": delta, "finish_reason": ch.finish_reason}

        async def events() -> AsyncIterator[bytes]:
            usage = first.usage
            first_piece = piece(first)
            if obj != "text_completion":
                first_piece["delta"]["role"] = "assistant"
            yield event(first_piece)
            try:
                async for ch in chunks:
                    usage = ch.usage or usage
                    yield event(piece(ch))
                if include_usage and usage is not None:
                    yield _sse({**envelope, "usage": {"prompt_tokens": usage.prompt_tokens,
                                                      "completion_tokens": usage.completion_tokens,
                                                      "total_tokens": usage.total_tokens}})
            except NlwebError as e:
                log.warning("stream from %s ended with an error: %s", deployment, e.message)
                yield _sse({"error": {"message": e.public_message, "type": e.openai_type, "code": "stream_interrupted"}})
            yield b"data: [DONE]\n\n"

        headers = {"x-nlweb-route": route, "cache-control": "no-cache"}
        if first.served is not None and first.served.cache:
            headers["x-nlweb-cache"] = _ascii(first.served.cache)
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    async def embeddings(self, request: Request) -> Response:
        try:
            body = await self._json(request)
            control = cache_control(body.pop("cache", None), request.headers)
            wire = validate(EmbeddingRequest, body)
            texts = wire.texts
            self._check_embedding_limits(texts)
            resolve_model(self._router, wire.model, also=(self._embedder_name,))
            cache = ""
            # a local_only request (core.privacy.REQUIRED: its header, key, team) embeds on a local deployment,
            # else in process: its text never goes to a cloud embedding deployment
            if self._provider.capabilities.embeddings and self._router.embeds(local_only=required() is Privacy.LOCAL_ONLY):
                out = await _embed(self._provider, texts, control)
                vectors, model, route, cache = out.vectors, out.model, f"{out.deployment}; embedding deployment", out.cache
            elif self._embedder is not None:
                provider = self._embeddings  # retrieval's embedder adapts a provider (cached by the composition root)
                if provider is not None:
                    out = await _embed(provider, texts, control)  # the model runs in the provider's worker thread
                    vectors, model, cache = out.vectors, out.model or self._embedder_name, out.cache
                else:  # an Embedder that is no provider adapter (test stand-ins)
                    vectors = await asyncio.to_thread(self._embedder.embed, texts)
                    model = self._embedder_name
                route = "embedded; in-process sentence-transformers"
            else:
                raise BadRequestError("no embedding model is configured")
        except NlwebError as e:
            return openai_error(e)
        tokens = sum(len(t) for t in texts) // 4
        headers = {"x-nlweb-route": _ascii(route)}
        if cache:
            headers["x-nlweb-cache"] = _ascii(cache)
        return FastJSONResponse({"object": "list", "model": wire.model or model,
                             "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}, headers=headers)

    def _check_embedding_limits(self, texts: list[str]) -> None:
        """At most `server.max_embedding_inputs` inputs and `server.max_embedding_tokens` tokens (~4
        characters each) per request: the in-process model embeds them all before anyone else gets a turn."""
        most = self._limits.max_embedding_inputs
        if len(texts) > most:
            raise _bad_param(f"'input' holds {len(texts)} strings; at most {most} per request "
                             "(server.max_embedding_inputs): send several requests", "input")
        tokens = sum(len(t) for t in texts) // 4
        if tokens > self._limits.max_embedding_tokens:
            raise _bad_param(f"'input' holds ~{tokens} tokens (~4 characters each); at most "
                             f"{self._limits.max_embedding_tokens} per request (server.max_embedding_tokens): "
                             "send several requests", "input")

    async def models(self, request: Request) -> Response:
        created = int(self._clock())
        data = [{"id": "auto", "object": "model", "created": created, "owned_by": "nlweb-local"}]
        for alias, members in self._router.aliases().items():
            data.append({"id": alias, "object": "model", "created": created, "owned_by": "nlweb-local",
                         "root": ",".join(members)})
        for alias, target in self._router.registry_aliases().items():
            data.append({"id": alias, "object": "model", "created": created, "owned_by": "nlweb-local", "root": target})
        for v in self._router.deployments():
            data.append({"id": v.name, "object": "model", "created": created,
                         "owned_by": "local" if v.info.local else "cloud", "root": v.info.model})
        usable = visible_models([m["id"] for m in data], self._router.resolve_model)  # a key's --models scope
        if usable is not None:
            data = [m for m in data if m["id"] in usable or (m["id"] == "auto" and bool(usable))]  # auto: among them
        if self._embedder is not None:  # (embeddings are not held to a key's models)
            data.append({"id": self._embedder_name, "object": "model", "created": created, "owned_by": "local"})
        return JSONResponse({"object": "list", "data": data})


def _has_cache_headers(h: Mapping[str, str]) -> bool:
    return "cache-control" in h or "x-nlweb-cache-namespace" in h


async def _embed(provider: Provider, texts: list[str], control: CacheControl | None) -> EmbeddingResponse:
    """`provider.embed`, with the request's cache controls when it is the response cache."""
    if isinstance(provider, ResponseCache):
        return await provider.embed(texts, control)
    return await provider.embed(texts)


def _json_object(raw: bytes) -> dict[str, Any]:
    body = parse_json(raw or b"{}")
    if not isinstance(body, dict):
        raise BadRequestError("request body must be a JSON object")
    return body


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"
