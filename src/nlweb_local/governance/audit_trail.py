"""What one HTTP request's LLM calls did, for its audit row: `RequestTrail`, and the wrapper that fills it.

    AuditRecorder ──RequestSpend.trail = RequestTrail()──► handler ──► gateway chain ──► AuditedProvider ──► ...
    (or AuditMiddleware)                                           │ notes each call's Served (deployment,
                                                                   │ reason, failover), model, privacy, tokens
    AuditRecorder ◄──── queues the trail when the response is done; the writer thread sums it

The trail lives on the request's `RequestSpend` (telemetry.context.SPEND), which the request-id middleware
keeps for every request anyway: no context variable of its own to set and reset.

`AuditedProvider` is the outermost wrapper of the gateway (`compose(router, [..., audited])`), so it
sees every call a request makes — /v1/* directly, /ask's and /mcp's through the pipeline — with the
`Served` the router and the response cache put on the answer. Outside an audited request (the CLI,
background probes) it does nothing but pass calls on.
"""
from __future__ import annotations

import time
from typing import Any, AsyncIterator, Awaitable, Callable

from ..core.types import ChatChunk, ChatRequest, ChatResponse, Privacy, Served
from ..providers.wrapper import CallKind, StreamTally, WrapperProvider, answer_tokens, call_tokens, observed
from ..telemetry.context import SPEND

_MAX_DEPLOYMENTS = 8
_MAX_PENDING = 16  # completions kept as (request, answer) until the row is made; more are summed at once


def route_reason(served: Served | None) -> str:
    """The audit row's route reason of a call: why the router chose its deployment, and whom it replaced."""
    if served is None:
        return ""
    return served.reason + (f"; after failover from {', '.join(served.failover_from)}" if served.failover_from else "")


class RequestTrail:
    """One request's LLM calls, summed: bounded (at most a few deployment names are kept). On the request
    path a completion costs one list append — `(request, answer)`, at most `_MAX_PENDING` of them —
    and the sums, the privacy class and the route reason are worked out when the row is made, on the
    audit log's writer thread (`settled()`); other calls (streams, classify, embed) are summed as they end."""

    deployments: list[str] = []  # (class defaults, replaced per trail when a call is summed: see _sum)
    served: Served | None = None  # the first call's (its route reason)
    model = ""
    strictest: Privacy | None = None  # the strictest privacy class of the calls (None: no call)
    tokens_in = tokens_out = calls = 0

    def __init__(self) -> None:
        self.pending: list[tuple[ChatRequest, ChatResponse]] = []

    def settled(self) -> "RequestTrail":
        """The trail with every pending completion summed (the audit writer calls this before reading it)."""
        pending = self.pending
        if pending:
            self.pending = []
            for request, out in pending:
                tin, tout = call_tokens(out.usage, request, len(out.content))
                self._sum(request, out.served, tin, tout, out.deployment)
        return self

    @property
    def privacy(self) -> str:
        return self.strictest.value if self.strictest is not None else ""

    @property
    def reason(self) -> str:
        return route_reason(self.served)

    def completed(self, request: ChatRequest, out: ChatResponse) -> None:
        """A completion call ended (summed later, in `settled`)."""
        if len(self.pending) >= _MAX_PENDING:
            self.settled()
        self.pending.append((request, out))

    def note(self, request: ChatRequest | None, served: Served | None, tokens_in: int, tokens_out: int,
             deployment: str = "") -> None:
        """A call ended with these tokens (earlier pending completions are summed first: deployments stay
        in order of first use)."""
        if self.pending:
            self.settled()
        self._sum(request, served, tokens_in, tokens_out, deployment)

    def _sum(self, request: ChatRequest | None, served: Served | None, tokens_in: int, tokens_out: int,
             deployment: str) -> None:
        if not self.calls:
            self.deployments = []
        self.calls += 1
        self.tokens_in += tokens_in
        self.tokens_out += tokens_out
        if request is not None:
            if not self.model and request.model:
                self.model = request.model
            privacy = request.context.privacy
            if privacy is Privacy.LOCAL_ONLY or self.strictest is None:
                self.strictest = privacy
        if served is not None:
            if self.served is None:
                self.served = served
            deployment = served.deployment
        deployments = self.deployments
        if deployment and deployment not in deployments and len(deployments) < _MAX_DEPLOYMENTS:
            deployments.append(deployment)


class AuditedProvider(WrapperProvider):
    """Notes every call into the current request's `RequestTrail` (none: passes the call on untouched)."""

    async def complete(self, request: ChatRequest) -> ChatResponse:  # (the common call, without around_call's indirection)
        out = await self.inner.complete(request)
        spend = SPEND.get()
        trail = spend.trail if spend is not None else None
        if trail is not None:
            trail.completed(request, out)  # (summed on the audit writer's thread)
        return out

    async def around_call(self, kind: CallKind, subject: Any, run: Callable[[], Awaitable[Any]]) -> Any:
        out = await run()
        spend = SPEND.get()
        trail = spend.trail if spend is not None else None
        if trail is not None:
            tin, tout = answer_tokens(kind, subject, out)
            trail.note(subject if kind != "embed" else None, getattr(out, "served", None), tin, tout,
                       getattr(out, "deployment", ""))
        return out

    def around_stream(self, request: ChatRequest, chunks: AsyncIterator[ChatChunk]) -> AsyncIterator[ChatChunk]:
        spend = SPEND.get()
        trail = spend.trail if spend is not None else None
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
