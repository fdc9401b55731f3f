"""Per-request priority: `PriorityGate` orders the calls waiting for an engine (higher first, FIFO within
a priority), and the gateway's `x-nlweb-priority` header reaches the engine as `ChatRequest.context.priority`."""
import asyncio

import pytest

from nlweb_local.providers.priority import PriorityGate


async def test_waiting_calls_are_served_by_priority_then_in_arrival_order():
    gate = PriorityGate(capacity=1)
    served: list[str] = []

    async def call(name: str, priority: int) -> None:
        await gate.acquire(priority)
        try:
            served.append(name)
            await asyncio.sleep(0)  # hold the engine for a moment, as a real call would
        finally:
            gate.release()

    await gate.acquire(0)  # the engine is busy: everyone below has to queue
    tasks = []
    for name, priority in [("low-1", 0), ("high-1", 5), ("low-2", 0), ("mid", 2), ("high-2", 5)]:
        tasks.append(asyncio.create_task(call(name, priority)))
        await asyncio.sleep(0)  # arrival order is creation order
    assert gate.waiting == 5
    gate.release()
    await asyncio.gather(*tasks)
    assert served == ["high-1", "high-2", "mid", "low-1", "low-2"]
    assert gate.running == 0 and gate.waiting == 0


async def test_a_cancelled_waiter_leaves_the_queue_and_never_holds_the_slot():
    gate = PriorityGate(capacity=1)
    await gate.acquire()
    gone = asyncio.create_task(gate.acquire(9))
    stays = asyncio.create_task(gate.acquire(1))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    assert gate.waiting == 1
    gate.release()
    await asyncio.wait_for(stays, 1)  # the slot skipped the cancelled waiter
    gate.release()
    assert gate.running == 0


async def test_the_queue_is_bounded():
    gate = PriorityGate(capacity=1, max_waiting=2)
    await gate.acquire()
    waiters = [asyncio.create_task(gate.acquire()) for _ in range(2)]
    await asyncio.sleep(0)
    assert gate.full()
    with pytest.raises(asyncio.QueueFull):
        await gate.acquire()
    for _ in range(3):
        gate.release()
        await asyncio.sleep(0)
    await asyncio.gather(*waiters)
    assert gate.running == 0 and not gate.full()


def test_the_priority_header_reaches_the_engine():
    from starlette.testclient import TestClient

    from nlweb_local.config.settings import load_settings
    from nlweb_local.providers.testing import ScriptedProvider
    from nlweb_local.server.app import create_app
    from stand_ins import scripted_service

    seen: list[int] = []

    class Recording(ScriptedProvider):
        def stream(self, request):
            seen.append(request.context.priority)
            return super().stream(request)

    local = Recording("local", "hi")
    settings = load_settings(environ={})
    comp = scripted_service(settings, {"local": local}, telemetry=None)
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    with TestClient(create_app(settings, comp, close_components=False), base_url="http://localhost") as c:
        assert c.post("/v1/chat/completions", json=body, headers={"x-nlweb-priority": "7"}).status_code == 200
        assert c.post("/v1/chat/completions", json=body).status_code == 200
        bad = c.post("/v1/chat/completions", json=body, headers={"x-nlweb-priority": "urgent"})
    assert seen == [7, 0]
    assert bad.status_code == 400 and "x-nlweb-priority" in bad.json()["error"]["message"]
