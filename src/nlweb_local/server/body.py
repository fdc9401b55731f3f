"""The one request-body reader: bounded by `server.max_body_bytes`, over raw ASGI `receive`.

Every endpoint reads its body through `read_body` — the raw ASGI gateway endpoints directly, Starlette
endpoints with `read_request_body(request, limit)` — so the limit and its error are the same everywhere.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable

from starlette.requests import Request

from ..core.errors import PayloadTooLargeError

Receive = Callable[[], Awaitable[dict[str, Any]]]


class ClientGone(Exception):
    """The client disconnected before its request body arrived: nobody to answer."""


async def read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The body from ASGI `receive`, at most `limit` bytes (`PayloadTooLargeError` past it, at once when
    the declared Content-Length says so); `ClientGone` if the client left first."""
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body is {declared} bytes; the limit is {limit} (server.max_body_bytes)")
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


async def read_request_body(request: Request, limit: int) -> bytes:
    """`read_body` for a Starlette endpoint (the body must not have been read yet)."""
    return await read_body(request.receive, request.headers.get("content-length"), limit)
