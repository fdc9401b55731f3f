"""The `Provider` protocol every engine adapter and every wrapper implements."""
from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Protocol

from ..core.types import ChatChunk, ChatRequest, ChatResponse


@dataclass(frozen=True, slots=True)
class Capabilities:
    context_window: int
    json_schema: bool = False
    tools: bool = False
    streaming: bool = True
    embeddings: bool = False
    local: bool = True
    classify: bool = False  # next-token label probabilities (logprobs) in one forward pass


@dataclass(frozen=True, slots=True)
class Health:
    healthy: bool
    detail: str = ""
    queued: int = 0
    running: int = 0


class Provider(Protocol):
    name: str
    capabilities: Capabilities

    async def complete(self, request: ChatRequest) -> ChatResponse: ...

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]: ...

    async def health(self) -> Health: ...

    def admit(self) -> None:
        """Raise `OverloadedError` if the provider cannot take another call now."""
        ...

    async def close(self) -> None: ...


async def assemble(chunks: AsyncIterator[ChatChunk], *, deployment: str, model: str) -> ChatResponse:
    """The non-streamed answer is the assembled stream: one code path, so both always agree."""
    parts: list[str] = []
    finish, usage = "stop", None
    async for ch in chunks:
        parts.append(ch.delta)
        if ch.finish_reason:
            finish = ch.finish_reason
        if ch.usage:
            usage = ch.usage
    from ..core.types import Usage

    return ChatResponse("".join(parts), finish, usage or Usage(), model=model, deployment=deployment)
