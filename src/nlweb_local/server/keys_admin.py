"""`/admin/keys` (admin role): the HTTP face of `nlweb-local keys`.

    GET    /admin/keys                  every key (never a secret or hash)
    POST   /admin/keys                  {"name", "role", "team"?, "models"?, "sites"?, "expires"? ("30d"),
                                         "limits"? {requests_per_minute, tokens_per_day, usd_per_day, usd_per_month},
                                         "allow_from"? ["10.0.0.0/8", ...], "privacy"? ("local_only"),
                                         "priority"? ("batch"), "max_priority"? ("default")}
                                        -> 201, the key with its "secret" (shown this once)
    POST   /admin/keys/{id}/revoke      (or DELETE /admin/keys/{id})
    POST   /admin/keys/{id}/rotate      -> the key with its new "secret"; the old one stops working
"""
from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..core.errors import BadRequestError, ForbiddenError, NlwebError, NotFoundError
from ..core.priority import PriorityClasses
from ..core.privacy import parse_privacy
from ..governance import Governance
from ..governance.identity import Limits
from ..governance.keys import parse_duration, parse_role
from .body import parse_json, read_request_body
from .errors import openai_error

_FIELDS = {"name", "role", "team", "models", "sites", "expires", "limits", "allow_from", "privacy", "priority",
           "max_priority"}


def _strings(body: dict[str, Any], name: str) -> list[str]:
    value = body.get(name) or []
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise BadRequestError(f"'{name}' must be a list of strings")
    return value


def _loopback(request: Request) -> bool:
    import ipaddress

    try:
        return request.client is not None and ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:
        return False


def _class(classes: PriorityClasses, body: dict[str, Any], name: str) -> str:
    value = body.get(name) or ""
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise BadRequestError(f"'{name}' must be a priority class ({classes.names()}) or an integer")
    return classes.check(str(value), f"'{name}'") or ""


def key_routes(governance: Governance, *, max_body_bytes: int, body_timeout_s: float,
               classes: PriorityClasses | None = None) -> list[Route]:
    keyring, auth = governance.keyring, governance.authenticator
    classes = classes or PriorityClasses()

    async def listing(request: Request) -> Response:
        if request.method == "GET":
            records = await asyncio.to_thread(keyring.list)
            return JSONResponse({"keys": [r.public() for r in records]})
        try:
            if not auth.active and not _loopback(request):
                raise ForbiddenError("auth is off: the first key must be made on the server's machine "
                                     "(nlweb-local keys create, or POST /admin/keys from 127.0.0.1)")
            body = parse_json(await read_request_body(request, max_body_bytes, body_timeout_s) or b"{}")
            if not isinstance(body, dict):
                raise BadRequestError("the body must be a JSON object: {\"name\": ..., \"role\": ...}")
            unknown = set(body) - _FIELDS
            if unknown:
                raise BadRequestError(f"unknown fields {sorted(unknown)}; use {sorted(_FIELDS)}")
            if not isinstance(body.get("name"), str) or not isinstance(body.get("role"), str):
                raise BadRequestError("'name' and 'role' (admin, operator or user) are required strings")
            expires = body.get("expires")
            if expires is not None and not isinstance(expires, str):
                raise BadRequestError("'expires' is a duration such as \"30d\" or \"12h\"")
            limits = body.get("limits")
            if limits is not None and not isinstance(limits, dict):
                raise BadRequestError("'limits' is an object: {requests_per_minute, tokens_per_day, usd_per_day, usd_per_month}")
            team = body.get("team") or ""
            if not isinstance(team, str):
                raise BadRequestError("'team' must be a string")
            record, secret = await asyncio.to_thread(
                keyring.create, body["name"], parse_role(body["role"]), team=team, models=_strings(body, "models"),
                sites=_strings(body, "sites"), expires_in_s=parse_duration(expires) if expires else None,
                limits=Limits.of(limits), allow_from=_strings(body, "allow_from"),
                privacy=parse_privacy(body.get("privacy") or "any", "'privacy'"),
                priority=_class(classes, body, "priority"), max_priority=_class(classes, body, "max_priority"))
        except NlwebError as e:
            return openai_error(e)
        auth.keys_changed()
        return JSONResponse({**record.public(), "secret": secret}, status_code=201)

    async def one(request: Request) -> Response:
        key_id = request.path_params["key_id"]
        action = request.path_params.get("action", "revoke" if request.method == "DELETE" else "")
        try:
            if request.method == "GET":
                return JSONResponse((await asyncio.to_thread(keyring.get, key_id)).public())
            if action == "revoke":
                record = await asyncio.to_thread(keyring.revoke, key_id)
                auth.keys_changed(key_id)
                return JSONResponse(record.public())
            if action == "rotate":
                record, secret = await asyncio.to_thread(keyring.rotate, key_id)
                auth.keys_changed(key_id)
                return JSONResponse({**record.public(), "secret": secret})
            raise NotFoundError(f"no action {action!r}: POST /admin/keys/ID/revoke or /admin/keys/ID/rotate")
        except NlwebError as e:
            return openai_error(e)

    return [Route("/admin/keys", listing, methods=["GET", "POST"]),
            Route("/admin/keys/{key_id}", one, methods=["GET", "DELETE"]),
            Route("/admin/keys/{key_id}/{action}", one, methods=["POST"])]
