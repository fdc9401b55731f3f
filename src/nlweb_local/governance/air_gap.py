"""`air_gap: true`: the process keeps to this machine and the operator's local engines.

Two parts:
  - `air_gapped(settings, locality)`: which deployments may be built. A cloud deployment is skipped
    with a warning rather than refusing to start, so that one configuration file serves both a
    connected and an isolated site; the groups, `llm.search_deployment` and rollouts lose the skipped
    members (an alias left empty answers 404 naming air_gap). No local deployment at all is an error.
  - `OutboundGuard`: a process-wide refusal of outbound connections to anything but loopback, unix
    sockets and the hosts of the configured local engines and services (`allowed_endpoints`). It wraps
    `socket.socket.connect`, `connect_ex` and `sendto` and `socket.getaddrinfo` (a host that is not
    allowed is refused before it is looked up: no DNS query leaves either), and, when uvloop is
    installed (uvicorn runs on it; it connects and resolves in libuv), its `Loop.create_connection`,
    `sock_connect`, `getaddrinfo` and `create_datagram_endpoint`. asyncio, aiohttp, httpx, urllib,
    redis and psycopg connect through these. `serve` installs it before anything is built.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import threading
from typing import Any, Iterable
from urllib.parse import urlsplit

from .locality import Locality, Placement

log = logging.getLogger(__name__)
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


class AirGapRefused(ConnectionRefusedError):
    """An outbound connection the air gap does not allow (an OSError: callers see what they would see on a
    machine without a network)."""


def air_gapped(deployments: list[Any], locality: Locality) -> tuple[list[Any], dict[str, Placement]]:
    """(the deployments that may be built, the skipped ones with why): only local ones."""
    kept, skipped = [], {}
    for d in deployments:
        p = locality.of(d)
        if p.local:
            kept.append(d)
        else:
            skipped[d.name] = p
            log.warning("air_gap: deployment %r is not built: it is not local (%s); remove it from the settings, "
                        "or declare location: local if it runs on this network", d.name, p.why)
    return kept, skipped


def _host_of(url: str | None) -> str | None:
    if not url:
        return None
    try:
        return urlsplit(url if "//" in url else f"//{url}").hostname
    except ValueError:
        return None


def allowed_endpoints(settings: Any, locality: Locality) -> set[str]:
    """The hosts the process may connect to: those of the local deployments (url, instances) and of the
    configured services (store, Redis, the audit and registry databases, OTLP, JWKS) that are local.
    A service that is not local is left out, with a warning: connections to it will be refused."""
    hosts: set[str] = set()
    for d in settings.llm.all_deployments():
        if locality.of(d).local:
            hosts.update(h for h in (_host_of(u) for u in [d.url, *d.instances]) if h)
    services = {"store.url": settings.store.url, "cache_store.redis_url": settings.cache_store.redis_url,
                "cache.redis_url": settings.cache.redis_url, "auth.limits_redis_url": settings.auth.limits_redis_url,
                "audit.database_url": settings.audit.database_url,
                "auth.keys_database_url": settings.auth.keys_database_url, "registry.database_url": settings.registry.database_url,
                "auth.jwt.jwks_url": settings.auth.jwt.jwks_url,
                "telemetry.otlp_endpoint": getattr(settings.telemetry, "otlp_endpoint", None)}
    for key, url in services.items():
        host = _host_of(url) if isinstance(url, str) else None
        if not host:
            continue
        p = locality.host(host)
        if p.local:
            hosts.add(host)
        else:
            log.warning("air_gap: %s (%s) is not local (%s): connections to it will be refused", key, host, p.why)
    return {h.lower() for h in hosts}


def _ip(text: str) -> Any:
    try:
        ip = ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped if mapped is not None else ip


class OutboundGuard:
    """Refuses outbound connections to anything but loopback, unix sockets and `hosts` (names or
    addresses; a name's addresses at `install` are allowed too). A context manager: `with guard: ...`."""

    def __init__(self, hosts: Iterable[str] = ()):
        self.hosts = {h.strip().strip("[]").lower().rstrip(".") for h in hosts if h.strip()}
        self._ips: set[Any] = set()
        self._originals: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.refused: list[str] = []  # what was refused (the last 100)

    # -- the rule ----------------------------------------------------------------------------------
    def allows_host(self, host: Any) -> bool:
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        if not isinstance(host, str):
            return False
        name = host.strip().strip("[]").lower().rstrip(".")
        if not name or name in _LOOPBACK_NAMES or name.endswith(".localhost") or name in self.hosts:
            return True
        ip = _ip(name)
        return ip is not None and (ip.is_loopback or ip in self._ips)

    def check(self, family: int, address: Any) -> None:
        """Raise `AirGapRefused` unless `address` (as given to connect) is allowed."""
        if family == getattr(socket, "AF_UNIX", object()) or not isinstance(address, tuple) or not address:
            return
        if not self.allows_host(address[0]):
            self._refuse(f"{address[0]}:{address[1]}" if len(address) > 1 else str(address[0]))

    def _check_name(self, host: Any, port: Any = None) -> None:
        if host in (None, "", b""):
            return
        if not self.allows_host(host):
            name = host.decode("ascii", "replace") if isinstance(host, bytes) else str(host)
            self._refuse(f"{name}:{port}" if port is not None else name)

    def _refuse(self, what: str) -> None:
        with self._lock:
            first = what not in self.refused
            self.refused = (self.refused + [what])[-100:]
        if first:
            log.warning("air_gap: refused an outbound connection to %s", what)
        raise AirGapRefused(errno.ECONNREFUSED, f"air_gap: outbound connections to {what} are refused (allowed: "
                            "loopback and the configured local engines and services)")

    # -- installing --------------------------------------------------------------------------------
    def install(self) -> "OutboundGuard":
        if self._originals:
            return self
        lookup = socket.getaddrinfo
        for h in self.hosts:  # a name's addresses now (the engines connect to them after resolving it)
            ip = _ip(h)
            if ip is not None:
                self._ips.add(ip)
                continue
            try:
                self._ips.update(a for a in (_ip(str(i[4][0])) for i in lookup(h, None)) if a is not None)
            except OSError:
                log.warning("air_gap: %s does not resolve now; connections to it by name are still allowed", h)
        guard = self
        orig = self._originals
        orig.update(connect=socket.socket.connect, connect_ex=socket.socket.connect_ex, sendto=socket.socket.sendto,
                    getaddrinfo=socket.getaddrinfo)

        def connect(sock: socket.socket, address: Any) -> Any:
            guard.check(sock.family, address)
            return orig["connect"](sock, address)

        def connect_ex(sock: socket.socket, address: Any) -> Any:
            guard.check(sock.family, address)
            return orig["connect_ex"](sock, address)

        def sendto(sock: socket.socket, data: Any, *args: Any) -> Any:
            if args:
                guard.check(sock.family, args[-1])
            return orig["sendto"](sock, data, *args)

        def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
            if _ip(host if isinstance(host, str) else str(host)) is None:  # (an address needs no lookup: connect decides)
                guard._check_name(host, args[0] if args else kwargs.get("port"))
            return orig["getaddrinfo"](host, *args, **kwargs)

        socket.socket.connect = connect  # type: ignore[method-assign]
        socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
        socket.socket.sendto = sendto  # type: ignore[method-assign]
        socket.getaddrinfo = getaddrinfo
        self._install_uvloop()
        return self

    def _install_uvloop(self) -> None:
        try:
            import uvloop
        except ImportError:
            return
        guard, orig, Loop = self, self._originals, uvloop.Loop
        for name in ("create_connection", "sock_connect", "getaddrinfo", "create_datagram_endpoint"):
            orig[f"uv.{name}"] = getattr(Loop, name)

        async def create_connection(loop: Any, factory: Any, host: Any = None, port: Any = None, *a: Any, **kw: Any) -> Any:
            guard._check_name(host, port)
            return await orig["uv.create_connection"](loop, factory, host, port, *a, **kw)

        async def sock_connect(loop: Any, sock: socket.socket, address: Any) -> Any:
            guard.check(sock.family, address)
            return await orig["uv.sock_connect"](loop, sock, address)

        async def getaddrinfo(loop: Any, host: Any, port: Any, *a: Any, **kw: Any) -> Any:
            if _ip(host if isinstance(host, str) else str(host)) is None:
                guard._check_name(host, port)
            return await orig["uv.getaddrinfo"](loop, host, port, *a, **kw)

        async def create_datagram_endpoint(loop: Any, factory: Any, local_addr: Any = None, remote_addr: Any = None,
                                           **kw: Any) -> Any:
            if remote_addr is not None:
                guard._check_name(*remote_addr[:2])
            return await orig["uv.create_datagram_endpoint"](loop, factory, local_addr, remote_addr, **kw)

        Loop.create_connection = create_connection
        Loop.sock_connect = sock_connect
        Loop.getaddrinfo = getaddrinfo
        Loop.create_datagram_endpoint = create_datagram_endpoint

    def uninstall(self) -> None:
        orig = self._originals
        if not orig:
            return
        socket.socket.connect = orig["connect"]  # type: ignore[method-assign]
        socket.socket.connect_ex = orig["connect_ex"]  # type: ignore[method-assign]
        socket.socket.sendto = orig["sendto"]  # type: ignore[method-assign]
        socket.getaddrinfo = orig["getaddrinfo"]
        if "uv.create_connection" in orig:
            import uvloop

            for name in ("create_connection", "sock_connect", "getaddrinfo", "create_datagram_endpoint"):
                setattr(uvloop.Loop, name, orig[f"uv.{name}"])
        orig.clear()

    def __enter__(self) -> "OutboundGuard":
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()


def guard_for(settings: Any, locality: Locality | None = None) -> OutboundGuard:
    """The guard `serve` installs when `air_gap` is on."""
    locality = locality or Locality(settings.llm.local_hosts)
    return OutboundGuard(allowed_endpoints(settings, locality))
