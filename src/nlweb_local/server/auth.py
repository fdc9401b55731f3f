"""`AuthMiddleware` (pure ASGI): the key on each request -> its `Identity`, the route's least role, the
caller's requests-per-minute limit, and (routes that spend tokens) a budget already used up.

Keys are read from `Authorization: Bearer <key>` (what the OpenAI SDKs send) or `x-api-key: <key>`.
The identity goes on the ASGI scope (`scope["state"]["identity"]`) and in `governance.CURRENT` while the
request runs. Refusals are rendered in the wire format of the endpoint: OpenAI errors on /v1 and /admin,
NLWeb errors on /ask, /sites, /who and /chat, a JSON-RPC error on /mcp; 401 carries `WWW-Authenticate`,
429 `Retry-After`.

    401  missing, malformed, unknown, revoked or expired key (the message says which)
    403  a valid key whose role is below the route's, used from an address outside its allow_from (behind
         `auth.trusted_proxies`, the client's address is read from X-Forwarded-For), or whose scope
         excludes a model or site (later, where the request names it)
    429  over the key's or its team's requests/minute; on /ask, /mcp and /chat a day's token or money budget
         already spent (on /v1 the call's own reservation refuses)
"""
from __future__ import annotations

import ipaddress
from typing import Any

import orjson

from ..core.errors import AuthError, ForbiddenError, NlwebError
from ..governance import CURRENT, Governance, Role
from .errors import retry_after, send_json, send_openai_error

_NLWEB = ("/ask", "/sites", "/who", "/chat")
_MISSING = ("missing credentials: send an API key as 'Authorization: Bearer <key>' or 'x-api-key: <key>' "
            "(an admin makes one with: nlweb-local keys create --name NAME --role user)")


def credential(headers: Any) -> str | None:
    """The key a request carries (None: none); `AuthError` for an Authorization header that is not Bearer.
    `Authorization` is read before `x-api-key`; of a header sent twice, the first."""
    try:
        found = dict(reversed(headers))  # (one pass in C; reversed: the first of a repeated header wins)
    except TypeError:  # (an iterable that is not a sequence)
        found = dict(reversed(list(headers)))
    v = found.get(b"authorization")
    if v is not None:
        if v[:7] == b"Bearer ":  # (the common form, without splitting off the scheme)
            value = v[7:].decode("latin-1")
            if value and value == value.strip():
                return value
        scheme, _, value = v.decode("latin-1").strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthError("malformed Authorization header: use 'Authorization: Bearer <key>'")
        return value.strip()
    v = found.get(b"x-api-key")
    return v.decode("latin-1").strip() if v is not None else None


def _within(address: str, networks: Any) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in n for n in networks)


def client_address(scope: Any, proxies: Any) -> str | None:
    """The client's address: the connecting one, or — when that is a trusted proxy — the nearest address
    in X-Forwarded-For that is not one (a client cannot forge its way past the proxies it came through)."""
    client = scope.get("client")
    host = client[0] if client else None
    if not proxies or host is None or not _within(host, proxies):
        return host
    for k, v in scope["headers"]:
        if k == b"x-forwarded-for":
            hops = [h.strip() for h in v.decode("latin-1").split(",") if h.strip()]
            for hop in reversed(hops):
                if not _within(hop, proxies):
                    return hop
            return hops[0] if hops else host
    return host


class AuthMiddleware:
    def __init__(self, app: Any, *, governance: Governance):
        self.app = app
        self._auth = governance.authenticator
        self._routes = governance.routes
        self._limits = governance.limits
        self._proxies = governance.trusted_proxies

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rule = self._routes.rule(scope["path"])
        if rule.role is Role.PUBLIC or not (self._auth.active or await self._auth.refresh()):
            await self.app(scope, receive, send)
            return
        try:
            ident = self._seen(scope["headers"])  # (a header seen recently: one lookup, no await)
            if ident is None:
                ident = await self._identify(scope["headers"])
            if ident.role < rule.role:
                raise ForbiddenError(f"{ident.describe()} may not call {scope['path']}: it needs the "
                                     f"{rule.role.label} role")
            if ident.allow_from:  # (most keys have no allowlist: no closure, no call)
                self._auth.check_address(ident, lambda: client_address(scope, self._proxies))
            if self._limits.local:
                self._limits.admit_now(ident)
            else:
                await self._limits.admit_request(ident)
            if rule.budget_first:
                await self._limits.check_budget(ident)
        except NlwebError as e:
            await refuse(scope, send, e)
            return
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["identity"] = ident
        token = CURRENT.set(ident)
        try:
            await self.app(scope, receive, send)
        finally:
            CURRENT.reset(token)

    def _seen(self, headers: Any) -> Any:
        """The identity of a credential header whose raw value was seen recently and is still valid (the
        common case); None: `_identify` says who, or why not. `Authorization` is read before `x-api-key`, as
        `credential` reads them."""
        try:
            found = dict(reversed(headers))
        except TypeError:
            return None
        value = found.get(b"authorization")
        if value is not None:
            return self._auth.seen(value)
        value = found.get(b"x-api-key")
        return self._auth.seen(value, True) if value is not None else None

    async def _identify(self, headers: Any) -> Any:
        """The identity of the request's credential (`AuthError` when it has none, or a bad one); a valid key
        is remembered under its header's raw value (`Authenticator.remember`)."""
        key = credential(headers)
        if key is None:
            raise AuthError(_MISSING)
        ident = self._auth.known(key)
        if ident is None:
            ident = await self._auth.authenticate(key)
        found = dict(reversed(list(headers)))
        value = found.get(b"authorization")
        if value is not None:
            self._auth.remember(value, False, key)
        else:
            self._auth.remember(found[b"x-api-key"], True, key)
        return ident


async def refuse(scope: Any, send: Any, e: NlwebError) -> None:
    """`e` in the wire format of the endpoint asked for; a WebSocket is closed before it is accepted (the
    client sees HTTP 403) with the message as the reason."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": e.message[:120]})
        return
    path: str = scope["path"]
    extra: list[tuple[bytes, bytes]] = []
    if e.status == 401:
        extra.append((b"www-authenticate", b'Bearer realm="nlweb-local"'))
    if path.startswith("/v1/") or not (path.startswith(_NLWEB) or path == "/mcp"):
        if extra:
            body = orjson.dumps({"error": {"message": e.message, "type": e.openai_type, "param": None,
                                           "code": getattr(e, "openai_code", None) or e.openai_type}})
            await send_json(send, e.status, body, extra)
        else:
            await send_openai_error(send, e)
        return
    after = retry_after(e)
    if after is not None:
        extra.append((b"retry-after", after.encode("ascii")))
    if path == "/mcp":
        body = orjson.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32001, "message": e.message,
                                                                      "data": {"status": e.status}}})
    else:
        body = orjson.dumps({"error": e.message, "status": e.status})
    await send_json(send, e.status, body, extra)
