"""Admission control: `PriorityGate`'s fair sharing between tenants within a class, reserved slots,
displacement from a full queue and the measured drain rate (on a simulated clock); and a deployment's
`AdmissionGate` refusing at once (503 + Retry-After) a call whose deadline the queue cannot meet."""
import asyncio

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from nlweb_local.config.settings import FleetSettings
from nlweb_local.core.errors import QueueFullError
from nlweb_local.core.priority import PriorityClasses
from nlweb_local.core.types import CallContext, ChatRequest, Message
from nlweb_local.fleet.admission import AdmissionGate
from nlweb_local.providers.priority import PriorityGate

INTERACTIVE, DEFAULT, BATCH = 10, 0, -10


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


async def queue_up(gate, calls):
    """Occupy every slot, then queue `calls` ((name, priority, tenant) in arrival order); return the tasks and
    the list the names are appended to as each call gets its slot."""
    served: list[str] = []

    async def call(name, priority, tenant):
        await gate.acquire(priority, tenant)
        served.append(name)

    for _ in range(gate.capacity):
        await gate.acquire(100)
    tasks = []
    for name, priority, tenant in calls:
        tasks.append(asyncio.create_task(call(name, priority, tenant)))
        await asyncio.sleep(0)
    return tasks, served


async def drain(gate, tasks, served, steps=None):
    """Release one slot at a time (each served call releases its own in turn)."""
    for _ in range(steps or len(tasks)):
        gate.release()
        await asyncio.sleep(0)
    return served


async def test_a_tenant_flooding_a_class_cannot_starve_another_of_that_class():
    gate = PriorityGate(capacity=1, max_waiting=100, clock=Clock())
    flood = [(f"a{i}", DEFAULT, "team-a") for i in range(20)]
    tasks, served = await queue_up(gate, flood + [("b0", DEFAULT, "team-b"), ("b1", DEFAULT, "team-b")])
    await drain(gate, tasks, served, steps=5)
    # b arrived after 20 of a's calls, yet waits for at most one of them per turn
    assert served == ["a0", "b0", "a1", "b1", "a2"]
    await drain(gate, tasks, served)
    await asyncio.gather(*tasks)


async def test_weights_share_a_class_in_proportion():
    gate = PriorityGate(capacity=1, max_waiting=100, clock=Clock(), weights={"big": 3.0})
    calls = [(f"s{i}", DEFAULT, "small") for i in range(10)] + [(f"b{i}", DEFAULT, "big") for i in range(30)]
    tasks, served = await queue_up(gate, calls)
    await drain(gate, tasks, served, steps=20)
    assert sum(n.startswith("b") for n in served) == 15 and sum(n.startswith("s") for n in served) == 5
    await drain(gate, tasks, served)
    await asyncio.gather(*tasks)


async def test_classes_come_before_tenants_and_fairness_holds_within_each():
    gate = PriorityGate(capacity=1, max_waiting=100, clock=Clock())
    calls = [("batch-a", BATCH, "a"), ("int-a1", INTERACTIVE, "a"), ("int-a2", INTERACTIVE, "a"),
             ("int-b1", INTERACTIVE, "b"), ("def-b", DEFAULT, "b")]
    tasks, served = await queue_up(gate, calls)
    await drain(gate, tasks, served)
    await asyncio.gather(*tasks)
    assert served == ["int-a1", "int-b1", "int-a2", "def-b", "batch-a"]


@hsettings(max_examples=60, deadline=None)
@given(weights=st.lists(st.sampled_from([0.5, 1.0, 2.0, 3.0]), min_size=2, max_size=4),
       arrivals=st.lists(st.integers(0, 3), min_size=8, max_size=80))
def test_backlogged_tenants_get_service_in_proportion_to_their_weights(weights, arrivals):
    """Start-time fair queueing's bound: while two tenants both wait, the calls each got, divided by its
    weight, never differ by more than 1/w_a + 1/w_b."""
    n = len(weights)
    tenants = [f"t{k}" for k in range(n)]
    arrivals = [a % n for a in arrivals]

    async def run():
        gate = PriorityGate(capacity=1, max_waiting=1000, clock=Clock(),
                            weights={t: w for t, w in zip(tenants, weights)})
        calls = [(f"{tenants[a]}#{i}", DEFAULT, tenants[a]) for i, a in enumerate(arrivals)]
        tasks, served = await queue_up(gate, calls)
        left = {t: sum(1 for _, _, x in calls if x == t) for t in tenants}
        got = dict.fromkeys(tenants, 0)
        for _ in range(len(calls)):
            gate.release()
            await asyncio.sleep(0)
            who = served[-1].split("#")[0]
            got[who] += 1
            left[who] -= 1
            waiting = [t for t in tenants if left[t] > 0]
            for a in waiting:  # (every tenant was backlogged from the start until it ran out)
                for b in waiting:
                    wa, wb = weights[tenants.index(a)], weights[tenants.index(b)]
                    assert abs(got[a] / wa - got[b] / wb) <= 1 / wa + 1 / wb + 1e-9, (got, weights)
        gate.release()
        await asyncio.gather(*tasks)
        assert gate.running == 0 and gate.waiting == 0

    asyncio.run(run())


async def test_a_reserved_slot_waits_for_the_class_it_is_kept_for():
    gate = PriorityGate(capacity=2, max_waiting=10, clock=Clock(), reserve=[(INTERACTIVE, 1)])
    await gate.acquire(BATCH, "b")  # one slot busy with batch work
    second = asyncio.create_task(gate.acquire(BATCH, "b"))
    await asyncio.sleep(0)
    assert not second.done() and gate.running == 1  # the last free slot is kept
    await asyncio.wait_for(gate.acquire(INTERACTIVE, "i"), 1)  # the interactive call takes it at once
    assert gate.running == 2
    gate.release()  # the interactive call is done: the freed slot is again the reserved one
    await asyncio.sleep(0)
    assert not second.done()
    gate.release()  # the first batch call is done: the waiting batch call may run
    await asyncio.wait_for(second, 1)
    assert gate.held_back(BATCH) == 1 and gate.held_back(INTERACTIVE) == 0
    assert PriorityGate(capacity=1, reserve=[(INTERACTIVE, 5)]).held_back(BATCH) == 0  # never every slot


async def test_a_full_queue_sheds_its_newest_lowest_class_waiter_for_a_higher_class_call():
    gate = PriorityGate(capacity=1, max_waiting=2, clock=Clock())
    await gate.acquire(BATCH)
    old = asyncio.create_task(gate.acquire(BATCH))
    new = asyncio.create_task(gate.acquire(BATCH))
    await asyncio.sleep(0)
    assert gate.full(BATCH) and not gate.full(INTERACTIVE)
    urgent = asyncio.create_task(gate.acquire(INTERACTIVE))
    await asyncio.sleep(0)
    with pytest.raises(asyncio.QueueFull, match="higher priority"):
        await new
    assert gate.displaced == 1 and gate.waiting == 2
    with pytest.raises(asyncio.QueueFull):  # a batch call finds no lower class to displace
        await gate.acquire(BATCH)
    gate.release()
    await asyncio.wait_for(urgent, 1)
    gate.release()
    await asyncio.wait_for(old, 1)
    gate.release()
    assert gate.running == 0 and gate.waiting == 0


async def test_the_drain_rate_is_measured_while_calls_wait_and_predicts_the_wait():
    clock = Clock()
    gate = PriorityGate(capacity=1, max_waiting=20, clock=clock)
    assert gate.wait_s() == 0.0 and gate.drain_rate() is None
    tasks, served = await queue_up(gate, [(f"c{i}", DEFAULT, "") for i in range(6)])
    assert gate.wait_s() is None  # it would wait, and nothing is measured yet: no guess
    for _ in range(4):
        clock.t += 0.5  # a call completes every 0.5 s
        gate.release()
        await asyncio.sleep(0)
    assert gate.drain_rate() == pytest.approx(2.0)
    assert gate.waiting == 2 and gate.wait_s(DEFAULT) == pytest.approx(1.5)  # two ahead, then its own turn
    assert gate.wait_s(INTERACTIVE) == pytest.approx(0.5)  # a higher class goes first
    assert gate.drain_s() == pytest.approx(1.0)
    await drain(gate, tasks, served, steps=3)
    await asyncio.gather(*tasks)


class Engine:
    """A deployment whose calls finish when the test says so."""

    name, model = "engine", "m"

    def __init__(self):
        from nlweb_local.providers.base import Capabilities

        self.capabilities = Capabilities(context_window=4096)
        self.release: asyncio.Queue = asyncio.Queue()
        self.started = 0

    async def stream(self, request):
        from nlweb_local.core.types import ChatChunk, Usage

        self.started += 1
        await self.release.get()
        yield ChatChunk("ok", "stop", Usage(1, 1))

    async def complete(self, request):
        from nlweb_local.providers.base import assemble

        return await assemble(self.stream(request), deployment=self.name, model=self.model)

    def admit(self, request=None):
        return None

    async def health(self):
        from nlweb_local.providers.base import LoadSnapshot

        return LoadSnapshot(healthy=True, waiting=0, running=self.started)

    async def close(self):
        return None


def call(priority=DEFAULT, deadline=None, team=""):
    return ChatRequest([Message("user", "hi")], deadline_s=deadline, context=CallContext(priority=priority, team=team))


async def test_a_deployment_gate_refuses_at_once_a_call_whose_deadline_the_queue_cannot_meet():
    clock, engine = Clock(), Engine()
    gate = AdmissionGate(engine, FleetSettings(slots=2, max_waiting=10), instances=lambda: 1, clock=clock)
    calls = [asyncio.create_task(gate.complete(call(deadline=60))) for _ in range(6)]
    await asyncio.sleep(0.01)
    assert engine.started == 2 and gate.gate.waiting == 4  # two slots on the engine, the rest wait here
    for _ in range(2):
        clock.t += 1.0  # a call completes every second
        engine.release.put_nowait(None)
        await asyncio.sleep(0.01)
    assert gate.gate.drain_rate() == pytest.approx(1.0) and gate.gate.waiting == 2
    with pytest.raises(QueueFullError, match="cannot start within its deadline") as refused:
        await gate.complete(call(deadline=2.5))  # third in line at 1 call/s: about 3 s
    assert refused.value.status == 503 and refused.value.retry_after == pytest.approx(2.0)
    with pytest.raises(QueueFullError):
        gate.admit(call(deadline=2.5))  # the router's pre-check says the same
    gate.admit(call(deadline=3.5))
    urgent = asyncio.create_task(gate.complete(call(INTERACTIVE, deadline=1.5)))  # goes first: about 1 s
    await asyncio.sleep(0.01)
    assert gate.refused == 1 and not urgent.done()
    engine.release.put_nowait(None)
    await asyncio.sleep(0.01)
    assert engine.started == 5  # the interactive call got the freed slot before the older default ones
    for _ in range(5):
        engine.release.put_nowait(None)
    out = await asyncio.wait_for(urgent, 1)
    assert out.content == "ok"
    await asyncio.wait_for(asyncio.gather(*calls), 1)
    assert gate.gate.running == 0 and gate.gate.waiting == 0


async def test_a_deployment_gate_follows_its_instances_and_adds_its_queue_to_the_load():
    engine, n = Engine(), [1]
    gate = AdmissionGate(engine, FleetSettings(slots=1, max_waiting=4), instances=lambda: n[0], clock=Clock())
    calls = [asyncio.create_task(gate.complete(call())) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert engine.started == 1 and (await gate.health()).waiting == 2
    n[0] = 3  # two more instances came up: their slots are taken at once
    gate.admit(call())
    await asyncio.sleep(0.01)
    assert engine.started == 3 and gate.status()["slots"] == 3 and gate.status()["waiting"] == 0
    for _ in range(3):
        engine.release.put_nowait(None)
    await asyncio.wait_for(asyncio.gather(*calls), 1)


def test_reserve_names_must_be_classes():
    from nlweb_local.core.errors import BadRequestError

    with pytest.raises(BadRequestError, match="interactive \\(10\\), default \\(0\\), batch \\(-10\\)"):
        AdmissionGate(Engine(), FleetSettings(slots=1, reserve={"urgent": 1}), classes=PriorityClasses())


async def test_over_http_a_call_the_queue_cannot_serve_in_time_gets_503_and_retry_after_at_once(tmp_path):
    """A deployment with `fleet.slots`: its queue, its measured drain rate, and a request whose
    x-nlweb-deadline-ms it cannot meet refused at once (not left to time out), in OpenAI's format."""
    import httpx

    from nlweb_local.providers.testing import ScriptedProvider
    from nlweb_local.providers.wrapper import find
    from nlweb_local.server.app import create_app
    from stand_ins import scripted_service, service_settings

    settings = service_settings(tmp_path, {"name": "remote", "engine": "openai", "url": "http://127.0.0.1:9/v1",
                                           "api_key": "x", "fleet": {"slots": 1, "max_waiting": 8}},
                                embedded_enabled=False)
    settings.cache.enabled = False
    engine = ScriptedProvider("remote", "one two three", token_delay_s=0.05)  # ~0.15 s a call, one at a time
    comp = scripted_service(settings, {"remote": engine}, telemetry=None)
    gate = find(comp.router.provider("remote"), AdmissionGate)
    assert gate is not None and comp.router.view("remote").info.max_concurrency > 1 + 8
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    app = create_app(settings, comp, close_components=False)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as c:
            backlog = [asyncio.create_task(c.post("/v1/chat/completions", json=body)) for _ in range(6)]
            while gate.gate.drain_rate() is None:  # two calls done while others waited
                await asyncio.sleep(0.02)
            assert gate.gate.waiting >= 1
            late = await c.post("/v1/chat/completions", json=body, headers={"x-nlweb-deadline-ms": "50"})
            done = await asyncio.gather(*backlog)
            fleet = (await c.get("/admin/fleet")).json()["deployments"][0]["admission"]
    finally:
        await comp.close()
    assert [r.status_code for r in done] == [200] * 6
    # refused by admission (its words), not left to wait for its turn until the deadline passed
    assert late.status_code == 503 and int(late.headers["retry-after"]) >= 1
    assert "cannot start within its deadline" in late.json()["error"]["message"]
    assert fleet["refused"] == 1 and fleet["slots"] == 1 and fleet["waiting"] == 0
