"""The scaling policy (a pure function) and the autoscaler loop on a simulated clock: no process, no sleep.

The loop is driven tick by tick against a simulated deployment whose replicas take a few ticks to start and
whose demand (calls in flight) follows a script; each replica serves one call at a time."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nlweb_local.config.settings import AutoscaleSettings, DeploymentSettings
from nlweb_local.fleet.autoscaler import Autoscaler, measure
from nlweb_local.fleet.instance import InstanceStatus
from nlweb_local.fleet.scaling import ScaleSignals, desired_replicas, needed

A = AutoscaleSettings(min_replicas=1, max_replicas=4, ttft_slo_s=2.0, queue_per_replica=1.0, target_utilisation=0.8,
                      scale_down_utilisation=0.5, scale_up_cooldown_s=10, scale_down_cooldown_s=30, window_s=5)


def signals(in_flight, replicas, slots=1, ttft=None, **kw):
    """Signals as a deployment of `replicas` x `slots` measures them under `in_flight` calls."""
    cap = replicas * slots
    return ScaleSignals(queue_depth=max(0, in_flight - cap), in_flight=in_flight, ttft_s=ttft,
                        utilisation=min(in_flight, cap) / cap if cap else 0.0, replicas=replicas, **kw)


# -- the policy ------------------------------------------------------------------------------------
def test_a_queue_scales_up_to_what_the_demand_needs():
    d = desired_replicas(signals(3, 1), A)
    assert d.replicas == 4 and "queue 2 > 1 per replica" in d.reason  # ceil(3 / 0.8) = 4
    assert desired_replicas(signals(9, 1), A).replicas == 4  # at most max_replicas


def test_a_slow_first_token_scales_up_one_even_without_a_queue():
    d = desired_replicas(signals(1, 1, ttft=3.5), A)
    assert d.replicas == 2 and "time to first token 3.50s > objective 2s" in d.reason
    assert desired_replicas(signals(0, 1, ttft=3.5), A).replicas == 1  # an old measurement of an idle deployment


def test_idle_scales_down_to_min_after_the_cooldown_and_a_full_window():
    assert desired_replicas(signals(0, 3), A).replicas == 1
    held = desired_replicas(signals(0, 3, since_change_s=12), A)
    assert held.replicas == 3 and "cooling down (18.0s left)" in held.reason
    held = desired_replicas(signals(0, 3, observed_s=2), A)
    assert held.replicas == 3 and "observing" in held.reason


def test_the_band_between_the_thresholds_holds():
    # 2 replicas, 1 call: utilisation 0.5 is not under 0.5, and nothing queues: hold
    assert desired_replicas(signals(1, 2), A).replicas == 2
    # 3 replicas, 1 call: utilisation 0.33, and 1 call needs 2 replicas at 0.8: down to 2, not 1
    assert desired_replicas(signals(1, 3), A).replicas == 2
    # a first token over half the objective, with calls in flight, holds a scale-down
    assert desired_replicas(signals(1, 3, ttft=1.5), A).replicas == 3


def test_out_of_bounds_is_corrected_at_once():
    assert desired_replicas(signals(0, 0, since_change_s=0), A).replicas == 1
    assert desired_replicas(signals(0, 6, since_change_s=0), A).replicas == 4


def test_up_cooldown():
    held = desired_replicas(signals(5, 2, since_change_s=4), A)
    assert held.replicas == 2 and "cooling down (6.0s left)" in held.reason


demand = st.integers(0, 40)
replicas = st.integers(1, 4)
slots = st.integers(1, 4)
ttft = st.one_of(st.none(), st.floats(0.01, 10))
policy = st.builds(AutoscaleSettings, min_replicas=st.integers(1, 3), max_replicas=st.integers(3, 8),
                   ttft_slo_s=st.floats(0.5, 5), queue_per_replica=st.floats(0, 3), target_utilisation=st.floats(0.3, 1),
                   scale_down_utilisation=st.floats(0.1, 1), scale_up_cooldown_s=st.floats(0, 30),
                   scale_down_cooldown_s=st.floats(0, 120), window_s=st.floats(1, 30))


@given(f=demand, n=st.integers(0, 12), k=slots, t=ttft, a=policy, since=st.floats(0, 200))
@settings(max_examples=400, deadline=None)
def test_always_within_bounds_and_never_against_the_cooldown(f, n, k, t, a, since):
    d = desired_replicas(signals(f, n, k, t, since_change_s=since), a, k)
    assert a.min_replicas <= d.replicas <= a.max_replicas
    if a.min_replicas <= n <= a.max_replicas:
        if d.replicas > n:
            assert since >= a.scale_up_cooldown_s
        if d.replicas < n:
            assert since >= a.scale_down_cooldown_s


@given(f=demand, n=replicas, k=slots, t=ttft, a=policy)
@settings(max_examples=400, deadline=None)
def test_each_decision_is_a_fixed_point_no_flapping(f, n, k, t, a):
    """At the count it chose, the same demand (measured at that count) neither scales up nor down: the
    hysteresis holds it there."""
    n = min(max(n, a.min_replicas), a.max_replicas)
    first = desired_replicas(signals(f, n, k, t), a, k).replicas
    again = desired_replicas(signals(f, first, k, t), a, k).replicas
    if first > n:
        assert again >= first
    if first < n:
        assert again == first


@given(f=demand, extra=st.integers(1, 20), n=replicas, k=slots, t=ttft, a=policy)
@settings(max_examples=300, deadline=None)
def test_more_demand_never_asks_for_fewer_replicas(f, extra, n, k, t, a):
    n = min(max(n, a.min_replicas), a.max_replicas)
    assert (desired_replicas(signals(f + extra, n, k, t), a, k).replicas
            >= desired_replicas(signals(f, n, k, t), a, k).replicas)


def test_needed_is_the_ceiling_within_bounds():
    assert needed(0, A, 1) == 1 and needed(4, A, 1) == 4 and needed(3.2, A, 1) == 4 and needed(40, A, 1) == 4
    assert needed(4, A, 2) == 3  # 4 calls, 2 slots each, at 0.8: 2.5 -> 3


def test_measure_reads_queue_and_utilisation_from_the_instances():
    def inst(url, in_flight, waiting=0, running=0, up=True, ewma=None):
        return InstanceStatus(url, up, up, "", "closed", in_flight, waiting, running, ewma, None, 0.0, 0, 0)

    s = measure([inst("a", 3, ewma=1.0), inst("b", 1, ewma=3.0), inst("c", 0)], slots=1)
    assert (s.queue_depth, s.in_flight, s.ttft_s) == (2, 4, 2.0) and s.utilisation == pytest.approx(2 / 3)
    # an engine that reports its own slots (vLLM: 8 running, 3 waiting): its queue is what it reports
    s = measure([inst("v", 11, waiting=3, running=8)], slots=None)
    assert (s.queue_depth, s.in_flight, s.utilisation) == (3, 11, 1.0)
    # calls held in front of the instances (an admission gate) queue too
    s = measure([inst("a", 1), inst("b", 1)], slots=1, waiting=4)
    assert (s.queue_depth, s.in_flight, s.utilisation) == (4, 6, 1.0)


def test_calls_waiting_in_front_of_the_fleet_scale_it_up():
    clock = Clock()
    sim = SimDeployment(clock, start_ticks=1)
    gate = [0]
    a = AutoscaleSettings(min_replicas=1, max_replicas=3, scale_up_cooldown_s=0, window_s=1)
    scaler = Autoscaler("d", sim, sim, a, waiting=lambda: gate[0], clock=clock)
    run(scaler, sim, clock, [(3, 1)])  # one call on the one replica (a gate lets no more through)
    assert sim.current == 1
    gate[0] = 2
    run(scaler, sim, clock, [(1, 1)])
    assert sim.current == 3 and "queue 2 > 1 per replica" in scaler.events[-1]["reason"]


# -- the loop, on a simulated clock -----------------------------------------------------------------
class SimDeployment:
    """A fleet and its launcher: replicas start `start_ticks` ticks after being asked for; `demand` calls
    spread over the serving ones, one slot each; a drained replica leaves at once."""

    def __init__(self, clock, start_ticks=3, replicas=1):
        self.clock, self.start_ticks = clock, start_ticks
        self.serving, self.pending = replicas, []  # pending: the tick each starting replica serves at
        self.demand = 0
        self.dead = 0

    # the launcher's side
    @property
    def current(self):
        return self.serving + len(self.pending)

    @property
    def starting(self):
        return len(self.pending)

    def scale_to(self, n):
        while self.current < n:
            self.pending.append(self.clock.t + self.start_ticks)
        while self.current > n:
            self.serving -= 1

    def reap(self):
        n, self.dead = self.dead, 0
        self.serving -= n
        return n

    # the fleet's side
    def status(self):
        out = []
        for i in range(self.serving):
            calls = self.demand // self.serving + (1 if i < self.demand % self.serving else 0)
            out.append(InstanceStatus(f"r{i}", True, True, "", "closed", calls, 0, 0, 0.5 + 0.8 * max(0, calls - 1),
                                      None, 0.0, 0, 0))
        return out

    def tick(self):
        self.serving += sum(1 for t in self.pending if t <= self.clock.t)
        self.pending = [t for t in self.pending if t > self.clock.t]


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def run(scaler, sim, clock, script):
    """`script`: [(ticks, demand)]; one tick = interval_s = 1 s. Returns the replicas serving after each tick."""
    trace = []
    for ticks, demand in script:
        sim.demand = demand
        for _ in range(ticks):
            clock.t += 1.0
            sim.tick()
            scaler.step()
            trace.append(sim.serving)
    return trace


def test_a_load_ramp_scales_1_to_3_and_idle_back_to_1_respecting_the_cooldowns():
    clock = Clock()
    sim = SimDeployment(clock)
    a = AutoscaleSettings(min_replicas=1, max_replicas=3, scale_up_cooldown_s=5, scale_down_cooldown_s=20, window_s=5)
    scaler = Autoscaler("d", sim, sim, a, clock=clock)
    trace = run(scaler, sim, clock, [(5, 0), (30, 3), (60, 0)])
    assert trace[:5] == [1] * 5
    up_at = trace.index(3)
    assert 5 < up_at <= 5 + 2 + 3 + 1  # queue seen at once, +3 ticks to start
    assert max(trace) == 3 and trace[-1] == 1
    down_at = len(trace) - trace[::-1].index(3)  # first tick after the last one at 3
    assert down_at >= 35 + 5  # the idle window must be observed first
    assert [e["to"] for e in scaler.events] == [3, 1]
    assert scaler.scale_events == {"up": 1, "down": 1} and scaler.desired == 1


def test_demand_on_the_edge_of_the_band_does_not_flap():
    clock = Clock()
    sim = SimDeployment(clock, start_ticks=1, replicas=2)
    a = AutoscaleSettings(min_replicas=1, max_replicas=4, scale_up_cooldown_s=0, scale_down_cooldown_s=0, window_s=3,
                          ttft_slo_s=100)
    scaler = Autoscaler("d", sim, sim, a, clock=clock)
    # demand alternating 1 and 2 calls on 2 replicas: never queued, utilisation never under 0.5 -> hold
    trace = run(scaler, sim, clock, [(1, 1), (1, 2)] * 40)
    assert set(trace) == {2} and not scaler.events


def test_no_decision_while_replicas_start_and_dead_ones_are_replaced():
    clock = Clock()
    sim = SimDeployment(clock, start_ticks=10)
    a = AutoscaleSettings(min_replicas=1, max_replicas=3, scale_up_cooldown_s=0, scale_down_cooldown_s=0, window_s=1)
    scaler = Autoscaler("d", sim, sim, a, clock=clock)
    run(scaler, sim, clock, [(1, 5)])
    assert sim.current == 3 and sim.starting == 2
    run(scaler, sim, clock, [(5, 0)])  # idle while they start: nothing decided (their effect is not known yet)
    assert sim.current == 3 and len(scaler.events) == 1
    run(scaler, sim, clock, [(5, 3)])
    assert sim.serving == 3
    sim.dead = 1  # a replica's process died
    run(scaler, sim, clock, [(1, 3)])
    assert sim.current == 3 and sim.starting == 1 and scaler.events[-1]["reason"] == "replacing replicas that stopped"


def test_a_fixed_replica_count_is_an_autoscaler_held_there():
    from nlweb_local.fleet.replicas import scaling_of

    d = DeploymentSettings(name="d", engine="llama_cpp_server", replicas=2)
    a = scaling_of(d)
    assert (a.min_replicas, a.max_replicas) == (2, 2)
    assert desired_replicas(signals(40, 2), a).replicas == 2 and desired_replicas(signals(0, 2), a).replicas == 2


def test_settings_refuse_replicas_where_nothing_can_be_launched():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="llama_cpp_server, not 'vllm'"):
        DeploymentSettings(name="d", engine="vllm", replicas=2)
    with pytest.raises(ValidationError, match="remove url/instances"):
        DeploymentSettings(name="d", engine="llama_cpp_server", replicas=2, url="http://127.0.0.1:1/v1")
    with pytest.raises(ValidationError, match="min_replicas \\(3\\) is above max_replicas \\(2\\)"):
        AutoscaleSettings(min_replicas=3, max_replicas=2)
    with pytest.raises(ValidationError, match="between autoscale.min_replicas"):
        DeploymentSettings(name="d", engine="llama_cpp_server", replicas=5, autoscale={"max_replicas": 3})
    assert math.isinf(ScaleSignals(0, 0, None, 0, 1).since_change_s)


async def test_queue_depth_is_exported_for_every_deployment(tmp_path):
    """nlweb_fleet_queue_depth: a deployment without a fleet counts as one instance of one slot."""
    import asyncio

    from prometheus_client import generate_latest

    from nlweb_local.core.types import ChatRequest, Message
    from nlweb_local.providers.testing import ScriptedProvider
    from stand_ins import scripted_service, service_settings

    settings = service_settings(tmp_path, {"name": "single", "engine": "openai", "model": "m", "api_key": "sk-test",
                                           "url": "http://127.0.0.1:9/v1"}, embedded_enabled=False)
    slow = ScriptedProvider("single", text="one two three four", token_delay_s=0.5)
    comp = scripted_service(settings, {"single": slow})
    try:
        def depth():
            text = generate_latest(comp.telemetry.metrics.registry).decode()
            return next(line for line in text.splitlines() if line.startswith('nlweb_fleet_queue_depth{deployment="single"}'))

        assert depth().endswith(" 0.0")
        calls = [asyncio.create_task(comp.gateway.complete(ChatRequest([Message("user", f"q{n}")]))) for n in range(3)]
        while comp.router.view("single").in_flight < 3:  # (each call takes 2 s: 4 words, 0.5 s apart)
            await asyncio.sleep(0.01)
        assert depth().endswith(" 2.0")  # 3 in flight, 1 slot
        await asyncio.gather(*calls)
        assert depth().endswith(" 0.0")
    finally:
        await comp.close()
