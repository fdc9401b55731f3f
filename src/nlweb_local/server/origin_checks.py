"""Where a request comes from: trusted Host names (DNS rebinding) and cross-site writes (CSRF). Pure ASGI.

    TrustedHostMiddleware   a request whose Host header is not one of localhost, 127.0.0.1, ::1,
                            server.host or server.allowed_hosts gets 400. A page on attacker.example
                            whose name is re-pointed at 127.0.0.1 still sends `Host: attacker.example`.
    OriginCheckMiddleware   a browser's POST/PUT/PATCH/DELETE from another site gets 403: its Origin
                            must be this server's own (same host and port as the Host header) or one of
                            server.cors_origins; without an Origin, a `Sec-Fetch-Site` other than
                            same-origin/none is refused too. Requests without either header (curl, SDKs,
                            the CLI) are not browsers and pass. This covers /admin/* (breakers, models)
                            and every endpoint that spends tokens.

CORS itself (which origins may read answers) is Starlette's `CORSMiddleware`, added with
server.cors_origins only (no CORS headers at all by default).
"""
from __future__ import annotations

from typing import Any, Iterable
from urllib.parse import urlsplit

import orjson

from .errors import send_json

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_UNSAFE = frozenset({b"POST", b"PUT", b"PATCH", b"DELETE"})
_WILD = ("0.0.0.0", "::", "")


def _header(scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return v.decode("latin-1")
    return None


def split_host(host: str) -> tuple[str, str]:
    """('name', 'port') of a Host header value; an IPv6 literal loses its brackets; port '' when absent."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        name, rest = host[1:end], host[end + 1:]
        return name, rest[1:] if rest.startswith(":") else ""
    if host.count(":") == 1:
        name, port = host.split(":")
        return name.rstrip("."), port
    return host.rstrip("."), ""


async def _refuse(scope, send, status: int, message: str) -> None:
    """An error in the wire format of the endpoint asked for (OpenAI for /v1 and /admin, else NLWeb's)."""
    path = scope.get("path", "")
    if path.startswith(("/v1/", "/admin/")):
        body = {"error": {"message": message, "type": "invalid_request_error" if status == 400 else "permission_error",
                          "param": None, "code": None}}
    else:
        body = {"error": message, "status": status}
    await send_json(send, status, orjson.dumps(body))


class HostAllowlist:
    """Host header values a server answers: names, name:port, *.domain suffixes, or '*' for any."""

    def __init__(self, allowed: Iterable[str], *, listen_host: str = ""):
        entries = [*LOOPBACK_NAMES, *([] if listen_host in _WILD else [listen_host]), *allowed]
        self.any = "*" in entries
        self.names: set[str] = set()
        self.with_port: set[tuple[str, str]] = set()
        self.suffixes: list[str] = []
        for e in entries:
            name, port = split_host(e)
            if name.startswith("*."):
                self.suffixes.append(name[1:])
            elif port:
                self.with_port.add((name, port))
            elif name:
                self.names.add(name)

    def allows(self, host: str) -> bool:
        if self.any:
            return True
        name, port = split_host(host)
        return (name in self.names or (name, port) in self.with_port
                or any(name.endswith(s) for s in self.suffixes))


class TrustedHostMiddleware:
    def __init__(self, app: Any, *, hosts: HostAllowlist):
        self.app = app
        self._hosts = hosts

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            host = _header(scope, b"host")
            if host is not None and not self._hosts.allows(host):
                await _refuse(scope, send, 400, f"Host {host[:100]!r} is not served here: add it to "
                              "server.allowed_hosts if this server is meant to answer to that name")
                return
        await self.app(scope, receive, send)


class OriginCheckMiddleware:
    def __init__(self, app: Any, *, cors_origins: Iterable[str] = ()):
        self.app = app
        self._origins = {o.rstrip("/").lower() for o in cors_origins}
        self._any = "*" in self._origins

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"].encode() in _UNSAFE and not self._any:
            why = self._refusal(scope)
            if why:
                await _refuse(scope, send, 403, why)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope) -> str:
        origin = _header(scope, b"origin")
        if origin is None:
            site = (_header(scope, b"sec-fetch-site") or "none").lower()
            if site in ("same-origin", "none"):
                return ""
            return (f"a {site} browser request may not {scope['method']} here (CSRF protection): send it from this "
                    "server's own pages, or list the calling site's origin in server.cors_origins")
        o = origin.strip().rstrip("/").lower()
        if o in self._origins:
            return ""
        host = _header(scope, b"host")
        if o != "null" and host is not None and urlsplit(o).netloc == host.strip().lower():
            return ""
        return (f"a cross-site {scope['method']} from origin {origin[:100]!r} is refused (CSRF protection): list that "
                "origin in server.cors_origins to allow it")
