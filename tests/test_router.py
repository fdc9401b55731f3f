"""The router as a provider: choice, failover before the first token, explicit mid-stream errors, breakers."""
import random

import pytest

from nlweb_local.core.errors import (BadRequestError, ContextLengthError, NoDeploymentError, ProviderConnectionError,
                                     ProviderTimeoutError, StreamInterruptedError)
from nlweb_local.core.types import CallContext, ChatRequest, Message
from nlweb_local.providers.testing import ScriptedProvider
from nlweb_local.router.breaker import BreakerSettings, BreakerState, CircuitBreaker
from nlweb_local.router.model import DeploymentInfo, Privacy
from nlweb_local.router.router import Route, Router


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def fleet(clock=None, **breaker_kw):
    clock = clock or Clock()
    bs = BreakerSettings(**{"window": 10, "min_calls": 3, "failure_rate": 0.5, "open_s": 30, "probe_calls": 1,
                            "restore_shares": (0.5,), "calls_per_stage": 2, **breaker_kw})
    local = ScriptedProvider("local", "local answer here")
    cloud = ScriptedProvider("cloud", "cloud answer here", local=False)
    routes = [Route(DeploymentInfo("local", True), local, CircuitBreaker("local", bs, clock=clock, rng=lambda: 0.0)),
              Route(DeploymentInfo("cloud", False, price_in_per_m=2.0, price_out_per_m=8.0), cloud,
                    CircuitBreaker("cloud", bs, clock=clock, rng=lambda: 0.0))]
    return Router(routes, rng=random.Random(0), backoff_s=0.0), local, cloud, clock


def req(text="hi", **kw):
    return ChatRequest(messages=[Message("user", text)], **kw)


async def test_local_first_serves_locally_and_says_why():
    router, local, cloud, _ = fleet()
    r = await router.complete(req())
    assert r.content == "local answer here" and r.deployment == "local"
    assert r.served.deployment == "local" and r.served.reason.startswith("local-first") and not r.served.failover
    assert r.served.header().startswith("local; local-first") and cloud.calls == 0


async def test_failure_before_the_first_token_fails_over_transparently():
    router, local, cloud, _ = fleet()
    local.fail_with = ProviderConnectionError("refused", deployment="local")
    r = await router.complete(req())
    assert r.content == "cloud answer here" and r.deployment == "cloud"
    assert r.served.failover_from == ("local",) and "after failover from local" in r.served.header()


async def test_failure_after_tokens_is_an_explicit_error_not_a_truncation():
    router, local, cloud, _ = fleet()
    local.fail_after_tokens = 2
    got = []
    with pytest.raises(StreamInterruptedError) as e:
        async for ch in router.stream(req()):
            got.append(ch.delta)
    assert "".join(got) == "local answer " and e.value.deployment == "local"
    assert cloud.calls == 0  # never retried elsewhere once the answer had started


async def test_local_only_never_leaves_the_machine():
    router, local, cloud, _ = fleet()
    local.fail_with = ProviderConnectionError("down", deployment="local")
    with pytest.raises(NoDeploymentError) as e:
        await router.complete(req(context=CallContext(privacy=Privacy.LOCAL_ONLY)))
    assert cloud.calls == 0
    assert "cloud" in e.value.reasons and "local_only" in e.value.reasons["cloud"]
    assert "local" in e.value.reasons


async def test_client_errors_are_not_retried_elsewhere():
    router, local, cloud, _ = fleet()
    local.fail_with = BadRequestError("bad tool schema", deployment="local")
    with pytest.raises(BadRequestError):
        await router.complete(req())
    assert cloud.calls == 0


async def test_context_length_falls_back_to_a_bigger_window():
    router, local, cloud, _ = fleet()
    local.fail_with = ContextLengthError("too long", deployment="local")
    assert (await router.complete(req())).deployment == "cloud"


async def test_breaker_opens_then_restores_gradually():
    router, local, cloud, clock = fleet()
    local.fail_with = ProviderConnectionError("down", deployment="local")
    for _ in range(3):
        assert (await router.complete(req())).deployment == "cloud"
    assert router.breaker("local").state == BreakerState.OPEN
    calls = local.calls
    assert (await router.complete(req())).deployment == "cloud"
    assert local.calls == calls  # an open breaker is not even tried
    local.fail_with = None
    clock.t += 31  # open period over: one probe, then 50 % share, then closed
    assert (await router.complete(req())).deployment == "local"
    assert router.breaker("local").state == BreakerState.RESTORING
    for _ in range(2):
        await router.complete(req())
    assert router.breaker("local").state == BreakerState.CLOSED


async def test_nothing_can_serve_is_a_503_with_reasons_and_retry_after():
    router, local, cloud, _ = fleet(min_calls=1, failure_rate=1.0)
    local.fail_with = ProviderConnectionError("down", deployment="local")
    cloud.fail_with = ProviderConnectionError("down too", deployment="cloud")
    with pytest.raises(NoDeploymentError) as e:
        await router.complete(req())
    assert e.value.status == 503 and set(e.value.reasons) == {"local", "cloud"}
    with pytest.raises(NoDeploymentError) as e:
        await router.complete(req())  # both breakers open now
    assert e.value.retry_after >= 29 and "breaker open" in e.value.reasons["local"]


async def test_deadline_is_respected():
    router, local, cloud, _ = fleet()
    router._clock = __import__("time").monotonic
    local.token_delay_s = cloud.token_delay_s = 0.3
    with pytest.raises((ProviderTimeoutError, NoDeploymentError, StreamInterruptedError)):
        await router.complete(req(context=CallContext(deadline_s=0.2)))


async def test_strategy_per_request_and_unknown_strategy():
    router, local, cloud, _ = fleet()
    r = await router.complete(req("x" * 4000, context=CallContext(strategy="cost")))
    assert r.deployment == "local"  # local is free
    with pytest.raises(BadRequestError, match="unknown routing strategy"):
        await router.complete(req(context=CallContext(strategy="fastest-please")))


async def test_stream_and_complete_agree():
    router, _, _, _ = fleet()
    text = "".join([c.delta async for c in router.stream(req())])
    assert text == (await router.complete(req())).content


async def test_health_probe_feeds_eligibility():
    router, local, cloud, _ = fleet()
    local.healthy = False
    await router.probe()
    assert (await router.complete(req())).deployment == "cloud"
    local.healthy = True
    await router.probe()
    assert (await router.complete(req())).deployment == "local"


async def test_a_failed_probe_while_calls_are_in_flight_means_busy_not_down():
    """A single-worker engine answers its health endpoint late while it generates: with calls in flight
    (which fail, and open the breaker, if it is really dead) it stays in routing; idle, it goes down."""
    import asyncio

    router, local, cloud, _ = fleet()
    local.token_delay_s = 0.05
    busy = asyncio.create_task(router.complete(req()))
    await asyncio.sleep(0.02)  # the call is in flight on local
    local.healthy = False  # its health probe now fails (a busy single-worker engine)
    await router.probe()
    assert router.view("local").healthy and "busy: 1 calls in flight" in router.load("local").detail
    local.token_delay_s = 0.0
    assert (await router.complete(req())).deployment == "local"
    assert (await busy).deployment == "local"
    await router.probe()  # idle now, and its probe still fails: down
    assert not router.view("local").healthy
    assert (await router.complete(req())).deployment == "cloud"


async def test_a_non_streamed_call_fails_over_even_after_tokens():
    """Nobody has seen a non-streamed answer yet, so a half-way failure can still fail over."""
    router, local, cloud, _ = fleet()
    local.fail_after_tokens = 1
    r = await router.complete(req())
    assert r.content == "cloud answer here" and r.served.failover_from == ("local",)


async def test_groups_by_task_kind_and_model_alias():
    from nlweb_local.core.types import TaskKind

    router, local, cloud, _ = fleet()
    router.groups.update({"summarize": ("cloud",), "smart": ("cloud",)})
    r = await router.complete(req(task=TaskKind.SUMMARIZE))
    assert r.deployment == "cloud"  # the summarize group holds only the cloud deployment
    r = await router.complete(req(task=TaskKind.RANK))
    assert r.deployment == "local"  # no group for rank: any deployment, local first
    r = await router.complete(req(context=CallContext(deployments=router.resolve_model("smart"))))
    assert r.deployment == "cloud"


def test_groups_must_name_known_deployments():
    with pytest.raises(ValueError, match="unknown deployments"):
        Router([Route(DeploymentInfo("local", True), ScriptedProvider("local"))], groups={"rank": ["nope"]})


async def test_a_deployment_that_fails_then_recovers_within_one_request_is_used_once():
    """Round two retries the chain; a deployment that failed in round one and answers in round two ends the call."""
    router, local, cloud, _ = fleet()
    attempts = iter([ProviderConnectionError("blip", deployment="local"), None])
    local.fail_with = lambda: next(attempts, None)
    cloud.fail_with = ProviderConnectionError("down", deployment="cloud")
    text = "".join([c.delta async for c in router.stream(req())])
    assert text == "local answer here" and local.calls == 2 and cloud.calls == 1


async def test_a_callers_difficulty_decides_the_quality_tier():
    """The ranker marks its uncertain band difficulty 1.0: with the quality strategy those calls go to the
    strongest tier, while an unmarked short call stays local."""
    local = ScriptedProvider("local", "local answer here")
    cloud = ScriptedProvider("cloud", "cloud answer here", local=False)
    routes = [Route(DeploymentInfo("local", True, tier=0), local, CircuitBreaker("local", BreakerSettings())),
              Route(DeploymentInfo("cloud", False, price_in_per_m=2.0, price_out_per_m=8.0, tier=2), cloud,
                    CircuitBreaker("cloud", BreakerSettings()))]
    router = Router(routes, rng=random.Random(0), backoff_s=0.0, strategy="quality")
    hard = await router.complete(req("Question: tea cups\nItem: Recipe: chai", context=CallContext(difficulty=1.0)))
    easy = await router.complete(req("Question: tea cups\nItem: Recipe: chai"))
    assert hard.deployment == "cloud" and "difficulty 1.00" in hard.served.reason
    assert easy.deployment == "local"


async def test_classify_says_who_answered_and_whether_it_was_a_fallback():
    local = ScriptedProvider("local", classify=True)
    cloud = ScriptedProvider("cloud", local=False, classify=True)
    router = Router([Route(DeploymentInfo("local", True), local, CircuitBreaker("local", BreakerSettings())),
                     Route(DeploymentInfo("cloud", False), cloud, CircuitBreaker("cloud", BreakerSettings()))],
                    rng=random.Random(0), backoff_s=0.0)
    first = await router.classify(req("Is this good?"), ("Yes", "No"))
    assert first.probs["Yes"] == 1.0 and first.served.deployment == "local" and not first.served.failover
    local.fail_with = ProviderConnectionError("local: down", deployment="local")
    second = await router.classify(req("Is this good?"), ("Yes", "No"))
    assert second.served.deployment == "cloud" and second.served.failover
