"""`RedactingProvider`: personal data replaced by placeholders before a call leaves for a cloud deployment,
and put back where the answer echoes it (`privacy.redact: true`).

The composition root wraps each cloud deployment's adapter with it, innermost (so the ledger, tracing
and the breaker see the call as sent), and never a local one. Every message's text is redacted (the
same value gets the same placeholder across the call's messages), and so are texts to embed; a
non-streamed answer is restored whole, a streamed one chunk by chunk (a placeholder split across
chunks is held back until it is whole: `StreamRestorer`). Tool-call arguments are restored too.
`on_redact(kind, n)` counts what was replaced (nlweb_redactions_total{kind}).
"""
from __future__ import annotations

import dataclasses
from typing import Any, AsyncIterator, Callable, Sequence

from ..core.types import ChatChunk, ChatRequest, ChatResponse, LabelProbs
from ..providers.base import Provider
from ..providers.wrapper import WrapperProvider
from .redaction import Detector, Redaction, StreamRestorer

Count = Callable[[str, int], None]


class RedactingProvider(WrapperProvider):
    def __init__(self, inner: Provider, detector: Detector, *, on_redact: Count | None = None):
        super().__init__(inner)
        self._detector = detector
        self._count = on_redact

    def _redacted(self, request: ChatRequest) -> tuple[ChatRequest, Redaction]:
        r = Redaction(self._detector)
        messages = [m if not m.content else dataclasses.replace(m, content=r.redact(m.content)) for m in request.messages]
        if not r.originals:
            return request, r
        self._tally(r)
        out = request.with_deadline(request.deadline_s)  # (a shallow copy: the caller's request is left as it was)
        out.messages = messages
        return out, r

    def _tally(self, r: Redaction) -> None:
        if self._count is not None:
            for kind, n in r.counts().items():
                self._count(kind.lower(), n)

    async def complete(self, request: ChatRequest) -> ChatResponse:
        req, r = self._redacted(request)
        out = await self.inner.complete(req)
        if r.originals:
            out.content = r.restore(out.content)
            out.tool_calls = [_restore_call(c, r) for c in out.tool_calls]
        return out

    async def classify(self, request: ChatRequest, labels: Sequence[str]) -> LabelProbs:
        req, _ = self._redacted(request)
        return await super().classify(req, labels)

    async def embed(self, texts: Sequence[str]) -> Any:
        r = Redaction(self._detector)
        redacted = r.redact_all(texts)
        self._tally(r)
        return await self.inner.embed(redacted)

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        req, r = self._redacted(request)
        chunks = self.inner.stream(req)
        return _restored(chunks, r) if r.originals else chunks


async def _restored(chunks: AsyncIterator[ChatChunk], r: Redaction) -> AsyncIterator[ChatChunk]:
    restorer = StreamRestorer(r)
    try:
        async for ch in chunks:
            ch.delta = restorer.feed(ch.delta)
            if ch.finish_reason is not None:
                ch.delta += restorer.flush()
            if ch.tool_calls:
                ch.tool_calls = [_restore_call(c, r) for c in ch.tool_calls]
            yield ch
        rest = restorer.flush()
        if rest:
            yield ChatChunk(rest)
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def _restore_call(call: dict[str, Any], r: Redaction) -> dict[str, Any]:
    fn = call.get("function")
    if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
        return {**call, "function": {**fn, "arguments": r.restore(fn["arguments"])}}
    return call


def redaction_counter(metrics: Any) -> Count:
    """`on_redact` counting into nlweb_redactions_total{kind} on `metrics` (a telemetry `GatewayMetrics`)."""
    counter = getattr(metrics, "redactions", None)
    if counter is None:
        from prometheus_client import Counter

        counter = metrics.redactions = Counter("nlweb_redactions", "values replaced by placeholders before a call "
                                               "to a cloud deployment (privacy.redact), by kind", ["kind"],
                                               registry=metrics.registry)
    return lambda kind, n: counter.labels(kind).inc(n)


def redacting(detector: Detector, on_redact: Count | None = None) -> Callable[[Provider], Provider]:
    """The wrapper for a cloud deployment's chain."""
    return lambda inner: RedactingProvider(inner, detector, on_redact=on_redact)
