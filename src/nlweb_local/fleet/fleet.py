"""`Fleet`: a provider over several instances of one deployment (the same engine and model at several
URLs) that picks the instance of each call.

    router ─► (deployment chain: metrics, tracing) ─► Fleet ─► policy picks an instance ─► its adapter

- Picking: a balancing policy (`policies.py`) over the instances' views; the fleet tries its order,
  skipping an instance whose breaker refuses the call (open, or not its share while restoring).
- Failover inside the deployment: a failure before the first token (connection refused, 5xx,
  timeout) moves the call to the next instance within what is left of its deadline; after the first
  token the error goes up as it is (the router turns it into `StreamInterruptedError`). Only when every
  instance failed does the deployment's own breaker see a failure.
- Health: each instance has its own `CircuitBreaker` (the router's breaker, same settings); a call
  whose connection failed triggers a scrape of its instance at once. `health()` — which the router's probe loop calls every
  `llm.health_interval_s` — scrapes every instance concurrently with its adapter's `health()` (the
  `load_parsers` snapshot: llama-server /health + /metrics + /slots, vLLM /metrics, ...), so a down
  instance returns when a scrape passes (and its breaker's half-open probes succeed). A scrape older
  than `stale_s` is ignored: the instance counts as healthy, with only this gateway's in-flight calls
  as its load. A failed scrape of an instance that has calls in flight, or answered some since the
  previous scrape, marks it busy, not down (engines that serve one request at a time answer their
  health endpoint only between requests).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence, TypeVar

from ..config.settings import FleetSettings
from ..core.errors import (BadRequestError, NlwebError, OverloadedError, ProviderConnectionError, ProviderError,
                           ProviderTimeoutError)
from ..core.types import ChatChunk, ChatRequest, ChatResponse, EmbeddingResponse, LabelProbs
from ..providers.base import BaseProvider, Classifier, LoadSnapshot, PromptCacheCounters, Provider
from ..router.breaker import BreakerState, CircuitBreaker
from .instance import Instance, InstanceStatus
from .policies import Pick, PickFeatures, Policy, policy_named

log = logging.getLogger(__name__)
T = TypeVar("T")
SCRAPE_TIMEOUT_S = 4.0  # each instance's scrape; under the router's 5 s bound on a whole health() call
_CLOSED = BreakerState.CLOSED


def _complete(p: Provider, r: Any) -> Awaitable[ChatResponse]:
    return p.complete(r)


def affinity_key(request: ChatRequest, prefix_chars: int) -> str:
    """The conversation id, else the prompt's first `prefix_chars` characters."""
    if request.context.conversation:
        return "c:" + request.context.conversation
    parts, n = [], 0
    for m in request.messages:
        parts.append(m.content[: prefix_chars - n])
        n += len(parts[-1])
        if n >= prefix_chars:
            break
    return "p:" + "\x1e".join(parts)


class Fleet(BaseProvider):
    """A deployment served by several instances; `members` are (URL, adapter) pairs, adapters built alike.
    `template`: an adapter built alike but never called (its model and capabilities), for a fleet whose
    instances come later (`add`: launched replicas); without it a fleet needs a member."""

    def __init__(self, name: str, members: Sequence[tuple[str, Provider]], settings: FleetSettings = FleetSettings(),
                 *, breaker: Callable[[str], CircuitBreaker] = CircuitBreaker, policy: Policy | None = None,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None,
                 template: Provider | None = None):
        if not members and template is None:
            raise BadRequestError(f"deployment {name!r}: a fleet needs at least one instance", deployment=name)
        self.name = name
        self._breaker = breaker
        self._instances = [Instance(url, p, breaker(f"{name}@{url}")) for url, p in members]
        self._by_id = {i.id: i for i in self._instances}
        self._single = self._instances[0] if len(self._instances) == 1 else None
        first = template if template is not None else members[0][1]
        self.model, self.capabilities = first.model, first.capabilities
        self._classifies = isinstance(first, Classifier)
        self._s = settings
        self.policy_name = settings.policy if policy is None else getattr(policy, "__name__", "custom")
        self._policy = policy or policy_named(settings.policy, spill=settings.affinity_spill)
        self._keyed = policy is not None or settings.policy == "affinity"  # only affinity reads the key
        self._clock = clock
        self._rng = rng or random.Random()
        self._sequence = 0
        self._rescrapes: dict[str, asyncio.Task] = {}  # at most one scrape per instance triggered by a failed call

    # -- instances coming and going (launched replicas: fleet/launcher.py) ---------------------------
    def add(self, url: str, provider: Provider) -> None:
        """A new instance, in the pool for the next call (a fresh breaker, not scraped yet)."""
        if url in self._by_id:
            raise ValueError(f"fleet {self.name}: {url} is already an instance")
        inst = Instance(url, provider, self._breaker(f"{self.name}@{url}"))
        self._instances = [*self._instances, inst]
        self._by_id[url] = inst
        self._single = self._instances[0] if len(self._instances) == 1 else None

    def detach(self, url: str) -> Instance:
        """Take an instance out of the pool: no new call goes to it (nor a failover from another); the calls
        it has in flight go on (its `in_flight` says how many). Its adapter is the caller's to close."""
        inst = self._by_id.pop(url)
        self._instances = [i for i in self._instances if i is not inst]
        self._single = self._instances[0] if len(self._instances) == 1 else None
        return inst

    # -- reading -----------------------------------------------------------------------------------
    def instance_count(self) -> int:
        """How many instances the deployment has (its admission gate's capacity follows it)."""
        return len(self._instances)

    def status(self) -> list[InstanceStatus]:
        now = self._clock()
        return [i.status(now, self._s.stale_s) for i in self._instances]

    def pick(self, request: ChatRequest | None) -> Pick:
        key = affinity_key(request, self._s.affinity_prefix_chars) if request is not None and self._keyed else ""
        now = self._clock()
        views = [i.view(now, self._s.stale_s) for i in self._instances]
        self._sequence += 1
        return self._policy(PickFeatures(key, self._sequence - 1), views, self._rng)

    def _down(self) -> OverloadedError:
        if not self._instances:
            return OverloadedError(f"{self.name}: no instance yet (its replicas are starting)", retry_after=1.0,
                                   deployment=self.name)
        now = self._clock()
        why = "; ".join(f"{i.id}: {'breaker ' + i.breaker.state.value if not i.breaker.available() else i.load.detail}"
                        for i in self._instances if not i.view(now, self._s.stale_s).up)
        waits = [w for w in (i.breaker.retry_after() for i in self._instances) if w > 0]
        return OverloadedError(f"{self.name}: no instance can take the call ({why})",
                               retry_after=max(1.0, min(waits)) if waits else 1.0, deployment=self.name)

    def _candidates(self, request: ChatRequest | None) -> list[Instance]:
        if self._single is not None:  # a fleet of one has nothing to pick (its breaker still decides)
            inst = self._single
            if inst.load.healthy or not inst.fresh(self._clock(), self._s.stale_s):
                return self._instances
            raise self._down()
        order = self.pick(request).order
        if not order:
            raise self._down()
        return [self._by_id[i] for i in order]

    def _failed(self, inst: Instance, error: BaseException, seconds: float, budget: float | None) -> None:
        inst.failed += 1
        inst.breaker.record(error, seconds, budget_s=budget)
        if isinstance(error, ProviderConnectionError) and inst.id not in self._rescrapes:
            # refused, or a connection dropped: scrape it now (a dead engine is out within milliseconds; a
            # keep-alive connection the engine had just closed proves nothing, and the scrape says so)
            task = asyncio.get_running_loop().create_task(self._scrape(inst))
            self._rescrapes[inst.id] = task
            task.add_done_callback(lambda _: self._rescrapes.pop(inst.id, None))

    def _left(self, request: ChatRequest | None, started: float) -> float | None:
        if request is None or request.deadline_s is None:
            return None
        left = request.deadline_s - (self._clock() - started)
        if left <= 0:
            raise ProviderTimeoutError(f"{self.name}: the deadline passed while trying its instances", deployment=self.name)
        return left

    # -- calls -------------------------------------------------------------------------------------
    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        started = self._clock()
        last: NlwebError | None = None
        for inst in self._candidates(request):
            if self._by_id.get(inst.id) is not inst or not inst.breaker.allows():  # (detached meanwhile: draining)
                continue
            left = self._left(request, started) if last is not None else request.deadline_s
            sub = request if last is None else request.with_deadline(left)
            t0, sent = self._clock(), False
            inst.in_flight += 1
            chunks = inst.provider.stream(sub)
            try:
                async for ch in chunks:
                    if not sent:
                        sent = True
                        inst.observe(self._clock() - t0)
                    yield ch
                inst.served += 1
                inst.breaker.record(None, self._clock() - t0, budget_s=left)
                return
            except NlwebError as e:
                self._failed(inst, e, self._clock() - t0, left)
                if sent or not isinstance(e, ProviderError):
                    raise  # after the first token, or the request's own fault: no other instance would do better
                last = e
                log.info("fleet %s: instance %s failed before its first token (%s); trying the next",
                         self.name, inst.id, type(e).__name__)
            except Exception as e:
                self._failed(inst, e, self._clock() - t0, left)
                raise
            finally:
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    await aclose()
                inst.in_flight -= 1
        raise last or self._down()

    def _unary(self, request: ChatRequest | None, call: Callable[[Provider, Any], Awaitable[T]]) -> Awaitable[T]:
        """A call whose answer nobody sees until it returns: any engine failure moves it to the next instance.
        (A plain function returning the coroutine that serves it: one coroutine less per call.)"""
        inst = self._single
        if inst is not None and inst.load.healthy and inst.breaker.state is _CLOSED:
            return self._one(inst, request, call)  # nothing to pick, nowhere to fail over
        return self._spread(request, call)

    async def _spread(self, request: ChatRequest | None, call: Callable[[Provider, Any], Awaitable[T]]) -> T:
        started = self._clock()
        last: NlwebError | None = None
        for inst in self._candidates(request):
            if self._by_id.get(inst.id) is not inst or not inst.breaker.allows():  # (detached meanwhile: draining)
                continue
            if last is None:  # the first attempt gets the request as it came
                left, sub = (request.deadline_s if request is not None else None), request
            else:
                left = self._left(request, started)
                sub = request.with_deadline(left) if request is not None else None
            t0 = self._clock()
            inst.in_flight += 1
            try:
                out = await call(inst.provider, sub)
            except ProviderError as e:
                self._failed(inst, e, self._clock() - t0, left)
                last = e
                continue
            except Exception as e:
                self._failed(inst, e, self._clock() - t0, left)
                raise
            finally:
                inst.in_flight -= 1
            self._served(inst, out, self._clock() - t0, left)
            return out
        raise last or self._down()

    async def _one(self, inst: Instance, request: ChatRequest | None, call: Callable[[Provider, Any], Awaitable[T]]) -> T:
        """The call of a fleet of one whose instance is up: `_unary`'s bookkeeping, without its picking (the
        per-call cost of the layer when a deployment lists one URL: two clock reads, no allocation)."""
        left = request.deadline_s if request is not None else None
        t0 = self._clock()
        inst.in_flight += 1
        try:
            out = await call(inst.provider, request)
        except Exception as e:
            self._failed(inst, e, self._clock() - t0, left)
            raise
        finally:
            inst.in_flight -= 1
        self._served(inst, out, self._clock() - t0, left)
        return out

    @staticmethod
    def _served(inst: Instance, out: Any, elapsed: float, left: float | None) -> None:
        usage = getattr(out, "usage", None)
        ttft = getattr(usage, "time_to_first_token_s", None)
        inst.observe(ttft if ttft is not None else elapsed)
        inst.served += 1
        inst.breaker.record(None, elapsed, budget_s=left)

    def complete(self, request: ChatRequest) -> Awaitable[ChatResponse]:
        return self._unary(request, _complete)

    async def classify(self, request: ChatRequest, labels: Sequence[str]) -> LabelProbs:
        if not self._classifies:
            raise BadRequestError(f"deployment {self.name!r} cannot classify (no next-token probabilities)",
                                  deployment=self.name)
        return await self._unary(request, lambda p, r: p.classify(r, labels))

    async def embed(self, texts: Sequence[str]) -> EmbeddingResponse:
        return await self._unary(None, lambda p, _: p.embed(texts))

    def admit(self, request: ChatRequest | None = None) -> None:
        """Refuse at once when no instance is up; else when every instance that is up refuses."""
        now = self._clock()
        up = [i for i in self._instances if i.view(now, self._s.stale_s).up]
        if not up:
            raise self._down()
        refusals: list[NlwebError] = []
        for inst in up:
            try:
                inst.provider.admit(request)
                return
            except NlwebError as e:
                refusals.append(e)
        raise refusals[0]

    # -- health ------------------------------------------------------------------------------------
    async def _scrape(self, inst: Instance) -> None:
        try:
            snap = await asyncio.wait_for(inst.provider.health(), SCRAPE_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - whatever a probe hits says the same: not healthy now
            snap = LoadSnapshot(healthy=False, detail=f"health probe failed: {e!r}"[:200])
        answered, inst.served_at_scrape = inst.served > inst.served_at_scrape, inst.served
        if not snap.healthy and (answered or inst.in_flight) and not snap.loading and inst.load.healthy:
            # it has calls on it or answered some since the last scrape: busy (an engine that serves one
            # request at a time answers its health endpoint only between them), not known dead; the calls
            # themselves tell (a refused one triggers another scrape, failures open its breaker)
            snap = dataclasses.replace(snap, healthy=True, detail=f"busy ({inst.in_flight} in flight; {snap.detail})"[:200])
        if snap.healthy != inst.load.healthy:
            log.warning("fleet %s: instance %s %s (%s)", self.name, inst.id, "up" if snap.healthy else "down",
                        snap.detail)
        inst.load, inst.scraped_at = snap, self._clock()

    async def health(self) -> LoadSnapshot:
        """Scrape every instance now (concurrently), then the deployment's load: the sum of its instances'."""
        await asyncio.gather(*(self._scrape(i) for i in self._instances))
        now = self._clock()
        views = [i.view(now, self._s.stale_s) for i in self._instances]
        up = sum(v.up for v in views)
        caches = [i.load.prompt_cache for i in self._instances if i.load.prompt_cache is not None]
        kv = [i.load.kv_cache_usage for i in self._instances if i.load.kv_cache_usage is not None]
        return LoadSnapshot(healthy=up > 0, detail=f"{self.model}: {up}/{len(views)} instances up",
                            waiting=sum(v.waiting for v in views), running=sum(v.running for v in views),
                            kv_cache_usage=max(kv) if kv else None,
                            loading=all(i.load.loading for i in self._instances),
                            prompt_cache=PromptCacheCounters(sum(c.queried_tokens for c in caches),
                                                             sum(c.hit_tokens for c in caches)) if caches else None)

    async def close(self) -> None:
        for task in list(self._rescrapes.values()):
            task.cancel()
        for inst in self._instances:
            await inst.provider.close()
