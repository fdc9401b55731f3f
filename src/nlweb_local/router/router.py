"""The `Router`: a provider that picks a deployment per call and falls over along the chain.

Each call: features of the request → the strategy's ordered candidates → try them in order within the
request's deadline. A failure before the first token moves to the next candidate (and counts in that
deployment's breaker); a failure after tokens were sent ends the stream with `StreamInterruptedError`
— never a silent truncation. When nothing can serve, `NoDeploymentError` (503) says why, per deployment,
with the earliest Retry-After.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Callable, Iterator, Sequence

from ..core.errors import (BadRequestError, ContextLengthError, ModelNotFoundError, NlwebError, NoDeploymentError,
                           NotFoundError, ProviderError, ProviderTimeoutError, QueueFullError,
                           StreamInterruptedError)
from ..core.privacy import REQUIRED, strictest
from ..core.types import ChatChunk, ChatRequest, ChatResponse, EmbeddingResponse, LabelProbs, Privacy, Served, TaskKind
from ..providers.base import BaseProvider, Capabilities, Classifier, LoadSnapshot, Provider
from ..providers.wrapper import prompt_chars
from .breaker import BreakerSnapshot, CircuitBreaker
from .model import AliasSource, DeploymentInfo, DeploymentView, RequestFeatures, RouteDecision
from .state import InProcessRouterState, RouterState
from .strategies import STRATEGIES, Strategy

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Route:
    """One deployment the router may send calls to: what it is and the provider chain that serves it.
    `breaker`, when given, is the breaker it starts with in the default in-process state (tests pass one
    on a fake clock); its live state is the router's `RouterState`, never this object."""

    info: DeploymentInfo
    provider: Provider
    breaker: CircuitBreaker | None = None


def estimate_tokens(req: ChatRequest) -> int:
    return prompt_chars(req) // 4 + 4 * len(req.messages)


def difficulty(req: ChatRequest) -> float:
    """A cheap prior for the quality strategy: longer, multi-part, reasoning-flavoured prompts are harder."""
    text = req.messages[-1].content.lower() if req.messages else ""
    score = min(1.0, len(text) / 4000)
    score += 0.2 * sum(w in text for w in ("why", "explain", "compare", "prove", "step by step", "code", "analy"))
    score += 0.2 if req.task in (TaskKind.GENERATE, TaskKind.CHAT) else 0.0
    return min(1.0, score)


class Failures(dict):
    """Why each deployment tried failed (deployment → message); `told`: those whose message is nlweb-local's own
    (`QueueFullError`: its own queue or memory budget), which the caller may read."""

    def __init__(self):
        super().__init__()
        self.told: set[str] = set()
        self.retry_after: list[float] = []  # when the told ones said to come back

    def refused_only(self) -> bool:
        """Every deployment tried was refused by nlweb-local's own queue (back-pressure: another round a few
        milliseconds later would only be refused again, or time out)."""
        return bool(self) and self.told.issuperset(self)


def _served(info: DeploymentInfo, d: RouteDecision, failures: dict[str, str]) -> Served:
    """Who served, why, and whom it replaced (rendered as `x-nlweb-route` at the HTTP edge)."""
    return Served(info.name, d.reason, tuple(failures), info.model, info.model_version)


async def _within(chunks: AsyncIterator[ChatChunk], seconds: float, name: str) -> AsyncIterator[ChatChunk]:
    """Guard a deployment's stream with the request's deadline even if the engine ignores it. The next
    chunk is awaited in this task (no helper task per chunk), and the engine's stream is always closed
    here, never left to the garbage collector (which could close it while another task runs it)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    it = chunks.__aiter__()
    try:
        while True:
            try:
                async with asyncio.timeout_at(end):
                    ch = await it.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise ProviderTimeoutError(f"{name}: no answer within the request's deadline ({seconds:.1f}s)",
                                           deployment=name) from None
            yield ch
    finally:
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()


class Router(BaseProvider):
    """A provider over deployments. Its typed API for operators and the HTTP edge — `deployments()`,
    `view()`, `load()`, `breakers()`, `breaker()`, `force_open()`, `reset()`, `aliases()`,
    `resolve_model()`, `probe()` — is the only way in: nobody reaches into its routes or their state.
    Breakers and live counters are router state, kept in a `RouterState` store."""

    name = "router"

    def __init__(self, routes: Sequence[Route], *, strategy: str = "local-first",
                 strategies: dict[str, Strategy] | None = None, rounds: int = 2, backoff_s: float = 0.05,
                 default_deadline_s: float = 120.0, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic, groups: dict[str, Sequence[str]] | None = None,
                 state: RouterState | None = None, registry: AliasSource | None = None):
        """`groups` maps a model alias or a task kind (rank, summarize, chat, ...) to the deployments
        allowed to serve it; requests of a task without a group may go to any deployment. `state` holds
        breakers and live counters (default: in this process, seeded with the routes' breakers).
        `registry`: the model registry's aliases, each pointing at a NAME@VERSION that deployments
        serve (`DeploymentInfo.serves`), resolved per request from memory."""
        if not routes:
            raise ValueError("a router needs at least one deployment")
        self._routes = {r.info.name: r for r in routes}
        self._state: RouterState = state if state is not None else InProcessRouterState(
            seed=[r.breaker for r in routes if r.breaker is not None])
        self.groups = {k: tuple(v) for k, v in (groups or {}).items()}
        self._registry = registry
        self._serving: dict[str, tuple[str, ...]] = {}  # NAME@VERSION -> the deployments serving it
        for r in routes:
            if r.info.serves:
                self._serving[r.info.serves] = (*self._serving.get(r.info.serves, ()), r.info.name)
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

    # -- the typed API: reading --------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._routes)

    def _view(self, r: Route) -> DeploymentView:
        st = self._state.of(r.info.name)
        return DeploymentView(r.info, healthy=st.load.healthy, admits=st.breaker.available(),
                              breaker=st.breaker.state.value, in_flight=st.in_flight, waiting=st.load.waiting,
                              ewma_ttft_s=st.ewma_ttft_s)

    def deployments(self) -> list[DeploymentView]:
        """Every deployment as routing sees it now (health, breaker state, load)."""
        return [self._view(r) for r in self._routes.values()]

    def view(self, name: str) -> DeploymentView:
        return self._view(self._route(name))

    def provider(self, name: str) -> Provider:
        """The provider chain that serves a deployment (its adapter inside the telemetry wrappers)."""
        return self._route(name).provider

    def load(self, name: str) -> LoadSnapshot:
        """The deployment's last load snapshot (from the health probes)."""
        return self._state.of(self._route(name).info.name).load

    def breakers(self) -> list[BreakerSnapshot]:
        return [self._state.of(n).breaker.snapshot() for n in self._routes]

    def breaker(self, name: str) -> BreakerSnapshot:
        return self._state.of(self._route(name).info.name).breaker.snapshot()

    def aliases(self) -> dict[str, tuple[str, ...]]:
        """Model aliases and task kinds, each with the deployments that may serve it (`llm.groups`)."""
        return dict(self.groups)

    def registry_aliases(self) -> dict[str, str]:
        """The model registry's aliases now, each with the NAME@VERSION it points at ({} without a registry)."""
        return self._registry.targets() if self._registry is not None else {}

    def alias_generation(self) -> int:
        """Moves whenever a registry alias moves: a resolution remembered at another generation is stale."""
        return self._registry.current() if self._registry is not None else 0

    def resolve_model(self, model: str | None) -> tuple[str, ...]:
        """The deployments a request's `model` pins: an `llm.groups` alias's members, the deployment of that
        name, the deployments serving the version a registry alias points at now, or those serving a
        NAME@VERSION; () for `auto`, none, or a name the router does not know. A registry alias whose
        version no deployment serves is `ModelNotFoundError`, saying so."""
        if not model:
            return ()
        members = self.groups.get(model)
        if members:
            return members
        if model in self._routes:
            return (model,)
        target = self._registry.target(model) if self._registry is not None else None
        if target is not None:
            serving = self._serving.get(target)
            if not serving:
                raise ModelNotFoundError(f"the alias {model!r} points at {target}, which no deployment here serves: "
                                         f"add a deployment with `serves: {target}`, or move the alias back "
                                         f"(nlweb-local models rollback {model})")
            return serving
        return self._serving.get(model, ())

    # -- the typed API: commands -------------------------------------------------------------------
    def force_open(self, name: str, seconds: float | None = None) -> BreakerSnapshot:
        b = self._state.of(self._route(name).info.name).breaker
        b.force_open(seconds)
        return b.snapshot()

    def reset(self, name: str) -> BreakerSnapshot:
        b = self._state.of(self._route(name).info.name).breaker
        b.reset()
        return b.snapshot()

    def _route(self, name: str) -> Route:
        r = self._routes.get(name)
        if r is None:
            raise NotFoundError(f"no deployment {name!r} (deployments: {', '.join(self._routes)})")
        return r

    def decide(self, req: ChatRequest, *, only: Callable[[Route], bool] | None = None) -> RouteDecision:
        ctx = req.context
        name = ctx.strategy or self.default_strategy
        strategy = self._strategies.get(name)
        if strategy is None:
            raise BadRequestError(f"unknown routing strategy {name!r} (x-nlweb-strategy: one of {', '.join(self._strategies)})")
        hardness = 0.0
        if name == "quality":  # only the quality strategy reads it
            hardness = ctx.difficulty if ctx.difficulty is not None else difficulty(req)
        f = RequestFeatures(task=req.task, prompt_tokens=estimate_tokens(req), max_tokens=req.max_tokens,
                            needs_json=req.json_schema is not None, needs_tools=bool(req.tools),
                            privacy=strictest(ctx.privacy, REQUIRED.get()),
                            difficulty=hardness, conversation=ctx.conversation, priority=ctx.priority)
        allowed = ctx.deployments or self.groups.get(req.task.value, ())
        if allowed and not any(a in self._routes for a in allowed):
            raise ModelNotFoundError(f"no deployment named {', '.join(allowed)} (GET /v1/models lists them)")
        views = [self._view(r) for r in self._routes.values()  # (embedding-only deployments never chat)
                 if r.provider.capabilities.chat and (only is None or only(r)) and (not allowed or r.info.name in allowed)]
        return strategy(f, views, self._rng)

    def _nothing(self, d: RouteDecision, failures: dict[str, str]) -> NoDeploymentError:
        reasons = {**d.rejected, **failures}
        waits = [w for w in (self._state.of(n).breaker.retry_after() for n in self._routes) if w > 0]
        waits += getattr(failures, "retry_after", [])  # a full queue's own estimate of when it drains
        return NoDeploymentError("no deployment can serve this request now", reasons=reasons,
                                 retry_after=max(1.0, min(waits)) if waits else 1.0, deployment="router",
                                 failed=tuple(n for n in failures if n not in getattr(failures, "told", ())))

    # -- calls ----------------------------------------------------------------------------------
    def _attempts(self, req: ChatRequest, d: RouteDecision) -> Iterator[tuple[Route, ChatRequest] | float]:
        """Candidates in order, round after round, each with the time left of the caller's deadline
        (`context.deadline_s`); stops at the deadline. Between rounds it yields a float: the backoff the
        caller sleeps before asking for the next one. (A plain generator: no async-generator machinery
        per call on the hot path.)"""
        deadline = self._clock() + (req.context.deadline_s or self._deadline_s)
        for rnd in range(self._rounds):
            if rnd:
                yield min(self._backoff_s * (2 ** rnd) * (0.5 + self._rng.random()), max(0.0, deadline - self._clock()))
            for name in d.ordered:
                left = deadline - self._clock()
                if left <= 0:
                    raise ProviderTimeoutError(f"request deadline passed while trying {', '.join(d.ordered)}",
                                               deployment="router")
                if self._state.of(name).breaker.allows():
                    yield self._routes[name], req.with_deadline(left)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        d = self.decide(request)
        if not d.ordered:
            raise self._nothing(d, {})
        failures = Failures()
        for step in self._attempts(request, d):
            if step.__class__ is float:
                if failures.refused_only():  # every deployment's own queue said no: at once, with its Retry-After
                    break
                await asyncio.sleep(step)
                continue
            route, sub = step
            done: list[bool] = []
            async with contextlib.aclosing(self._try_stream(route, sub, d, failures, done)) as attempt:
                async for ch in attempt:  # (closed here even when our consumer stops early)
                    yield ch
            if done:
                return
        raise self._nothing(d, failures)

    async def _try_stream(self, route: Route, sub: ChatRequest, d: RouteDecision,
                          failures: dict[str, str], done: list[bool]) -> AsyncIterator[ChatChunk]:
        """One deployment's attempt. A failure before the first token is noted in `failures` (the
        caller moves on); after it, `StreamInterruptedError`."""
        name = route.info.name
        st = self._state.of(name)
        started, sent, queue_s = self._clock(), False, 0.0
        budget = sub.deadline_s or self._deadline_s
        st.begin()
        chunks = _within(route.provider.stream(sub), budget, name)
        try:
            async for ch in chunks:
                if not sent:
                    sent = True
                    st.observe_ttft(self._clock() - started)
                    ch.served = _served(route.info, d, failures)
                if ch.usage is not None:
                    queue_s = ch.usage.queue_s
                yield ch
            st.breaker.record(None, self._clock() - started - queue_s, budget_s=budget)
            done.append(True)
        except NlwebError as e:  # (a timeout's budget is what was left after waiting in our own queue)
            st.breaker.record(e, self._clock() - started, budget_s=budget - getattr(e, "queue_s", 0.0))
            if sent:
                raise StreamInterruptedError(f"{name} failed after the answer had started: {e.message}",
                                             deployment=name, body=e.body) from e
            if not isinstance(e, (ProviderError, ContextLengthError)):
                raise  # the request's own fault: another deployment would refuse it too
            failures[name] = e.message[:200]
            if isinstance(e, QueueFullError):  # nlweb-local's own words (its queue, its memory budget): told as they are
                failures.told.add(name)
                failures.retry_after.append(e.retry_after)
            log.info("route %s failed before its first token (%s); trying the next", name, type(e).__name__)
        finally:
            await chunks.aclose()  # closed here, in this task, whatever ended the attempt
            st.end()

    async def _unary(self, request: ChatRequest, d: RouteDecision, call) -> tuple[Any, Served]:
        """A call whose answer nobody has seen until it returns: any engine failure, even half-way
        through, fails over to the next deployment. Returns (answer, who served)."""
        if not d.ordered:
            raise self._nothing(d, {})
        failures = Failures()
        for step in self._attempts(request, d):
            if step.__class__ is float:
                if failures.refused_only():  # every deployment's own queue said no: at once, with its Retry-After
                    break
                await asyncio.sleep(step)
                continue
            result = await self._try_unary(step[0], step[1], d, call, failures)
            if result is not None:
                return result
        raise self._nothing(d, failures)

    async def _try_unary(self, route: Route, sub: ChatRequest, d: RouteDecision, call,
                         failures: dict[str, str]) -> tuple[Any, Served] | None:
        """One deployment's attempt: the answer, or None with the failure noted in `failures`."""
        name = route.info.name
        st = self._state.of(name)
        started = self._clock()
        budget = sub.deadline_s or self._deadline_s
        st.begin()
        try:
            if route.provider.capabilities.enforces_deadline:
                out = await call(route.provider, sub)
            else:  # guard engines that might ignore the deadline (costs a timer task per call)
                out = await asyncio.wait_for(call(route.provider, sub), budget)
        except asyncio.TimeoutError:
            err = ProviderTimeoutError(f"{name}: no answer within the request's deadline", deployment=name)
            st.breaker.record(err, self._clock() - started, budget_s=budget)
            failures[name] = err.message
            return None
        except NlwebError as e:
            st.breaker.record(e, self._clock() - started, budget_s=budget - getattr(e, "queue_s", 0.0))
            if not isinstance(e, (ProviderError, ContextLengthError)):
                raise
            failures[name] = e.message[:200]
            if isinstance(e, QueueFullError):  # nlweb-local's own words (its queue, its memory budget): told as they are
                failures.told.add(name)
                failures.retry_after.append(e.retry_after)
            log.info("route %s failed (%s); trying the next", name, type(e).__name__)
            return None
        finally:
            st.end()
        elapsed = self._clock() - started
        usage = getattr(out, "usage", None)
        queue_s = usage.queue_s if usage is not None else getattr(out, "queue_s", 0.0)
        st.breaker.record(None, elapsed - queue_s, budget_s=budget)  # slowness is service time, not our queue
        ttft = getattr(usage, "time_to_first_token_s", None)
        st.observe_ttft(ttft if ttft is not None else elapsed)
        return out, _served(route.info, d, failures)

    async def complete(self, request: ChatRequest) -> ChatResponse:
        resp, served = await self._unary(request, self.decide(request), _complete)
        resp.deployment, resp.served = served.deployment, served
        return resp

    async def classify(self, request: ChatRequest, labels: Sequence[str]) -> LabelProbs:
        d = self.decide(request, only=lambda r: r.provider.capabilities.classify and isinstance(r.provider, Classifier))
        out, served = await self._unary(request, d, lambda p, r: p.classify(r, labels))
        return replace(out, served=served)

    def embeds(self, *, local_only: bool = False) -> bool:
        """Whether a deployment (a local one, with `local_only`) serves embeddings."""
        return any(r.provider.capabilities.embeddings and (r.info.local or not local_only) for r in self._routes.values())

    async def embed(self, texts: Sequence[str]) -> EmbeddingResponse:
        """The first embedding deployment whose breaker lets the call through; only local ones when the
        request being served is local_only (`core.privacy.REQUIRED`: an embedding call carries no context)."""
        local_only = REQUIRED.get() is Privacy.LOCAL_ONLY
        for name, route in self._routes.items():
            breaker = self._state.of(name).breaker
            if local_only and not route.info.local:
                continue
            if route.provider.capabilities.embeddings and breaker.allows():
                try:
                    out = await route.provider.embed(texts)
                    breaker.record(None)
                    return out
                except ProviderError as e:
                    breaker.record(e)
        return await super().embed(texts)

    def admit(self, request: ChatRequest | None = None) -> None:
        """Refuse at once (503 with when to come back) when no deployment could take `request` (or any
        call) now: every breaker open or deployment unhealthy, or every engine's queue too full to start
        it before its deadline (the caller's `context.deadline_s`, else the router's default)."""
        if request is not None:
            request = request.with_deadline(request.context.deadline_s or self._deadline_s)
        states = {n: self._state.of(n) for n in self._routes}
        if not any(st.breaker.available() and st.load.healthy for st in states.values()):
            raise self._nothing(RouteDecision((), "none available"), {
                n: f"breaker {st.breaker.state.value}" if not st.breaker.available() else "unhealthy"
                for n, st in states.items()})
        refusals: list[NlwebError] = []
        for r in self._routes.values():
            try:
                r.provider.admit(request)
                return
            except NlwebError as e:
                refusals.append(e)
        raise refusals[0]  # all full: the first choice's refusal (with its Retry-After)

    # -- health -----------------------------------------------------------------------------------
    async def probe(self, timeout_s: float = 5.0) -> None:
        """Refresh every deployment's load snapshot (engine-specific health/metrics)."""
        async def one(r: Route) -> None:
            st = self._state.of(r.info.name)
            try:
                snap = await asyncio.wait_for(r.provider.health(), timeout_s)
            except (NlwebError, asyncio.TimeoutError, OSError) as e:
                snap = LoadSnapshot(healthy=False, detail=f"health probe failed: {e!r}"[:200])
            if not snap.healthy and st.in_flight > 0 and st.load.healthy:
                # Busy, not down: a single-worker engine answers its health endpoint late (or not) while it
                # generates. Its calls in flight tell whether it is alive — a dead engine fails them, and the
                # breaker opens on that — so a failed probe does not take it out of routing meanwhile.
                snap = replace(st.load, detail=f"busy: {st.in_flight} calls in flight; probe: {snap.detail}"[:200])
            st.load = snap
        await asyncio.gather(*(one(r) for r in self._routes.values()))

    async def probe_forever(self, interval_s: float = 10.0) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(interval_s)

    async def health(self) -> LoadSnapshot:
        states = [self._state.of(n) for n in self._routes]
        return LoadSnapshot(healthy=any(st.load.healthy for st in states),
                            detail=f"{sum(st.load.healthy for st in states)}/{len(states)} healthy",
                            waiting=sum(st.load.waiting for st in states), running=sum(st.in_flight for st in states))

    async def close(self) -> None:
        for r in self._routes.values():
            await r.provider.close()


def _complete(provider: Provider, request: ChatRequest) -> Any:
    return provider.complete(request)
