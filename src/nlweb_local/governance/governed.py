"""`GovernedProvider`: the outermost wrapper of the gateway (`compose(router, [..., cache, governed])`).

For a call made on behalf of an authenticated caller (`identity.current()`; no identity: passed through
untouched), it
  - puts the caller on the request's `CallContext` (caller = key id, team, role), so every wrapper below
    — the ledger's meter, tracing, the audit log — sees who asked;
  - holds the call to the key's model scope: a pinned model outside it is `ForbiddenError` (403); an
    unpinned call may be served only by the deployments the scope names (so a key limited to local
    models never causes a cloud call, through /v1 or through /ask);
  - reserves the call's estimate against the caller's token and money limits before the call, and
    settles on what it really used after (limits.py states the bound). A response-cache hit costs nothing.
"""
from __future__ import annotations

import time
from typing import Any, AsyncIterator, Callable, Iterable, Sequence

from ..core.errors import ForbiddenError
from ..core.types import CallContext, ChatChunk, ChatRequest, ChatResponse, EmbeddingResponse, LabelProbs, Served
from ..providers.base import Provider
from ..providers.wrapper import StreamTally, WrapperProvider, answer_tokens, call_tokens, close_after_error, prompt_chars
from .identity import CURRENT, Identity
from .limits import Held, LimitPolicy, Plan

Pricer = Callable[[int, int], float]  # (tokens in, tokens out) -> dollars, on one deployment
Price = Callable[[str], Pricer]  # a deployment's pricer
DEFAULT_COMPLETION = 512  # tokens a call that names no max_tokens is reserved for


def estimate_prompt(req: ChatRequest) -> int:
    """The prompt's tokens, rounded up: ~4 characters a token, plus 4 per message (the router's rule)."""
    return prompt_chars(req) // 4 + 4 * len(req.messages) + 1


def _free(served: Served | None, cache: str = "") -> bool:
    outcome = cache or (served.cache if served is not None else "")
    return outcome.startswith(_HITS) if outcome else False


_HITS = ("hit", "semantic-hit")


class GovernedProvider(WrapperProvider):
    def __init__(self, inner: Provider, policy: LimitPolicy, *, resolve: Callable[[str], tuple[str, ...]],
                 deployments: Callable[[], Iterable[str]], price: Price, clock: Callable[[], float] = time.perf_counter):
        """`resolve(model)`: the deployments a model name (alias or deployment) stands for; `deployments()`:
        every deployment; `price(deployment)`: what a call of so many tokens costs there, as a function
        of (tokens in, tokens out) (asked once per deployment)."""
        super().__init__(inner)
        self._policy = policy
        self._resolve = resolve
        self._deployments = deployments
        self._price = price
        self._clock = clock
        self._scopes: dict[tuple[str, ...], frozenset[str]] = {}
        self._contexts: dict[int, tuple[CallContext, Identity, CallContext]] = {}  # by id(context): most are reused
        self._pricers: dict[str, Pricer] = {}
        self._dearest_of: dict[tuple[str, ...], tuple[Pricer, ...]] = {}  # a call's pinned deployments -> their pricers

    def _cost(self, deployment: str, tokens_in: int, tokens_out: int) -> float:
        """What a call costs on `deployment` (its pricer is asked for once, then kept)."""
        return self._pricer(deployment)(tokens_in, tokens_out)

    def _dearest(self, pinned: tuple[str, ...]) -> tuple[Pricer, ...]:
        """The pricers of the deployments a call pinned to `pinned` may be served by (worked out once per pin);
        unpinned (empty), of every deployment there is now (deployments come and go: asked each time)."""
        if not pinned:
            return tuple(self._pricer(d) for d in self._deployments())
        found = self._dearest_of.get(pinned)
        if found is None:
            found = tuple(self._pricer(d) for d in pinned)
            if len(self._dearest_of) < 1024:
                self._dearest_of[pinned] = found
        return found

    def _pricer(self, deployment: str) -> Pricer:
        pricer = self._pricers.get(deployment)
        if pricer is None:
            pricer = self._price(deployment)
            if len(self._pricers) < 1024:
                self._pricers[deployment] = pricer
        return pricer

    # -- scope and context --------------------------------------------------------------------------
    def _allowed(self, models: tuple[str, ...]) -> frozenset[str]:
        allowed = self._scopes.get(models)
        if allowed is None:
            allowed = frozenset(d for m in models for d in (self._resolve(m) or (m,)))
            if len(self._scopes) < 1024:
                self._scopes[models] = allowed
        return allowed

    def _scoped(self, request: ChatRequest, ident: Identity) -> ChatRequest:
        """The request, its context now naming the caller and held to the key's models. (The request is
        changed in place: the edge made it for this call, and the router copies it per attempt.)"""
        ctx = request.context
        hit = self._contexts.get(id(ctx))
        if hit is not None and hit[0] is ctx and hit[1] is ident:
            request.context = hit[2]
            return request
        scoped = self._scoped_context(request, ctx, ident)
        if len(self._contexts) >= 4096:
            self._contexts.clear()
        self._contexts[id(ctx)] = (ctx, ident, scoped)
        request.context = scoped
        return request

    def _scoped_context(self, request: ChatRequest, ctx: CallContext, ident: Identity) -> CallContext:
        pinned = ctx.deployments
        if ident.models:
            allowed = self._allowed(ident.models)
            if pinned:
                kept = tuple(d for d in pinned if d in allowed)
                if not kept:
                    raise ForbiddenError(f"{ident.describe()} may use the models {', '.join(ident.models)}; this "
                                         f"request asks for {request.model or ', '.join(pinned)}")
                pinned = kept
            else:
                pinned = tuple(d for d in self._deployments() if d in allowed)
                if not pinned:  # (never an empty pin: that would mean "any deployment")
                    raise ForbiddenError(f"{ident.describe()} may use the models {', '.join(ident.models)}, and none "
                                         "of them is served here (GET /v1/models lists them); ask an admin to fix the key")
        return ctx.with_(caller=ident.key_id, team=ident.team, role=ident.role.label, deployments=pinned)

    # -- limits --------------------------------------------------------------------------------------
    def _estimate(self, ident: Identity, req: ChatRequest | None, tokens_out: int,
                  texts: Sequence[str] = ()) -> tuple[Plan, int, float] | None:
        """A call's estimate: (the caller's plan, tokens, dollars) for `req`'s prompt (or the `texts` to
        embed) and `tokens_out`; None when no token or money limit applies."""
        plan = self._policy.plan(ident)
        if not plan.budget:
            return None
        tokens_in = estimate_prompt(req) if req is not None else sum(len(t) for t in texts) // 4 + len(texts)
        usd = 0.0
        if plan.money:  # the dearest deployment the call may be served by
            for pricer in self._dearest(req.context.deployments if req is not None else ()):
                usd = max(usd, pricer(tokens_in, tokens_out))
        return plan, tokens_in + tokens_out, usd

    async def _reserve(self, ident: Identity, req: ChatRequest | None, tokens_out: int,
                       texts: Sequence[str] = ()) -> Held | None:
        """Reserve a call's estimate (`_estimate`). (In process, `complete` reserves without an await.)"""
        est = self._estimate(ident, req, tokens_out, texts)
        if est is None:
            return None
        plan, tokens, usd = est
        return await self._policy.reserve(ident, tokens, usd, plan)

    def _usage(self, held: Held, deployment: str, tokens_in: int, tokens_out: int, free: bool) -> tuple[int, float]:
        """What settles a reservation: (tokens, dollars) the call used (nothing for a free one)."""
        if free or not deployment:
            return 0, 0.0
        return tokens_in + tokens_out, self._cost(deployment, tokens_in, tokens_out) if held.plan.money else 0.0

    async def _settle(self, held: Held | None, deployment: str, tokens_in: int, tokens_out: int, free: bool) -> None:
        if held is not None:
            await self._policy.settle(held, *self._usage(held, deployment, tokens_in, tokens_out, free))

    async def _release(self, held: Held | None) -> None:
        if held is not None:
            await self._policy.settle(held, 0, 0.0)

    # -- Provider ------------------------------------------------------------------------------------
    async def complete(self, request: ChatRequest) -> ChatResponse:
        ident = CURRENT.get()
        if ident is None:
            return await self.inner.complete(request)
        req = self._scoped(request, ident)
        policy = self._policy
        if not policy.local:
            return await self._complete_remote(req, ident)
        plan = policy.plan(ident)
        if not plan.budget:  # (no token or money limit: nothing to reserve)
            return await self.inner.complete(req)
        # the estimate (`_estimate`, written out: the common call), reserved without an await (in process)
        tokens_in = estimate_prompt(req)
        tokens_out = req.max_tokens or DEFAULT_COMPLETION
        usd = 0.0
        if plan.money:
            for pricer in self._dearest(req.context.deployments):
                usd = max(usd, pricer(tokens_in, tokens_out))
        held = policy.reserve_now(ident, tokens_in + tokens_out, usd, plan)
        try:
            out = await self.inner.complete(req)
        except BaseException:
            policy.settle_now(held, 0, 0.0)
            raise
        served = out.served
        deployment = out.deployment or (served.deployment if served is not None else "")
        cache = served.cache if served is not None else ""
        if not deployment or (cache and cache.startswith(_HITS)):  # (`_usage`: a cache hit costs nothing)
            policy.settle_now(held, 0, 0.0)
            return out
        tokens_in, tokens_out = call_tokens(out.usage, req, len(out.content))
        policy.settle_now(held, tokens_in + tokens_out,
                          self._pricer(deployment)(tokens_in, tokens_out) if plan.money else 0.0)
        return out

    async def _complete_remote(self, req: ChatRequest, ident: Identity) -> ChatResponse:
        """`complete` with the limits' counters elsewhere (Redis): reserving and settling are awaited."""
        held = await self._reserve(ident, req, req.max_tokens or DEFAULT_COMPLETION)
        try:
            out = await self.inner.complete(req)
        except BaseException:
            await self._release(held)
            raise
        if held is not None:
            served = out.served
            tokens_in, tokens_out = call_tokens(out.usage, req, len(out.content))
            await self._settle(held, out.deployment or (served.deployment if served is not None else ""),
                               tokens_in, tokens_out, _free(served))
        return out

    async def classify(self, request: ChatRequest, labels: Sequence[str]) -> LabelProbs:
        ident = CURRENT.get()
        if ident is None:
            return await super().classify(request, labels)
        req = self._scoped(request, ident)
        held = await self._reserve(ident, req, 1)
        try:
            out = await super().classify(req, labels)
        except BaseException:
            await self._release(held)
            raise
        if held is not None:
            served = out.served
            await self._settle(held, served.deployment if served else "", *answer_tokens("classify", req, out),
                               free=_free(served))
        return out

    async def embed(self, texts: Sequence[str]) -> EmbeddingResponse:
        ident = CURRENT.get()
        if ident is None:
            return await self.inner.embed(texts)
        held = await self._reserve(ident, None, 0, texts)
        try:
            out = await self.inner.embed(texts)
        except BaseException:
            await self._release(held)
            raise
        if held is not None:
            await self._settle(held, out.deployment, *answer_tokens("embed", texts, out), free=_free(None, out.cache))
        return out

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        ident = CURRENT.get()
        if ident is None:
            return self.inner.stream(request)
        return self._stream(request, ident)

    async def _stream(self, request: ChatRequest, ident: Identity) -> AsyncIterator[ChatChunk]:
        req = self._scoped(request, ident)
        held = await self._reserve(ident, req, req.max_tokens or DEFAULT_COMPLETION)
        seen = StreamTally(self._clock)
        served: Served | None = None
        error: BaseException | None = None
        chunks = self.inner.stream(req)
        try:
            async for ch in chunks:
                seen.see(ch)
                if served is None and ch.served is not None:
                    served = ch.served
                yield ch
        except BaseException as e:
            error = e
            raise
        finally:
            await close_after_error(chunks, error)
            if held is None:
                pass
            elif seen.ttft is None:  # failed or abandoned before any answer
                await self._release(held)
            else:  # (abandoned half-way: what was sent counts)
                await self._settle(held, served.deployment if served else "", *seen.tokens(req), free=_free(served))


def governed(policy: LimitPolicy, **kw: Any) -> Callable[[Provider], Provider]:
    """The wrapper for the gateway's fold."""
    return lambda inner: GovernedProvider(inner, policy, **kw)
