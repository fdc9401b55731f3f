"""The memory manager beyond in-process models: vLLM engines on a remote host put to sleep and woken up
(`/sleep?level=1`, `/wake_up`, `/is_sleeping`) within that host's budget (`llm.memory.remote_budgets_mb`)
or after their keep_alive; and the GPU pool as NVML reports it (RAM only without NVML, said in
/admin/memory). The engines are the wire-faithful OpenAI/vLLM fake (tests/fakes/openai_fake.py), which
counts what a real vLLM must never get: a generation request while asleep, a /sleep with requests in flight."""
from __future__ import annotations

import pytest

from fakes.openai_fake import OpenAIFake
from nlweb_local.config.settings import DeploymentSettings, MemorySettings
from nlweb_local.core.errors import BadRequestError
from nlweb_local.core.types import ChatRequest, Message
from nlweb_local.fleet.memory import BudgetedModel, MemoryBudget, SleepWake
from nlweb_local.providers.openai_compat import from_settings

NO_GPU = {"nvml": False, "why": "none here"}


@pytest.fixture()
def engines():
    with OpenAIFake() as a, OpenAIFake() as b:
        yield a, b


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def vllm(name: str, fake: OpenAIFake, **kw) -> dict:
    return {"name": name, "engine": "vllm", "model": "fake-model", "url": fake.url + "/v1", "api_key": "sk-test", **kw}


def chat(c, model: str):
    return c.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}]})


def test_two_vllm_engines_on_one_host_take_turns_awake_within_its_budget(tmp_path, engines):
    """Both start awake (1200 MiB of a 1000 MiB budget): the first call finds that out and puts one to sleep;
    from then on each call to the sleeping one wakes it and puts the other (idle) one to sleep first."""
    from starlette.testclient import TestClient

    from nlweb_local.server.app import create_app
    from stand_ins import scripted_service, service_settings

    a, b = engines
    settings = service_settings(tmp_path, vllm("a", a, memory_mb=600), vllm("b", b, memory_mb=600),
                                embedded_enabled=False)
    settings.llm.memory.remote_budgets_mb = {"127.0.0.1": 1000}
    comp = scripted_service(settings, {})
    assert comp.memory is not None and comp.memory.model("a").pool == "host:127.0.0.1"
    with TestClient(create_app(settings, comp, close_components=True), base_url="http://localhost") as c:
        for model in ("a", "b", "a", "b", "b", "a"):
            r = chat(c, model)
            assert r.status_code == 200, r.text
            awake = [f for f in (a, b) if not f.sleeping_level]
            assert awake == [a if model == "a" else b]  # only the one just called is awake
        view = c.get("/admin/memory").json()
        metrics = c.get("/metrics").text
    assert a.chats_while_asleep == b.chats_while_asleep == 0  # every call found its engine awake
    assert a.slept_while_busy == b.slept_while_busy == 0  # and none was put to sleep mid-answer
    # found both awake, a (counted idle first) slept to fit, then woke to serve; each switch after: one sleep, one wake
    assert (a.sleeps, a.wakes, b.sleeps, b.wakes) == (3, 3, 3, 2)
    assert view["budget_mb"]["host:127.0.0.1"] == 1000 and view["used_mb"]["host:127.0.0.1"] == 600
    models = {m["deployment"]: m for m in view["models"]}
    assert models["a"]["state"] == "loaded" and models["b"]["state"] == "unloaded"
    assert models["a"]["evictions"] == models["b"]["evictions"] == {"budget": 3}
    assert 'nlweb_model_evictions_total{deployment="b",reason="budget"} 3.0' in metrics
    assert 'nlweb_model_memory_budgeted_bytes{pool="host:127.0.0.1"}' in metrics


async def test_keep_alive_puts_an_idle_vllm_to_sleep_and_its_next_call_wakes_it(engines):
    fake = engines[0]
    clock = Clock()
    budget = MemoryBudget(MemorySettings(keep_alive="1m"), clock=clock, rss_mb=lambda: 0.0, gpu=lambda: NO_GPU)
    engine = from_settings(DeploymentSettings(**vllm("v", fake)), {})
    budget.register("v", SleepWake(engine, deployment="v"), 0.0, pool="host:127.0.0.1")
    p = BudgetedModel(engine, budget)
    request = ChatRequest([Message("user", "hi")], max_tokens=8)
    try:
        assert (await p.complete(request)).content  # awake at the start: served, nothing woken
        assert fake.wakes == 0 and budget.model("v").state == "loaded"
        clock.t += 59
        await budget.sweep()
        assert fake.sleeping_level == 0  # idle 59 s of its 60
        clock.t += 2
        await budget.sweep()
        assert fake.sleeping_level == 1 and budget.model("v").evictions == {"keep_alive": 1}
        assert (await p.complete(request)).content  # woken up first
        assert fake.wakes == 1 and fake.chats_while_asleep == 0 and budget.model("v").loads == 1
    finally:
        await budget.close()
        await p.close()


async def test_an_engine_found_asleep_is_not_counted_until_woken(engines):
    a, b = engines
    b.sleeping_level = 1
    budget = MemoryBudget(MemorySettings(remote_budgets_mb={"127.0.0.1": 1000}), rss_mb=lambda: 0.0, gpu=lambda: NO_GPU)
    pa, pb = (from_settings(DeploymentSettings(**vllm(n, f)), {}) for n, f in (("a", a), ("b", b)))
    budget.register("a", SleepWake(pa, deployment="a"), 600, pool="host:127.0.0.1")
    budget.register("b", SleepWake(pb, deployment="b"), 300, pool="host:127.0.0.1")
    try:
        await budget.sync()
        assert budget.model("a").state == "loaded" and budget.model("b").state == "unloaded"
        assert budget.used_mb("host:127.0.0.1") == 600
        async with budget.use("b"):  # 600 + 300 fit: b is woken, a stays awake
            assert b.sleeping_level == 0 and a.sleeping_level == 0
        assert budget.used_mb("host:127.0.0.1") == 900
    finally:
        await budget.close()
        for p in (pa, pb):
            await p.close()


def test_sleep_level_2_is_refused_naming_why():
    with pytest.raises(BadRequestError, match="level 1"):
        SleepWake(object(), deployment="v", level=2)  # type: ignore[arg-type]


def test_a_vllm_on_a_budgeted_host_needs_its_memory_mb(tmp_path, engines):
    from stand_ins import scripted_service, service_settings

    settings = service_settings(tmp_path, vllm("a", engines[0]), embedded_enabled=False)
    settings.llm.memory.remote_budgets_mb = {"127.0.0.1": 1000}
    with pytest.raises(BadRequestError, match="memory_mb"):
        scripted_service(settings, {})


def test_gpu_pool_from_nvml_or_ram_only_said_in_the_snapshot():
    nvml = {"nvml": True, "total_mb": 81920.0, "used_mb": 1024.0}
    with_gpu = MemoryBudget(MemorySettings(budget_mb=100, gpu_share=0.5), rss_mb=lambda: 0.0, gpu=lambda: dict(nvml))
    assert with_gpu.budget_mb["gpu"] == 40960.0
    snap = with_gpu.snapshot()
    assert snap["gpu"]["nvml"] and snap["gpu"]["used_mb"] == 1024.0 and "NVML" in snap["gpu"]["budget"]
    given = MemoryBudget(MemorySettings(gpu_budget_mb=2000), rss_mb=lambda: 0.0, gpu=lambda: dict(nvml))
    assert given.budget_mb["gpu"] == 2000 and given.snapshot()["gpu"]["budget"] == "llm.memory.gpu_budget_mb"
    ram_only = MemoryBudget(MemorySettings(budget_mb=100), rss_mb=lambda: 0.0)  # this machine's own NVML, if any
    snap = ram_only.snapshot()
    if not snap["gpu"]["nvml"]:
        assert ram_only.budget_mb["gpu"] is None and "RAM only" in snap["gpu"]["budget"] and snap["gpu"]["why"]
