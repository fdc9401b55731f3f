"""A real Redis server (Debian's `redis-server`) of a test's own, on a free loopback port, in the foreground
of a child process so that the test can kill it (an outage), freeze it (a hung server) and start it again on
the same port. No persistence (`--save "" --appendonly no`): every start is empty.

    with RedisServer(tmp_path) as redis:
        ... redis.url ...; redis.kill(); redis.start()   # killed, then back (empty) on the same port

Without `redis-server` the test is skipped, unless NLWEB_REQUIRE_REDIS is set (CI sets it: there a Redis test
must run), which makes it a failure.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Self

import pytest

START_S = 20.0


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        if os.environ.get("NLWEB_REQUIRE_REDIS"):
            pytest.fail("redis-server is missing and NLWEB_REQUIRE_REDIS is set (apt-get install -y redis-server)")
        pytest.skip("redis-server is missing (apt-get install -y redis-server)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self, folder: Path):
        self.binary = redis_server_binary()
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Self:
        log = self.folder / f"redis-{self.port}.log"
        self.proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.folder), "--logfile", str(log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_S
        while not _pong(self.port):  # a readiness wait, not a timed assertion
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"redis-server did not start on port {self.port}: "
                            f"{log.read_text(errors='replace')[-2000:] if log.exists() else ''}")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        """SIGKILL: the outage a crash is (clients see their connections reset, then refused)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a frozen server dies too
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def freeze(self) -> None:
        """SIGSTOP: a hung server (connections are accepted by the kernel, nothing answers)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def client(self) -> Any:
        """A plain (synchronous) redis-py client, to look at or spoil what a cache stored, from outside it."""
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.kill()
