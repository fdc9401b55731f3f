"""`AuditMiddleware` (pure ASGI): one audit row per request to an audited endpoint.

Audited: every request to /v1/*, /ask, /mcp, /chat/*, and every POST/PUT/PATCH/DELETE to /admin/*.
It sits inside the request-id middleware (the row carries the request's id and, from `RequestSpend`,
its cost and the status its response started with) and outside authentication: a refused request is audited too, and the identity that
authentication leaves in `scope["state"]["identity"]` (key_id, name, role, team, subject) is read
when the response is done; without one the row says role "anonymous".

The request body and the answer are kept only with `audit.log_content` (each cut to
`audit.max_content_chars`); otherwise the request path pays for a context variable, two clock reads
and one queue append: what the row needs is read when the response is done and queued as it is, and
the row (identity fields, privacy class, JSON of the content) is made on the audit log's writer thread.
"""
from __future__ import annotations

import json
import time
from typing import Any

from ..telemetry.context import REQUEST_ID, SPEND
from .audit_chain import AuditRow
from .audit_trail import TRAIL, RequestTrail

_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_new_row = tuple.__new__  # _new_row(AuditRow, (every field)): an AuditRow without its Python-level __new__
_perf_counter, _time = time.perf_counter, time.time


def audited(method: str, path: str) -> bool:
    if method == "OPTIONS":  # (a CORS preflight asks, it does nothing)
        return False
    if path.startswith("/v1/") or path in ("/ask", "/mcp") or path.startswith(("/chat/", "/mcp/")):
        return True
    return path.startswith("/admin/") and method in _UNSAFE


class _Capture:
    """At most `limit` characters of a body, decoded leniently."""

    __slots__ = ("limit", "parts", "size")

    def __init__(self, limit: int):
        self.limit, self.parts, self.size = limit, [], 0

    def add(self, data: bytes) -> None:
        if self.size < self.limit and data:
            part = data[: self.limit - self.size]
            self.parts.append(part)
            self.size += len(part)

    def text(self) -> str:
        return b"".join(self.parts).decode("utf-8", errors="replace")


_ANONYMOUS = ("", "anonymous", "", "", "")


class AuditMiddleware:
    def __init__(self, app: Any, *, audit: Any, log_content: bool = False, max_content_chars: int = 8192):
        """`audit`: an `AuditLog` (anything with `record_later(make, args)`, which queues the row `make(*args)`)."""
        self.app = app
        self._audit = audit
        self._content = log_content
        self._limit = max_content_chars
        self._identities: dict[int, tuple[object, tuple[str, str, str, str, str]]] = {}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not audited(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        spend = SPEND.get()  # (the request-id middleware's, outside: it notes the response's status too)
        if self._content or spend is None:
            await self._noting(scope, receive, send)
            return
        t0 = _perf_counter()
        state = scope.get("state")  # (authentication puts the identity here; read it afterwards)
        if state is None:
            state = scope["state"] = {}
        trail = RequestTrail()
        token = TRAIL.set(trail)
        try:
            await self.app(scope, receive, send)
        finally:
            TRAIL.reset(token)
            self._record(scope, state, spend.status or 500, _perf_counter() - t0, trail, None, spend)

    async def _noting(self, scope, receive, send) -> None:
        """The response noted here (its status; with `audit.log_content`, the request body and the answer
        too, each cut to max_content_chars)."""
        t0 = _perf_counter()
        state = scope.setdefault("state", {})
        status = [500]
        content = self._content
        asked, answered = _Capture(self._limit if content else 0), _Capture(self._limit if content else 0)

        async def send_noting(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif content and message["type"] == "http.response.body":
                answered.add(message.get("body", b""))
            await send(message)

        async def receive_noting():
            message = await receive()
            if content and message["type"] == "http.request":
                asked.add(message.get("body", b""))
            return message

        trail = RequestTrail()
        token = TRAIL.set(trail)
        try:
            await self.app(scope, receive_noting, send_noting)
        finally:
            TRAIL.reset(token)
            self._record(scope, state, status[0], _perf_counter() - t0, trail,
                         (scope.get("query_string", b""), asked, answered) if content else None, SPEND.get())

    def _record(self, scope, state, status: int, latency: float, trail: RequestTrail, content: tuple | None,
                spend: Any) -> None:
        """What the row needs, read now (the request's context and outcome; `spend`: its `RequestSpend`, or
        None); the row itself is made on the audit log's writer thread (`_row`)."""
        self._audit.record_later(self._row, (_time(), REQUEST_ID.get(), scope["method"], scope["path"],
                                             scope["headers"], status, latency,
                                             state.get("identity") if isinstance(state, dict) else None, trail,
                                             spend.cost_usd if spend is not None else 0.0, content))

    def _row(self, ts: float, request_id: str, method: str, path: str, headers: Any, status: int, latency: float,
             who: Any, trail: RequestTrail, cost: float, content: tuple | None) -> AuditRow:
        """The audit row of one request (on the writer thread)."""
        trail = trail.settled()
        privacy = trail.privacy
        if not privacy:
            for k, v in headers:
                if k == b"x-nlweb-privacy":
                    privacy = v.decode("latin-1")[:32]
                    break
        team, role, key_id, subject, name = self._who(who)
        text = ""
        if content is not None:
            query, asked, answered = content
            text = json.dumps({"query": query.decode("latin-1")[: self._limit], "request": asked.text(),
                               "answer": answered.text()}, ensure_ascii=False)
        return _new_row(AuditRow, (  # positional (the field names are in audit_chain.AuditRow); no Python-level __new__
            0, ts, "request", request_id, method, path[:200], status, latency,
            team, role, trail.model[:200], ",".join(trail.deployments), trail.reason[:300], privacy or "any",
            trail.tokens_in, trail.tokens_out, round(cost, 10), 0, "", key_id, subject, name, text, "", "", 0, "", ""))

    def _who(self, who) -> tuple[str, str, str, str, str]:
        """The identity's audited fields, worked out once per identity (the authenticator reuses them; only
        the writer thread calls this)."""
        if who is None:
            return _ANONYMOUS
        hit = self._identities.get(id(who))
        if hit is not None and hit[0] is who:
            return hit[1]
        role = getattr(who, "role", "")
        fields = (str(getattr(who, "team", "") or ""), str(getattr(role, "label", role) or "anonymous"),  # (Role: its name)
                  str(getattr(who, "key_id", "") or ""), str(getattr(who, "subject", "") or ""),
                  str(getattr(who, "name", "") or ""))
        if len(self._identities) >= 4096:
            self._identities.clear()
        self._identities[id(who)] = (who, fields)
        return fields
