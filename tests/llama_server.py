"""llama-cpp-python's OpenAI-compatible server (SmolLM2) in its own process, for the tests that need a real engine
over HTTP (test_openai_compat.py, test_chaos.py).

The test binds the socket and hands it over, so no port is freed and re-taken by someone else (the
`free_port` race): `LlamaServer` reserves a loopback port for its whole life with a bound socket that never
listens, and each `start()` binds another socket to that port (SO_REUSEPORT) and passes it to a fresh
`llama_cpp.server` app, served by uvicorn. The engine listens only once its model is loaded, so, as with a
real engine, a connection is refused while it starts or after it died; it then says "ready" on a pipe, and
`start()` waits for that (or for the pipe to close, if it dies first): no polling.

    with LlamaServer(tmp_path / "engine.log", n_ctx=512) as engine:
        ... engine.url ...; engine.kill(); engine.start()   # killed, then back on the same port
"""
from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Self

import pytest

# `python -m llama_cpp.server --model M --n_ctx N --model_alias A`, on the inherited socket
LAUNCH = """
import os, socket, sys, uvicorn
from llama_cpp.server.app import create_app
from llama_cpp.server.settings import ModelSettings, ServerSettings
sock_fd, ready_fd, model, n_ctx, alias = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
threads = {"n_threads": int(sys.argv[6])} if len(sys.argv) > 6 else {}
app = create_app(server_settings=ServerSettings(), model_settings=[ModelSettings(model=model, n_ctx=n_ctx, model_alias=alias, **threads)])
sock = socket.socket(fileno=sock_fd)
sock.listen(64)  # only now, with the model loaded: until here a connection is refused, as by a starting engine
os.write(ready_fd, b"ready")
os.close(ready_fd)
uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
"""
START_S = 120.0  # loading SmolLM2 takes a few seconds; a slow CI machine gets this long


def _port_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return s


class LlamaServer:
    def __init__(self, log_path: Path, *, n_ctx: int, alias: str = "smollm2", n_threads: int | None = None):
        pytest.importorskip("llama_cpp.server.app", reason="pip install 'llama-cpp-python[server]'")
        self.log_path, self.n_ctx, self.alias, self.n_threads = Path(log_path), n_ctx, alias, n_threads
        self._reserved = _port_socket()
        self._reserved.bind(("127.0.0.1", 0))
        self.port = self._reserved.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Self:
        from nlweb_local.providers.llama_cpp import packaged_smollm2_path

        ready_r, ready_w = os.pipe()
        with _port_socket() as sock, open(self.log_path, "ab") as out:
            sock.bind(("127.0.0.1", self.port))
            # a file, not a pipe: the model loader's chatter would fill a pipe and block it
            self.proc = subprocess.Popen(
                [sys.executable, "-c", LAUNCH, str(sock.fileno()), str(ready_w), str(packaged_smollm2_path()),
                 str(self.n_ctx), self.alias, *([str(self.n_threads)] if self.n_threads else [])], pass_fds=(sock.fileno(), ready_w), stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        os.close(ready_w)
        with os.fdopen(ready_r, "rb") as ready, selectors.DefaultSelector() as sel:  # (epoll: any fd number)
            sel.register(ready, selectors.EVENT_READ)
            said = ready.read(5) if sel.select(START_S) else b""  # "ready", or end of file if the engine died
        if said != b"ready":
            self.kill()
            pytest.fail(f"llama_cpp.server did not start within {START_S:.0f} s: "
                        f"{self.log_path.read_text(errors='replace')[-2000:]}")
        return self

    def kill(self) -> None:
        """SIGKILL the engine (and anything it started): the chaos a crash is."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def close(self) -> None:
        self.stop()
        self._reserved.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()
