"""The one request-body reader: bounded in size by `server.max_body_bytes` and in time by
`server.body_timeout_s`, over raw ASGI `receive`.

Every endpoint reads its body through `read_body` — the raw ASGI gateway endpoints directly, Starlette
endpoints with `read_request_body(request, limit, timeout_s)` — so the limits and their errors are the
same everywhere: 413 (`PayloadTooLargeError`) past the size, 408 (`RequestTimeoutError`) when the whole
body has not arrived in time (a client trickling a byte now and then holds a connection no longer).

`parse_json` is the one JSON parser for what a client sends: strict JSON (no NaN/Infinity, no number
that overflows a double) nested at most `MAX_JSON_DEPTH` levels, so nothing downstream recurses past
Python's limit (a `RecursionError` deep in a renderer or an engine adapter would be a 500).
"""
from __future__ import annotations

import asyncio
import re
from typing import Any, Awaitable, Callable

import orjson
from starlette.requests import Request

from ..core.errors import BadRequestError, PayloadTooLargeError, RequestTimeoutError

Receive = Callable[[], Awaitable[dict[str, Any]]]
MAX_JSON_DEPTH = 32
"""Arrays and objects nested deeper than this are refused (400): no real request needs more."""


class ClientGone(Exception):
    """The client disconnected before its request body arrived: nobody to answer."""


class BodyDeadlines:
    """Body-read deadlines for a hot endpoint without a timer per request: each read is one dict entry,
    and one watcher task per event loop cancels the reads past their deadline (checked every `tick_s`, so
    a read may overrun its deadline by up to one tick)."""

    def __init__(self, tick_s: float = 0.5):
        self._tick_s = tick_s
        self._reads: dict[asyncio.Task, float] = {}
        self._expired: set[asyncio.Task] = set()
        self._watcher: asyncio.Task | None = None

    def watch(self, task: asyncio.Task, deadline: float) -> None:
        self._reads[task] = deadline
        w = self._watcher
        if w is None or w.done() or w.get_loop() is not task.get_loop():
            self._watcher = task.get_loop().create_task(self._run())

    def unwatch(self, task: asyncio.Task) -> bool:
        """Stop watching `task`; True when it was cancelled for being late."""
        self._reads.pop(task, None)
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._reads:
            await asyncio.sleep(self._tick_s)
            now = loop.time()
            for task, deadline in list(self._reads.items()):
                if deadline <= now:
                    del self._reads[task]
                    self._expired.add(task)
                    task.cancel()


async def read_body(receive: Receive, declared: str | None, limit: int, timeout_s: float | None = None,
                    deadlines: BodyDeadlines | None = None) -> bytes:
    """The body from ASGI `receive`, at most `limit` bytes (`PayloadTooLargeError` past it, at once when
    the declared Content-Length says so), all of it within `timeout_s` seconds (`RequestTimeoutError`
    after; None: no limit); `ClientGone` if the client left first. With `deadlines` the timeout costs a
    dict entry instead of a timer (the gateway's hot path)."""
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body is {declared} bytes; the limit is {limit} (server.max_body_bytes)")
    if timeout_s is None:
        return await _read(receive, limit)
    if deadlines is not None:
        task = asyncio.current_task()
        assert task is not None
        deadlines.watch(task, task.get_loop().time() + timeout_s)
        try:
            return await _read(receive, limit)
        except asyncio.CancelledError:
            if deadlines.unwatch(task):  # cancelled by the watcher, not by anyone else
                task.uncancel()
                raise _late(timeout_s) from None
            raise
        finally:
            deadlines.unwatch(task)
    try:
        async with asyncio.timeout(timeout_s):
            return await _read(receive, limit)
    except TimeoutError:
        raise _late(timeout_s) from None


def _late(timeout_s: float) -> RequestTimeoutError:
    return RequestTimeoutError(f"the request body did not arrive within {timeout_s:g} s (server.body_timeout_s); "
                               "send the whole body at once")


async def _read(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body exceeds {limit} bytes (server.max_body_bytes)")
        if not message.get("more_body", False):
            if not chunks:
                return chunk  # the usual case: the whole body in one message
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)


async def read_request_body(request: Request, limit: int, timeout_s: float | None = None) -> bytes:
    """`read_body` for a Starlette endpoint (the body must not have been read yet)."""
    return await read_body(request.receive, request.headers.get("content-length"), limit, timeout_s)


def parse_json(raw: bytes | str, what: str = "request body", *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """`raw` as JSON, or `BadRequestError` naming `what`: not JSON, a non-finite number, or nested deeper
    than `max_depth` arrays/objects."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        if e.msg.startswith("depth limit"):
            raise BadRequestError(f"{what} nests arrays/objects deeper than {max_depth} levels; flatten it") from None
        raise BadRequestError(f"{what} is not valid JSON: {e.msg}{_where(raw, e.pos)}") from None
    opened = raw.count(b"[") + raw.count(b"{") if isinstance(raw, bytes) else raw.count("[") + raw.count("{")
    if opened > max_depth and _deeper_than(value, max_depth):  # (too few brackets to nest that deep: no walk)
        raise BadRequestError(f"{what} nests arrays/objects deeper than {max_depth} levels; flatten it")
    return value


def _where(raw: bytes | str, pos: int) -> str:
    """Where a JSON error is: the member it is in, when one precedes it (e.g. at 'max_results')."""
    head = raw[max(0, pos - 200):pos]
    text = head.decode("utf-8", "replace") if isinstance(head, bytes) else head
    keys = _MEMBER.findall(text)
    return f" (in '{keys[-1]}', at character {pos})" if keys else f" (at character {pos})"


_MEMBER = re.compile(r'"([^"\\]{1,64})"\s*:')


def _deeper_than(value: Any, limit: int) -> bool:
    """True when `value` holds containers nested more than `limit` levels (iterative: no recursion)."""
    if not isinstance(value, (list, dict)):
        return False
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in (node.values() if isinstance(node, dict) else node):
            if isinstance(child, (list, dict)):
                stack.append((child, depth + 1))
    return False
