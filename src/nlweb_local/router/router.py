"""The `Router`: a provider that picks a deployment per call and falls over along the chain.

Each call: features of the request → the strategy's ordered candidates → try them in order within the
request's deadline. A failure before the first token moves to the next candidate (and counts in that
deployment's breaker); a failure after tokens were sent ends the stream with `StreamInterruptedError`
— never a silent truncation. When nothing can serve, `NoDeploymentError` (503) says why, per deployment,
with the earliest Retry-After.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterator, Sequence

from ..core.errors import (ContextLengthError, NlwebError, NoDeploymentError, ProviderError, ProviderTimeoutError,
                           StreamInterruptedError)
from ..core.types import ChatChunk, ChatRequest, ChatResponse, EmbeddingResponse, LabelProbs, TaskKind
from ..providers.base import BaseProvider, Capabilities, LoadSnapshot, Provider
from .breaker import CircuitBreaker
from .model import DeploymentInfo, DeploymentView, Privacy, RequestFeatures, RouteDecision
from .strategies import STRATEGIES, Strategy

log = logging.getLogger(__name__)


@dataclass
class Route:
    """One deployment the router may send calls to, with its live state."""

    info: DeploymentInfo
    provider: Provider
    breaker: CircuitBreaker
    in_flight: int = 0
    ewma_ttft_s: float | None = None
    snapshot: LoadSnapshot = field(default_factory=lambda: LoadSnapshot(healthy=True))

    def view(self) -> DeploymentView:
        return DeploymentView(self.info, healthy=self.snapshot.healthy, admits=self.breaker.available(),
                              breaker=self.breaker.state.value, in_flight=self.in_flight, waiting=self.snapshot.waiting,
                              ewma_ttft_s=self.ewma_ttft_s)

    def observe_ttft(self, seconds: float) -> None:
        self.ewma_ttft_s = seconds if self.ewma_ttft_s is None else 0.8 * self.ewma_ttft_s + 0.2 * seconds


@dataclass(frozen=True, slots=True)
class RouteContext:
    """Per-request routing inputs from the caller (HTTP headers, the /ask pipeline)."""

    strategy: str | None = None
    privacy: Privacy = Privacy.ANY
    priority: int = 0
    conversation: str = ""
    deployments: tuple[str, ...] = ()  # restrict to these (a model name that names a deployment)


def estimate_tokens(req: ChatRequest) -> int:
    return sum(len(m.content) for m in req.messages) // 4 + 4 * len(req.messages)


def difficulty(req: ChatRequest) -> float:
    """A cheap prior for the quality strategy: longer, multi-part, reasoning-flavoured prompts are harder."""
    text = req.messages[-1].content.lower() if req.messages else ""
    score = min(1.0, len(text) / 4000)
    score += 0.2 * sum(w in text for w in ("why", "explain", "compare", "prove", "step by step", "code", "analy"))
    score += 0.2 if req.task in (TaskKind.GENERATE, TaskKind.CHAT) else 0.0
    return min(1.0, score)


def _route_text(name: str, d: RouteDecision, failures: dict[str, str]) -> str:
    """What `x-nlweb-route` says: who served, why, and whom it replaced."""
    return f"{name}; {d.reason}" + (f"; after failover from {', '.join(failures)}" if failures else "")


async def _within(chunks: AsyncIterator[ChatChunk], seconds: float, name: str) -> AsyncIterator[ChatChunk]:
    """Guard a deployment's stream with the request's deadline even if the engine ignores it."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    it = chunks.__aiter__()
    try:
        while True:
            try:
                ch = await asyncio.wait_for(it.__anext__(), max(0.0, end - loop.time()))
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                raise ProviderTimeoutError(f"{name}: no answer within the request's deadline ({seconds:.1f}s)",
                                           deployment=name) from None
            yield ch
    finally:
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()


class Router(BaseProvider):
    name = "router"

    def __init__(self, routes: Sequence[Route], *, strategy: str = "local-first",
                 strategies: dict[str, Strategy] | None = None, rounds: int = 2, backoff_s: float = 0.05,
                 default_deadline_s: float = 120.0, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic, groups: dict[str, Sequence[str]] | None = None):
        """`groups` maps a model alias or a task kind (rank, summarize, chat, ...) to the deployments
        allowed to serve it; requests of a task without a group may go to any deployment."""
        if not routes:
            raise ValueError("a router needs at least one deployment")
        self._routes = {r.info.name: r for r in routes}
        self.groups = {k: tuple(v) for k, v in (groups or {}).items()}
        for key, members in self.groups.items():
            unknown = [m for m in members if m not in self._routes]
            if unknown:
                raise ValueError(f"group {key!r} names unknown deployments {unknown} (known: {', '.join(self._routes)})")
        self._strategies = strategies or STRATEGIES
        if strategy not in self._strategies:
            raise ValueError(f"unknown strategy {strategy!r} (one of {', '.join(self._strategies)})")
        self.default_strategy = strategy
        self._rounds = rounds
        self._backoff_s = backoff_s
        self._deadline_s = default_deadline_s
        self._rng = rng or random.Random()
        self._clock = clock
        self.model = "router"
        rs = list(routes)
        self.capabilities = Capabilities(
            context_window=max(r.provider.capabilities.context_window for r in rs),
            json_schema=any(r.provider.capabilities.json_schema for r in rs),
            tools=any(r.provider.capabilities.tools for r in rs),
            embeddings=any(r.provider.capabilities.embeddings for r in rs),
            local=all(r.provider.capabilities.local for r in rs),
            classify=any(r.provider.capabilities.classify for r in rs))

    # -- inspection -----------------------------------------------------------------------------
    @property
    def routes(self) -> dict[str, Route]:
        return self._routes

    def views(self) -> list[DeploymentView]:
        return [r.view() for r in self._routes.values()]

    def decide(self, req: ChatRequest, ctx: RouteContext = RouteContext(), *,
               only: Callable[[Route], bool] | None = None) -> RouteDecision:
        name = ctx.strategy or self.default_strategy
        strategy = self._strategies.get(name)
        if strategy is None:
            from ..core.errors import BadRequestError

            raise BadRequestError(f"unknown routing strategy {name!r} (x-nlweb-strategy: one of {', '.join(self._strategies)})")
        f = RequestFeatures(task=req.task, prompt_tokens=estimate_tokens(req), max_tokens=req.max_tokens,
                            needs_json=req.json_schema is not None, needs_tools=bool(req.tools), privacy=ctx.privacy,
                            difficulty=(req.difficulty if req.difficulty is not None else difficulty(req)) if name == "quality" else 0.0,  # only the quality strategy reads it
                            conversation=ctx.conversation, priority=ctx.priority)
        allowed = ctx.deployments or self.groups.get(req.task.value, ())
        if allowed and not any(a in self._routes for a in allowed):
            from ..core.errors import ModelNotFoundError

            raise ModelNotFoundError(f"no deployment named {', '.join(allowed)} (GET /v1/models lists them)")
        views = [r.view() for r in self._routes.values()
                 if (only is None or only(r)) and (not allowed or r.info.name in allowed)]
        return strategy(f, views, self._rng)

    def _nothing(self, d: RouteDecision, failures: dict[str, str]) -> NoDeploymentError:
        reasons = {**d.rejected, **failures}
        waits = [r.breaker.retry_after() for r in self._routes.values() if r.breaker.retry_after() > 0]
        return NoDeploymentError("no deployment can serve this request now", reasons=reasons,
                                 retry_after=max(1.0, min(waits)) if waits else 1.0, deployment="router")

    # -- calls ----------------------------------------------------------------------------------
    def _attempts(self, req: ChatRequest, d: RouteDecision) -> Iterator[tuple[Route, ChatRequest] | float]:
        """Candidates in order, round after round, each with the time left; stops at the deadline.
        Between rounds it yields a float: the backoff the caller sleeps before asking for the next one.
        (A plain generator: no async-generator machinery per call on the hot path.)"""
        deadline = self._clock() + (req.deadline_s or self._deadline_s)
        for rnd in range(self._rounds):
            if rnd:
                yield min(self._backoff_s * (2 ** rnd) * (0.5 + self._rng.random()), max(0.0, deadline - self._clock()))
            for name in d.ordered:
                left = deadline - self._clock()
                if left <= 0:
                    raise ProviderTimeoutError(f"request deadline passed while trying {', '.join(d.ordered)}",
                                               deployment="router")
                route = self._routes[name]
                if route.breaker.allows():
                    yield route, req.with_deadline(left)

    async def stream(self, request: ChatRequest, ctx: RouteContext = RouteContext()) -> AsyncIterator[ChatChunk]:
        d = self.decide(request, ctx)
        if not d.ordered:
            raise self._nothing(d, {})
        failures: dict[str, str] = {}
        for step in self._attempts(request, d):
            if step.__class__ is float:
                await asyncio.sleep(step)
                continue
            route, sub = step
            done: list[bool] = []
            async for ch in self._try_stream(route, sub, d, failures, done):
                yield ch
            if done:
                return
        raise self._nothing(d, failures)

    async def _try_stream(self, route: Route, sub: ChatRequest, d: RouteDecision,
                          failures: dict[str, str], done: list[bool]) -> AsyncIterator[ChatChunk]:
        """One deployment's attempt. A failure before the first token is noted in `failures` (the
        caller moves on); after it, `StreamInterruptedError`."""
        name = route.info.name
        started, sent = self._clock(), False
        route.in_flight += 1
        try:
            async for ch in _within(route.provider.stream(sub), sub.deadline_s or self._deadline_s, name):
                if not sent:
                    sent = True
                    route.observe_ttft(self._clock() - started)
                    ch.route = _route_text(name, d, failures)
                yield ch
            route.breaker.record(None, self._clock() - started)
            done.append(True)
        except NlwebError as e:
            route.breaker.record(e, self._clock() - started)
            if sent:
                raise StreamInterruptedError(f"{name} failed after the answer had started: {e.message}",
                                             deployment=name, body=e.body) from e
            if not isinstance(e, (ProviderError, ContextLengthError)):
                raise  # the request's own fault: another deployment would refuse it too
            failures[name] = e.message[:200]
            log.info("route %s failed before its first token (%s); trying the next", name, type(e).__name__)
        finally:
            route.in_flight -= 1

    async def _unary(self, request: ChatRequest, d: RouteDecision, call) -> tuple[Any, str, str]:
        """A call whose answer nobody has seen until it returns: any engine failure, even half-way
        through, fails over to the next deployment. Returns (answer, deployment, route text)."""
        if not d.ordered:
            raise self._nothing(d, {})
        failures: dict[str, str] = {}
        for step in self._attempts(request, d):
            if step.__class__ is float:
                await asyncio.sleep(step)
                continue
            result = await self._try_unary(step[0], step[1], d, call, failures)
            if result is not None:
                return result
        raise self._nothing(d, failures)

    async def _try_unary(self, route: Route, sub: ChatRequest, d: RouteDecision, call,
                         failures: dict[str, str]) -> tuple[Any, str, str] | None:
        """One deployment's attempt: the answer, or None with the failure noted in `failures`."""
        name = route.info.name
        started = self._clock()
        route.in_flight += 1
        try:
            if route.provider.capabilities.enforces_deadline:
                out = await call(route.provider, sub)
            else:  # guard engines that might ignore the deadline (costs a timer task per call)
                out = await asyncio.wait_for(call(route.provider, sub), sub.deadline_s or self._deadline_s)
        except asyncio.TimeoutError:
            err = ProviderTimeoutError(f"{name}: no answer within the request's deadline", deployment=name)
            route.breaker.record(err, self._clock() - started)
            failures[name] = err.message
            return None
        except NlwebError as e:
            route.breaker.record(e, self._clock() - started)
            if not isinstance(e, (ProviderError, ContextLengthError)):
                raise
            failures[name] = e.message[:200]
            log.info("route %s failed (%s); trying the next", name, type(e).__name__)
            return None
        finally:
            route.in_flight -= 1
        elapsed = self._clock() - started
        route.breaker.record(None, elapsed)
        ttft = getattr(getattr(out, "usage", None), "time_to_first_token_s", None)
        route.observe_ttft(ttft if ttft is not None else elapsed)
        return out, name, _route_text(name, d, failures)

    async def complete(self, request: ChatRequest, ctx: RouteContext = RouteContext()) -> ChatResponse:
        resp, name, text = await self._unary(request, self.decide(request, ctx), lambda p, r: p.complete(r))
        resp.deployment, resp.route = name, text
        return resp

    async def classify(self, request: ChatRequest, labels: Sequence[str], ctx: RouteContext = RouteContext()) -> dict[str, float]:
        d = self.decide(request, ctx, only=lambda r: r.provider.capabilities.classify)
        out, name, _ = await self._unary(request, d, lambda p, r: p.classify(r, labels))
        return LabelProbs(out, deployment=name, failover=name != d.ordered[0])

    async def embed(self, texts: Sequence[str]) -> EmbeddingResponse:
        for route in self._routes.values():
            if route.provider.capabilities.embeddings and route.breaker.allows():
                try:
                    out = await route.provider.embed(texts)
                    route.breaker.record(None)
                    return out
                except ProviderError as e:
                    route.breaker.record(e)
        return await super().embed(texts)

    def admit(self) -> None:
        if not any(r.breaker.available() and r.snapshot.healthy for r in self._routes.values()):
            raise self._nothing(RouteDecision((), "none available"), {n: f"breaker {r.breaker.state.value}" if not
                                r.breaker.available() else "unhealthy" for n, r in self._routes.items()})
        for r in self._routes.values():
            try:
                r.provider.admit()
                return
            except NlwebError:
                continue
        self._routes[next(iter(self._routes))].provider.admit()  # all full: raise the first one's error

    # -- health -----------------------------------------------------------------------------------
    async def probe(self, timeout_s: float = 5.0) -> None:
        """Refresh every deployment's load snapshot (engine-specific health/metrics)."""
        async def one(r: Route) -> None:
            try:
                r.snapshot = await asyncio.wait_for(r.provider.health(), timeout_s)
            except (NlwebError, asyncio.TimeoutError, OSError) as e:
                r.snapshot = LoadSnapshot(healthy=False, detail=f"health probe failed: {e!r}"[:200])
        await asyncio.gather(*(one(r) for r in self._routes.values()))

    async def probe_forever(self, interval_s: float = 10.0) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(interval_s)

    async def health(self) -> LoadSnapshot:
        snaps = [r.snapshot for r in self._routes.values()]
        return LoadSnapshot(healthy=any(s.healthy for s in snaps), detail=f"{sum(s.healthy for s in snaps)}/{len(snaps)} healthy",
                            waiting=sum(s.waiting for s in snaps), running=sum(r.in_flight for r in self._routes.values()))

    async def close(self) -> None:
        for r in self._routes.values():
            await r.provider.close()
