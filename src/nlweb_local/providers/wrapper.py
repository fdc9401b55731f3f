"""`WrapperProvider`: the one delegation base of every provider that wraps a provider, and `compose`.

A wrapper (metrics, tracing, and later caches, quotas, fleets) is itself a `Provider` around `inner`.
The base forwards everything — name, model, capabilities, health, admission, close — and offers two
hooks, so a wrapper writes only what it adds:

    around_call(kind, subject, run)    every unary call: kind "complete" | "classify" | "embed";
                                       subject is the ChatRequest (the texts for "embed");
                                       `await run()` makes the inner call and returns its answer
    around_stream(request, chunks)     every stream: gets the inner stream, returns the one to hand on

Nothing else is forwarded: what only some engines can do is an explicit protocol (`Classifier`,
`ModelLifecycle` in `base.py`); `find(provider, ModelLifecycle)` finds it through the wrappers.
The chain is built in one place, the composition root, by `compose(provider, [wrapper, ...])`.
"""
from __future__ import annotations

import functools
import operator
from typing import Any, AsyncIterator, Awaitable, Callable, Literal, Sequence, TypeVar

from ..core.errors import BadRequestError
from ..core.types import ChatChunk, ChatRequest, ChatResponse, EmbeddingResponse, LabelProbs, Usage
from .base import Capabilities, Classifier, LoadSnapshot, Provider

T = TypeVar("T")
P = TypeVar("P")
CallKind = Literal["complete", "classify", "embed"]
Wrapper = Callable[[Provider], Provider]


class WrapperProvider:
    """Delegates every `Provider` call to `inner`; subclasses override `around_call`/`around_stream`."""

    def __init__(self, inner: Provider):
        self.inner: Provider = inner
        self.name: str = inner.name
        self.model: str = inner.model
        self.capabilities: Capabilities = inner.capabilities

    # -- the two hooks ----------------------------------------------------------------------------
    async def around_call(self, kind: CallKind, subject: Any, run: Callable[[], Awaitable[T]]) -> T:
        return await run()

    def around_stream(self, request: ChatRequest, chunks: AsyncIterator[ChatChunk]) -> AsyncIterator[ChatChunk]:
        return chunks

    # -- Provider ----------------------------------------------------------------------------------
    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        return self.around_stream(request, self.inner.stream(request))

    async def complete(self, request: ChatRequest) -> ChatResponse:
        return await self.around_call("complete", request, functools.partial(self.inner.complete, request))

    async def classify(self, request: ChatRequest, labels: Sequence[str]) -> LabelProbs:
        inner = self.inner
        if not isinstance(inner, Classifier):
            raise BadRequestError(f"deployment {self.name!r} cannot classify (no next-token probabilities)",
                                  deployment=self.name)
        return await self.around_call("classify", request, functools.partial(inner.classify, request, labels))

    async def embed(self, texts: Sequence[str]) -> EmbeddingResponse:
        return await self.around_call("embed", texts, functools.partial(self.inner.embed, texts))

    async def health(self) -> LoadSnapshot:
        return await self.inner.health()

    def admit(self, request: ChatRequest | None = None) -> None:
        self.inner.admit(request)

    async def close(self) -> None:
        await self.inner.close()


def compose(provider: Provider, wrappers: Sequence[Wrapper]) -> Provider:
    """The fold: `wrappers[0]` wraps `provider`, the next wraps that, and so on (innermost first)."""
    return functools.reduce(lambda inner, wrap: wrap(inner), wrappers, provider)


def find(provider: Any, protocol: type[P]) -> P | None:
    """The outermost provider in a wrapper chain that implements `protocol` (e.g. `ModelLifecycle`)."""
    while provider is not None:
        if isinstance(provider, protocol):
            return provider
        provider = getattr(provider, "inner", None) if isinstance(provider, WrapperProvider) else None
    return None


# -- what wrappers measure on the way through --------------------------------------------------------
class StreamTally:
    """What a wrapper sees of a stream it passes on: time to the first chunk, the usage the engine
    reported, the characters sent (for an estimate when it reported none)."""

    __slots__ = ("_clock", "_t0", "ttft", "usage", "out_chars")

    def __init__(self, clock: Callable[[], float], t0: float | None = None):
        self._clock = clock
        self._t0 = clock() if t0 is None else t0
        self.ttft: float | None = None
        self.usage: Usage | None = None
        self.out_chars = 0

    def see(self, ch: ChatChunk) -> None:
        if self.ttft is None:
            self.ttft = self._clock() - self._t0
        if ch.usage is not None:
            self.usage = ch.usage
        self.out_chars += len(ch.delta)

    def tokens(self, request: ChatRequest) -> tuple[int, int]:
        return call_tokens(self.usage, request, self.out_chars)


async def observed(chunks: AsyncIterator[ChatChunk], clock: Callable[[], float], begin: Callable[[], T],
                   end: Callable[[T, StreamTally, BaseException | None], None]) -> AsyncIterator[ChatChunk]:
    """Hand `chunks` on while tallying them: `begin()` when the stream starts (its result goes to `end`),
    `end(started, tally, error)` however it ends — finished, failed, or abandoned by the consumer (then
    `error` is the GeneratorExit/CancelledError and the inner stream is closed at once)."""
    started = begin()
    seen = StreamTally(clock)
    error: BaseException | None = None
    try:
        async for ch in chunks:
            seen.see(ch)
            yield ch
    except BaseException as e:
        error = e
        raise
    finally:
        await close_after_error(chunks, error)
        end(started, seen, error)


async def close_after_error(chunks: Any, error: BaseException | None) -> None:
    """A wrapped stream that failed or was abandoned is closed at once (not left to the garbage collector)."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None and error is not None:
        await aclose()


_CONTENT = operator.attrgetter("content")


def prompt_chars(request: ChatRequest) -> int:
    """The characters of a request's messages (the loop in C: ~3x faster than a generator for one message)."""
    return sum(map(len, map(_CONTENT, request.messages)))


def call_tokens(usage: Usage | None, request: ChatRequest, out_chars: int) -> tuple[int, int]:
    """Reported usage, else an estimate (4 characters a token) so that a call is never free by omission."""
    if usage is not None and (usage.prompt_tokens or usage.completion_tokens):
        return usage.prompt_tokens, usage.completion_tokens
    return prompt_chars(request) // 4 + 1, (out_chars + 3) // 4


def answer_tokens(kind: CallKind, subject: Any, out: Any) -> tuple[int, int]:
    """Tokens in and out of a unary call's answer (reported, else estimated)."""
    if kind == "complete":
        return call_tokens(out.usage, subject, len(out.content))
    if kind == "classify":
        usage = getattr(out, "usage", None)
        return (usage.prompt_tokens if usage is not None and usage.prompt_tokens else prompt_chars(subject) // 4 + 1), 1
    return out.prompt_tokens or sum(len(t) for t in subject) // 4, 0
