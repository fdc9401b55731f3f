"""What one HTTP request's LLM calls did, for its audit row: `RequestTrail`, and the wrapper that fills it.

    AuditMiddleware ──TRAIL.set(RequestTrail())──► handler ──► gateway chain ──► AuditedProvider ──► ...
                                                                 │ notes each call's Served (deployment,
                                                                 │ reason, failover), model, privacy, tokens
    AuditMiddleware ◄──── reads the trail when the response is done

`AuditedProvider` is the outermost wrapper of the gateway (`compose(router, [..., audited])`), so it
sees every call a request makes — /v1/* directly, /ask's and /mcp's through the pipeline — with the
`Served` the router and the response cache put on the answer. Outside an audited request (the CLI,
background probes) it does nothing but pass calls on.
"""
from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any, AsyncIterator, Awaitable, Callable

from ..core.types import ChatChunk, ChatRequest, Privacy, Served
from ..providers.wrapper import CallKind, StreamTally, WrapperProvider, answer_tokens, observed

_MAX_DEPLOYMENTS = 8


class RequestTrail:
    """One request's LLM calls, summed: bounded (at most a few deployment names are kept)."""

    __slots__ = ("deployments", "reason", "model", "privacy", "tokens_in", "tokens_out", "calls")

    def __init__(self) -> None:
        self.deployments: list[str] = []
        self.reason = self.model = self.privacy = ""
        self.tokens_in = self.tokens_out = self.calls = 0

    def note(self, request: ChatRequest | None, served: Served | None, tokens_in: int, tokens_out: int,
             deployment: str = "") -> None:
        self.calls += 1
        self.tokens_in += tokens_in
        self.tokens_out += tokens_out
        if request is not None:
            if not self.model and request.model:
                self.model = request.model
            privacy = request.context.privacy
            if privacy is Privacy.LOCAL_ONLY or not self.privacy:
                self.privacy = privacy.value
        name = served.deployment if served is not None else deployment
        if served is not None and not self.reason:
            self.reason = served.reason + (f"; after failover from {', '.join(served.failover_from)}"
                                           if served.failover_from else "")
        if name and name not in self.deployments and len(self.deployments) < _MAX_DEPLOYMENTS:
            self.deployments.append(name)


TRAIL: ContextVar[RequestTrail | None] = ContextVar("nlweb_audit_trail", default=None)


class AuditedProvider(WrapperProvider):
    """Notes every call into the current request's `RequestTrail` (none: passes the call on untouched)."""

    async def around_call(self, kind: CallKind, subject: Any, run: Callable[[], Awaitable[Any]]) -> Any:
        out = await run()
        trail = TRAIL.get()
        if trail is not None:
            tin, tout = answer_tokens(kind, subject, out)
            trail.note(subject if kind != "embed" else None, getattr(out, "served", None), tin, tout,
                       getattr(out, "deployment", ""))
        return out

    def around_stream(self, request: ChatRequest, chunks: AsyncIterator[ChatChunk]) -> AsyncIterator[ChatChunk]:
        trail = TRAIL.get()
        if trail is None:
            return chunks
        first: list[Served] = []

        def end(_: None, seen: StreamTally, error: BaseException | None) -> None:
            tin, tout = seen.tokens(request) if error is None else (0, 0)
            trail.note(request, first[0] if first else None, tin, tout)

        async def watch() -> AsyncIterator[ChatChunk]:
            async for ch in chunks:
                if ch.served is not None and not first:
                    first.append(ch.served)
                yield ch

        return observed(watch(), time.perf_counter, lambda: None, end)
