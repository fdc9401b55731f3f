"""A wire-faithful fake of Anthropic's Messages API (`POST /v1/messages`).

- Wants `x-api-key` (401 `authentication_error` otherwise) and `anthropic-version` (400 without).
- Validates as the API does: `model`, `max_tokens` and `messages` required; roles only user/assistant
  (a "system" message is refused: the system prompt is top-level); temperature 0..1; an unknown model is
  404 `not_found_error` "model: <name>"; a forced tool must exist.
- Streams named SSE events: message_start (usage.input_tokens), content_block_start, ping,
  content_block_delta (text_delta / input_json_delta), content_block_stop, message_delta (stop_reason,
  usage.output_tokens), message_stop; errors `{"type": "error", "error": {"type", "message"}}`, also as an
  `event: error` mid-stream. Without `stream: true` it answers one message object.

Canned answers: "Hello! I am a fake model."; the forced tool's input `{"city": "Paris"}`; with tools
offered and not forced, "Let me check." then a call of the first tool with `{"city": "Paris"}`.
`fault(kind)`: rate_limit, overloaded (529), mid_stream, hang, model_missing, bad_json (serving and faults:
`FakeEngine`, tests/fakes/base.py).
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from .base import FakeEngine

TEXT = ["Hello", "! I am", " a fake", " model."]
JSON_PARTS = ["", '{"city', '": "Par', 'is"}']
MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-3-5-haiku-20241022")


def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"type": "error", "error": {"type": kind, "message": message},
                              "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}, status=status, headers=headers)


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


class AnthropicFake(FakeEngine):
    FAULTS = ("rate_limit", "overloaded", "mid_stream", "hang", "model_missing", "bad_json")
    api_key = "sk-ant-test"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self.messages)

    def fault_reply(self, kind: str, request: web.Request, body: Any) -> web.StreamResponse | None:
        if kind == "rate_limit":
            return _error(429, "rate_limit_error", "This request would exceed the rate limit for your organization "
                                                   "of 50 requests per minute.", {"retry-after": "7"})
        if kind == "overloaded":
            return _error(529, "overloaded_error", "Overloaded", {"retry-after": "2"})
        if kind == "model_missing":
            return _error(404, "not_found_error", f"model: {body.get('model')}")
        if kind == "hang":
            return web.Response(status=504)
        return None

    def validate(self, request: web.Request, body: dict[str, Any]) -> web.Response | None:
        if request.headers.get("x-api-key") != self.api_key:
            return _error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return _error(400, "invalid_request_error", "anthropic-version: header is required")
        for field in ("model", "max_tokens", "messages"):
            if field not in body:
                return _error(400, "invalid_request_error", f"{field}: Field required")
        for i, m in enumerate(body["messages"]):
            if m.get("role") not in ("user", "assistant"):
                return _error(400, "invalid_request_error",
                              f"messages.{i}.role: Unexpected role \"{m.get('role')}\". The Messages API accepts a "
                              "top-level `system` parameter, not \"system\" as an input message role.")
        if not 0 <= body.get("temperature", 1) <= 1:
            return _error(400, "invalid_request_error", "temperature: range: 0..1")
        choice = body.get("tool_choice") or {}
        names = [t["name"] for t in body.get("tools") or ()]
        if choice.get("type") == "tool" and choice.get("name") not in names:
            return _error(400, "invalid_request_error", f"tool_choice.name: tool {choice.get('name')!r} not found")
        if body["model"] not in MODELS:
            return _error(404, "not_found_error", f"model: {body['model']}")
        return None

    def blocks(self, body: dict[str, Any], fault: str | None) -> tuple[list[tuple[str, dict, list[str]]], str]:
        """Content blocks as (type, start block, deltas) and the stop reason."""
        choice = body.get("tool_choice") or {}
        tools = body.get("tools") or []
        forced = choice.get("name") if choice.get("type") == "tool" else None
        if forced is None and choice.get("type") == "any" and tools:
            forced = "answer" if any(t["name"] == "answer" for t in tools) else tools[0]["name"]
        if fault == "bad_json":  # the model answers in prose instead of calling the tool
            return [("text", {"type": "text", "text": ""}, ["I would rather", " not say."])], "end_turn"
        if forced:
            return [("tool_use", {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": forced, "input": {}},
                     JSON_PARTS)], "tool_use"
        if tools and choice.get("type") != "none":
            return [("text", {"type": "text", "text": ""}, ["Let me", " check."]),
                    ("tool_use", {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": tools[0]["name"],
                                  "input": {}}, JSON_PARTS)], "tool_use"
        return [("text", {"type": "text", "text": ""}, TEXT)], "end_turn"

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await self.read(request)
        if not isinstance(body, dict):
            return _error(400, "invalid_request_error", "There was an error parsing the body of your request.")
        fault = await self.take_fault(request, body)
        invalid = self.validate(request, body)
        if invalid is not None:
            return invalid
        words = sum(len(str(m["content"]).split()) for m in body["messages"]) + len(str(body.get("system", "")).split())
        blocks, stop = self.blocks(body, fault)
        stop, blocks = self._apply_limits(body, blocks, stop)
        n_out = sum(len(d) for _, _, d in blocks)
        if not body.get("stream"):
            return web.json_response(self._message(body, blocks, stop, words, n_out))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
                                           "request-id": "req_011CSHoEeqs5C35K2UUqR7Fy"})
        await resp.prepare(request)
        start = {"id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant", "content": [],
                 "model": body["model"], "stop_reason": None, "stop_sequence": None,
                 "usage": {"input_tokens": words, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                           "output_tokens": 1}}
        await resp.write(_event("message_start", {"message": start}))
        await resp.write(_event("ping", {}))
        sent = 0
        for i, (kind, block, deltas) in enumerate(blocks):
            await resp.write(_event("content_block_start", {"index": i, "content_block": block}))
            for d in deltas:
                if fault == "mid_stream" and sent == 3:
                    await resp.write(_event("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}}))
                    return resp
                delta = {"type": "text_delta", "text": d} if kind == "text" else {"type": "input_json_delta", "partial_json": d}
                await resp.write(_event("content_block_delta", {"index": i, "delta": delta}))
                sent += 1
                await asyncio.sleep(0)
            await resp.write(_event("content_block_stop", {"index": i}))
        await resp.write(_event("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None},
                                                  "usage": {"output_tokens": n_out}}))
        await resp.write(_event("message_stop", {}))
        return resp

    @staticmethod
    def _apply_limits(body: dict[str, Any], blocks: list, stop: str) -> tuple[str, list]:
        """max_tokens (one token per delta) and stop_sequences (cut before the match, as Anthropic does)."""
        budget = int(body["max_tokens"])
        out = []
        for kind, block, deltas in blocks:
            whole = "".join(deltas)
            hits = [whole.index(seq) for seq in body.get("stop_sequences") or () if kind == "text" and seq in whole]
            if hits:
                cut = whole[:min(hits)]
                deltas, stop = ([cut] if cut else []), "stop_sequence"
            if len(deltas) > budget:
                deltas, stop = deltas[:budget], "max_tokens"
            budget -= len(deltas)
            out.append((kind, block, deltas))
        return stop, out

    @staticmethod
    def _message(body: dict[str, Any], blocks: list, stop: str, words: int, n_out: int) -> dict[str, Any]:
        content = []
        for kind, block, deltas in blocks:
            if kind == "text":
                content.append({"type": "text", "text": "".join(deltas)})
            else:
                content.append({**block, "input": json.loads("".join(deltas) or "{}")})
        return {"id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant", "content": content,
                "model": body["model"], "stop_reason": stop, "stop_sequence": None,
                "usage": {"input_tokens": words, "output_tokens": n_out}}
