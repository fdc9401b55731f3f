"""One audit row per request to an audited endpoint: `AuditRecorder` (the common case) and `AuditMiddleware`.

Audited: every request to /v1/*, /ask, /mcp, /chat/*, and every POST/PUT/PATCH/DELETE to /admin/*.

`AuditRecorder` is carried by the request-id middleware (`RequestIdMiddleware(recorder=...)`, the outermost
layer but the trusted-host check): it adds no ASGI layer of its own. Before a request it puts a
`RequestTrail` on the request's `RequestSpend` (where `AuditedProvider` notes each LLM call, and the
metered wrappers add the cost), and makes sure the scope has a `state` dict (authentication, further in,
leaves the identity there: key_id, name, role, team, subject); after it, it queues what the row needs as it
is — the scope, the `RequestSpend` (the status the response started with, 500 when none did; the cost;
the trail), the request id, the time and the latency — and the row is made on the audit log's writer
thread. So the request path pays for a trail, two clock reads and one queue append; without an identity
the row says role "anonymous". A refused request is audited too: authentication runs inside.

`AuditMiddleware` is the same as its own ASGI layer, for `audit.log_content` (it keeps the request body and
the answer, each cut to `audit.max_content_chars`, so it must see both) and for an app composed without the
request-id middleware (it then notes the status itself).
"""
from __future__ import annotations

import json
import time
from typing import Any

from ..providers.wrapper import call_tokens
from ..telemetry.context import REQUEST_ID, SPEND, RequestSpend
from .audit_chain import AuditRow
from .audit_trail import RequestTrail, route_reason

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


class _Rows:
    """Making a row from what a request left (shared by the recorder and the middleware; the writer thread
    calls `_row`)."""

    def __init__(self, audit: Any, max_content_chars: int):
        self._audit = audit
        self._limit = max_content_chars
        self._identities: dict[int, tuple[object, tuple[str, str, str, str, str]]] = {}

    def _row(self, ts: float, request_id: str, method: str, path: str, headers: Any, status: int, latency: float,
             who: Any, trail: RequestTrail | None, cost: float, content: tuple | None) -> AuditRow:
        """The audit row of one request (on the writer thread)."""
        pending = trail.pending if trail is not None else None
        if pending and len(pending) == 1 and not trail.calls:  # type: ignore[union-attr]  (the common request: one
            request, out = pending[0]                             # completion; what `settled()` would sum, written out)
            tokens_in, tokens_out = call_tokens(out.usage, request, len(out.content))
            served = out.served
            deployment = served.deployment if served is not None else out.deployment
            reason = route_reason(served)
            model, privacy = request.model or "", request.context.privacy.value
        else:
            t = trail.settled() if trail is not None else _NO_CALLS
            tokens_in, tokens_out, model, privacy = t.tokens_in, t.tokens_out, t.model, t.privacy
            deployment, reason = ",".join(t.deployments), t.reason
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
            team, role, model[:200], deployment, reason[:300], privacy or "any",
            tokens_in, tokens_out, round(cost, 10), 0, "", key_id, subject, name, text, "", "", 0, "", ""))

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


_NO_CALLS = RequestTrail()  # (read only: a request that made no LLM call)


class AuditRecorder(_Rows):
    """The audit log as a recorder of the request-id middleware (see the module's docstring)."""

    def __init__(self, audit: Any, *, max_content_chars: int = 8192):
        """`audit`: an `AuditLog` (anything with `record_later(make, args)`, which queues the row `make(*args)`)."""
        super().__init__(audit, max_content_chars)

    def starts(self, scope: Any, spend: RequestSpend) -> float | None:
        """Before a request: its start time when it is audited (its trail is on `spend`), else None."""
        if not audited(scope["method"], scope["path"]):
            return None
        if "state" not in scope:  # (authentication leaves the identity there; a layer that copies the scope shares it)
            scope["state"] = {}
        spend.trail = RequestTrail()
        return _perf_counter()

    def ended(self, scope: Any, spend: RequestSpend, request_id: str, started: float) -> None:
        """After an audited request (whether it answered or raised): queue its row (made on the writer thread)."""
        self._audit.record_later(self._row_of, (_time(), request_id, scope, spend, _perf_counter() - started))

    def _row_of(self, ts: float, request_id: str, scope: Any, spend: RequestSpend, latency: float) -> AuditRow:
        state = scope.get("state")
        return self._row(ts, request_id, scope["method"], scope["path"], scope["headers"], spend.status or 500,
                         latency, state.get("identity") if isinstance(state, dict) else None, spend.trail,
                         spend.cost_usd, None)


class AuditMiddleware(_Rows):
    """The audit log as its own ASGI layer: with `log_content`, or without the request-id middleware."""

    def __init__(self, app: Any, *, audit: Any, log_content: bool = False, max_content_chars: int = 8192):
        """`audit`: an `AuditLog` (anything with `record_later(make, args)`, which queues the row `make(*args)`)."""
        super().__init__(audit, max_content_chars)
        self.app = app
        self._content = log_content

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not audited(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
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

        spend = SPEND.get()
        token = None
        if spend is None:  # (no request-id middleware outside: this request's trail and cost need a home)
            spend = RequestSpend()
            token = SPEND.set(spend)
        trail = spend.trail = RequestTrail()
        try:
            await self.app(scope, receive_noting, send_noting)
        finally:
            if token is not None:
                SPEND.reset(token)
            self._audit.record_later(self._row, (
                _time(), REQUEST_ID.get(), scope["method"], scope["path"], scope["headers"], status[0],
                _perf_counter() - t0, state.get("identity") if isinstance(state, dict) else None, trail, spend.cost_usd,
                (scope.get("query_string", b""), asked, answered) if content else None))
