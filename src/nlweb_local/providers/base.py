"""The `Provider` protocol every engine adapter and every wrapper implements, and its shared types.

A provider speaks one engine or vendor. Wrappers (router, breaker, cache, metrics) are providers too,
so the gateway is a fold of wrappers over adapters. Capabilities describe what a deployment can do;
`LoadSnapshot` is the one shape every engine's health and metrics are parsed into.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Protocol, Sequence

from ..core.errors import BadRequestError
from ..core.types import ChatChunk, ChatRequest, ChatResponse, EmbeddingResponse, Usage


@dataclass(frozen=True, slots=True)
class Capabilities:
    context_window: int
    json_schema: bool = False
    tools: bool = False
    streaming: bool = True
    embeddings: bool = False
    local: bool = True
    classify: bool = False  # next-token label probabilities (logprobs) in one forward pass
    enforces_deadline: bool = False  # honours ChatRequest.deadline_s itself (the router then adds no timer task)


@dataclass(frozen=True, slots=True)
class LoadSnapshot:
    """How loaded and how well a deployment is, from whatever the engine exposes (metrics, health, slots)."""

    healthy: bool
    detail: str = ""
    waiting: int = 0  # requests queued in the engine
    running: int = 0  # requests being processed
    kv_cache_usage: float | None = None  # 0..1
    loading: bool = False  # up, but still loading a model


Health = LoadSnapshot  # older name


class Provider(Protocol):
    name: str  # the deployment's name
    model: str
    capabilities: Capabilities

    async def complete(self, request: ChatRequest) -> ChatResponse: ...

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]: ...

    async def embed(self, texts: Sequence[str]) -> EmbeddingResponse: ...

    async def health(self) -> LoadSnapshot: ...

    def admit(self) -> None:
        """Raise `OverloadedError` if the provider cannot take another call now."""
        ...

    async def close(self) -> None: ...


async def assemble(chunks: AsyncIterator[ChatChunk], *, deployment: str, model: str) -> ChatResponse:
    """The non-streamed answer is the assembled stream: one code path, so both always agree."""
    parts: list[str] = []
    finish, usage = "stop", None
    calls: dict[int, dict] = {}
    route, served_by = "", deployment
    async for ch in chunks:
        if ch.route and not route:
            route = ch.route
            served_by = ch.route.split(";", 1)[0]
        parts.append(ch.delta)
        if ch.finish_reason:
            finish = ch.finish_reason
        if ch.usage:
            usage = ch.usage
        for tc in ch.tool_calls or ():
            merge_tool_call_delta(calls, tc)
    return ChatResponse("".join(parts), finish, usage or Usage(), model=model, deployment=served_by,
                        tool_calls=[calls[i] for i in sorted(calls)], route=route)


def merge_tool_call_delta(calls: dict[int, dict], delta: dict) -> None:
    """Fold one OpenAI-style streamed tool-call delta into the calls assembled so far."""
    idx = int(delta.get("index", len(calls)))
    cur = calls.setdefault(idx, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
    if delta.get("id"):
        cur["id"] = delta["id"]
    fn = delta.get("function") or {}
    if fn.get("name"):
        cur["function"]["name"] += fn["name"]
    if fn.get("arguments"):
        cur["function"]["arguments"] += fn["arguments"]


class BaseProvider:
    """Defaults for adapters: `complete` is the assembled `stream`; no embeddings; no admission limit."""

    name: str
    model: str
    capabilities: Capabilities

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:  # pragma: no cover - abstract
        raise NotImplementedError

    async def complete(self, request: ChatRequest) -> ChatResponse:
        return await assemble(self.stream(request), deployment=self.name, model=self.model)

    async def embed(self, texts: Sequence[str]) -> EmbeddingResponse:
        raise BadRequestError(f"deployment {self.name!r} does not serve embeddings; configure an embedding deployment",
                              deployment=self.name)

    async def health(self) -> LoadSnapshot:
        return LoadSnapshot(healthy=True, detail=self.model)

    def admit(self) -> None:
        return None

    async def close(self) -> None:
        return None
