"""Routing strategies as pure functions, with property-based tests over random fleets."""
import random

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from nlweb_local.router.model import DeploymentInfo, DeploymentView, Privacy, RequestFeatures
from nlweb_local.router.strategies import (STRATEGIES, calibrate_threshold, cost_optimised, latency_optimised,
                                           local_first, quality_optimised, sticky_bucket, with_rollout)

likely = st.sampled_from([True, True, True, False])  # most deployments can serve, so most orders have several
views_st = st.lists(
    st.builds(
        DeploymentView,
        info=st.builds(DeploymentInfo, name=st.uuids().map(str), local=st.booleans(),
                       price_in_per_m=st.floats(0, 30), price_out_per_m=st.floats(0, 60),
                       context_window=st.sampled_from([2048, 8192, 128000]), max_concurrency=st.integers(1, 64),
                       json_schema=likely, tools=likely, tier=st.integers(0, 3)),
        healthy=likely, admits=likely, breaker=st.sampled_from(["closed", "open", "half_open"]),
        in_flight=st.one_of(st.integers(0, 2), st.integers(0, 70)), waiting=st.integers(0, 20),
        ewma_ttft_s=st.one_of(st.none(), st.floats(0.01, 10))),
    min_size=0, max_size=10, unique_by=lambda v: v.name)
rarely = st.sampled_from([False, False, False, True])
features_st = st.builds(RequestFeatures, prompt_tokens=st.one_of(st.integers(0, 1000), st.integers(0, 10000)),
                        max_tokens=st.one_of(st.integers(1, 500), st.integers(1, 4000)), needs_json=rarely,
                        needs_tools=rarely, privacy=st.sampled_from([Privacy.ANY, Privacy.ANY, Privacy.LOCAL_ONLY]),
                        difficulty=st.floats(0, 1), conversation=st.one_of(st.just(""), st.text(min_size=1, max_size=8)))


def can_serve(f: RequestFeatures, v: DeploymentView) -> bool:
    """The hard rules, restated here (not imported) so that the property checks the strategies against them."""
    return ((v.info.local or f.privacy is not Privacy.LOCAL_ONLY) and (v.info.json_schema or not f.needs_json)
            and (v.info.tools or not f.needs_tools) and f.prompt_tokens + f.max_tokens <= v.info.context_window
            and v.healthy and v.admits and v.in_flight < v.info.max_concurrency)


def cost(f, v):
    return (f.prompt_tokens * v.info.price_in_per_m + f.max_tokens * v.info.price_out_per_m) / 1e6


def load(v):
    return (v.in_flight + v.waiting) / max(1, v.info.max_concurrency)


def latency(v):
    return (v.ewma_ttft_s if v.ewma_ttft_s is not None else 1.0) * (1 + v.waiting + v.in_flight / max(1, v.info.max_concurrency))


def non_decreasing(xs) -> bool:
    return all(a <= b for a, b in zip(xs, xs[1:]))


def local_first_order(f, order, views, seed):
    """Every local before every cloud; locals by load, clouds by estimated cost."""
    local = [v for v in order if v.info.local]
    assert order[:len(local)] == local, "a cloud deployment comes before a local one"
    assert non_decreasing([load(v) for v in local]) and non_decreasing([cost(f, v) for v in order[len(local):]])


def cost_order(f, order, views, seed):
    assert non_decreasing([(cost(f, v), load(v)) for v in order])


def latency_order(f, order, views, seed, close=1.25):
    """By expected latency, except that the first may be any one within `close`× of the best (two random choices)."""
    if order:
        assert latency(order[0]) <= min(latency(v) for v in order) * close
        assert non_decreasing([latency(v) for v in order[1:]])


def quality_order(f, order, views, seed, threshold=0.5):
    """Hard requests: strongest tier first, then cheapest; easy ones: local first, then lowest tier, then cheapest."""
    if f.difficulty >= threshold:
        assert non_decreasing([(-v.info.tier, cost(f, v)) for v in order])
    else:
        assert non_decreasing([(not v.info.local, v.info.tier, cost(f, v)) for v in order])


def rollout_order(inner_name, share):
    """One side (local or cloud) first, that side being the conversation's sticky one; the inner order kept within
    each side."""
    def check(f, order, views, seed):
        inner = STRATEGIES[inner_name](f, views, random.Random(seed)).ordered  # the rollout's inner call sees this rng
        sides = [v.info.local for v in order]
        assert sides == sorted(sides, key=lambda local: local != sides[0]), "local and cloud interleave"
        if f.conversation and sides:
            assert sides[0] == (sticky_bucket(f.conversation) < share) or len(set(sides)) == 1
        rank = {n: i for i, n in enumerate(inner)}
        for side in (True, False):
            names = [v.name for v in order if v.info.local is side and v.name in rank]
            assert names == sorted(names, key=rank.__getitem__), "the inner strategy's order is not kept"
    return check


NAMED = {"local-first": (local_first, local_first_order), "cost": (cost_optimised, cost_order),
         "latency": (latency_optimised, latency_order), "quality": (quality_optimised, quality_order),
         "rollout 25% local-first": (with_rollout(local_first, 0.25), rollout_order("local-first", 0.25)),
         "rollout 75% cost": (with_rollout(cost_optimised, 0.75), rollout_order("cost", 0.75))}


@pytest.mark.parametrize("name", list(NAMED))
@settings(max_examples=300, deadline=None)
@given(f=features_st, views=views_st, seed=st.integers(0, 2**32))
def test_every_strategy_keeps_the_hard_rules_and_its_order(name, f, views, seed):
    strategy, ordered_as_promised = NAMED[name]
    d = strategy(f, views, random.Random(seed))
    by_name = {v.name: v for v in views}
    assert len(set(d.ordered)) == len(d.ordered) and set(d.ordered) <= set(by_name)
    order = [by_name[n] for n in d.ordered]
    # exactly the deployments that can serve are candidates; every other one is rejected with a reason
    assert {v.name for v in order} == {v.name for v in views if can_serve(f, v)}
    assert set(d.rejected) == set(by_name) - set(d.ordered) and all(d.rejected.values())
    if f.privacy is Privacy.LOCAL_ONLY:
        assert all(v.info.local for v in order), "local_only must never yield a cloud deployment"
    ordered_as_promised(f, order, views, seed)
    assert d.reason
    event(f"{len(order)} candidates" if len(order) < 3 else "3+ candidates")  # see --hypothesis-show-statistics


def view(name, local=True, **kw):
    info_kw = {k: kw.pop(k) for k in list(kw) if k in DeploymentInfo.__dataclass_fields__}
    return DeploymentView(DeploymentInfo(name, local, **info_kw), **kw)


def test_local_first_falls_back_to_cloud_with_the_reasons():
    views = [view("gpu", admits=False, breaker="open"), view("cpu", healthy=False),
             view("gpt", local=False, price_in_per_m=2), view("claude", local=False, price_in_per_m=3)]
    d = local_first(RequestFeatures(), views, random.Random(0))
    assert d.ordered == ("gpt", "claude")
    assert "gpu: breaker open" in d.reason and "cpu: unhealthy" in d.reason


def test_cost_picks_the_cheapest_estimate():
    views = [view("a", local=False, price_in_per_m=10, price_out_per_m=30), view("b", price_in_per_m=0.1, price_out_per_m=0.1)]
    assert cost_optimised(RequestFeatures(prompt_tokens=1000), views, random.Random(0)).ordered == ("b", "a")


def test_latency_prefers_fast_and_idle():
    views = [view("slow", ewma_ttft_s=2.0), view("fast", ewma_ttft_s=0.2), view("fast-busy", ewma_ttft_s=0.2, waiting=9)]
    assert latency_optimised(RequestFeatures(), views, random.Random(0)).ordered[0] == "fast"


def test_quality_escalates_hard_requests():
    views = [view("small", tier=0), view("big", local=False, tier=2, price_in_per_m=5)]
    assert quality_optimised(RequestFeatures(difficulty=0.9), views, random.Random(0), threshold=0.6).ordered[0] == "big"
    assert quality_optimised(RequestFeatures(difficulty=0.2), views, random.Random(0), threshold=0.6).ordered[0] == "small"


def test_threshold_calibration_hits_the_target_share():
    rng = random.Random(1)
    xs = [rng.random() for _ in range(1000)]
    for target in (0.1, 0.25, 0.5):
        t = calibrate_threshold(xs, target)
        share = sum(x >= t for x in xs) / len(xs)
        assert abs(share - target) < 0.01


def test_rollout_is_sticky_per_conversation_and_near_its_share():
    views = [view("local"), view("cloud", local=False)]
    strat = with_rollout(local_first, 0.25)
    firsts = [strat(RequestFeatures(conversation=f"c{i}"), views, random.Random(i)).ordered[0] for i in range(2000)]
    assert abs(firsts.count("local") / 2000 - 0.25) < 0.04
    again = [strat(RequestFeatures(conversation=f"c{i}"), views, random.Random(99)).ordered[0] for i in range(50)]
    assert again == firsts[:50]
    assert 0 <= sticky_bucket("x") < 1


def test_route_header_names_the_choice():
    from nlweb_local.core.types import Served

    d = local_first(RequestFeatures(), [view("cpu")], random.Random(0))
    assert d.ordered[0] == "cpu" and d.reason.startswith("local-first")
    assert Served(d.ordered[0], d.reason).header().startswith("cpu; local-first")
    assert Served("gpu", "difficulty 0.90 ≥ 0.50", ("cpu",)).header() == "gpu; difficulty 0.90 ? 0.50; after failover from cpu"


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_nothing_eligible_gives_an_empty_order_with_reasons(name):
    d = STRATEGIES[name](RequestFeatures(privacy=Privacy.LOCAL_ONLY), [view("gpt", local=False)], random.Random(0))
    assert d.ordered == () and "local_only" in d.rejected["gpt"]
