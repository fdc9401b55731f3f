"""A circuit breaker per deployment, driven by an injectable clock (so tests need no sleeping).

    CLOSED ──(failure rate or slow-call rate ≥ threshold over the window, with ≥ min_calls)──► OPEN
    OPEN ──(open_s elapsed, or the upstream's Retry-After, whichever is later)──► HALF_OPEN
    HALF_OPEN ──(probe_calls probes all succeed)──► RESTORING ──(each stage's calls succeed)──► CLOSED
    HALF_OPEN / RESTORING ──(any failure)──► OPEN

RESTORING admits a growing share of traffic (e.g. 10 % → 50 % → 100 %) instead of a flood.

The breaker judges the deployment, not the caller or the gateway (`outcome`):
- a failure: 5xx, connection errors, 429, and timeouts of calls that had a fair time (at least
  `slow_call_s`) to answer;
- not counted at all: nlweb-local's own back-pressure (`QueueFullError`: the queue in front of an
  in-process engine), timeouts under a deadline the client chose shorter than `slow_call_s`, a call the
  client abandoned (cancelled);
- a success: every other answer, including 4xx (the request's fault, not the deployment's).
Slowness is judged on service time: callers pass the duration without the time spent waiting in
nlweb-local's own queue. An upstream's Retry-After lengthens the open period up to `max_retry_after_s`;
NaN, infinite and negative values are ignored.
"""
from __future__ import annotations

import asyncio
import enum
import math
import random
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Callable

from ..config.settings import BreakerSettings
from ..core.errors import (BadRequestError, NlwebError, ProviderError, ProviderTimeoutError, QueueFullError,
                           RateLimitedError)

__all__ = ["BreakerSettings", "BreakerSnapshot", "BreakerState", "CircuitBreaker", "Outcome", "counts_as_failure",
           "outcome"]


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    RESTORING = "restoring"


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A breaker as an operator sees it (GET /admin/breakers)."""

    deployment: str
    state: str
    reason: str
    share: float  # share of traffic it lets through now
    retry_after_s: float
    window_calls: int
    failure_rate: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Outcome(str, enum.Enum):
    OK = "ok"
    FAILURE = "failure"
    IGNORED = "ignored"  # says nothing about the deployment


def outcome(error: BaseException | None, *, budget_s: float | None = None, fair_s: float = 30.0) -> Outcome:
    """What a call's result says about the deployment. `budget_s`: the time the call was given (a
    timeout under a budget shorter than `fair_s` is the client's deadline, not the deployment's fault)."""
    if error is None:
        return Outcome.OK
    if isinstance(error, (QueueFullError, asyncio.CancelledError, GeneratorExit)):
        return Outcome.IGNORED
    if isinstance(error, ProviderTimeoutError) and budget_s is not None and budget_s < fair_s:
        return Outcome.IGNORED
    return Outcome.FAILURE if counts_as_failure(error) else Outcome.OK


def counts_as_failure(error: BaseException | None) -> bool:
    if error is None:
        return False
    if isinstance(error, RateLimitedError):
        return True
    if isinstance(error, ProviderError):
        return error.retryable or error.status >= 500
    if isinstance(error, NlwebError):
        return False  # 4xx: the request's fault, not the deployment's
    return True  # anything unexpected


class CircuitBreaker:
    def __init__(self, name: str, settings: BreakerSettings = BreakerSettings(), *,
                 clock: Callable[[], float] = time.monotonic, rng: Callable[[], float] = random.random,
                 on_change: Callable[[str, BreakerState, BreakerState, str], None] | None = None):
        self.name = name
        self._s = settings
        self._clock = clock
        self._rng = rng
        self._on_change = on_change
        self.state = BreakerState.CLOSED
        self._calls: deque[tuple[bool, bool]] = deque(maxlen=settings.window)  # (failed, slow)
        self._n_failed = 0  # running counts over the window, so recording a call is O(1)
        self._n_slow = 0
        self._opened_at = 0.0
        self._open_until = 0.0
        self._probes_in_flight = 0
        self._stage_ok = 0
        self._stage = 0
        self.reason = ""

    # -- decisions ----------------------------------------------------------------------------
    def retry_after(self) -> float:
        return max(0.0, self._open_until - self._clock()) if self.state is BreakerState.OPEN else 0.0

    def available(self) -> bool:
        """Could a call go through soon (not OPEN)? Unlike `allows`, takes no probe slot."""
        self._advance()
        return self.state is not BreakerState.OPEN

    def allows(self) -> bool:
        """May a call go to this deployment now? (Takes a probe slot in HALF_OPEN.)"""
        self._advance()
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            return False
        if self.state is BreakerState.HALF_OPEN:
            if self._probes_in_flight < self._s.probe_calls - self._stage_ok:
                self._probes_in_flight += 1
                return True
            return False
        return self._rng() < self.share()

    def share(self) -> float:
        """Share of traffic this deployment should get now (1.0 closed, 0 open)."""
        self._advance()
        if self.state is BreakerState.CLOSED:
            return 1.0
        if self.state is BreakerState.RESTORING:
            return self._s.restore_shares[self._stage]
        return 0.0

    # -- outcomes -----------------------------------------------------------------------------
    def record(self, error: BaseException | None, duration_s: float = 0.0, *, budget_s: float | None = None) -> None:
        """One call's result. `duration_s`: its service time (without waiting in nlweb-local's own
        queue); `budget_s`: the time it was given (see `outcome`)."""
        if error is None and self.state is BreakerState.CLOSED:  # the common case: a success while closed
            self._window(False, duration_s >= self._s.slow_call_s, None)
            return
        verdict = outcome(error, budget_s=budget_s, fair_s=self._s.slow_call_s)
        if verdict is Outcome.IGNORED:
            self._advance()
            if self.state is BreakerState.HALF_OPEN:  # a probe that proved nothing frees its slot
                self._probes_in_flight = max(0, self._probes_in_flight - 1)
            return
        failed = verdict is Outcome.FAILURE
        slow = duration_s >= self._s.slow_call_s
        self._advance()
        if self.state is BreakerState.HALF_OPEN:
            self._probes_in_flight = max(0, self._probes_in_flight - 1)
            if failed:
                self._open(f"probe failed: {error!r}"[:200], error)
            else:
                self._stage_ok += 1
                if self._stage_ok >= self._s.probe_calls:
                    self._stage, self._stage_ok = 0, 0
                    self._set(BreakerState.RESTORING if self._s.restore_shares else BreakerState.CLOSED, "probes succeeded")
            return
        if self.state is BreakerState.RESTORING:
            if failed:
                self._open(f"failed while restoring: {error!r}"[:200], error)
                return
            self._stage_ok += 1
            if self._stage_ok >= self._s.calls_per_stage:
                self._stage_ok = 0
                self._stage += 1
                if self._stage >= len(self._s.restore_shares):
                    self._clear_window()
                    self._set(BreakerState.CLOSED, "traffic restored")
            return
        if self.state is BreakerState.OPEN:
            return  # a call that started before the breaker opened
        self._window(failed, slow, error)

    def _window(self, failed: bool, slow: bool, error: BaseException | None) -> None:
        """A call recorded while CLOSED: into the window; open when its failure or slow-call rate is reached."""
        calls = self._calls
        if len(calls) == calls.maxlen:  # the oldest call leaves the window
            old_failed, old_slow = calls[0]
            self._n_failed -= old_failed
            self._n_slow -= old_slow
        calls.append((failed, slow))
        self._n_failed += failed
        self._n_slow += slow
        n = len(self._calls)
        if n >= self._s.min_calls and (self._n_failed or self._n_slow):
            fails = self._n_failed / n
            slows = self._n_slow / n
            if fails >= self._s.failure_rate:
                self._open(f"failure rate {fails:.0%} over the last {n} calls", error)
            elif slows >= self._s.slow_rate:
                self._open(f"slow-call rate {slows:.0%} (≥ {self._s.slow_call_s}s) over the last {n} calls", error)

    # -- admin --------------------------------------------------------------------------------
    def force_open(self, seconds: float | None = None, reason: str = "forced open by an operator") -> None:
        if seconds is not None and not (math.isfinite(seconds) and 0 < seconds <= 86_400 * 365):
            raise BadRequestError(f"seconds must be a number of seconds between 0 and one year, not {seconds!r}")
        self._open(reason, None, seconds)

    def reset(self) -> None:
        self._clear_window()
        self._probes_in_flight = self._stage = self._stage_ok = 0
        self._set(BreakerState.CLOSED, "reset by an operator")

    def snapshot(self) -> BreakerSnapshot:
        self._advance()
        n = len(self._calls)
        return BreakerSnapshot(self.name, self.state.value, self.reason, self.share(), round(self.retry_after(), 3), n,
                               round(self._n_failed / n, 3) if n else 0.0)

    # -- internals ----------------------------------------------------------------------------
    def _open(self, reason: str, error: BaseException | None, seconds: float | None = None) -> None:
        now = self._clock()
        hint = getattr(error, "retry_after", None) or 0.0
        if not isinstance(hint, (int, float)) or not math.isfinite(hint) or hint < 0:
            hint = 0.0
        hint = min(hint, self._s.max_retry_after_s)  # an upstream cannot keep it open for hours
        self._opened_at = now
        self._open_until = now + max(seconds if seconds is not None else self._s.open_s, hint)
        self._probes_in_flight = self._stage = self._stage_ok = 0
        self._clear_window()
        self._set(BreakerState.OPEN, reason)

    def _advance(self) -> None:
        if self.state is BreakerState.OPEN and self._clock() >= self._open_until:
            self._probes_in_flight = self._stage_ok = 0
            self._set(BreakerState.HALF_OPEN, "open period over; probing")

    def _clear_window(self) -> None:
        self._calls.clear()
        self._n_failed = self._n_slow = 0

    def _set(self, state: BreakerState, reason: str) -> None:
        old, self.state, self.reason = self.state, state, reason
        if old is not state and self._on_change:
            self._on_change(self.name, old, state, reason)
