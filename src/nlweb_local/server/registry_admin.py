"""The model registry over HTTP, for operators (admins, once keys are required):

    GET  /admin/registry?history=100                    models and their versions, aliases (with the
                                                        deployments serving each), the newest alias changes
    POST /admin/registry/aliases/{alias}                {"name": N, "version": V} — set or move the alias
         ... {"promote": true}                          move it only if it exists (a release)
    POST /admin/registry/aliases/{alias}/rollback       back to the version before the current one

A change applies to the next request at once (this server's alias view reloads), and to other replicas
within `registry.poll_s`. Errors are OpenAI-format errors, like the rest of /admin.
"""
from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..core.errors import BadRequestError, NlwebError
from .body import parse_json, read_request_body
from .errors import openai_error

MAX_HISTORY = 10_000
MAX_BODY = 16_384


def registry_routes(registry: Any, router: Any) -> list[Route]:
    async def overview(request: Request) -> Response:
        try:
            limit = _history_limit(request.query_params.get("history", "100"))
            out = await asyncio.to_thread(_overview, registry, router, limit)
        except NlwebError as e:
            return openai_error(e)
        return JSONResponse(out)

    async def move(request: Request) -> Response:
        alias = request.path_params["alias"]
        try:
            body = parse_json(await read_request_body(request, MAX_BODY, 10.0) or b"{}")
            if not isinstance(body, dict) or not isinstance(body.get("name"), str) \
                    or not isinstance(body.get("version"), str):
                raise BadRequestError('send {"name": "MODEL", "version": "VERSION"} (and "promote": true to move '
                                      "only an alias that exists)")
            by = _who(request)
            if body.get("promote") is True:
                change = await asyncio.to_thread(registry.promote, body["name"], body["version"], alias=alias, by=by)
            else:
                change = await asyncio.to_thread(registry.set_alias, alias, body["name"], body["version"], by=by)
        except NlwebError as e:
            return openai_error(e)
        if change is None:
            return JSONResponse({"alias": alias, "name": body["name"], "version": body["version"], "changed": False})
        return JSONResponse({**change.as_dict(), "changed": True})

    async def rollback(request: Request) -> Response:
        try:
            change = await asyncio.to_thread(registry.rollback, request.path_params["alias"], by=_who(request))
        except NlwebError as e:
            return openai_error(e)
        return JSONResponse({**change.as_dict(), "changed": True})

    return [Route("/admin/registry", overview),
            Route("/admin/registry/aliases/{alias}", move, methods=["POST"]),
            Route("/admin/registry/aliases/{alias}/rollback", rollback, methods=["POST"])]


def _overview(registry: Any, router: Any, limit: int) -> dict[str, Any]:
    models: dict[str, list[dict[str, Any]]] = {}
    for v in registry.versions():
        models.setdefault(v.name, []).append(v.as_dict())
    serving: dict[str, list[str]] = {}
    for view in router.deployments():
        if view.info.serves:
            serving.setdefault(view.info.serves, []).append(view.name)
    return {"registry_version": registry.store.version(),
            "models": [{"name": name, "versions": versions} for name, versions in models.items()],
            "aliases": [{**a.as_dict(), "deployments": serving.get(a.key, [])} for a in registry.aliases()],
            "history": [c.as_dict() for c in registry.history(limit=limit)],
            "deployments": serving, "canaries": _running_canaries(registry)}


def _running_canaries(registry: Any) -> list[dict[str, Any]]:
    if getattr(registry, "canaries", None) is None:
        return []
    from .canary_admin import canaries

    return canaries(registry, running_only=True)


def _history_limit(text: str) -> int:
    try:
        limit = int(text)
    except ValueError:
        limit = -1
    if not 0 <= limit <= MAX_HISTORY:
        raise BadRequestError(f"history must be a number of changes in [0, {MAX_HISTORY}], e.g. ?history=100")
    return limit


def _who(request: Request) -> str:
    """Who made a change: the caller's key (with governance), else the client's address."""
    identity = (request.scope.get("state") or {}).get("identity")
    name = getattr(identity, "subject", "") or getattr(identity, "name", "")
    if name:
        return f"key:{name}"
    client = request.client
    return f"http:{client.host}" if client is not None else "http"
