"""Anthropic Messages API (cloud): `POST /v1/messages`, streamed as SSE.

- Auth: `x-api-key` and `anthropic-version: 2023-06-01`; a missing key fails at call time with a
  BadRequestError naming the environment variable to set (and `health()` reports it), so a gateway
  with an unconfigured cloud fallback still starts.
- System messages go to the top-level `system`; consecutive turns of one role are merged. `tool`
  messages become user text: `Message` carries no tool-call id to build a `tool_result` block from.
- JSON schema: Anthropic has no response_format, so the schema becomes a forced tool `answer`
  (`tool_choice: {"type": "tool", "name": "answer"}`; `{"type": "any"}` when other tools are offered
  too) and that tool's streamed input is the content. A non-object schema is wrapped as `{"value": ...}`
  and unwrapped when the block ends.
- Other tool_use blocks stream as OpenAI-style tool-call deltas; stop reasons map end_turn/stop_sequence
  → stop, max_tokens → length, tool_use → tool_calls, refusal → content_filter.
- Errors: 429 → RateLimitedError (retry-after), 529 → OverloadedError, 404 `model: x` → ModelNotFoundError
  (all through `http.error_for_status`); an `error` event mid-stream maps by its `error.type`.
"""
from __future__ import annotations

import json
import time
from typing import Any, AsyncIterator, Iterator, Mapping

from ..core.errors import (AuthError, BadRequestError, ContextLengthError, NlwebError, OverloadedError,
                           ProviderConnectionError, ProviderError, RateLimitedError)
from ..core.types import ChatChunk, ChatRequest, Usage
from .base import BaseProvider, Capabilities, LoadSnapshot
from .http import HttpTransport, iter_sse

DEFAULT_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
ANSWER_TOOL = "answer"
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
          "pause_turn": "stop", "refusal": "content_filter"}


def _messages(req: ChatRequest) -> tuple[str, list[dict[str, Any]]]:
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for m in req.messages:
        if m.role == "system":
            system.append(m.content)
            continue
        role, text = ("user", f"Tool result:\n{m.content}") if m.role == "tool" else (m.role, m.content)
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + text
        else:
            turns.append({"role": role, "content": text})
    return "\n\n".join(system), turns


def _tool(t: Mapping[str, Any]) -> dict[str, Any]:
    fn = t.get("function", t)  # OpenAI {"type": "function", "function": {...}} or already flat
    return {"name": fn["name"], "description": fn.get("description", ""),
            "input_schema": fn.get("parameters") or {"type": "object", "properties": {}}}


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice in (None, "auto"):
        return None if choice is None else {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and (choice.get("function") or {}).get("name"):
        return {"type": "tool", "name": choice["function"]["name"]}
    return choice if isinstance(choice, dict) else None


def _answer_schema(schema: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Tool input must be an object: wrap anything else as {"value": schema}."""
    if schema.get("type") == "object":
        return schema, False
    return {"type": "object", "properties": {"value": schema}, "required": ["value"]}, True


def _event_error(err: Mapping[str, Any], deployment: str) -> NlwebError:
    kind, msg = str(err.get("type") or "error"), str(err.get("message") or err)
    where, body = f"{deployment}: Anthropic {kind} in the stream: {msg}", json.dumps(err)
    if kind == "overloaded_error":
        return OverloadedError(f"{where} (retry shortly)", retry_after=1.0, deployment=deployment, body=body)
    if kind == "rate_limit_error":
        return RateLimitedError(where, deployment=deployment, body=body)
    if kind == "invalid_request_error":
        cls = ContextLengthError if "too long" in msg else BadRequestError
        return cls(where, deployment=deployment, body=body)
    if kind in ("authentication_error", "permission_error"):
        return AuthError(where, deployment=deployment, body=body)
    return ProviderError(where, deployment=deployment, body=body)


class AnthropicProvider(BaseProvider):
    def __init__(self, model: str, *, api_key: str | None, name: str = "anthropic", url: str = DEFAULT_URL,
                 context_window: int = 200_000, timeout_s: float = 120.0, api_key_env: str = "ANTHROPIC_API_KEY",
                 version: str = API_VERSION, beta: str | None = None):
        if not model:
            raise BadRequestError(f"deployment {name!r}: set `model` to an Anthropic model name (e.g. claude-sonnet-4-5)")
        self.name, self.model = name, model
        self.capabilities = Capabilities(context_window=context_window, json_schema=True, tools=True, local=False,
                                         enforces_deadline=True)
        self._has_key, self._key_env = bool(api_key), api_key_env
        headers = {"anthropic-version": version, **({"x-api-key": api_key} if api_key else {}),
                   **({"anthropic-beta": beta} if beta else {})}
        self._http = HttpTransport(url, deployment=name, headers=headers, timeout_s=timeout_s)

    def _missing_key(self) -> str:
        return f"deployment {self.name!r} has no Anthropic API key: set {self._key_env} (its api_key_env) or api_key"

    def body(self, req: ChatRequest) -> tuple[dict[str, Any], bool]:
        """The Messages API body, and whether the JSON answer is wrapped as {"value": ...}."""
        system, turns = _messages(req)
        body: dict[str, Any] = {"model": self.model, "max_tokens": req.max_tokens, "messages": turns, "stream": True,
                                "temperature": min(max(req.temperature, 0.0), 1.0)}  # Anthropic's range is 0..1
        if system:
            body["system"] = system
        if req.stop:
            body["stop_sequences"] = list(req.stop)
        if req.top_p is not None:
            body["top_p"] = req.top_p
        tools = [_tool(t) for t in req.tools or ()]
        choice = _tool_choice(req.tool_choice)
        wrapped = False
        if req.json_schema is not None:
            schema, wrapped = _answer_schema(req.json_schema)
            tools.append({"name": ANSWER_TOOL, "description": "Give the answer in the required JSON shape.",
                          "input_schema": schema})
            choice = {"type": "any"} if len(tools) > 1 else {"type": "tool", "name": ANSWER_TOOL}
        if tools:
            body["tools"] = tools
        if choice is not None:
            body["tool_choice"] = choice
        body.update(req.extra)
        return body, wrapped

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        if not self._has_key:
            raise BadRequestError(self._missing_key(), deployment=self.name)
        body, wrapped = self.body(request)
        state = MessageStream(self.name, json_mode=request.json_schema is not None, wrapped=wrapped)
        async with self._http.request("POST", "/v1/messages", json_body=body, deadline_s=request.deadline_s) as resp:
            async for _event, data in iter_sse(resp):
                try:
                    ev = json.loads(data)
                except json.JSONDecodeError:
                    raise ProviderError(f"{self.name}: malformed stream event {data[:120]!r}", deployment=self.name) from None
                for chunk in state.feed(ev):
                    yield chunk
                if state.done:
                    return
        raise ProviderConnectionError(f"{self.name}: Anthropic's stream ended before message_stop", deployment=self.name)

    async def health(self) -> LoadSnapshot:
        if not self._has_key:
            return LoadSnapshot(healthy=False, detail=self._missing_key())
        return LoadSnapshot(healthy=True, detail=f"{self.model} (cloud; not probed)")

    async def close(self) -> None:
        await self._http.close()


class MessageStream:
    """Anthropic stream events in, chunks out: text deltas as content, the `answer` tool's input as
    content (JSON mode), other tool_use blocks as OpenAI-style tool-call deltas; usage and finish last."""

    def __init__(self, deployment: str, *, json_mode: bool = False, wrapped: bool = False):
        self.deployment, self.json_mode, self.wrapped = deployment, json_mode, wrapped
        self.blocks: dict[int, dict[str, Any]] = {}  # content block index → {"kind", "call", "buf"}
        self.calls = 0
        self.usage = Usage()
        self.stop_reason: str | None = None
        self.done = False
        self._start = time.perf_counter()

    def feed(self, ev: Mapping[str, Any]) -> Iterator[ChatChunk]:
        kind = ev.get("type")
        if kind == "message_start":
            u = (ev.get("message") or {}).get("usage") or {}
            self.usage.prompt_tokens = sum(int(u.get(k) or 0) for k in
                                           ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
            self.usage.completion_tokens = int(u.get("output_tokens") or 0)
        elif kind == "content_block_start":
            yield from self._block_start(int(ev.get("index", len(self.blocks))), ev.get("content_block") or {})
        elif kind == "content_block_delta":
            yield from self._delta(self.blocks.get(int(ev.get("index", 0)), {"kind": "text"}), ev.get("delta") or {})
        elif kind == "content_block_stop":
            block = self.blocks.get(int(ev.get("index", 0)), {})
            if block.get("kind") == "answer" and self.wrapped:
                yield ChatChunk(_unwrap(block["buf"]))
        elif kind == "message_delta":
            self.stop_reason = (ev.get("delta") or {}).get("stop_reason") or self.stop_reason
            u = ev.get("usage") or {}
            if u.get("output_tokens") is not None:
                self.usage.completion_tokens = int(u["output_tokens"])
        elif kind == "message_stop":
            self.usage.total_s = time.perf_counter() - self._start
            finish = FINISH.get(self.stop_reason or "", "stop")
            if finish == "tool_calls" and not self.calls:  # only the `answer` tool was used: a plain answer
                finish = "stop"
            self.done = True
            yield ChatChunk("", finish, self.usage)
        elif kind == "error":
            raise _event_error(ev.get("error") or {}, self.deployment)
        # "ping" and unknown event types are ignored, as Anthropic asks of clients

    def _block_start(self, idx: int, cb: Mapping[str, Any]) -> Iterator[ChatChunk]:
        if cb.get("type") == "tool_use" and self.json_mode and cb.get("name") == ANSWER_TOOL:
            self.blocks[idx] = {"kind": "answer", "buf": ""}
        elif cb.get("type") == "tool_use":
            self.blocks[idx] = {"kind": "tool", "call": self.calls}
            yield ChatChunk("", tool_calls=[{"index": self.calls, "id": cb.get("id", ""), "type": "function",
                                             "function": {"name": cb.get("name", ""), "arguments": ""}}])
            self.calls += 1
        else:  # text; thinking blocks are kept out of the answer
            self.blocks[idx] = {"kind": cb.get("type", "text")}
            if cb.get("type") == "text" and cb.get("text"):
                yield ChatChunk(cb["text"])

    def _delta(self, block: dict[str, Any], delta: Mapping[str, Any]) -> Iterator[ChatChunk]:
        if self.usage.time_to_first_token_s is None:
            self.usage.time_to_first_token_s = time.perf_counter() - self._start
        if delta.get("type") == "text_delta" and delta.get("text") and block["kind"] == "text":
            yield ChatChunk(delta["text"])
        elif delta.get("type") == "input_json_delta" and delta.get("partial_json"):
            part = delta["partial_json"]
            if block["kind"] == "answer" and self.wrapped:
                block["buf"] += part
            elif block["kind"] == "answer":
                yield ChatChunk(part)
            elif block["kind"] == "tool":
                yield ChatChunk("", tool_calls=[{"index": block["call"], "function": {"arguments": part}}])


def _unwrap(buf: str) -> str:
    try:
        obj = json.loads(buf)
    except json.JSONDecodeError:
        return buf  # let the caller's JSON coercion report it
    return json.dumps(obj["value"]) if isinstance(obj, dict) and "value" in obj else buf


def from_settings(d, environ) -> AnthropicProvider:
    """An `anthropic` deployment: `model`, `url` (default https://api.anthropic.com), `api_key_env`
    (default ANTHROPIC_API_KEY); options: anthropic_version, anthropic_beta."""
    key_env = d.api_key_env or "ANTHROPIC_API_KEY"
    key = d.api_key or environ.get(key_env)
    o = d.options
    return AnthropicProvider(d.model, api_key=key, name=d.name, url=d.url or DEFAULT_URL,
                             context_window=d.context_window or 200_000, timeout_s=d.timeout_s, api_key_env=key_env,
                             version=o.get("anthropic_version", API_VERSION), beta=o.get("anthropic_beta"))
