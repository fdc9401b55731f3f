"""Canary releases over HTTP, for operators:

    GET  /admin/canary?alias=A      canaries (newest first): stages, status, each side's figures in the stage
                                    now, what the next check would decide, and every decision made
    POST /admin/canary/{alias}      {"name", "version", "stages": "5,25,50,100", "guards": "...",
                                     "min_requests": N} — start one on the alias (admins)

Stop a canary with POST /admin/registry/aliases/{alias}/rollback (traffic returns to the baseline at once).
"""
from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..core.errors import BadRequestError, NlwebError
from ..registry.guards import DEFAULT_GUARDS
from .body import parse_json, read_request_body
from .errors import openai_error
from .registry_admin import MAX_BODY, _who


def canary_routes(registry: Any, min_requests: int) -> list[Route]:
    async def overview(request: Request) -> Response:
        try:
            out = await asyncio.to_thread(canaries, registry, request.query_params.get("alias") or None)
        except NlwebError as e:
            return openai_error(e)
        return JSONResponse({"canaries": out})

    async def start(request: Request) -> Response:
        from ..registry.canary import start_canary

        try:
            body = parse_json(await read_request_body(request, MAX_BODY, 10.0) or b"{}")
            if not isinstance(body, dict) or not all(isinstance(body.get(k), str) for k in ("name", "version")):
                raise BadRequestError('send {"name": "MODEL", "version": "VERSION"} (and optionally '
                                      '"stages": "5,25,50,100", "guards": "error_rate<2%", "min_requests": 100)')
            c = await asyncio.to_thread(start_canary, registry, body["name"], body["version"],
                                        alias=request.path_params["alias"],
                                        stages=str(body.get("stages", "5,25,50,100")),
                                        guards=str(body.get("guards", DEFAULT_GUARDS)),
                                        min_requests=body.get("min_requests", min_requests), by=_who(request))
        except NlwebError as e:
            return openai_error(e)
        return JSONResponse(c.as_dict())

    return [Route("/admin/canary", overview), Route("/admin/canary/{alias}", start, methods=["POST"])]


def canaries(registry: Any, alias: str | None = None, *, running_only: bool = False) -> list[dict[str, Any]]:
    from ..registry.canary_watch import decide

    out = []
    for c in registry.canaries.canaries(alias, limit=20):
        if running_only and c.status != "running":
            continue
        baseline, candidate = registry.canaries.figures(c.id, c.stage)
        now = decide(c, baseline, candidate) if c.status == "running" else None
        out.append({**c.as_dict(), "now": {"baseline": baseline.as_dict(), "candidate": candidate.as_dict(),
                                           "next": now.action if now else None, "why": now.reason if now else None},
                    "decisions": registry.canaries.decisions(c.id)})
    return out
