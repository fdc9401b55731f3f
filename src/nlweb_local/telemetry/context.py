"""The request id that follows one HTTP request through router, engine calls and ledger rows.

`RequestIdMiddleware` (pure ASGI) takes the caller's `x-request-id` when it is a short, plain token,
else makes one, puts it in a context variable for the duration of the request and echoes it in the
response headers. `MeteredProvider` reads it for each ledger row, so a failover shows up as two rows
with one request id.
"""
from __future__ import annotations

import itertools
import os
import re
import uuid
from contextvars import ContextVar
from typing import Any

REQUEST_ID: ContextVar[str] = ContextVar("nlweb_request_id", default="")
_SAFE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def current_request_id() -> str:
    return REQUEST_ID.get()


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


class RequestIdMiddleware:
    """Ids it makes are a per-process random prefix and a counter: unique, and far cheaper than uuid4
    (which reads the OS's random source on every request)."""

    def __init__(self, app: Any):
        self.app = app
        self._prefix = os.urandom(4).hex() + "-"
        self._counter = itertools.count(1)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ""
        for k, v in scope["headers"]:
            if k == b"x-request-id":
                given = v.decode("latin-1")
                rid = given if _SAFE.match(given) else ""
                break
        if not rid:
            rid = f"{self._prefix}{next(self._counter):x}"
        token = REQUEST_ID.set(rid)

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)
