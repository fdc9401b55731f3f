"""A/B experiments over HTTP, for operators (reading) and admins (starting and stopping):

    GET  /admin/experiments                      every experiment, running ones first
    GET  /admin/experiments/report?alias=A       the report of the newest experiment on A (or ?id=N):
                                                 counts, per-variant means with 95 % intervals, verdicts
    POST /admin/experiments/{alias}/start        {"variants": "v3:50,v4:50", "metric": "quality",
                                                 "min_samples": 100}
    POST /admin/experiments/{alias}/stop

Errors are OpenAI-format errors, like the rest of /admin; a refused start (an experiment already runs on
the alias, an unknown version) changes nothing.
"""
from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..core.errors import BadRequestError, NlwebError
from ..registry.ab_report import report
from ..registry.experiments import Experiments
from .body import parse_json, read_request_body
from .errors import openai_error
from .registry_admin import _who

MAX_BODY = 4096


def experiment_routes(registry: Any, settings: Any, telemetry: Any = None) -> list[Route]:
    experiments = Experiments(registry, served={d.serves for d in settings.llm.all_deployments() if d.serves})

    async def listing(request: Request) -> Response:
        try:
            found = await asyncio.to_thread(experiments.list)
        except NlwebError as e:
            return openai_error(e)
        found.sort(key=lambda e: (not e.running, -e.id))
        return JSONResponse({"experiments": [e.as_dict() for e in found]})

    async def reporting(request: Request) -> Response:
        try:
            ident = _int(request.query_params.get("id"))
            out = await asyncio.to_thread(_report, experiments, telemetry, ident, request.query_params.get("alias"))
        except NlwebError as e:
            return openai_error(e)
        return JSONResponse(out)

    async def command(request: Request) -> Response:
        alias, action = request.path_params["alias"], request.path_params["action"]
        try:
            if action == "stop":
                e = await asyncio.to_thread(experiments.stop, alias, by=_who(request))
                return JSONResponse(e.as_dict())
            if action != "start":
                raise BadRequestError(f"unknown action {action!r}: POST /admin/experiments/{alias}/start or .../stop")
            body = parse_json(await read_request_body(request, MAX_BODY, 10.0) or b"{}")
            if not isinstance(body, dict) or not isinstance(body.get("variants"), str):
                raise BadRequestError('send {"variants": "v3:50,v4:50"} (and "metric": quality|latency|cost, '
                                      '"min_samples": N)')
            e = await asyncio.to_thread(experiments.start, alias, body["variants"],
                                        metric=body.get("metric", "quality"), min_samples=body.get("min_samples", 100),
                                        by=_who(request))
        except NlwebError as e:
            return openai_error(e)
        return JSONResponse(e.as_dict(), status_code=201)

    return [Route("/admin/experiments", listing), Route("/admin/experiments/report", reporting),
            Route("/admin/experiments/{alias}/{action}", command, methods=["POST"])]


def _report(experiments: Experiments, telemetry: Any, ident: int | None, alias: str | None) -> dict[str, Any]:
    e = experiments.get(ident, alias)
    ledger = getattr(telemetry, "ledger", None)
    if ledger is not None:
        ledger.flush(5.0)
    calls = ledger.query(e.started_at, e.stopped_at) if ledger is not None else []
    return report(e, calls, experiments.store.feedback(e.started_at, e.stopped_at))


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise BadRequestError(f"id must be an experiment's number (GET /admin/experiments lists them), got {text!r}") \
            from None
