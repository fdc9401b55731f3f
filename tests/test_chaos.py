"""Chaos with real processes: kill the local engine under load, then bring it back; kill two of a fleet's three
instances under load, then bring them back.

The local deployment is the real llama-cpp-python server (SmolLM2) in its own process; the cloud
fallback is the wire-faithful OpenAI fake. Clients call the real gateway over HTTP with the official
SDK. While the fallback exists no client request may fail; after the engine returns, traffic comes
back gradually (probe, then a share, then all of it).

No step waits a fixed time: each waits, with a bound, for what it needs (requests served, a breaker
transition, which the gateway logs as "breaker NAME: OLD -> NEW (why)").
"""
import asyncio
import logging
import re
import time
from collections import Counter

import openai
import pytest

from conftest import LiveServer
from fakes.openai_fake import OpenAIFake
from llama_server import LlamaServer
from nlweb_local.config.settings import load_settings
from nlweb_local.server.app import create_app
from nlweb_local.server.components import build_components
from stand_ins import NoEmbedder

pytestmark = pytest.mark.slow
TRANSITION = re.compile(r"^breaker (\S+): (\S+) -> (\S+) ")


class Timeline(logging.Handler):
    """What happened, in order: requests served (by which deployment) and the engine breaker's states, read from
    the gateway's log in whatever thread logs them; `until(predicate)` waits for a change, not for a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deployment: str):
        super().__init__(logging.WARNING)
        self.loop, self.deployment = loop, deployment
        self.served: list[tuple[float, str]] = []
        self.states = ["closed"]
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        m = TRANSITION.match(record.getMessage())
        if m and m.group(1) == self.deployment:
            self.states.append(m.group(3))
            self.loop.call_soon_threadsafe(self._changed.set)

    def serve(self, deployment: str) -> None:
        self.served.append((time.monotonic(), deployment))
        self._changed.set()

    def count(self, deployment: str, since: int = 0) -> int:
        return sum(d == deployment for _, d in self.served[since:])

    async def until(self, predicate, timeout_s: float, what: str) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                while not predicate():
                    self._changed.clear()
                    if not predicate():
                        await self._changed.wait()
        except TimeoutError:
            pytest.fail(f"{what} did not happen within {timeout_s:.0f} s; breaker states {self.states}, "
                        f"served {dict(Counter(d for _, d in self.served))}")


async def test_kill_the_local_engine_under_load_then_restore(tmp_path):
    from nlweb_local.config.settings import DeploymentSettings
    from nlweb_local.retrieval.qdrant_store import QdrantStore

    engine = LlamaServer(tmp_path / "engine.log", n_ctx=512).start()
    cloud = OpenAIFake().start()
    settings = load_settings(environ={"NLWEB_LOCAL_DATA_DIR": str(tmp_path / "data")})  # (not the checkout's data/)
    settings.llm.embedded_enabled = False
    settings.llm.health_interval_s = 0.5
    settings.cache.enabled = False  # the test watches routing: each user repeats its question, every one must be routed
    settings.llm.breaker = settings.llm.breaker.model_copy(update=dict(
        window=6, min_calls=2, failure_rate=0.5, open_s=2.0, probe_calls=1, restore_shares=[0.1, 0.5], calls_per_stage=4))
    settings.llm.deployments = [
        DeploymentSettings(name="engine", engine="llama_cpp_server", model="smollm2", url=f"{engine.url}/v1", timeout_s=20),
        # the fake cloud listens on loopback, which would make it local: it stands for a cloud API
        DeploymentSettings(name="cloud", engine="openai", model="fake-model", url=f"{cloud.url}/v1", api_key="sk-test",
                           price_in_per_m=2.5, price_out_per_m=10, location="cloud"),
    ]
    store = QdrantStore(dimension=2, path=tmp_path / "q")
    comp = build_components(settings, embedder=NoEmbedder(), store=store, telemetry=None)  # as serve composes it
    timeline = Timeline(asyncio.get_running_loop(), "engine")
    logging.getLogger("nlweb_local").addHandler(timeline)
    srv = LiveServer(create_app(settings, comp, close_components=False))
    client = openai.AsyncOpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=60)
    failures: list[str] = []
    stop = asyncio.Event()

    async def user(i: int) -> None:
        while not stop.is_set():
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model="auto", messages=[{"role": "user", "content": f"Say hi to user {i}."}], max_tokens=4, temperature=0)
                timeline.serve(raw.headers["x-nlweb-route"].split(";")[0])
            except Exception as e:  # noqa: BLE001 - every failure is recorded and fails the test below
                failures.append(repr(e))
            await asyncio.sleep(0.02)  # a user's think time

    try:
        tasks = [asyncio.create_task(user(i)) for i in range(4)]
        await timeline.until(lambda: len(timeline.served) >= 12, 60, "12 requests served before the kill")
        before_kill = Counter(d for _, d in timeline.served)
        assert before_kill["engine"] > 0 and before_kill["cloud"] == 0  # local-first while the engine is up

        engine.kill()  # the chaos: the local engine dies under load
        await timeline.until(lambda: "open" in timeline.states, 30, "the engine's breaker opening")
        opened = len(timeline.served)
        await timeline.until(lambda: timeline.count("cloud", opened) >= 8, 30, "8 requests served by the cloud")
        during = Counter(d for _, d in timeline.served[opened:])
        assert during["cloud"] > 0 and during["engine"] == 0

        await asyncio.to_thread(engine.start)  # it comes back, on the same port (traffic goes on meanwhile)
        back = len(timeline.served)
        await timeline.until(lambda: timeline.states[-1] == "closed", 60, "the engine's breaker closing again")
        closed = len(timeline.served)
        await timeline.until(lambda: len(timeline.served) >= closed + 8, 30, "8 requests served after it closed")
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        logging.getLogger("nlweb_local").removeHandler(timeline)
        engine.close()
        srv.stop()
        cloud.stop()
        store.close()

    states = timeline.states
    after = [d for _, d in timeline.served[back:]]
    print(f"\nchaos: {len(timeline.served)} requests, {len(failures)} failed; before kill {dict(before_kill)}; "
          f"after kill {dict(during)}; after restart {dict(Counter(after))}; breaker states {states}")
    assert failures == [], f"{len(failures)} client requests failed: {failures[:3]}"
    # the breaker went open → half-open (probe) → restoring (a share) → closed, not straight back to full traffic
    assert states[-4:] == ["open", "half_open", "restoring", "closed"], states
    assert after[-5:] == ["engine"] * 5  # all traffic local again at the end
    first_local = after.index("engine")
    assert "cloud" in after[first_local:], "while restoring, part of the traffic still went to the cloud"


async def test_kill_two_of_three_instances_under_load_then_they_return(tmp_path):
    """One deployment, three real llama-cpp-python servers as its `instances`, behind the real gateway over HTTP,
    with no other deployment to fall back on. Under concurrent load two instances are killed, one after the
    other: no client request fails (a call on a dying instance moves to another before its first token).
    Both restart on their ports, pass the probes, rejoin the pool and serve calls again (GET /admin/fleet)."""
    import aiohttp

    from nlweb_local.config.settings import BreakerSettings, DeploymentSettings, FleetSettings
    from nlweb_local.retrieval.qdrant_store import QdrantStore

    engines = [LlamaServer(tmp_path / f"engine{i}.log", n_ctx=512, n_threads=1) for i in range(3)]
    await asyncio.gather(*(asyncio.to_thread(e.start) for e in engines))
    urls = [f"{e.url}/v1" for e in engines]
    settings = load_settings(environ={"NLWEB_LOCAL_DATA_DIR": str(tmp_path / "data")})  # (not the checkout's data/)
    settings.llm.embedded_enabled = False
    settings.llm.health_interval_s = 0.5
    settings.cache.enabled = False  # every request must reach an engine
    settings.llm.breaker = BreakerSettings(window=6, min_calls=2, failure_rate=0.5, open_s=1.0, probe_calls=1,
                                           restore_shares=[0.5], calls_per_stage=2)
    settings.llm.deployments = [DeploymentSettings(name="engine", engine="llama_cpp_server", model="smollm2",
                                                   instances=urls, timeout_s=30,
                                                   fleet=FleetSettings(policy="least-outstanding"))]
    store = QdrantStore(dimension=2, path=tmp_path / "q")
    comp = build_components(settings, embedder=NoEmbedder(), store=store, telemetry=None)
    srv = LiveServer(create_app(settings, comp, close_components=True))
    client = openai.AsyncOpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=60)
    admin = aiohttp.ClientSession()
    failures: list[str] = []
    served_requests = 0
    stop = asyncio.Event()

    async def fleet() -> dict[str, dict]:
        async with admin.get(f"{srv.url}/admin/fleet") as r:
            assert r.status == 200, await r.text()
            return {i["url"]: i for i in (await r.json())["deployments"][0]["instances"]}

    async def until(predicate, timeout_s: float, what: str) -> dict[str, dict]:
        """Poll /admin/fleet (bounded) until `predicate(instances)` holds."""
        end = time.monotonic() + timeout_s
        while True:
            view = await fleet()
            if predicate(view):
                return view
            if time.monotonic() > end:
                pytest.fail(f"{what} did not happen within {timeout_s:.0f} s; instances "
                            f"{[{k: i[k] for k in ('url', 'up', 'breaker', 'served', 'failed', 'detail')} for i in view.values()]}")
            await asyncio.sleep(0.2)

    def served(view: dict[str, dict]) -> list[int]:
        return [view[u]["served"] for u in urls]

    async def user(i: int) -> None:
        nonlocal served_requests
        while not stop.is_set():
            try:
                r = await client.chat.completions.create(
                    model="engine", messages=[{"role": "user", "content": f"Say hi to user {i}."}], max_tokens=4,
                    temperature=0)
                assert r.choices[0].message.content is not None
                served_requests += 1
            except Exception as e:  # noqa: BLE001 - every failure is recorded and fails the test below
                failures.append(repr(e))
            await asyncio.sleep(0.02)  # a user's think time

    tasks = [asyncio.create_task(user(i)) for i in range(3)]
    try:
        start = await until(lambda v: min(served(v)) >= 2, 90, "all three instances serving")
        a, b, c = urls
        engines[0].kill()  # the chaos: one instance dies under load ...
        after_a = await until(lambda v: not v[a]["up"] and served(v)[1] + served(v)[2] >= sum(served(start)[1:]) + 6,
                              60, "the first instance out of the pool and 6 calls served by the others")
        engines[1].kill()  # ... then a second one
        after_b = await until(lambda v: not v[b]["up"] and served(v)[2] >= served(after_a)[2] + 6, 60,
                              "the second instance out of the pool and 6 calls served by the last one")
        assert not after_b[a]["up"]
        await asyncio.gather(*(asyncio.to_thread(e.start) for e in engines[:2]))  # both back, on the same ports
        back = await fleet()
        end = await until(lambda v: all(v[u]["up"] and v[u]["served"] >= back[u]["served"] + 3 for u in (a, b)), 120,
                          "both restarted instances passing the probes and serving 3 calls each")
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await admin.close()
        srv.stop()
        for e in engines:
            e.close()
        store.close()
    print(f"\nchaos (3 instances): {served_requests} requests served, {len(failures)} failed; served per instance "
          f"at start {served(start)}, after the 1st kill {served(after_a)}, after the 2nd {served(after_b)}, "
          f"after the restarts {served(back)} -> {served(end)}; failed calls per instance "
          f"{[end[u]['failed'] for u in urls]}")
    assert failures == [], f"{len(failures)} client requests failed: {failures[:3]}"
    assert all(end[u]["breaker"] in ("closed", "restoring") for u in urls)
