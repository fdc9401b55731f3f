"""The `Provider` protocol every engine adapter and every wrapper implements, and its shared types.

A provider speaks one engine or vendor. Cross-cutting behaviour (metrics, tracing, and later caches and
quotas) are wrappers that are providers too (`wrapper.WrapperProvider`), and the router is a provider
over providers, so the gateway is a fold of wrappers over adapters (`wrapper.compose`). Capabilities
describe what a deployment can do; `LoadSnapshot` is the one shape every engine's health and metrics
are parsed into. What only some engines can do is an explicit protocol: `Classifier` (next-token label
probabilities, announced by `Capabilities.classify`) and `ModelLifecycle` (load/unload/sleep/wake).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Protocol, Sequence, runtime_checkable

from ..core.errors import BadRequestError
from ..core.types import ChatChunk, ChatRequest, ChatResponse, EmbeddingResponse, LabelProbs, Served, Usage


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
    chat: bool = True  # answers chat/completion calls (False: an embedding-only model)


@dataclass(frozen=True, slots=True)
class PromptCacheCounters:
    """An engine's own prompt (prefix/KV) cache, cumulative since the engine started: prompt tokens it
    looked up and prompt tokens it found there (so it did not compute them again)."""

    queried_tokens: int
    hit_tokens: int

    @property
    def hit_ratio(self) -> float | None:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens > 0 else None


@dataclass(frozen=True, slots=True)
class LoadSnapshot:
    """How loaded and how well a deployment is, from whatever the engine exposes (metrics, health, slots)."""

    healthy: bool
    detail: str = ""
    waiting: int = 0  # requests queued in the engine
    running: int = 0  # requests being processed
    kv_cache_usage: float | None = None  # 0..1
    loading: bool = False  # up, but still loading a model
    prompt_cache: PromptCacheCounters | None = None  # where the engine reports its prefix-cache hits
    models: tuple[str, ...] | None = None  # the models the engine has loaded now (None: it does not say)



class Provider(Protocol):
    name: str  # the deployment's name
    model: str
    capabilities: Capabilities

    async def complete(self, request: ChatRequest) -> ChatResponse: ...

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]: ...

    async def embed(self, texts: Sequence[str]) -> EmbeddingResponse: ...

    async def health(self) -> LoadSnapshot: ...

    def admit(self, request: ChatRequest | None = None) -> None:
        """Raise `OverloadedError` if the provider cannot take another call now — or, given `request`,
        cannot start it before its deadline (`request.deadline_s`)."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class Classifier(Protocol):
    """Next-token label probabilities in one forward pass (`Capabilities.classify` says the engine can)."""

    async def classify(self, request: ChatRequest, labels: Sequence[str]) -> LabelProbs: ...


@runtime_checkable
class ModelLifecycle(Protocol):
    """Loading and unloading models, and freeing the accelerator without forgetting the model (sleep).
    An engine that cannot do one of them raises `BadRequestError` saying so."""

    async def load(self, model: str | None = None) -> None: ...

    async def unload(self, model: str | None = None) -> None: ...

    async def sleep(self, level: int = 1) -> None: ...

    async def wake(self) -> None: ...

    async def is_sleeping(self) -> bool: ...


async def assemble(chunks: AsyncIterator[ChatChunk], *, deployment: str, model: str) -> ChatResponse:
    """The non-streamed answer is the assembled stream: one code path, so both always agree."""
    parts: list[str] = []
    finish, usage = "stop", None
    calls: dict[int, dict] = {}
    served: Served | None = None
    async for ch in chunks:
        if ch.served is not None and served is None:
            served = ch.served
        parts.append(ch.delta)
        if ch.finish_reason:
            finish = ch.finish_reason
        if ch.usage:
            usage = ch.usage
        for tc in ch.tool_calls or ():
            merge_tool_call_delta(calls, tc)
    return ChatResponse("".join(parts), finish, usage or Usage(), model=model,
                        deployment=served.deployment if served is not None else deployment,
                        tool_calls=[calls[i] for i in sorted(calls)], served=served)


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

    def admit(self, request: ChatRequest | None = None) -> None:
        return None

    async def close(self) -> None:
        return None
