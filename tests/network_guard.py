"""A test-wide guard: no connection leaves the machine (pydantic-ai's `ALLOW_MODEL_REQUESTS = False`).

A pytest plugin (tests/conftest.py loads it with `pytest_plugins`): when pytest starts, `install()` wraps `socket.socket.connect`, `connect_ex`
and `sendto`, and `socket.getaddrinfo`, so that reaching anything but loopback (127.0.0.0/8, ::1,
"localhost") or a unix socket raises `NetworkRefused`, naming the address, before any packet is sent —
a hostname is refused before it is looked up, so not even a DNS query goes out. asyncio's
`create_connection`, aiohttp, httpx and urllib all connect through these, in every thread. uvloop (which
uvicorn runs its servers on when it is installed) connects and resolves in libuv, not through `socket`, so
its `Loop.create_connection`, `sock_connect`, `getaddrinfo` and `create_datagram_endpoint` are wrapped too.

Code under test may catch the error (a provider turns a connect failure into "unhealthy"), so every
refusal is also kept in `refused`, and the test during which one happened fails (the hooks at the end; a
test that provokes refusals on purpose takes them with `take_refused()`). Subprocesses are not covered.
"""
from __future__ import annotations

import errno
import ipaddress
import socket
import threading
from typing import Any

import pytest

LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


class NetworkRefused(ConnectionRefusedError):
    """A test tried to reach a non-loopback address. An OSError, so the code under test sees what it would see
    on a machine without a network (and closes its sockets); the autouse fixture then fails the test."""


refused: list[str] = []  # what was refused, since the last `take_refused()`
_lock = threading.Lock()
_originals: dict[str, Any] = {}


def is_loopback_host(host: Any) -> bool:
    """True for a loopback IP literal (127.0.0.0/8, ::1, ::ffff:127.x) or a name of this machine's loopback."""
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    name = host.strip("[]").split("%", 1)[0].lower()
    if name in LOCAL_NAMES or name.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _is_ip_literal(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    try:
        ipaddress.ip_address(str(host).strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True


def _refuse(what: str) -> None:
    message = (f"network guard: this test tried to reach {what}; tests may only connect to loopback "
               "(127.0.0.0/8, ::1, localhost) or unix sockets. Start a local fake instead (tests/fakes).")
    with _lock:
        refused.append(what)
    raise NetworkRefused(errno.ECONNREFUSED, message)


def check_address(family: int, address: Any) -> None:
    """Raise NetworkRefused unless `address` (as given to connect) is loopback or a unix socket."""
    if family == getattr(socket, "AF_UNIX", object()) or not isinstance(address, tuple) or not address:
        return  # a unix socket path, or something that is not an internet address
    if not is_loopback_host(address[0]):
        _refuse(f"{address[0]}:{address[1]}" if len(address) > 1 else str(address[0]))


def _connect(self: socket.socket, address: Any) -> None:
    check_address(self.family, address)
    return _originals["connect"](self, address)


def _connect_ex(self: socket.socket, address: Any) -> int:
    check_address(self.family, address)
    return _originals["connect_ex"](self, address)


def _sendto(self: socket.socket, data: Any, *args: Any) -> int:
    if args:
        check_address(self.family, args[-1])
    return _originals["sendto"](self, data, *args)


def _check_host(host: Any, port: Any = None) -> None:
    """Refuse a host given by name or IP before it is resolved or connected to."""
    if host in (None, "", b"") or is_loopback_host(host):
        return
    name = host.decode("ascii", "replace") if isinstance(host, bytes) else str(host)
    if not _is_ip_literal(name):
        _refuse(f"{name} (name lookup)")
    _refuse(f"{name}:{port}" if port is not None else name)


def _getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if not _is_ip_literal(host):  # an IP literal needs no lookup; connect() then decides
        _check_host(host)
    return _originals["getaddrinfo"](host, *args, **kwargs)


# -- uvloop ------------------------------------------------------------------------------------------------
async def _uv_create_connection(self: Any, protocol_factory: Any, host: Any = None, port: Any = None, *args: Any,
                                **kwargs: Any) -> Any:
    _check_host(host, port)
    return await _originals["uv.create_connection"](self, protocol_factory, host, port, *args, **kwargs)


async def _uv_sock_connect(self: Any, sock: socket.socket, address: Any) -> None:
    check_address(sock.family, address)
    return await _originals["uv.sock_connect"](self, sock, address)


async def _uv_getaddrinfo(self: Any, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
    if not _is_ip_literal(host):
        _check_host(host)
    return await _originals["uv.getaddrinfo"](self, host, port, *args, **kwargs)


async def _uv_create_datagram_endpoint(self: Any, protocol_factory: Any, local_addr: Any = None,
                                       remote_addr: Any = None, **kwargs: Any) -> Any:
    if remote_addr is not None:
        _check_host(*remote_addr[:2])
    return await _originals["uv.create_datagram_endpoint"](self, protocol_factory, local_addr, remote_addr, **kwargs)


_UV = {"create_connection": _uv_create_connection, "sock_connect": _uv_sock_connect, "getaddrinfo": _uv_getaddrinfo,
       "create_datagram_endpoint": _uv_create_datagram_endpoint}


def install() -> None:
    if _originals:
        return
    _originals.update(connect=socket.socket.connect, connect_ex=socket.socket.connect_ex,
                      sendto=socket.socket.sendto, getaddrinfo=socket.getaddrinfo)
    socket.socket.connect = _connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign]
    socket.socket.sendto = _sendto  # type: ignore[method-assign]
    socket.getaddrinfo = _getaddrinfo
    try:
        import uvloop
    except ImportError:
        return
    for name, guarded in _UV.items():
        _originals[f"uv.{name}"] = getattr(uvloop.Loop, name)
        setattr(uvloop.Loop, name, guarded)


def uninstall() -> None:
    if not _originals:
        return
    socket.socket.connect = _originals["connect"]  # type: ignore[method-assign]
    socket.socket.connect_ex = _originals["connect_ex"]  # type: ignore[method-assign]
    socket.socket.sendto = _originals["sendto"]  # type: ignore[method-assign]
    socket.getaddrinfo = _originals["getaddrinfo"]
    if "uv.create_connection" in _originals:
        import uvloop

        for name in _UV:
            setattr(uvloop.Loop, name, _originals[f"uv.{name}"])
    _originals.clear()


def take_refused() -> list[str]:
    """What was refused since the last call, and forget it."""
    with _lock:
        out = refused[:]
        refused.clear()
    return out


# -- the plugin ------------------------------------------------------------------------------------------
def pytest_configure(config: pytest.Config) -> None:
    install()


def pytest_unconfigure(config: pytest.Config) -> None:
    uninstall()


def _fail_if_refused(phase: str) -> None:
    if what := take_refused():
        pytest.fail(f"the network guard refused connections to {', '.join(what)} during this test's {phase}",
                    pytrace=False)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    take_refused()  # what happened before this test is not its doing


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    result = yield
    _fail_if_refused("setup or run")
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    result = yield
    _fail_if_refused("teardown")
    return result
