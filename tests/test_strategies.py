"""Routing strategies as pure functions, with property-based tests over random fleets."""
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nlweb_local.router.model import DeploymentInfo, DeploymentView, Privacy, RequestFeatures
from nlweb_local.router.strategies import (STRATEGIES, calibrate_threshold, cost_optimised, latency_optimised,
                                           local_first, quality_optimised, sticky_bucket, with_rollout)

views_st = st.lists(
    st.builds(
        DeploymentView,
        info=st.builds(DeploymentInfo, name=st.uuids().map(str), local=st.booleans(),
                       price_in_per_m=st.floats(0, 30), price_out_per_m=st.floats(0, 60),
                       context_window=st.sampled_from([2048, 8192, 128000]), max_concurrency=st.integers(1, 64),
                       json_schema=st.booleans(), tools=st.booleans(), tier=st.integers(0, 3)),
        healthy=st.booleans(), admits=st.booleans(), breaker=st.sampled_from(["closed", "open", "half_open"]),
        in_flight=st.integers(0, 70), waiting=st.integers(0, 20),
        ewma_ttft_s=st.one_of(st.none(), st.floats(0.01, 10))),
    min_size=0, max_size=8, unique_by=lambda v: v.name)
features_st = st.builds(RequestFeatures, prompt_tokens=st.integers(0, 10000), max_tokens=st.integers(1, 4000),
                        needs_json=st.booleans(), needs_tools=st.booleans(), privacy=st.sampled_from(list(Privacy)),
                        difficulty=st.floats(0, 1), conversation=st.text(max_size=8))
all_strategies = st.sampled_from(list(STRATEGIES.values()) + [with_rollout(local_first, 0.25), with_rollout(cost_optimised, 0.75)])


@settings(max_examples=300, deadline=None)
@given(features_st, views_st, all_strategies, st.integers(0, 2**32))
def test_every_strategy_keeps_the_hard_rules(f, views, strategy, seed):
    d = strategy(f, views, random.Random(seed))
    by_name = {v.name: v for v in views}
    assert len(set(d.ordered)) == len(d.ordered) and set(d.ordered) <= set(by_name)
    assert set(d.ordered).isdisjoint(d.rejected)
    for name in d.ordered:
        v = by_name[name]
        if f.privacy is Privacy.LOCAL_ONLY:
            assert v.info.local, "local_only must never yield a cloud deployment"
        assert v.admits, "an open breaker is never chosen"
        assert v.healthy
        assert f.prompt_tokens + f.max_tokens <= v.info.context_window
    assert set(d.ordered) | set(d.rejected) == set(by_name) or strategy is not local_first
    assert d.reason


@settings(max_examples=200, deadline=None)
@given(features_st, views_st, st.integers(0, 2**32))
def test_local_first_never_sends_to_cloud_while_a_local_can_serve(f, views, seed):
    d = local_first(f, views, random.Random(seed))
    by_name = {v.name: v for v in views}
    if any(by_name[n].info.local for n in d.ordered):
        # locals first; cloud only as the tail of the fallback chain
        kinds = [by_name[n].info.local for n in d.ordered]
        assert kinds[0] and kinds == sorted(kinds, reverse=True)


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
