"""The /ask endpoint: parse, admit, run the pipeline, render in the requested wire format."""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, AsyncIterator, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..config.settings import Settings
from ..core.errors import NlwebError
from ..governance.scopes import sites_in_scope
from ..search.events import Begin, End, Event, Failure
from ..search.pipeline import AskPipeline
from .body import ClientGone
from .errors import nlweb_error
from .params import collect_params, implied_api, parse_ask
from .wire import Renderer, V05Renderer, V1Renderer, V3Renderer
from .wire_v055 import V055Renderer

log = logging.getLogger(__name__)
_RENDERERS = {"v3": V3Renderer, "v1": V1Renderer, "v0.5": V05Renderer, "v0.55": V055Renderer}


async def guarded(events: AsyncIterator[Event], outcome: Callable[[str], None] | None = None) -> AsyncIterator[Event]:
    """A bug in the pipeline becomes an error message followed by the end message, never a broken stream.
    Each answer's outcome (ok, degraded, error) goes to `outcome` (the metrics)."""
    try:
        async for ev in events:
            if isinstance(ev, End):
                what = "error" if ev.error else "degraded" if ev.degraded else "ok"
                log.info("ask finished%s: %s", "" if what == "ok" else f" ({what})", ev.stats)
                if outcome is not None:
                    outcome(what)
            yield ev
    except Exception:  # noqa: BLE001
        log.exception("ask pipeline crashed")
        if outcome is not None:
            outcome("error")
        yield Failure("internal error while answering; see the server log", 500)
        yield End(error=True)


async def _after(first: Event, rest: AsyncIterator[Event]) -> AsyncIterator[Event]:
    yield first
    async for ev in rest:
        yield ev


async def with_keepalive(events: AsyncIterator[Event], interval: float) -> AsyncIterator[Event | None]:
    """Yield events; yield None whenever `interval` seconds pass without one."""
    it = events.__aiter__()
    nxt: asyncio.Future = asyncio.ensure_future(it.__anext__())
    try:
        while True:
            done, _ = await asyncio.wait({nxt}, timeout=interval)
            if not done:
                yield None
                continue
            try:
                ev = nxt.result()
            except StopAsyncIteration:
                return
            yield ev
            nxt = asyncio.ensure_future(it.__anext__())
    finally:
        if not nxt.done():
            nxt.cancel()
            try:
                await nxt
            except (asyncio.CancelledError, StopAsyncIteration, Exception):  # noqa: BLE001
                pass


def sse_frame(msg: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(msg, ensure_ascii=False).encode() + b"\n\n"


class AskEndpoint:
    """`outcome(name)` counts each answer: ok, degraded (similarity only where the LLM was unavailable), error."""

    def __init__(self, pipeline: AskPipeline, settings: Settings, *, outcome: Callable[[str], None] | None = None):
        self._pipeline = pipeline
        self._settings = settings
        self._outcome = outcome

    async def handle(self, request: Request) -> Response:
        try:
            server = self._settings.server
            params, raw = await collect_params(request, server.max_body_bytes, server.body_timeout_s)
            dialect = implied_api(request.method, request.headers.get("accept", ""), server.default_api,
                                  server.eventsource_api)
            parsed = parse_ask(params, raw, self._settings.search, dialect)
            parsed.ask.sites = sites_in_scope(parsed.ask.sites)  # a key made with --sites searches only those
            self._pipeline.admit()
        except NlwebError as e:
            return nlweb_error(e)
        except ClientGone:
            return Response(status_code=400)  # nobody is left to read it
        renderer: Renderer = _RENDERERS[parsed.api](parsed.ask)
        events = guarded(self._pipeline.run(parsed.ask), self._outcome)
        what = repr(parsed.ask.query[:80]) if server.log_queries else f"({len(parsed.ask.query)} characters)"  # server.log_queries
        log.info("ask %s sites=%s mode=%s api=%s", what, parsed.ask.sites or "all", parsed.ask.mode, parsed.api)
        first = await events.__anext__()  # `Begin` (at once): says whether the answer comes from the cache
        cache = {"x-nlweb-cache": first.cache} if isinstance(first, Begin) and first.cache else {}
        events = _after(first, events)
        if parsed.streaming:
            return StreamingResponse(self._stream(events, renderer), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **cache})
        messages: list[dict[str, Any]] = []
        status = 200
        async for ev in events:
            if isinstance(ev, Failure):
                status = ev.status
            messages.extend(renderer.render(ev))
        return JSONResponse(renderer.body(messages), status_code=status, headers=cache)

    async def _stream(self, events: AsyncIterator[Event], renderer: Renderer) -> AsyncIterator[bytes]:
        frame = getattr(renderer, "frame", sse_frame)  # v0.55 names its events
        async for ev in with_keepalive(events, self._settings.server.keepalive_s):
            if ev is None:
                yield b": keepalive\n\n"
                continue
            for msg in renderer.render(ev):
                yield frame(msg)
