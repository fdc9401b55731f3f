"""OpenTelemetry tracing, optional (`telemetry.tracing`; `pip install 'nlweb-local[tracing]'`).

One trace per HTTP request to /ask, /v1/* or /mcp:

    POST /v1/chat/completions   SERVER    nlweb.request_id (= the x-request-id header), http.* attributes
    └─ nlweb.route              INTERNAL  strategy, candidates, reason, rejected, chosen deployment,
       │                                  fallbacks tried (deployments that failed first), outcome
       ├─ nlweb.llm local       CLIENT    deployment, engine, model, task, outcome=ProviderConnectionError
       └─ nlweb.llm cloud       CLIENT    ..., tokens in/out, time to first token, outcome=ok;
                                          event `nlweb.ledger_row` (the ledger row's request id)

The parts are wrappers, like the rest of telemetry: `TracingMiddleware` (pure ASGI, inside the request-id
middleware), `TracedRouter` (a provider around the router), `TracedProvider` (a provider around each
metered deployment) and `traced_strategies` (routing policies that note their decision on the current
span). With tracing off — the default — or OpenTelemetry not installed, `build_tracing` is never called
or returns None: this module is not imported, no wrapper is inserted, and the request path is exactly
what it is without tracing. A W3C `traceparent` header from the caller is honoured.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from ..providers.wrapper import CallKind, StreamTally, WrapperProvider, answer_tokens, observed
from .context import current_request_id

log = logging.getLogger(__name__)

TRACED_PREFIXES = ("/ask", "/v1/", "/mcp")
_ATTEMPTS = "nlweb.route.attempts"  # context key: the current route span's list of (deployment, outcome)
INSTALL_HINT = "pip install 'nlweb-local[tracing]'"


def _outcome(error: BaseException | None) -> str:
    if error is None:
        return "ok"
    return "Cancelled" if isinstance(error, (asyncio.CancelledError, GeneratorExit)) else type(error).__name__


def _fail(span: Any, error: BaseException) -> None:
    span.set_status(Status(StatusCode.ERROR, _outcome(error)))
    span.set_attribute("error.type", _outcome(error))


class Tracing:
    """The tracer of one app and the wrappers that use it. Made by `build_tracing`; `close()` flushes."""

    def __init__(self, tracer_provider: Any, *, version: str = ""):
        self.provider = tracer_provider
        self.tracer = tracer_provider.get_tracer("nlweb_local", version)

    # -- the wrappers -----------------------------------------------------------------------------
    def middleware(self) -> Any:
        from starlette.middleware import Middleware

        return Middleware(TracingMiddleware, tracing=self)

    def wrap(self, provider: Any, *, engine: str = "", ledger: bool = False) -> "TracedProvider":
        return TracedProvider(provider, self, engine=engine, ledger=ledger)

    def wrap_router(self, router: Any) -> "TracedRouter":
        return TracedRouter(router, self)

    def strategies(self, strategies: dict[str, Callable]) -> dict[str, Callable]:
        return traced_strategies(strategies)

    def close(self) -> None:
        shutdown = getattr(self.provider, "shutdown", None)
        if shutdown is not None:
            shutdown()


def build_tracing(t: Any, *, exporters: Sequence[Any] = (), version: str = "") -> Tracing | None:
    """From `TelemetrySettings`: a tracer provider with the configured exporters (OTLP/HTTP at
    `otlp_endpoint`, the console with `trace_console`) plus `exporters` (tests: an in-memory one, exported
    synchronously). None, with a warning, when the OpenTelemetry SDK is not installed."""
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError:
        log.warning("telemetry.tracing is on but the OpenTelemetry SDK is not installed (%s): no traces", INSTALL_HINT)
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": t.trace_service_name}),
                              sampler=ParentBased(TraceIdRatioBased(t.trace_sample_ratio)))
    for exporter in exporters:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if t.otlp_endpoint:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("telemetry.otlp_endpoint is set but the OTLP/HTTP exporter is not installed (%s): "
                        "spans are not sent there", INSTALL_HINT)
        else:
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_traces_url(t.otlp_endpoint))))
    if t.trace_console:
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    return Tracing(provider, version=version)


def otlp_traces_url(endpoint: str) -> str:
    """A collector's base URL (http://host:4318) gets OTLP/HTTP's traces path; a full URL is kept."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else base + "/v1/traces"


# -- HTTP --------------------------------------------------------------------------------------------
def _headers(scope: dict) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in (b"traceparent", b"tracestate")}


class TracingMiddleware:
    """A SERVER span per request to /ask, /v1/*, /mcp; every other path passes straight through.
    Sits inside `RequestIdMiddleware`, so the request id (the `x-request-id` response header) is known."""

    def __init__(self, app: Any, tracing: Tracing, prefixes: tuple[str, ...] = TRACED_PREFIXES):
        self.app = app
        self._tracer = tracing.tracer
        self._prefixes = prefixes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self._prefixes):
            await self.app(scope, receive, send)
            return
        parent = propagate.extract(_headers(scope))
        method, path = scope.get("method", "GET"), scope["path"]
        span = self._tracer.start_span(f"{method} {path}", context=parent, kind=SpanKind.SERVER, attributes={
            "http.request.method": method, "url.path": path, "nlweb.request_id": current_request_id()})
        token = otel_context.attach(trace.set_span_in_context(span, parent))

        async def send_traced(message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            await send(message)

        try:
            await self.app(scope, receive, send_traced)
        except BaseException as e:
            _fail(span, e)
            raise
        finally:
            otel_context.detach(token)
            span.end()


# -- routing -----------------------------------------------------------------------------------------
def traced_strategies(strategies: dict[str, Callable]) -> dict[str, Callable]:
    """Each strategy, unchanged, plus a note of its decision on the current (route) span."""
    return {name: _traced_strategy(name, fn) for name, fn in strategies.items()}


def _traced_strategy(name: str, fn: Callable) -> Callable:
    def decide(f, views, rng):
        d = fn(f, views, rng)
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes({"nlweb.route.strategy": name, "nlweb.route.candidates": list(d.ordered),
                                 "nlweb.route.reason": d.reason,
                                 "nlweb.route.rejected": [f"{k}: {v}" for k, v in d.rejected.items()]})
        return d

    decide.__name__ = getattr(fn, "__name__", name)
    return decide


class TracedRouter(WrapperProvider):
    """The router inside one `nlweb.route` span per call. Each deployment's `TracedProvider` appends
    (deployment, outcome) to the span's attempt list, from which the chosen deployment and the
    fallbacks tried are read when the call ends."""

    def __init__(self, inner: Any, tracing: Tracing):
        super().__init__(inner)
        self._tracer = tracing.tracer

    def _start(self, task: Any) -> tuple[Any, Any, list]:
        attempts: list[tuple[str, str]] = []
        span = self._tracer.start_span("nlweb.route", attributes={
            "nlweb.request_id": current_request_id(), "nlweb.task": str(getattr(task, "value", task))})
        ctx = otel_context.set_value(_ATTEMPTS, attempts, trace.set_span_in_context(span))
        return span, ctx, attempts

    @staticmethod
    def _end(span: Any, attempts: list[tuple[str, str]], error: BaseException | None) -> None:
        if span.is_recording():
            chosen = next((name for name, outcome in reversed(attempts) if outcome == "ok"), "")
            span.set_attributes({"nlweb.route.deployment": chosen,
                                 "nlweb.route.fallbacks": [name for name, outcome in attempts if outcome != "ok"],
                                 "nlweb.route.attempts": len(attempts), "nlweb.outcome": _outcome(error)})
            if error is not None:
                _fail(span, error)
        span.end()

    async def around_call(self, kind: CallKind, subject: Any, run: Callable[[], Awaitable[Any]]) -> Any:
        span, ctx, attempts = self._start("embed" if kind == "embed" else subject.task)
        token = otel_context.attach(ctx)
        try:
            out = await run()
        except BaseException as e:
            self._end(span, attempts, e)
            raise
        finally:
            otel_context.detach(token)
        self._end(span, attempts, None)
        return out

    def stream(self, request: Any) -> AsyncIterator[Any]:
        return self._stream(request)

    async def _stream(self, request: Any) -> AsyncIterator[Any]:
        """The span is made current only while the router works on the next chunk (attached and detached
        within one step), never across a `yield`: the consumer may resume the stream in another task.
        (The inner stream is created inside the span too, so the strategy's decision lands on it.)"""
        span, ctx, attempts = self._start(request.task)
        token = otel_context.attach(ctx)
        try:
            chunks = self.inner.stream(request)
        finally:
            otel_context.detach(token)
        error: BaseException | None = None
        try:
            while True:
                token = otel_context.attach(ctx)
                try:
                    ch = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                finally:
                    otel_context.detach(token)
                yield ch
        except BaseException as e:
            error = e
            raise
        finally:
            token = otel_context.attach(ctx)
            try:
                await chunks.aclose()
            finally:
                otel_context.detach(token)
                self._end(span, attempts, error)


# -- engine calls ------------------------------------------------------------------------------------
class TracedProvider(WrapperProvider):
    """One CLIENT span per engine call of the (metered) deployment it wraps, a child of the route span."""

    def __init__(self, inner: Any, tracing: Tracing, *, engine: str = "", ledger: bool = False,
                 clock: Callable[[], float] = time.perf_counter):
        super().__init__(inner)
        self._tracer = tracing.tracer
        self._engine = engine
        self._ledger = ledger
        self._clock = clock

    def _start(self, task: Any) -> tuple[Any, list | None]:
        """The span, and the attempt list of the route span it belongs to (if any)."""
        span = self._tracer.start_span(f"nlweb.llm {self.name}", kind=SpanKind.CLIENT, attributes={
            "nlweb.deployment": self.name, "nlweb.engine": self._engine, "nlweb.local": self.capabilities.local,
            "gen_ai.request.model": self.model, "nlweb.task": str(getattr(task, "value", task)),
            "nlweb.request_id": current_request_id()})
        return span, otel_context.get_value(_ATTEMPTS)

    def _end(self, started: tuple[Any, list | None], error: BaseException | None,
             tokens: tuple[int, int] | None = None, ttft: float | None = None) -> None:
        span, attempts = started
        outcome = _outcome(error)
        if attempts is not None:
            attempts.append((self.name, outcome))
        if span.is_recording():
            span.set_attribute("nlweb.outcome", outcome)
            if tokens is not None:
                span.set_attributes({"gen_ai.usage.input_tokens": tokens[0], "gen_ai.usage.output_tokens": tokens[1]})
            if ttft is not None:
                span.set_attribute("nlweb.ttft_s", ttft)
            if error is not None:
                _fail(span, error)
            if self._ledger:  # the metered deployment inside has just queued this call's ledger row
                span.add_event("nlweb.ledger_row", {"nlweb.request_id": current_request_id(),
                                                    "nlweb.deployment": self.name})
        span.end()

    async def around_call(self, kind: CallKind, subject: Any, run: Callable[[], Awaitable[Any]]) -> Any:
        started = self._start("embed" if kind == "embed" else subject.task)
        try:
            out = await run()
        except BaseException as e:
            self._end(started, e)
            raise
        if kind == "complete":
            self._end(started, None, answer_tokens(kind, subject, out), out.usage.time_to_first_token_s)
        elif kind == "embed":
            self._end(started, None, (out.prompt_tokens or 0, 0))
        else:
            self._end(started, None)
        return out

    def around_stream(self, request: Any, chunks: AsyncIterator[Any]) -> AsyncIterator[Any]:
        def end(started: tuple[Any, list | None], seen: StreamTally, error: BaseException | None) -> None:
            self._end(started, error, seen.tokens(request) if error is None else None, seen.ttft)

        return observed(chunks, self._clock, lambda: self._start(request.task), end)
