"""The composition root: `create_app(settings)` wires the parts and the routes."""
from __future__ import annotations

import asyncio
import gc
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import __version__
from ..config.settings import Settings
from ..governance.scopes import visible
from ..search.who import SiteDirectory
from .ask import AskEndpoint
from .chat import ChatEndpoint
from .components import Components, build_components
from .mcp_tools import SearchTools
from .openapi import openapi_route
from .who_endpoint import WhoEndpoint

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


def create_app(settings: Settings, components: Components | None = None, *, close_components: bool | None = None) -> Starlette:
    """`components` None: build them from settings (and close them at shutdown)."""
    owned = components is None if close_components is None else close_components
    comp = components or build_components(settings)
    pipeline = comp.pipeline
    directory = SiteDirectory(comp.embedder, comp.store)
    outcome = None
    if comp.telemetry is not None:
        answers = comp.telemetry.metrics.ask_answers
        outcome = lambda what: answers.labels(what).inc()  # noqa: E731
    ask = AskEndpoint(pipeline, settings, outcome=outcome)

    async def sites(request: Request) -> Response:
        infos = await asyncio.to_thread(comp.store.sites)
        return JSONResponse({"message-type": "sites", "sites": visible(s.name for s in infos)})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "healthy", "version": __version__, "air_gap": settings.air_gap})

    async def ready(request: Request) -> Response:
        checks: dict[str, str] = {}
        try:
            n = await asyncio.to_thread(comp.store.count)
            checks["store"] = f"ok ({n} items)"
        except Exception as e:  # noqa: BLE001
            checks["store"] = f"failing: {e}"
        if comp.gateway is not None:
            h = await comp.gateway.health()
            checks["llm"] = f"ok ({h.detail}, {h.waiting} queued)" if h.healthy else f"failing: {h.detail}"
        ok = all(v.startswith("ok") for v in checks.values())
        return JSONResponse({"status": "ready" if ok else "not_ready", "checks": checks}, status_code=200 if ok else 503)

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    from .mcp import mcp_routes

    routes = [
        # /v1 first: the gateway's hot path should not be matched against every other route
        *(gateway_routes(comp, settings) if comp.router is not None else []),
        Route("/", index),
        Route("/ask", ask.handle, methods=["GET", "POST"]),
        Route("/sites", sites),
        Route("/who", WhoEndpoint(directory).handle),
        *ChatEndpoint(pipeline, comp.store, settings, outcome=outcome).routes(),
        Route("/health", health),
        Route("/ready", ready),
        *mcp_routes(SearchTools(pipeline, comp.store, directory), version=__version__,
                    max_body_bytes=settings.server.max_body_bytes, body_timeout_s=settings.server.body_timeout_s,
                    max_batch=settings.server.mcp_max_batch),
        *(_telemetry_routes(comp) if comp.telemetry is not None else []),
        *(_key_routes(comp, settings) if comp.governance is not None else []),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        openapi_route(__version__),  # GET /openapi.json: every route above (server/openapi.py)
    ]

    @asynccontextmanager
    async def lifespan(app):
        # Fewer young-generation collections: the gateway allocates many short-lived objects per request
        # (measured 20–30 µs of GC per request at the default threshold of 700).
        gc.set_threshold(20_000, 50, 100)
        gc.freeze()  # what start-up built (modules, settings, the app) is never scanned by a collection again
        if comp.replicas:  # launched engine processes: serving before the first request (a bad model file stops here)
            await comp.replicas.start()
        probe = (asyncio.create_task(comp.router.probe_forever(settings.llm.health_interval_s))
                 if comp.router is not None else None)
        alerts = comp.telemetry.start() if comp.telemetry is not None else None  # alert rules, in the background
        canary = asyncio.create_task(comp.canary.run_forever()) if comp.canary is not None else None  # stage decisions
        yield
        if probe is not None:
            probe.cancel()
        if canary is not None:
            canary.cancel()
        if comp.telemetry is not None:
            await comp.telemetry.stop(alerts)  # (the ledger is flushed and closed by its closer)
        if comp.replicas:
            await comp.replicas.close()  # drained, then stopped: no engine process outlives the server
        if owned:
            await comp.close()

    return Starlette(routes=routes, lifespan=lifespan, middleware=middleware(comp))


def _telemetry_routes(comp: Components) -> list:
    """/metrics and /admin/stats (telemetry.endpoints)."""
    from .admin import telemetry_routes

    return telemetry_routes(comp.telemetry, comp.router)


def _key_routes(comp: Components, settings: Settings) -> list:
    """/admin/keys (server/keys_admin.py)."""
    from .keys_admin import key_routes

    from ..core.priority import PriorityClasses

    p = settings.llm.priority
    return key_routes(comp.governance, max_body_bytes=settings.server.max_body_bytes,
                      body_timeout_s=settings.server.body_timeout_s, classes=PriorityClasses(p.classes, p.default_class))


def middleware(comp: Components) -> list[Middleware]:
    """The one middleware list, outermost first: trusted Host names (400 otherwise) → request id (an
    `x-request-id` per request, followed into every ledger row and span of that request), carrying the audit
    log's recorder (a row per audited request; with `audit.log_content`, the audit log's own layer here) → CORS (with server.cors_origins) → cross-site write refusal (CSRF) →
    authentication (with governance) → the request's privacy class (x-nlweb-privacy, key, team) → its
    priority (x-nlweb-priority, key, team) → tracing
    (a span per request, when `telemetry.tracing` is on)."""
    from ..telemetry.context import RequestIdMiddleware
    from .origin_checks import HostAllowlist, OriginCheckMiddleware, TrustedHostMiddleware

    server = comp.settings.server
    tracing = getattr(comp.telemetry, "tracing", None)
    recorder, audit_layer = _audit(comp)
    return [Middleware(TrustedHostMiddleware, hosts=HostAllowlist(server.allowed_hosts, listen_host=server.host)),
            Middleware(RequestIdMiddleware, recorder=recorder), *audit_layer, *_cors(server.cors_origins),
            Middleware(OriginCheckMiddleware, cors_origins=server.cors_origins), *_auth(comp), _privacy(comp),
            _priority(comp),
            *([tracing.middleware()] if tracing is not None else [])]


def _privacy(comp: Components) -> Middleware:
    """The privacy class each request requires (its x-nlweb-privacy header, its key's and team's): after
    authentication, which names the caller."""
    from ..governance.privacy import CallerPrivacy
    from .privacy_middleware import PrivacyMiddleware

    return Middleware(PrivacyMiddleware, callers=CallerPrivacy.from_settings(comp.settings.auth))


def _priority(comp: Components) -> Middleware:
    """The priority each request runs at (x-nlweb-priority, the key's and team's class): after auth."""
    from .priority_middleware import CallerPriority, PriorityMiddleware

    return Middleware(PriorityMiddleware, callers=CallerPriority.from_settings(comp.settings))


def _auth(comp: Components) -> list[Middleware]:
    """API keys, roles, limits: after the audit middleware (a refused request is audited too) and the
    origin check (a cross-site form is refused before any key is looked up)."""
    if comp.governance is None:
        return []
    from .auth import AuthMiddleware

    return [Middleware(AuthMiddleware, governance=comp.governance)]


def _audit(comp: Components) -> tuple[Any, list[Middleware]]:
    """The audit log's part: (the request-id middleware's recorder, or None; a layer of its own, or none).
    A recorder costs no ASGI layer; `audit.log_content` needs the layer (it must see the body and the answer)."""
    if comp.audit is None:
        return None, []
    from ..governance.audit_middleware import AuditMiddleware, AuditRecorder

    a = comp.settings.audit
    if not a.log_content:
        return AuditRecorder(comp.audit, max_content_chars=a.max_content_chars), []
    return None, [Middleware(AuditMiddleware, audit=comp.audit, log_content=True, max_content_chars=a.max_content_chars)]


def _cors(origins: list[str]) -> list[Middleware]:
    if not origins:
        return []
    from starlette.middleware.cors import CORSMiddleware

    return [Middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"], allow_headers=["*"],
                       expose_headers=["x-request-id", "x-nlweb-route", "x-nlweb-cache", "retry-after"])]


def gateway_routes(comp: Components, settings: Settings) -> list:
    """/v1/* (OpenAI-compatible) over the composed gateway, /admin/breakers and /admin/fleet over the router's
    API, and /admin/registry over the model registry."""
    from .admin import breaker_routes
    from .fleet_admin import fleet_routes
    from .gateway import Gateway
    from .memory_admin import memory_routes

    assert comp.router is not None and comp.gateway is not None
    gateway = Gateway(comp.gateway, comp.router, comp.embedder, server=settings.server, embeddings=comp.embeddings)
    routes = [*gateway.routes(), *breaker_routes(comp.router), *fleet_routes(comp.router, comp.replicas),
              *memory_routes(comp.memory)]
    if comp.registry is not None:  # /admin/registry: models, versions, aliases, history; alias moves, rollback
        from .registry_admin import registry_routes

        routes += registry_routes(comp.registry, comp.router)
        from .experiments_admin import experiment_routes
        from .feedback import feedback_routes

        routes += experiment_routes(comp.registry, settings, comp.telemetry)  # A/B tests: /admin/experiments
        routes += feedback_routes(comp.registry, comp.telemetry)  # ratings of answers: POST /feedback
        if comp.registry.canaries is not None:  # /admin/canary: canary releases, their stages and decisions
            from .canary_admin import canary_routes

            routes += canary_routes(comp.registry, settings.registry.canary_min_requests)
    return routes

