"""JSON-RPC 2.0 framing, pure (no HTTP): decode a body, check each message, call a handler, build the reply.

`handle(body, handlers)` returns a `Reply` whose `status` is the HTTP status an HTTP edge should send:

    400  the body is not JSON (-32700), or is not a JSON-RPC message or batch (-32600)
    200  one or more responses (results, or errors such as -32601 / -32602 inside a valid request, or
         -32000 SERVER_BUSY for requests the `admit` hook refused; `Reply.retry_after` then says when to retry)
    202  only notifications or client responses: nothing to send back

A batch holds at most `max_batch` messages (more: -32600, nothing runs). Before any request of a body
runs, `admit(requests)` sees all of its well-formed requests and may refuse them all at once.

Ids follow MCP, which is stricter than JSON-RPC: a string or an integer, never null.
Params must be an object when present (MCP sends no positional params).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_BUSY = -32000
"""(implementation-defined server error) refused for now: `data.retry_after` says after how many seconds."""

MAX_BATCH = 16
"""A batch longer than this is refused whole: each request may run a search."""

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
Admission = Callable[[list[dict[str, Any]]], None]
"""Sees a body's requests (method + params, well-formed) before any runs; raises `Busy` to refuse them all."""


class JsonRpcError(Exception):
    """Raised by a handler (or by the framing) to answer a request with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class Busy(JsonRpcError):
    """Every request of the body is refused for now (SERVER_BUSY); retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(SERVER_BUSY, message, {"retry_after": retry_after})
        self.retry_after = retry_after


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any] | list[dict[str, Any]] | None
    """None when there is nothing to send (status 202)."""
    answered: tuple[str, ...] = ()
    """Methods answered with a result, in order (the HTTP edge adds headers for some, e.g. initialize)."""
    retry_after: float | None = None
    """Set when the requests were refused as busy (the HTTP edge sends Retry-After)."""


def error_response(error: JsonRpcError, id: str | int | None = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "error": error.to_dict()}


def result_response(id: str | int, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "result": result}


def encode(body: dict[str, Any] | list[dict[str, Any]]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def decode(body: bytes) -> Any:
    """Strict JSON: UTF-8 only, no NaN/Infinity; anything else is a -32700 parse error."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise JsonRpcError(PARSE_ERROR, f"Parse error: the body is not valid UTF-8 JSON ({_short(e)})") from None


async def handle(body: bytes, handlers: Mapping[str, Handler], *, max_batch: int = MAX_BATCH,
                 admit: Admission | None = None) -> Reply:
    """Answer one HTTP body: a single message or a batch of at most `max_batch`. Notifications and client
    responses are accepted and ignored (the caller keeps no state that they could change)."""
    try:
        document = decode(body)
    except JsonRpcError as e:
        return Reply(400, error_response(e))
    messages = document if isinstance(document, list) else [document]
    if isinstance(document, list):
        if not document:
            return Reply(400, error_response(JsonRpcError(INVALID_REQUEST, "Invalid Request: empty batch")))
        if len(document) > max_batch:
            message = f"Invalid Request: a batch holds at most {max_batch} messages; send fewer at a time"
            return Reply(400, error_response(JsonRpcError(INVALID_REQUEST, message)))
    if admit is not None:
        try:
            admit([m for m in messages if _is_request(m)])
        except Busy as e:
            return _refuse(messages, e, batch=isinstance(document, list))
    if isinstance(document, list):
        return await _handle_batch(document, handlers)
    response, method = await _answer(document, handlers)
    if response is None:
        return Reply(202, None)
    bad_request = "error" in response and response["error"]["code"] in (PARSE_ERROR, INVALID_REQUEST)
    return Reply(400 if bad_request else 200, response, (method,) if method else ())


def _is_request(message: Any) -> bool:
    """A well-formed request that would run (it has an id, so it is answered)."""
    return (isinstance(message, dict) and message.get("jsonrpc") == "2.0" and _is_id(message.get("id"))
            and isinstance(message.get("method"), str) and isinstance(message.get("params", {}), dict))


def _refuse(messages: list[Any], e: Busy, *, batch: bool) -> Reply:
    """Every request answered with the refusal; nothing ran."""
    responses = [error_response(e, m["id"]) for m in messages if _is_request(m)]
    if not responses:
        return Reply(202, None)
    return Reply(200, responses if batch else responses[0], retry_after=e.retry_after)


async def _handle_batch(batch: list[Any], handlers: Mapping[str, Handler]) -> Reply:
    responses, answered = [], []
    for message in batch:  # one at a time: each request may run a search, and the order is the client's
        response, method = await _answer(message, handlers)
        if response is not None:
            responses.append(response)
        if method:
            answered.append(method)
    return Reply(200, responses, tuple(answered)) if responses else Reply(202, None)


async def _answer(message: Any, handlers: Mapping[str, Handler]) -> tuple[dict[str, Any] | None, str | None]:
    """The response to one message (None for a notification or a client response), and the method
    name when it was answered with a result."""
    if not isinstance(message, dict):
        return _invalid("a JSON-RPC message must be an object"), None
    has_id = "id" in message
    id = message.get("id") if _is_id(message.get("id")) else None
    if message.get("jsonrpc") != "2.0":
        return _invalid('the message needs "jsonrpc": "2.0"', id), None
    if has_id and id is None:
        return _invalid("id must be a string or an integer (MCP forbids null)"), None
    if "method" not in message:
        if has_id and ("result" in message) != ("error" in message):
            return None, None  # a response to a server request; this server sends none, so ignore it
        return _invalid("a request needs a method", id), None
    method = message["method"]
    if not isinstance(method, str):
        return _invalid("method must be a string", id), None
    if not has_id:
        return None, None  # a notification: never answered, not even with an error
    params = message.get("params", {})
    if isinstance(params, list):
        return error_response(JsonRpcError(INVALID_PARAMS, "Invalid params: params must be an object"), id), None
    if not isinstance(params, dict):
        return _invalid("params must be an object", id), None
    handler = handlers.get(method)
    if handler is None:
        return error_response(JsonRpcError(METHOD_NOT_FOUND, f"Method not found: {method}"), id), None
    try:
        result = await handler(params)
    except JsonRpcError as e:
        return error_response(e, id), None
    except Exception:
        log.exception("JSON-RPC handler for %s failed", method)
        return error_response(JsonRpcError(INTERNAL_ERROR, "Internal error; see the server log"), id), None
    return result_response(id, result), method


def _invalid(why: str, id: str | int | None = None) -> dict[str, Any]:
    return error_response(JsonRpcError(INVALID_REQUEST, f"Invalid Request: {why}"), id)


def _is_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _short(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= 120 else text[:117] + "..."
