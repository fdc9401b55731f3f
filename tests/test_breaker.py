"""The circuit breaker's state machine, on a fake clock."""
import pytest

from nlweb_local.core.errors import BadRequestError, OverloadedError, ProviderConnectionError, RateLimitedError
from nlweb_local.router.breaker import BreakerSettings, BreakerState, CircuitBreaker, counts_as_failure


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def make(**kw):
    clock, changes = Clock(), []
    s = BreakerSettings(**{"window": 10, "min_calls": 4, "failure_rate": 0.5, "open_s": 30, "probe_calls": 2,
                           "restore_shares": (0.1, 0.5), "calls_per_stage": 3, **kw})
    b = CircuitBreaker("d1", s, clock=clock, rng=lambda: 0.0,
                       on_change=lambda name, old, new, why: changes.append((old.value, new.value)))
    return b, clock, changes


FAIL = ProviderConnectionError("down")


def test_what_counts_as_a_failure():
    assert counts_as_failure(FAIL) and counts_as_failure(RateLimitedError("slow down", retry_after=3))
    assert counts_as_failure(OverloadedError("full")) and counts_as_failure(RuntimeError("bug"))
    assert not counts_as_failure(BadRequestError("bad input")) and not counts_as_failure(None)


def test_opens_on_failure_rate_only_after_min_calls():
    b, clock, _ = make()
    for _ in range(3):
        b.record(FAIL)
    assert b.state is BreakerState.CLOSED  # 3 calls < min_calls
    b.record(FAIL)
    assert b.state is BreakerState.OPEN and not b.allows()
    assert b.retry_after() == pytest.approx(30)


def test_client_errors_do_not_open_it():
    b, _, _ = make()
    for _ in range(10):
        b.record(BadRequestError("your fault"))
    assert b.state is BreakerState.CLOSED


def test_slow_calls_open_it():
    b, _, _ = make(slow_call_s=2.0, slow_rate=0.75)
    for _ in range(4):
        b.record(None, duration_s=5.0)
    assert b.state is BreakerState.OPEN and "slow-call" in b.reason


def test_retry_after_from_upstream_extends_the_open_period():
    b, clock, _ = make(min_calls=1, failure_rate=1.0)
    b.record(RateLimitedError("429", retry_after=90))
    assert b.state is BreakerState.OPEN and b.retry_after() == pytest.approx(90)
    clock.t += 31
    assert not b.allows()  # 30 s open period over, but the upstream asked for 90
    clock.t += 60
    assert b.allows() and b.state is BreakerState.HALF_OPEN


def test_half_open_probes_then_gradual_restoration_then_closed():
    b, clock, changes = make()
    for _ in range(4):
        b.record(FAIL)
    clock.t += 30
    assert b.allows() and b.allows() and not b.allows()  # two probe slots
    b.record(None)
    b.record(None)
    assert b.state is BreakerState.RESTORING and b.share() == 0.1
    for _ in range(3):
        b.record(None)
    assert b.share() == 0.5
    for _ in range(3):
        b.record(None)
    assert b.state is BreakerState.CLOSED and b.share() == 1.0
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "restoring"), ("restoring", "closed")]


def test_restoring_admits_only_its_share():
    clock = Clock()
    draws = iter([0.05, 0.2, 0.6, 0.09])
    b = CircuitBreaker("d", BreakerSettings(min_calls=1, failure_rate=1.0, probe_calls=1, restore_shares=(0.1,)),
                       clock=clock, rng=lambda: next(draws))
    b.record(FAIL)
    clock.t += 31
    assert b.allows()
    b.record(None)
    assert b.state is BreakerState.RESTORING
    assert [b.allows() for _ in range(4)] == [True, False, False, True]


def test_a_failed_probe_reopens():
    b, clock, _ = make()
    for _ in range(4):
        b.record(FAIL)
    clock.t += 30
    assert b.allows()
    b.record(FAIL)
    assert b.state is BreakerState.OPEN and b.retry_after() == pytest.approx(30)


def test_admin_force_open_and_reset():
    b, clock, _ = make()
    b.force_open(seconds=5)
    assert b.state is BreakerState.OPEN and b.snapshot().reason == "forced open by an operator"
    b.reset()
    assert b.state is BreakerState.CLOSED and b.allows()
    snap = b.snapshot()
    assert snap.state == "closed" and snap.share == 1.0
