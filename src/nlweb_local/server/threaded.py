"""Serve an ASGI app with uvicorn on a loopback port in a background thread (benchmarks, tests).

The server binds its socket itself (port 0) and hands it to uvicorn, so the port it reports is the one it
holds: no port is picked, freed and then taken again, which another process could take in between.
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Any


class ThreadedServer:
    def __init__(self, app: Any, *, start_timeout_s: float = 30.0, **config: Any):
        """`config`: more uvicorn.Config arguments (e.g. ssl_certfile and ssl_keyfile: then `url` is https)."""
        import uvicorn

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"{'https' if config.get('ssl_certfile') else 'http'}://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", **config))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + start_timeout_s
        while not self.server.started:  # uvicorn offers no event for this
            if time.monotonic() > deadline or not self.thread.is_alive():
                self._sock.close()
                raise RuntimeError(f"the server on port {self.port} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self._sock.close()
