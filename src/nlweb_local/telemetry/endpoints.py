"""HTTP faces of telemetry: `GET /metrics` (Prometheus text), `GET /admin/stats` (JSON) and
`GET /dashboard` (a page of live charts over /admin/stats; `?interval=ms&window=s`).

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

from .stats import summarize

MAX_WINDOW_S = 7 * 86400.0
DASHBOARD = Path(__file__).with_name("dashboard.html")


def telemetry_routes(telemetry: Any, router: Any = None) -> list[Route]:
    async def metrics(request: Request) -> Response:
        return Response(telemetry.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def stats(request: Request) -> Response:
        try:
            window = float(request.query_params.get("window", "300"))
            buckets = int(request.query_params.get("buckets", "30"))
        except ValueError:
            return JSONResponse({"error": "window (seconds) and buckets must be numbers, e.g. ?window=300&buckets=30"},
                                status_code=400)
        if not 0 < window <= MAX_WINDOW_S or not 1 <= buckets <= 500:
            return JSONResponse({"error": f"window must be in (0, {MAX_WINDOW_S:.0f}] seconds, buckets in [1, 500]"},
                                status_code=400)
        rows, now, span, truncated = telemetry.window.snapshot(window)
        out = await asyncio.to_thread(summarize, rows, now=now, span_s=span, buckets=buckets)
        out["truncated"] = truncated
        out["reference_model"] = telemetry.reference_model
        if router is not None:
            out["breakers"] = {name: r.breaker.snapshot()["state"] for name, r in router.routes.items()}
            out["queue_depth"] = {name: r.snapshot.waiting for name, r in router.routes.items()}
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
