"""Chaos with real processes: kill the local engine under load, then bring it back.

The local deployment is the real llama-cpp-python server (SmolLM2) in its own process; the cloud
fallback is the wire-faithful OpenAI fake. Clients call the real gateway over HTTP with the official
SDK. While the fallback exists no client request may fail; after the engine returns, traffic comes
back gradually (probe, then a share, then all of it).
"""
import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter

import openai
import pytest

from conftest import LiveServer
from fakes.openai_fake import OpenAIFake
from nlweb_local.config.settings import load_settings
from nlweb_local.providers.structured import ProviderStructuredLLM
from nlweb_local.server.app import create_app
from nlweb_local.server.components import Components, build_router
from nlweb_local.server.threaded import free_port
from stand_ins import NoEmbedder

pytestmark = pytest.mark.slow


def start_engine(port: int, log_path) -> subprocess.Popen:
    from nlweb_local.providers.llama_cpp import packaged_smollm2_path

    with open(log_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(packaged_smollm2_path()),
                                 "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--model_alias", "smollm2"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            pytest.fail(f"llama_cpp.server exited: {log_path.read_text(errors='replace')[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1).read()
            return proc
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not start within 90 s")
            time.sleep(0.2)


async def test_kill_the_local_engine_under_load_then_restore(tmp_path):
    pytest.importorskip("llama_cpp.server.app")
    from nlweb_local.retrieval.qdrant_store import QdrantStore

    port = free_port()
    engine = start_engine(port, tmp_path / "engine.log")
    cloud = OpenAIFake().start()
    settings = load_settings(environ={})
    settings.llm.embedded_enabled = False
    settings.llm.health_interval_s = 0.5
    settings.llm.breaker = settings.llm.breaker.model_copy(update=dict(
        window=6, min_calls=2, failure_rate=0.5, open_s=2.0, probe_calls=1, restore_shares=[0.1, 0.5], calls_per_stage=4))
    from nlweb_local.config.settings import DeploymentSettings

    settings.llm.deployments = [
        DeploymentSettings(name="engine", engine="llama_cpp_server", model="smollm2", url=f"http://127.0.0.1:{port}/v1",
                           timeout_s=20),
        DeploymentSettings(name="cloud", engine="openai", model="fake-model", url=f"{cloud.url}/v1", api_key="sk-test",
                           price_in_per_m=2.5, price_out_per_m=10),
    ]
    router = build_router(settings, None)
    store = QdrantStore(dimension=2, path=tmp_path / "q")
    comp = Components(llm=ProviderStructuredLLM(router), embedder=NoEmbedder(), store=store, provider=router, router=router)
    srv = LiveServer(create_app(settings, comp, close_components=False))
    client = openai.AsyncOpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=60)
    served: list[tuple[float, str]] = []
    failures: list[str] = []
    states: list[str] = []
    stop = asyncio.Event()

    async def user(i: int) -> None:
        while not stop.is_set():
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model="auto", messages=[{"role": "user", "content": f"Say hi to user {i}."}], max_tokens=4, temperature=0)
                served.append((time.monotonic(), raw.headers["x-nlweb-route"].split(";")[0]))
            except Exception as e:  # noqa: BLE001 - every failure is recorded and fails the test below
                failures.append(repr(e))
            await asyncio.sleep(0.02)

    async def watch() -> None:
        import httpx

        async with httpx.AsyncClient() as h:
            while not stop.is_set():
                snap = (await h.get(f"{srv.url}/admin/breakers")).json()["breakers"]
                state = next(b["state"] for b in snap if b["deployment"] == "engine")
                if not states or states[-1] != state:
                    states.append(state)
                await asyncio.sleep(0.05)

    try:
        tasks = [asyncio.create_task(user(i)) for i in range(4)] + [asyncio.create_task(watch())]
        await asyncio.sleep(3)
        before_kill = Counter(d for _, d in served)
        assert before_kill["engine"] > 0 and before_kill["cloud"] == 0  # local-first while the engine is up

        os.killpg(engine.pid, signal.SIGKILL)  # the chaos: the local engine dies under load
        engine.wait()
        killed_at = time.monotonic()
        await asyncio.sleep(3)
        assert "open" in states
        during = Counter(d for t, d in served if t > killed_at + 0.5)
        assert during["cloud"] > 0 and during["engine"] == 0

        engine = start_engine(port, tmp_path / "engine.log")  # it comes back
        back_at = time.monotonic()
        deadline = back_at + 60
        while states[-1] != "closed" and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        try:
            os.killpg(engine.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        srv.stop()
        cloud.stop()
        store.close()

    after = [d for t, d in served if t > back_at]
    print(f"\nchaos: {len(served)} requests, {len(failures)} failed; before kill {dict(before_kill)}; "
          f"after kill {dict(during)}; after restart {dict(Counter(after))}; breaker states {states}")
    assert failures == [], f"{len(failures)} client requests failed: {failures[:3]}"
    # the breaker went open → half-open (probe) → restoring (a share) → closed, not straight back to full traffic
    assert states[-4:] == ["open", "half_open", "restoring", "closed"], states
    assert after[-5:] == ["engine"] * 5  # all traffic local again at the end
    first_local = after.index("engine")
    assert "cloud" in after[first_local:], "while restoring, part of the traffic still went to the cloud"
