"""Balancing policies as pure functions, with property-based tests over random fleets."""
import random

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from nlweb_local.fleet.policies import (POLICIES, InstanceView, PickFeatures, affinity, expected_wait, p2c,
                                        policy_named, rendezvous, round_robin)

likely = st.sampled_from([True, True, True, False])
views_st = st.lists(
    st.builds(InstanceView, id=st.uuids().map(lambda u: f"http://{u}"), healthy=likely, admits=likely,
              in_flight=st.integers(0, 20), waiting=st.integers(0, 20), running=st.integers(0, 8),
              ewma_s=st.one_of(st.none(), st.floats(0.001, 10))),
    min_size=0, max_size=8, unique_by=lambda v: v.id)
features_st = st.builds(PickFeatures, affinity_key=st.one_of(st.just(""), st.text(min_size=1, max_size=20)),
                        sequence=st.integers(0, 1000))
names = sorted(POLICIES)


@pytest.mark.parametrize("name", names)
@given(f=features_st, views=views_st, seed=st.integers(0, 2**32 - 1))
@settings(max_examples=150, deadline=None)
def test_never_a_down_instance_and_every_up_one_once(name, f, views, seed):
    order = policy_named(name)(f, views, random.Random(seed)).order
    up = {v.id for v in views if v.up}
    assert set(order) == up and len(order) == len(up)  # only instances that are up; each of them, once (failover)
    if up:
        assert order[0] in up  # a down instance is never the choice while one is up


@given(views=views_st, seed=st.integers(0, 2**32 - 1))
@settings(max_examples=150, deadline=None)
def test_p2c_takes_the_less_loaded_of_its_two(views, seed):
    up = [v for v in views if v.up]
    assume(len(up) >= 2)
    rng = random.Random(seed)
    pair = random.Random(seed).sample(up, 2) if len(up) > 2 else up  # the two p2c draws with the same seed
    first = p2c(PickFeatures(), views, rng).order[0]
    known = [v.ewma_s for v in up if v.ewma_s is not None]
    prior = min(known) if known else 1.0
    assert expected_wait(next(v for v in up if v.id == first), prior) == min(expected_wait(v, prior) for v in pair)


@given(waits=st.lists(st.integers(0, 30), min_size=2, max_size=2, unique=True), ewma=st.floats(0.01, 5))
def test_p2c_with_two_instances_of_equal_speed_prefers_the_shorter_queue(waits, ewma):
    views = [InstanceView("a", waiting=waits[0], ewma_s=ewma), InstanceView("b", waiting=waits[1], ewma_s=ewma)]
    assert p2c(PickFeatures(), views, random.Random(0)).order[0] == ("a" if waits[0] < waits[1] else "b")


def test_p2c_prefers_the_faster_instance_at_equal_queues():
    views = [InstanceView("slow", ewma_s=0.3, in_flight=1), InstanceView("fast", ewma_s=0.1, in_flight=1)]
    assert p2c(PickFeatures(), views, random.Random(0)).order == ("fast", "slow")


ids_st = st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=8, unique=True)


@given(key=st.text(min_size=1, max_size=30), ids=ids_st, extra=st.text(min_size=1, max_size=6))
def test_rendezvous_is_stable_when_an_unrelated_instance_comes_or_goes(key, ids, extra):
    assume(extra not in ids)
    chosen = rendezvous(key, ids)
    grown = rendezvous(key, ids + [extra])
    assert grown in (chosen, extra)  # a new instance takes only the keys it wins
    if len(ids) > 1:
        other = next(i for i in ids if i != chosen)
        assert rendezvous(key, [i for i in ids if i != other]) == chosen  # removing another one moves nothing


@given(key=st.text(min_size=1, max_size=30), ids=ids_st, extra=st.text(min_size=1, max_size=6),
       seed=st.integers(0, 2**32 - 1))
def test_affinity_keeps_a_conversation_where_it_was_when_the_fleet_changes(key, ids, extra, seed):
    assume(extra not in ids)
    views = [InstanceView(i) for i in ids]
    f = PickFeatures(affinity_key=key)
    before = affinity(f, views, random.Random(seed)).order[0]
    after = affinity(f, views + [InstanceView(extra)], random.Random(seed)).order[0]
    assert after in (before, extra)


def test_affinity_moves_off_a_down_instance_and_spills_when_it_is_much_busier():
    views = [InstanceView(f"http://i{n}") for n in range(4)]
    f = PickFeatures(affinity_key="c:conversation-7")
    home = affinity(f, views, random.Random(0)).order[0]
    down = [InstanceView(v.id, healthy=v.id != home) for v in views]
    assert affinity(f, down, random.Random(0)).order[0] != home
    busy = [InstanceView(v.id, in_flight=5 if v.id == home else 0) for v in views]  # 5 > 2*0 + 2
    d = affinity(f, busy, random.Random(0))
    assert d.order[0] != home and "much busier" in d.reason
    a_bit = [InstanceView(v.id, in_flight=2 if v.id == home else 0) for v in views]  # 2 ≤ 2*0 + 2: stays
    assert affinity(f, a_bit, random.Random(0)).order[0] == home


def test_affinity_without_a_key_is_p2c_and_round_robin_turns():
    views = [InstanceView("a", in_flight=3, ewma_s=0.1), InstanceView("b", ewma_s=0.1)]
    assert affinity(PickFeatures(), views, random.Random(0)).order[0] == "b"
    firsts = [round_robin(PickFeatures(sequence=n), views, random.Random(0)).order[0] for n in range(4)]
    assert firsts == ["a", "b", "a", "b"]


def test_nothing_up_is_an_empty_order_with_a_reason():
    d = p2c(PickFeatures(), [InstanceView("a", healthy=False), InstanceView("b", admits=False)], random.Random(0))
    assert d.order == () and "no instance up" in d.reason


def test_an_unknown_policy_is_named_with_the_known_ones():
    with pytest.raises(ValueError, match="p2c"):
        policy_named("fastest")
