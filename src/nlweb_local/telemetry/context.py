"""The request id that follows one HTTP request through router, engine calls and ledger rows.

`RequestIdMiddleware` (pure ASGI) makes a process-unique id for every request, puts it in a context
variable for the duration of the request and echoes it in the response headers. A caller's own
`x-request-id` (a short, plain token) is kept for correlation, but namespaced: the id becomes
`<caller's id>/<server id>`, so a caller can neither make its rows collide with another request's nor
pass them off as server-made (a caller's token cannot contain `/`). `MeteredProvider` reads the id for
each ledger row, so a failover shows up as two rows with one request id.

It can also carry a request *recorder* (the audit log's, `governance.audit_middleware.AuditRecorder`):
`recorder.starts(scope, spend)` before the request (a start time when it records this one, else None) and
`recorder.ended(scope, spend, request_id, started)` after it, so the audit log costs no ASGI layer of
its own (it reads the response's status and the request's cost from the `RequestSpend` this middleware
keeps anyway).
"""
from __future__ import annotations

import itertools
import os
import re
from contextvars import ContextVar
from typing import Any

REQUEST_ID: ContextVar[str] = ContextVar("nlweb_request_id", default="")


class RequestSpend:
    """What the LLM calls of one HTTP request have cost so far (added to by `MeteredProvider`; read by the
    /ask cache to remember what an answer cost), and the status its response started with (set by
    `RequestIdMiddleware`, which sees every response start: the audit log reads it rather than wrap the
    response again; 0 while none has started). One object per request: tasks the request starts copy
    the context, and with it this same object."""

    __slots__ = ("cost_usd", "reference_usd", "status", "trail")

    def __init__(self) -> None:
        self.cost_usd = self.reference_usd = 0.0
        self.status = 0
        self.trail: Any = None  # what the request's LLM calls did, for its audit row (None: not audited)


SPEND: ContextVar[RequestSpend | None] = ContextVar("nlweb_request_spend", default=None)
_SAFE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def current_request_id() -> str:
    return REQUEST_ID.get()


def current_spend() -> RequestSpend | None:
    return SPEND.get()


_PREFIX = os.urandom(4).hex() + "-"
_COUNTER = itertools.count(1)


def _new_prefix() -> None:  # a forked worker must not repeat its parent's ids
    global _PREFIX, _COUNTER
    _PREFIX, _COUNTER = os.urandom(4).hex() + "-", itertools.count(1)


os.register_at_fork(after_in_child=_new_prefix)


def new_request_id() -> str:
    """A process-unique id: a per-process random prefix and a counter (far cheaper than uuid4, which
    reads the OS's random source every time)."""
    return f"{_PREFIX}{next(_COUNTER):x}"


class RequestIdMiddleware:
    """Ids it makes come from `new_request_id`. `recorder`: see the module's docstring (None: none)."""

    def __init__(self, app: Any, *, recorder: Any = None):
        self.app = app
        self._recorder = recorder

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = new_request_id()
        for k, v in scope["headers"]:
            if k == b"x-request-id":
                given = v.decode("latin-1")
                if _SAFE.match(given):
                    rid = f"{given}/{rid}"
                break
        token = REQUEST_ID.set(rid)
        record = RequestSpend()
        spend = SPEND.set(record)
        header = (b"x-request-id", rid.encode())

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
                record.status = message["status"]
            await send(message)

        recorder = self._recorder
        started = recorder.starts(scope, record) if recorder is not None else None
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            SPEND.reset(spend)
            REQUEST_ID.reset(token)
            if started is not None:
                recorder.ended(scope, record, rid, started)
