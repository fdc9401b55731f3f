"""One error renderer per wire format, and one Retry-After rule for all of them.

    NLWeb (/ask, /sites, /who):   {"error": message, "status": status}
    OpenAI (/v1/*, /admin/*):     {"error": {"message", "type", "param", "code"}}
    JSON-RPC (/mcp):              see `jsonrpc.py`

Bodies carry `public_message`: an engine's or upstream's own words (internal URLs, exception text) are
never relayed; `told(e)` logs the full message under the request id whenever it differs.

An error that says when to come back (`OverloadedError`, `RateLimitedError` with `retry_after`) gets
`Retry-After` in whole seconds, at least 1, in every format.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Awaitable, Callable

import orjson
from starlette.responses import JSONResponse

from ..core.errors import NlwebError, OverloadedError, RateLimitedError

log = logging.getLogger(__name__)
_JSON_TYPE = (b"content-type", b"application/json")
Send = Callable[[dict[str, Any]], Awaitable[None]]


def retry_after(e: NlwebError) -> str | None:
    """The Retry-After header value of an error, or None when it does not say when to retry."""
    value = getattr(e, "retry_after", None)
    if not isinstance(e, (OverloadedError, RateLimitedError)) or value is None:
        return None
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return "1"
    return str(max(1, int(math.ceil(value))))


def _headers(e: NlwebError) -> dict[str, str]:
    value = retry_after(e)
    return {"retry-after": value} if value is not None else {}


def told(e: NlwebError) -> str:
    """What the caller is told of `e`; when that is not the whole message, the whole one goes to the log."""
    public = e.public_message
    if public != e.message:
        from ..telemetry.context import current_request_id

        log.warning("request %s: %s %d: %s", current_request_id() or "-", type(e).__name__, e.status, e.message)
    return public


def nlweb_error(e: NlwebError) -> JSONResponse:
    return JSONResponse({"error": told(e), "status": e.status}, status_code=e.status, headers=_headers(e))


def openai_error_body(e: NlwebError) -> dict[str, Any]:
    code = getattr(e, "openai_code", None) or e.openai_type
    return {"error": {"message": told(e), "type": e.openai_type, "param": getattr(e, "param", None), "code": code}}


def openai_error(e: NlwebError) -> JSONResponse:
    return JSONResponse(openai_error_body(e), status_code=e.status, headers=_headers(e))


async def send_json(send: Send, status: int, content: bytes, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """A JSON answer straight to ASGI: the headers a Starlette JSONResponse would send, without building one."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", b"%d" % len(content)), _JSON_TYPE, *headers]})
    await send({"type": "http.response.body", "body": content})


async def send_openai_error(send: Send, e: NlwebError) -> None:
    await send_json(send, e.status, orjson.dumps(openai_error_body(e)),
                    [(k.encode("ascii"), v.encode("ascii")) for k, v in _headers(e).items()])
