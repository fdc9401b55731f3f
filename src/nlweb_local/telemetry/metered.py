"""`MeteredProvider`: a Provider that measures every call of the provider it wraps.

Per call: Prometheus series (requests, errors by class, time to first token, duration, tokens in/out,
generation speed, in flight, cost), one `CallRecord` for the cost ledger and the recent-calls window,
priced with the deployment's price model at its measured throughput and with the reference cloud
model's price for the savings. The work on the request path is a few counter increments and one
append to an in-memory queue; the ledger writes to disk on its own thread.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Awaitable, Callable

from ..core.types import ChatChunk, ChatRequest
from ..governance.identity import CURRENT
from ..providers.base import Provider
from ..providers.wrapper import CallKind, StreamTally, WrapperProvider, answer_tokens, observed
from .context import current_request_id, current_spend, new_request_id
from .ledger import CallRecord
from .metrics import CallSeries, GatewayMetrics
from .prices import FREE, HardwareCost, Price, PriceModel


class ThroughputMeter:
    """Tokens (in + out) per busy second of one deployment; busy = at least one call in flight.

    Counting busy time rather than summing call durations makes concurrent calls count once: the
    result is what the machine delivers, which is what its hourly cost is spread over."""

    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self._active = 0
        self._since = 0.0
        self.busy_s = 0.0
        self.tokens = 0
        self.rate: float | None = None  # tokens_per_s() as of the last call's end (what pricing reads)

    def begin(self, now: float | None = None) -> None:
        if self._active == 0:
            self._since = self._clock() if now is None else now
        self._active += 1

    def end(self, tokens: int, now: float | None = None) -> None:
        if now is None:
            now = self._clock()
        self._active -= 1
        total = self.tokens = self.tokens + tokens
        if self._active == 0:
            self.busy_s += now - self._since
            busy = self.busy_s
        else:
            busy = self.busy_s + now - self._since
        self.rate = total / busy if busy > 0 and total > 0 else None

    def tokens_per_s(self) -> float | None:
        busy = self.busy_s + (self._clock() - self._since if self._active else 0.0)
        return self.tokens / busy if busy > 0 and self.tokens > 0 else None


def _error_class(e: BaseException) -> str:
    return "Cancelled" if isinstance(e, (asyncio.CancelledError, GeneratorExit)) else type(e).__name__


class MeteredProvider(WrapperProvider):
    def __init__(self, inner: Provider, metrics: GatewayMetrics, *, ledger: Any = None, window: Any = None,
                 price: PriceModel = FREE, reference: Price | None = None,
                 clock: Callable[[], float] = time.perf_counter, now: Callable[[], float] = time.time,
                 model_version: str = ""):
        """`model_version`: what the ledger names as the version that served (the registry's NAME@VERSION)."""
        super().__init__(inner)
        self.model_version = model_version
        self._metrics = metrics
        self._ledger = ledger
        self._window = window
        self.price = price
        self._by_throughput = not isinstance(price, Price)  # a fixed price needs no throughput reading per call
        self.reference = reference
        self._clock = clock
        self._now = now
        self._local = inner.capabilities.local
        self._series: dict[str, CallSeries] = {}
        self.meter = ThroughputMeter(clock)

    def pricer(self) -> Callable[[int, int], float]:
        """What a call costs on this deployment now, as one function of (tokens in, tokens out) with what it
        needs bound (governance prices every call twice, reserve and settle): a local deployment's price
        at its throughput as of its last finished call (`meter.rate`: no clock read per call). A price
        model set later (`self.price = ...`) is not seen by a pricer made before."""
        price = self.price
        if not self._by_throughput:
            p_in, p_out = price.in_per_m, price.out_per_m  # (Price.cost_at's arithmetic, for the same floats)
            return lambda tokens_in, tokens_out: (tokens_in * p_in + tokens_out * p_out) / 1e6
        meter = self.meter
        if isinstance(price, HardwareCost) and price.assumed_tokens_per_s > 0:  # (HardwareCost.cost_at, written out)
            per_s, assumed = price.per_hour / 3600.0, price.assumed_tokens_per_s
            return lambda tokens_in, tokens_out: per_s * (tokens_in + tokens_out) / (meter.rate or assumed)
        cost_at = price.cost_at
        return lambda tokens_in, tokens_out: cost_at(tokens_in, tokens_out, meter.rate)

    def cost(self, tokens_in: int, tokens_out: int) -> tuple[float, float]:
        """(what a call of that size costs on this deployment now, what the reference model would charge)."""
        cost = self.price.cost_at(tokens_in, tokens_out, self.meter.rate)  # (at the throughput as of the last call's end)
        return cost, self.reference.cost(tokens_in, tokens_out) if self.reference is not None else 0.0

    # -- bookkeeping --------------------------------------------------------------------------------
    def _begin(self, task: Any) -> tuple[CallSeries, float]:
        """`task`: a TaskKind (a str enum) or a plain string; its series is looked up once per kind."""
        s = self._series.get(task)
        if s is None:
            s = self._series[task] = self._metrics.for_call(self.name, str(getattr(task, "value", task)), self._local)
        s.requests += 1
        s.in_flight += 1
        t0 = self._clock()
        self.meter.begin(t0)
        return s, t0

    def _end(self, s: CallSeries, t0: float, *, tokens_in: int, tokens_out: int, ttft: float | None,
             error: BaseException | None, reused: int | None = None) -> None:
        """`reused`: prompt tokens the engine took from its KV cache (None: it did not say)."""
        t1 = self._clock()
        elapsed = t1 - t0
        s.in_flight -= 1
        self.meter.end(tokens_in + tokens_out if error is None else 0, t1)
        cost = ref = 0.0
        err = ""
        if error is None:
            s.duration.observe(elapsed)
            if ttft is not None:
                s.ttft.observe(ttft)
            s.tokens_in += tokens_in
            s.tokens_out += tokens_out
            if reused is not None:
                s.prompt_reported += tokens_in
                s.prompt_reused += min(reused, tokens_in)
            gen = elapsed - (ttft or 0.0)
            if tokens_out and gen > 0:
                s.speed.observe(tokens_out / gen)
            cost, ref = self.cost(tokens_in, tokens_out)
            s.cost += cost
            s.reference_cost += ref
            spend = current_spend()
            if spend is not None:
                spend.cost_usd += cost
                spend.reference_usd += ref
        else:
            err = _error_class(error)
            s.error(err)
        if self._ledger is None and self._window is None:
            return
        who = CURRENT.get()  # the caller governance authenticated (None: no auth)
        row = CallRecord(self._now(), current_request_id() or new_request_id(), self.name, self._local, s.task,
                         tokens_in, tokens_out, elapsed, ttft, cost, ref, ref - cost, err, "", 0.0, self.model_version,
                         *((who.key_id, who.team) if who is not None else ()))
        if self._ledger is not None:
            self._ledger.record(row)
        if self._window is not None:
            self._window.add(row)

    # -- the wrapper hooks --------------------------------------------------------------------------
    def around_stream(self, request: ChatRequest, chunks: AsyncIterator[ChatChunk]) -> AsyncIterator[ChatChunk]:
        def end(started: tuple[CallSeries, float], seen: StreamTally, error: BaseException | None) -> None:
            tin, tout = seen.tokens(request) if error is None else (0, 0)  # failed: not billed
            self._end(*started, tokens_in=tin, tokens_out=tout, ttft=seen.ttft, error=error,
                      reused=seen.usage.cached_tokens if seen.usage is not None else None)

        return observed(chunks, self._clock, lambda: self._begin(request.task), end)

    async def around_call(self, kind: CallKind, subject: Any, run: Callable[[], Awaitable[Any]]) -> Any:
        s, t0 = self._begin("embed" if kind == "embed" else subject.task)
        try:
            out = await run()
        except BaseException as e:
            self._end(s, t0, tokens_in=0, tokens_out=0, ttft=None, error=e)
            raise
        tin, tout = answer_tokens(kind, subject, out)
        usage = getattr(out, "usage", None)  # a ChatResponse's, a LabelProbs' (may be None); embeddings have none
        self._end(s, t0, tokens_in=tin, tokens_out=tout,
                  ttft=out.usage.time_to_first_token_s if kind == "complete" else None, error=None,
                  reused=usage.cached_tokens if usage is not None else None)
        return out
