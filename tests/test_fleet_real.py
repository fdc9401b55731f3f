"""The fleet with real engines: two llama-cpp-python servers (SmolLM2), each in its own process, as one
deployment. Calls spread over both; one is killed under load (0 failed calls: the fleet moves each call
to the other before its first token); it restarts on the same port and takes traffic again once a scrape
passes. No step waits a fixed time: each waits, with a bound, for what it needs."""
import asyncio
import time

import pytest

from llama_server import LlamaServer
from nlweb_local.config.settings import BreakerSettings, DeploymentSettings, FleetSettings
from nlweb_local.core.types import ChatRequest, Message
from nlweb_local.server.components import build_adapter

pytestmark = pytest.mark.slow


async def until(predicate, timeout_s: float, what: str, status) -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"{what} did not happen within {timeout_s:.0f} s; instances {status()}")
        await asyncio.sleep(0.05)


async def warm_up(url: str) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as s:
        async with s.post(f"{url}/v1/chat/completions", json={"model": "smollm2", "max_tokens": 1,
                                                               "messages": [{"role": "user", "content": "Hi"}]}) as r:
            assert r.status == 200, await r.text()


async def test_two_real_engines_balance_fail_over_and_return(tmp_path):
    a = LlamaServer(tmp_path / "a.log", n_ctx=512, n_threads=1).start()  # one core each
    b = LlamaServer(tmp_path / "b.log", n_ctx=512, n_threads=1).start()
    d = DeploymentSettings(name="engine", engine="llama_cpp_server", model="smollm2", timeout_s=30,
                           instances=[f"{a.url}/v1", f"{b.url}/v1"], fleet=FleetSettings(policy="least-outstanding"))
    fleet = build_adapter(d, BreakerSettings(window=6, min_calls=3, open_s=1.0, probe_calls=1, restore_shares=[]))
    await asyncio.gather(*(warm_up(e.url) for e in (a, b)))  # a fresh engine's first call is slow (seconds)
    failures: list[str] = []
    stop = asyncio.Event()

    def served() -> list[int]:
        return [s.served for s in fleet.status()]

    def status() -> list[dict]:
        return [{k: v for k, v in s.as_dict().items() if k in ("url", "up", "breaker", "served", "failed", "detail")}
                for s in fleet.status()]

    async def scrape() -> None:  # what the router's probe loop does every llm.health_interval_s
        while not stop.is_set():
            await fleet.health()
            await asyncio.sleep(0.3)

    async def user(i: int) -> None:
        while not stop.is_set():
            try:
                r = await fleet.complete(ChatRequest([Message("user", f"Say hi to user {i}.")], max_tokens=2))
                assert r.content is not None
            except Exception as e:  # noqa: BLE001 - every failure is recorded and fails the test below
                failures.append(repr(e))

    tasks = [asyncio.create_task(scrape()), *(asyncio.create_task(user(i)) for i in range(2))]
    try:
        await until(lambda: min(served()) >= 3, 90, "both engines serving", status)

        b.kill()  # under load
        killed = served()
        await until(lambda: served()[0] >= killed[0] + 8, 60, "8 calls served by the survivor", status)
        assert not fleet.status()[1].up
        after_kill = served()

        await asyncio.to_thread(b.start)  # back on the same port
        await until(lambda: served()[1] >= after_kill[1] + 3, 90, "the restarted engine taking traffic again", status)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await fleet.close()
        a.close()
        b.close()
    print(f"\nfleet: served {served()}, failed calls per instance {[s.failed for s in fleet.status()]}, "
          f"client failures {len(failures)}")
    assert failures == [], f"{len(failures)} calls failed: {failures[:3]}"
    assert after_kill[1] - killed[1] <= 3  # after the kill, at most the calls already on their way went to it
