"""The operator's HTTP faces: `GET /metrics` (Prometheus text), `GET /admin/stats` (JSON), `GET /dashboard`
(a page of live charts over /admin/stats; `?interval=ms&window=s`) and the breaker commands
(`GET /admin/breakers`, `POST /admin/breakers/NAME/open?seconds=60|reset`), over the router's typed API.
Errors are OpenAI-format errors (`server/errors.py`), like the gateway's.

`/admin/stats?window=300` — latency percentiles, throughput, availability, local vs cloud share, cost
and savings over the last `window` seconds of calls (from the in-memory window), with per-deployment
figures, a time series for charts, breaker states, the ledger's queue and cache hit ratios (since start).
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from ..core.errors import BadRequestError, NlwebError, NotFoundError
from ..telemetry.stats import summarize
from .errors import openai_error

MAX_WINDOW_S = 7 * 86400.0
DASHBOARD = Path(__file__).parent.parent / "telemetry" / "dashboard.html"


def telemetry_routes(telemetry: Any, router: Any = None) -> list[Route]:
    async def metrics(request: Request) -> Response:
        return Response(telemetry.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def stats(request: Request) -> Response:
        try:
            window, buckets = _stats_params(request)
        except NlwebError as e:
            return openai_error(e)
        rows, now, span, truncated = telemetry.window.snapshot(window)
        out = await asyncio.to_thread(summarize, rows, now=now, span_s=span, buckets=buckets)
        out["truncated"] = truncated
        out["reference_model"] = telemetry.reference_model
        if router is not None:
            views = router.deployments()
            out["breakers"] = {v.name: v.breaker for v in views}
            out["queue_depth"] = {v.name: v.waiting for v in views}
        if telemetry.ledger is not None:
            out["ledger"] = {"pending": telemetry.ledger.pending, "written": telemetry.ledger.written,
                             "dropped": telemetry.ledger.dropped}
        out["caches"] = telemetry.metrics.cache_stats()  # {cache: {hits, misses, hit_ratio}} since start
        if telemetry.monitor is not None:
            out["alerts"] = telemetry.monitor.engine.active()
        return JSONResponse(out)

    async def dashboard(request: Request) -> Response:
        return FileResponse(DASHBOARD, media_type="text/html")

    return [Route("/metrics", metrics), Route("/admin/stats", stats), Route("/dashboard", dashboard)]


def _stats_params(request: Request) -> tuple[float, int]:
    try:
        window = float(request.query_params.get("window", "300"))
        buckets = int(request.query_params.get("buckets", "30"))
    except ValueError:
        raise BadRequestError("window (seconds) and buckets must be numbers, e.g. ?window=300&buckets=30") from None
    if not 0 < window <= MAX_WINDOW_S or not 1 <= buckets <= 500:  # (NaN fails the comparison too)
        raise BadRequestError(f"window must be in (0, {MAX_WINDOW_S:.0f}] seconds, buckets in [1, 500]")
    return window, buckets


def breaker_routes(router: Any) -> list[Route]:
    """GET /admin/breakers and POST /admin/breakers/NAME/open?seconds=S | .../reset."""

    async def breakers(request: Request) -> Response:
        return JSONResponse({"breakers": [b.as_dict() for b in router.breakers()]})

    async def breaker_action(request: Request) -> Response:
        name, action = request.path_params["name"], request.path_params["action"]
        try:
            if action == "open":
                snap = router.force_open(name, _seconds(request.query_params.get("seconds", "60")))
            elif action == "reset":
                snap = router.reset(name)
            else:
                raise NotFoundError(f"no action {action!r}: POST /admin/breakers/NAME/open?seconds=60 or .../reset")
        except NlwebError as e:
            return openai_error(e)
        return JSONResponse(snap.as_dict())

    return [Route("/admin/breakers", breakers), Route("/admin/breakers/{name}/{action}", breaker_action, methods=["POST"])]


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise BadRequestError(f"seconds must be a number of seconds, e.g. ?seconds=60 (got {text!r})") from None
