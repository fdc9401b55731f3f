"""The memory manager driving Ollama's own controls on a host of `llm.memory.remote_budgets_mb`: a model is
loaded by an empty `/api/generate` with its keep_alive and unloaded by one with `keep_alive: 0`; what is
loaded, and its `size` / `size_vram`, come from `/api/ps`. The engine is the wire-faithful Ollama fake
(tests/fakes/ollama_fake.py), which records what a real Ollama host must not see: more memory held at once
than the budget (`most_loaded_bytes`), an unload of a model with a generation in flight (`unloaded_while_busy`)."""
from __future__ import annotations

import asyncio

import pytest

from fakes.ollama_fake import OllamaFake
from nlweb_local.config.settings import DeploymentSettings, MemorySettings
from nlweb_local.core.errors import InsufficientMemoryError
from nlweb_local.core.types import ChatRequest, Message
from nlweb_local.fleet.memory import BudgetedModel, MemoryBudget, OllamaResidency
from nlweb_local.providers.ollama import from_settings

MIB = 2**20
NO_GPU = {"nvml": False, "why": "none here"}
HOST = "127.0.0.1"


@pytest.fixture()
def fake():
    with OllamaFake(models=["model-a", "model-b", "model-huge", "embed-model"],
                    memory_bytes={"model-a": 600 * MIB, "model-b": 600 * MIB, "model-huge": 2000 * MIB,
                                  "embed-model": 600 * MIB}) as f:
        yield f


def ollama(name: str, fake: OllamaFake, model: str, **kw) -> dict:
    return {"name": name, "engine": "ollama", "model": model, "url": fake.url, **kw}


def test_two_ollama_models_on_one_host_take_turns_loaded_within_its_budget(tmp_path, fake):
    """600 + 600 MiB on a 1000 MiB host: each call to the unloaded model unloads the idle one first, so every
    call is served and Ollama never holds both; a 2000 MiB model is refused naming the budget, never loaded."""
    from starlette.testclient import TestClient

    from nlweb_local.server.app import create_app
    from stand_ins import scripted_service, service_settings

    settings = service_settings(tmp_path, ollama("a", fake, "model-a", memory_mb=600),
                                ollama("b", fake, "model-b", memory_mb=600),
                                ollama("huge", fake, "model-huge", memory_mb=2000), embedded_enabled=False)
    settings.llm.memory.remote_budgets_mb = {HOST: 1000}
    comp = scripted_service(settings, {})
    assert comp.memory is not None and comp.memory.model("a").pool == f"host:{HOST}"
    with TestClient(create_app(settings, comp, close_components=True), base_url="http://localhost") as c:
        for model in ("a", "b", "a", "b", "b", "a"):
            r = c.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] == "Hello! I am a fake model."
            assert fake.loaded() == [f"model-{model}:latest"]  # only the one just called is in Ollama's memory
        huge = c.post("/v1/chat/completions", json={"model": "huge", "messages": [{"role": "user", "content": "hi"}]})
        view = c.get("/admin/memory").json()
        metrics = c.get("/metrics").text
    assert fake.most_loaded_bytes == 600 * MIB  # never both at once
    assert fake.loads == {"model-a:latest": 3, "model-b:latest": 2}  # the huge one never reached Ollama
    assert fake.unloads == {"model-a:latest": 2, "model-b:latest": 2} and fake.unloaded_while_busy == 0
    assert huge.status_code in (503, 507), huge.text  # 507 from the deployment; 503 when the router has no other
    assert "2000 MiB" in huge.text and "remote_budgets_mb['127.0.0.1'] = 1000 MiB" in huge.text
    assert view["budget_mb"][f"host:{HOST}"] == 1000 and view["used_mb"][f"host:{HOST}"] == 600
    models = {m["deployment"]: m for m in view["models"]}
    assert models["a"]["state"] == "loaded" and models["b"]["state"] == "unloaded"
    assert models["a"]["loads"] == 3 and models["b"]["loads"] == 2
    assert models["a"]["evictions"] == models["b"]["evictions"] == {"budget": 2}
    assert models["a"]["measured_mb"] == 600 and models["a"]["measured_vram_mb"] == 600  # /api/ps size, size_vram
    assert 'nlweb_model_loads_total{deployment="a"} 3.0' in metrics
    assert 'nlweb_model_evictions_total{deployment="b",reason="budget"} 2.0' in metrics
    assert 'nlweb_model_memory_budgeted_bytes{pool="host:127.0.0.1"}' in metrics


def _budget(fake: OllamaFake, budget_mb: int, *names_models: tuple[str, str, int]):
    budget = MemoryBudget(MemorySettings(remote_budgets_mb={HOST: budget_mb}), rss_mb=lambda: 0.0, gpu=lambda: NO_GPU)
    wrapped = {}
    for name, model, mb in names_models:
        engine = from_settings(DeploymentSettings(**ollama(name, fake, model)), {})
        budget.register(name, OllamaResidency(engine, deployment=name), mb, pool=f"host:{HOST}")
        wrapped[name] = BudgetedModel(engine, budget)
    return budget, wrapped


async def test_a_model_with_a_call_in_flight_is_not_unloaded_the_other_waits(fake):
    budget, p = _budget(fake, 1000, ("a", "model-a", 600), ("b", "model-b", 600))
    request = ChatRequest([Message("user", "hi")], max_tokens=8)
    try:
        fake.holding = True  # a's answer stays in flight
        call_a = asyncio.ensure_future(p["a"].complete(request))
        while not fake.in_flight.get("model-a:latest"):
            await asyncio.sleep(0.01)
        call_b = asyncio.ensure_future(p["b"].complete(request))
        await asyncio.sleep(0.3)  # time for b to (wrongly) unload a
        assert not call_b.done() and fake.loaded() == ["model-a:latest"] and fake.unloaded_while_busy == 0
        assert budget.model("b").state == "unloaded" and budget.model("a").in_use == 1
        fake.holding = False
        a, b = await asyncio.gather(call_a, call_b)
        assert a.content == b.content == "Hello! I am a fake model."  # a finished, then b was served
        assert fake.loaded() == ["model-b:latest"] and fake.most_loaded_bytes == 600 * MIB
        assert fake.unloaded_while_busy == 0 and budget.model("a").evictions == {"budget": 1}
    finally:
        fake.holding = False
        await budget.close()
        for x in p.values():
            await x.close()


async def test_an_embedding_model_is_loaded_through_api_embed_and_takes_turns_with_a_chat_model(fake):
    """Ollama refuses /api/generate for an embedding-only model, even empty (400 "does not support generate"),
    so it is loaded by an empty /api/embed; its unload (/api/generate, keep_alive 0) is answered for any model."""
    budget, p = _budget(fake, 1000, ("a", "model-a", 600), ("e", "embed-model", 600))
    request = ChatRequest([Message("user", "hi")], max_tokens=8)
    try:
        assert len((await p["e"].embed(["a sentence"])).vectors) == 1
        assert fake.loaded() == ["embed-model:latest"]
        assert (await p["a"].complete(request)).content
        assert fake.loaded() == ["model-a:latest"]
        assert len((await p["e"].embed(["again"])).vectors) == 1
        assert fake.loaded() == ["embed-model:latest"] and fake.most_loaded_bytes == 600 * MIB
        assert fake.loads == {"embed-model:latest": 2, "model-a:latest": 1}
        assert budget.model("e").evictions == budget.model("a").evictions == {"budget": 1}
        loads = [r["body"] for r in fake.requests if r["path"] == "/api/embed" and "input" not in r["body"]]
        assert loads == [{"model": "embed-model"}] * 2
    finally:
        await budget.close()
        for x in p.values():
            await x.close()


async def test_a_model_larger_than_the_host_budget_is_a_507_and_never_loaded(fake):
    budget, p = _budget(fake, 1000, ("huge", "model-huge", 2000))
    try:
        with pytest.raises(InsufficientMemoryError) as e:
            await p["huge"].complete(ChatRequest([Message("user", "hi")], max_tokens=8))
        assert e.value.status == 507 and "2000 MiB" in e.value.message
        assert "llm.memory.remote_budgets_mb['127.0.0.1'] = 1000 MiB" in e.value.message
        assert not fake.loads and not [r for r in fake.requests if r["path"] in ("/api/generate", "/api/chat")]
    finally:
        await budget.close()
        await p["huge"].close()


async def test_models_ollama_holds_at_start_are_counted_and_fitted_into_the_budget(fake):
    """Loaded before nlweb-local started (someone ran them): the first call finds both in /api/ps, counts them
    (1200 MiB of 1000) and unloads the idle one least recently used until the pool fits."""
    from nlweb_local.providers.ollama_models import OllamaModels

    models = OllamaModels.at(fake.url)
    try:
        await models.load("model-a")
        await models.load("model-b")
    finally:
        await models.close()
    assert sorted(fake.loaded()) == ["model-a:latest", "model-b:latest"]
    budget, p = _budget(fake, 1000, ("a", "model-a", 600), ("b", "model-b", 600))
    try:
        assert (await p["b"].complete(ChatRequest([Message("user", "hi")], max_tokens=8))).content
        assert fake.loaded() == ["model-b:latest"] and budget.model("a").state == "unloaded"
        assert budget.model("a").evictions == {"budget": 1} and budget.used_mb(f"host:{HOST}") == 600
    finally:
        await budget.close()
        for x in p.values():
            await x.close()


def test_an_ollama_on_a_budgeted_host_needs_its_memory_mb_and_without_a_budget_is_left_alone(tmp_path, fake):
    from nlweb_local.core.errors import BadRequestError
    from stand_ins import scripted_service, service_settings

    settings = service_settings(tmp_path, ollama("a", fake, "model-a"), embedded_enabled=False)
    settings.llm.memory.remote_budgets_mb = {HOST: 1000}
    with pytest.raises(BadRequestError, match="memory_mb"):
        scripted_service(settings, {})
    settings.llm.memory.remote_budgets_mb = {"gpu-box": 1000}  # another host: Ollama's own keep_alive applies
    comp = scripted_service(settings, {})
    try:
        assert comp.memory is not None and "a" not in {m["deployment"] for m in comp.memory.snapshot()["models"]}
    finally:
        asyncio.run(comp.close())
