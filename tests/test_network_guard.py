"""The test-wide network guard (tests/network_guard.py): non-loopback addresses are refused before any packet
is sent, loopback works, and a refusal that the code under test swallows still fails the test."""
import asyncio
import socket
import textwrap
from pathlib import Path

import aiohttp
import pytest

import network_guard
from network_guard import NetworkRefused

REMOTE = ["10.1.2.3", "93.184.216.34"]


@pytest.fixture()
def real_connects(monkeypatch):
    """Every address the guard let through to the real connect; the real one is never called for a refused address."""
    passed: list = []
    for name in ("connect", "connect_ex"):
        real = network_guard._originals[name]

        def spy(sock, address, real=real):
            passed.append(address)
            return real(sock, address)

        monkeypatch.setitem(network_guard._originals, name, spy)
    yield passed


@pytest.fixture()
def listener():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("host", REMOTE)
def test_connect_to_a_remote_address_is_refused_before_the_socket_connects(host, real_connects):
    for connect in (socket.socket.connect, socket.socket.connect_ex):
        with socket.socket() as s, pytest.raises(NetworkRefused, match=f"{host}:80"):
            connect(s, (host, 80))
    with pytest.raises(NetworkRefused, match=host):
        socket.create_connection((host, 443), timeout=5)
    assert real_connects == []
    assert network_guard.take_refused() == [f"{host}:80", f"{host}:80", f"{host}:443"]


def test_a_name_is_refused_before_it_is_looked_up(real_connects, monkeypatch):
    looked_up = []
    real = network_guard._originals["getaddrinfo"]
    monkeypatch.setitem(network_guard._originals, "getaddrinfo", lambda *a, **k: looked_up.append(a[0]) or real(*a, **k))
    with pytest.raises(NetworkRefused, match="example.com"):
        socket.getaddrinfo("example.com", 443)
    with pytest.raises(NetworkRefused, match="example.com"):
        socket.create_connection(("example.com", 443), timeout=5)
    assert looked_up == [] and real_connects == []
    assert network_guard.take_refused() == ["example.com (name lookup)"] * 2
    assert socket.getaddrinfo("localhost", 80) and socket.getaddrinfo("93.184.216.34", 80)  # literals need no lookup
    assert looked_up == ["localhost", "93.184.216.34"]


def test_udp_sendto_a_remote_address_is_refused(real_connects):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(NetworkRefused, match="10.1.2.3:53"):
        s.sendto(b"x", ("10.1.2.3", 53))
    assert network_guard.take_refused() == ["10.1.2.3:53"]


async def test_asyncio_and_aiohttp_are_refused(real_connects):
    with pytest.raises(NetworkRefused, match="93.184.216.34:80"):
        await asyncio.open_connection("93.184.216.34", 80)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorError, match="10.1.2.3:8080") as e:
            await session.get("http://10.1.2.3:8080/v1/models")
    assert isinstance(e.value.os_error, NetworkRefused) and "network guard" in str(e.value)
    assert real_connects == [] and network_guard.take_refused() == ["93.184.216.34:80", "10.1.2.3:8080"]


async def test_loopback_is_allowed(listener, real_connects):
    with socket.create_connection(("127.0.0.1", listener), timeout=5):
        pass
    with socket.create_connection(("localhost", listener), timeout=5):
        pass
    reader, writer = await asyncio.open_connection("127.0.0.1", listener)
    writer.close()
    await writer.wait_closed()
    assert len(real_connects) >= 3 and all(network_guard.is_loopback_host(a[0]) for a in real_connects)
    assert network_guard.take_refused() == []


def test_uvloop_is_guarded_too(listener):
    """uvicorn serves on uvloop when it is installed; uvloop connects and resolves in libuv, not through `socket`."""
    uvloop = pytest.importorskip("uvloop")
    loop = uvloop.new_event_loop()
    try:
        with pytest.raises(NetworkRefused, match="93.184.216.34:80"):
            loop.run_until_complete(asyncio.open_connection("93.184.216.34", 80))
        with pytest.raises(NetworkRefused, match="example.com"):
            loop.run_until_complete(loop.getaddrinfo("example.com", 443))
        assert network_guard.take_refused() == ["93.184.216.34:80", "example.com (name lookup)"]
        reader, writer = loop.run_until_complete(asyncio.open_connection("127.0.0.1", listener))
        writer.close()
    finally:
        loop.close()


@pytest.mark.parametrize("host,ok", [("127.0.0.1", True), ("127.255.0.7", True), ("::1", True), ("[::1]", True),
                                     ("::ffff:127.0.0.1", True), ("localhost", True), ("LOCALHOST", True),
                                     ("api.localhost", True), ("10.1.2.3", False), ("93.184.216.34", False),
                                     ("0.0.0.0", False), ("::", False), ("2606:2800:220:1::", False),
                                     ("example.com", False), ("localhost.example.com", False), (None, False)])
def test_what_counts_as_loopback(host, ok):
    assert network_guard.is_loopback_host(host) is ok


def test_unix_sockets_are_allowed(tmp_path):
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
        server.bind(path)
        server.listen()
        client.connect(path)


def test_a_refusal_the_code_swallows_still_fails_the_test(pytester):
    """A test whose code caught the refusal (as a provider that reports "unhealthy" does) fails all the same."""
    pytester.makeconftest(f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                          "pytest_plugins = ['network_guard']\n")
    pytester.makepyfile(textwrap.dedent("""
        import socket

        def test_swallows():
            try:
                socket.create_connection(("10.1.2.3", 80), timeout=5)
            except Exception:
                pass

        def test_local_only():
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                s.listen()
                socket.create_connection(s.getsockname(), timeout=5).close()
    """))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:asyncio")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_swallows*", "*network guard refused connections to 10.1.2.3:80*"])
