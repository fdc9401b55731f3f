"""`FakeEngine`: the scaffolding every wire-faithful engine fake shares, written once.

A fake is a subclass that supplies `routes(app)` (its handlers: the engine's paths, framing and error
bodies) and `fault_reply(kind, request, body)` (its engine's answer to an armed fault); this base does
the rest, as httpx's `MockTransport(handler)` keeps a fake down to its handler:

- serving: an aiohttp app in its own thread and event loop, on a listening socket the fake binds itself
  to 127.0.0.1 port 0 before the thread starts (the URL is known at once, and no port is freed and
  re-taken), so one fake per test module serves whatever event loop each test runs in;
- fault injection: `fault(kind)` arms the NEXT request that calls `take_fault` (generation requests, never
  health or lifecycle endpoints), `clear_faults()` disarms (`reset()` also forgets the requests); a "hang" waits until the client gives up or
  the fake stops, then answers with the engine's reply to "hang";
- a record of what arrived: `requests` (method, path, query, headers, JSON body) for the handlers that
  call `read`, and `last(path)`, the body of the latest request to `path`;
- the test module's fixtures: `fake, clean = fake_fixtures(TgiFake)` gives one fake per module (`fake`) and,
  per test, the same fake reset to its starting state (`clean`).

    with OllamaFake(models=["fake-model"]) as fake:   # or: fake = TgiFake().start(); ...; fake.stop()
        fake.fault("rate_limit")
        ... OllamaProvider("fake-model", url=fake.url) ...
"""
from __future__ import annotations

import asyncio
import json
import socket
import threading
from typing import Any, Callable, Self

import pytest
from aiohttp import web

HANG_S = 60.0  # a hung request is released after this long at most (a client deadline, or stop(), comes first)
KEEP_REQUESTS = 500  # the record keeps the latest this many requests


class _Answered(Exception):
    """Ends a handler with `reply` (raised by `take_fault`, turned into the response by `_answered`)."""

    def __init__(self, reply: web.StreamResponse):
        super().__init__(reply.status)
        self.reply = reply


@web.middleware
async def _answered(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except _Answered as a:
        return a.reply


class FakeEngine:
    FAULTS: tuple[str, ...] = ()  # the fault kinds `fault_reply` and the handlers understand

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._faults: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._release: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.url = ""

    # -- what a subclass supplies ------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def fault_reply(self, kind: str, request: web.Request, body: Any) -> web.StreamResponse | None:
        """The engine's answer to `kind` when the fault answers by itself; None when it shapes a 200 answer."""
        return None

    # -- fault injection -----------------------------------------------------------------------------
    def fault(self, kind: str) -> None:
        if kind not in self.FAULTS:
            raise ValueError(f"unknown fault {kind!r}; one of {self.FAULTS}")
        self._faults.append(kind)

    def clear_faults(self) -> None:
        self._faults.clear()

    def reset(self) -> None:
        """Disarm every fault and forget the requests: a clean fake for the next test (a subclass with more
        state a test may change restores that too)."""
        self.clear_faults()
        self.requests.clear()

    async def take_fault(self, request: web.Request, body: Any = None) -> str | None:
        """Disarm the next fault. One that answers the request by itself (a "hang" once released) ends the
        handler with its reply; one that shapes a 200 answer (mid_stream, bad_json, ...) is returned by name
        for the handler to act on; None when none is armed."""
        if not self._faults:
            return None
        kind = self._faults.pop(0)
        if kind == "hang":
            await self.hang()
        reply = self.fault_reply(kind, request, body)
        if reply is not None:
            raise _Answered(reply)
        return kind

    async def hang(self) -> None:
        assert self._release is not None
        try:
            await asyncio.wait_for(self._release.wait(), HANG_S)
        except asyncio.TimeoutError:
            pass

    # -- the record ----------------------------------------------------------------------------------
    async def read(self, request: web.Request) -> Any:
        """The request's JSON body (None when it is not JSON; {} when empty), recorded."""
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            body = None
        self.requests.append({"method": request.method, "path": request.path, "query": dict(request.query),
                              "headers": dict(request.headers), "body": body})
        del self.requests[:-KEEP_REQUESTS]
        return body

    def last(self, path: str) -> Any:
        """The JSON body of the latest request to `path`."""
        return next(r["body"] for r in reversed(self.requests) if r["path"] == path)

    # -- serving -------------------------------------------------------------------------------------
    def start(self) -> Self:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self._sock = sock
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        ready = threading.Event()
        failed: list[BaseException] = []

        async def serve() -> None:
            self._release = asyncio.Event()
            app = web.Application(middlewares=[_answered])
            self.routes(app)
            # handler_cancellation: a request whose client went away (a deadline, a cut stream) stops, as on an engine
            self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
            await self._runner.setup()
            await web.SockSite(self._runner, sock).start()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(serve())
            except BaseException as e:  # noqa: BLE001 - reported by start() in the caller's thread
                failed.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name=type(self).__name__, daemon=True)
        self._thread.start()
        if not ready.wait(10) or failed:
            sock.close()
            raise RuntimeError(f"{type(self).__name__} did not start") from (failed[0] if failed else None)
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        loop = self._loop

        async def shutdown() -> None:
            assert self._release is not None and self._runner is not None
            self._release.set()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        if self._sock is not None:
            self._sock.close()
        self._loop = self._thread = self._sock = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def fake_fixtures(make: Callable[[], FakeEngine]) -> tuple[Any, Any]:
    """Fixtures `fake` (one fake for the module, started and stopped) and `clean` (that fake reset before each
    test that asks for it, faults disarmed after): `fake, clean = fake_fixtures(lambda: OllamaFake(models=[...]))`."""

    @pytest.fixture(scope="module")
    def fake():
        with make() as f:
            yield f

    @pytest.fixture()
    def clean(fake):
        fake.reset()
        yield fake
        fake.clear_faults()

    return fake, clean
