"""The model memory budget (fleet/memory.py): models load on their first call, the least recently used idle
model is unloaded when a new one would not fit, keep_alive unloads idle models, a model larger than the
budget is refused with 507, and loads/evictions reach /admin/memory and /metrics. Engines here are
`LoadableModel`s (they answer only while loaded); tests/test_memory_real.py runs real GGUF models."""
from __future__ import annotations

import asyncio

import pytest

from nlweb_local.config.settings import MemorySettings
from nlweb_local.core.errors import BadRequestError, InsufficientMemoryError, QueueFullError
from nlweb_local.core.types import ChatRequest, Message
from nlweb_local.fleet.memory import BudgetedModel, MemoryBudget, keep_alive_seconds
from nlweb_local.fleet.model_size import estimate_gguf_mb, gguf_metadata, gguf_shape
from nlweb_local.providers.testing import LoadableModel


def ask(text: str = "hi", deadline_s: float | None = None) -> ChatRequest:
    return ChatRequest([Message("user", text)], deadline_s=deadline_s)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def budget_of(mb: float, *models: LoadableModel, clock=None, keep_alive="5m", **kw) -> tuple[MemoryBudget, dict]:
    b = MemoryBudget(MemorySettings(budget_mb=mb, keep_alive=keep_alive, **kw), clock=clock or Clock(),
                     rss_mb=lambda: 0.0, gpu=lambda: {"nvml": False, "why": "none here"})
    wrapped = {}
    for m in models:
        b.register(m.name, m, m.size_mb)
        wrapped[m.name] = BudgetedModel(m, b)
    return b, wrapped


@pytest.mark.parametrize("value,seconds", [("5m", 300.0), ("1h30m", 5400.0), ("90s", 90.0), ("250ms", 0.25),
                                           (300, 300.0), ("0", 0.0), (0, 0.0), (-1, None), ("-1", None), ("-5m", None)])
def test_keep_alive_reads_as_ollama_does(value, seconds):
    assert keep_alive_seconds(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 minutes", "5x", "m5"])
def test_a_keep_alive_that_is_no_duration_says_what_is_expected(value):
    with pytest.raises(BadRequestError, match="not a duration"):
        keep_alive_seconds(value)


async def test_the_least_recently_used_idle_model_is_unloaded_to_make_room():
    events: list = []
    a, b, c = (LoadableModel(n, s, events=events) for n, s in (("a", 60), ("b", 60), ("c", 30)))
    clock = Clock()
    budget, p = budget_of(100, a, b, c, clock=clock)
    try:
        for name in ("a", "b", "c", "a"):  # a; b evicts a; c fits beside b; a evicts b (older than c) only
            clock.t += 1
            r = await p[name].complete(ask())
            assert r.content.startswith("Hello")
        assert events == [("load", "a"), ("unload", "a"), ("load", "b"), ("load", "c"), ("unload", "b"), ("load", "a")]
        assert budget.used_mb() == 90 and a.loaded and c.loaded and not b.loaded
        snap = {m["deployment"]: m for m in budget.snapshot()["models"]}
        assert (snap["a"]["loads"], snap["a"]["evictions"]) == (2, {"budget": 1})
        assert (snap["b"]["loads"], snap["b"]["evictions"]) == (1, {"budget": 1})
        assert (snap["c"]["loads"], snap["c"]["evictions"]) == (1, {})
    finally:
        await budget.close()


async def test_a_model_larger_than_the_budget_is_refused_naming_both_and_never_loaded():
    big = LoadableModel("big", 250)
    budget, p = budget_of(100, big)
    try:
        with pytest.raises(InsufficientMemoryError) as e:
            await p["big"].complete(ask())
        assert e.value.status == 507 and "250 MiB" in e.value.message and "100 MiB" in e.value.message
        assert "budget_mb" in e.value.public_message
        with pytest.raises(InsufficientMemoryError):
            async for _ in p["big"].stream(ask()):
                pass
        assert big.loads == 0 and big.calls == 0
    finally:
        await budget.close()


async def test_a_busy_model_keeps_its_memory_until_its_call_ends():
    events: list = []
    a = LoadableModel("a", 70, events=events, token_delay_s=0.02, text="one two three four five")
    b = LoadableModel("b", 70, events=events)
    budget, p = budget_of(100, a, b)
    try:
        stream = p["a"].stream(ask())
        first = await stream.__anext__()  # a is loaded and serving
        assert first.delta and a.loaded
        with pytest.raises(QueueFullError) as e:  # b cannot fit while a is busy: refused within its deadline
            await p["b"].complete(ask(deadline_s=0.05))
        assert e.value.status == 503 and "waiting for memory" in e.value.message and "a (70 MiB, 1 calls)" in e.value.message
        waiting = asyncio.create_task(p["b"].complete(ask(deadline_s=10)))
        await asyncio.sleep(0.05)
        assert not waiting.done() and not b.loaded and a.loaded  # it waits; a is never unloaded mid-call
        rest = [ch async for ch in stream]
        assert "".join(ch.delta for ch in [first, *rest]) == "one two three four five"
        assert (await waiting).content.startswith("Hello")
        assert events == [("load", "a"), ("unload", "a"), ("load", "b")]
    finally:
        await budget.close()


async def test_concurrent_first_calls_load_the_model_once():
    a = LoadableModel("a", 50, load_delay_s=0.05)
    budget, p = budget_of(100, a)
    try:
        answers = await asyncio.gather(*(p["a"].complete(ask(str(i))) for i in range(5)))
        assert len(answers) == 5 and a.loads == 1 and budget.model("a").in_use == 0
    finally:
        await budget.close()


async def test_a_call_cancelled_while_its_model_loads_leaves_the_model_loaded_and_free():
    a = LoadableModel("a", 50, load_delay_s=0.1)
    budget, p = budget_of(100, a)
    try:
        call = asyncio.create_task(p["a"].complete(ask()))
        await asyncio.sleep(0.02)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.sleep(0.15)  # the load goes on to its end
        m = budget.model("a")
        assert a.loaded and m.state == "loaded" and m.in_use == 0 and budget.used_mb() == 50
    finally:
        await budget.close()


async def test_a_failed_unload_keeps_the_model_counted_and_the_new_one_unloaded():
    a, b = LoadableModel("a", 70), LoadableModel("b", 70)
    budget, p = budget_of(100, a, b)

    async def broken(model=None):
        raise RuntimeError("engine stuck")

    try:
        await p["a"].complete(ask())
        a.unload = broken
        with pytest.raises(QueueFullError, match="unloading a to make room failed"):
            await p["b"].complete(ask())
        assert budget.model("a").state == "loaded" and budget.model("b").state == "unloaded" and not b.loaded
        assert budget.used_mb() == 70
    finally:
        await budget.close()


async def test_keep_alive_unloads_idle_models_and_minus_one_never_does():
    clock = Clock()
    a, b = LoadableModel("a", 30), LoadableModel("b", 30)
    budget = MemoryBudget(MemorySettings(budget_mb=100, keep_alive="10s"), clock=clock, rss_mb=lambda: 0.0,
                          gpu=lambda: {"nvml": False, "why": "none here"})
    budget.register("a", a, 30)
    budget.register("b", b, 30, keep_alive=-1)
    pa, pb = BudgetedModel(a, budget), BudgetedModel(b, budget)
    try:
        await pa.complete(ask())
        await pb.complete(ask())
        clock.t += 9
        await budget.sweep()
        assert a.loaded and b.loaded
        clock.t += 2
        await budget.sweep()
        assert not a.loaded and b.loaded and budget.used_mb() == 30
        assert budget.model("a").evictions == {"keep_alive": 1}
        assert (await pa.health()).detail.endswith("(not loaded: loads on its next call)")
        await pa.complete(ask())  # loads again on its next call
        assert a.loads == 2
    finally:
        await budget.close()


async def test_keep_alive_zero_unloads_after_each_call():
    a = LoadableModel("a", 30)
    budget = MemoryBudget(MemorySettings(budget_mb=100), rss_mb=lambda: 0.0, gpu=lambda: {"nvml": False, "why": "none here"})
    budget.register("a", a, 30, keep_alive=0)
    p = BudgetedModel(a, budget)
    try:
        await p.complete(ask())
        chunks = [ch async for ch in p.stream(ask())]
        assert chunks and a.loads == 2 and a.unloads == 2 and not a.loaded and budget.used_mb() == 0
    finally:
        await budget.close()


async def test_the_reaper_unloads_without_traffic():
    a = LoadableModel("a", 30)
    budget = MemoryBudget(MemorySettings(budget_mb=100, keep_alive="50ms", sweep_interval_s=0.02),
                          rss_mb=lambda: 0.0, gpu=lambda: {"nvml": False, "why": "none here"})
    budget.register("a", a, 30)
    try:
        await BudgetedModel(a, budget).complete(ask())
        for _ in range(100):
            if not a.loaded:
                break
            await asyncio.sleep(0.02)
        assert not a.loaded and budget.model("a").evictions == {"keep_alive": 1}
    finally:
        await budget.close()


def test_gguf_estimate_of_the_packaged_model():
    """File size × factor + the KV cache from the file's own metadata (SmolLM2-135M: 30 layers, 3 KV heads of 64)."""
    from nlweb_local.providers.llama_cpp import packaged_smollm2_path

    path = packaged_smollm2_path()
    shape = gguf_shape(gguf_metadata(path))
    assert (shape.architecture, shape.layers, shape.kv_heads, shape.key_dim) == ("llama", 30, 3, 64)
    assert shape.kv_cache_bytes(2048) == 30 * 2048 * 3 * 128 * 2
    mb = estimate_gguf_mb(path, 2048, 1.3)
    assert mb == pytest.approx((path.stat().st_size * 1.3 + shape.kv_cache_bytes(2048)) / 2**20)
    assert estimate_gguf_mb(path, 4096, 1.3) > mb


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(ValueError, match="not a GGUF file"):
        gguf_metadata(bad)


def test_the_budget_through_the_service_admin_memory_and_metrics(tmp_path):
    """Composed as `serve` does: llama_cpp deployments under llm.memory, /admin/memory and /metrics."""
    from starlette.testclient import TestClient

    from nlweb_local.server.app import create_app
    from stand_ins import scripted_service, service_settings

    settings = service_settings(tmp_path, {"name": "a", "engine": "llama_cpp", "keep_alive": -1},
                                {"name": "b", "engine": "llama_cpp", "memory_mb": 80}, embedded_enabled=False)
    settings.llm.memory.budget_mb = 100
    a, b = LoadableModel("a", 60), LoadableModel("b", 999)  # b's memory_mb (80) wins over its own estimate
    comp = scripted_service(settings, {"a": a, "b": b})
    assert comp.memory is not None and comp.memory.model("b").size_mb == 80
    with TestClient(create_app(settings, comp, close_components=True), base_url="http://localhost") as c:
        for model in ("a", "b", "a"):
            r = c.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200, r.text
        view = c.get("/admin/memory").json()
        metrics = c.get("/metrics").text
    assert view["enabled"] and view["budget_mb"]["ram"] == 100 and view["used_mb"]["ram"] == 60
    models = {m["deployment"]: m for m in view["models"]}
    assert models["a"]["state"] == "loaded" and models["a"]["keep_alive_s"] is None and models["a"]["loads"] == 2
    assert models["b"]["state"] == "unloaded" and models["b"]["evictions"] == {"budget": 1}
    assert 'nlweb_model_loads_total{deployment="a"} 2.0' in metrics
    assert 'nlweb_model_evictions_total{deployment="a",reason="budget"} 1.0' in metrics
    assert 'nlweb_model_evictions_total{deployment="b",reason="budget"} 1.0' in metrics
    assert 'nlweb_model_memory_budgeted_bytes{pool="ram"} 6.291456e+07' in metrics


def test_a_model_that_never_fits_is_a_507_at_the_gateway(tmp_path):
    from starlette.testclient import TestClient

    from nlweb_local.server.app import create_app
    from stand_ins import scripted_service, service_settings

    settings = service_settings(tmp_path, {"name": "huge", "engine": "llama_cpp"}, embedded_enabled=False)
    settings.llm.memory.budget_mb = 100
    comp = scripted_service(settings, {"huge": LoadableModel("huge", 500)}, telemetry=None)
    with TestClient(create_app(settings, comp, close_components=True), base_url="http://localhost") as c:
        r = c.post("/v1/chat/completions", json={"model": "huge", "messages": [{"role": "user", "content": "hi"}]})
        off = c.get("/admin/fleet")
    assert r.status_code in (503, 507), r.text
    assert "500 MiB" in r.text and "100 MiB" in r.text
    assert off.status_code == 200


def test_admin_memory_without_a_budget_says_how_to_set_one(tmp_path):
    from starlette.testclient import TestClient

    from nlweb_local.providers.testing import ScriptedProvider
    from nlweb_local.server.app import create_app
    from stand_ins import scripted_service, service_settings

    settings = service_settings(tmp_path, {"name": "x", "engine": "openai", "model": "m", "url": "http://127.0.0.1:9/v1"},
                                embedded_enabled=False)
    comp = scripted_service(settings, {"x": ScriptedProvider("x")}, telemetry=None)
    assert comp.memory is None
    with TestClient(create_app(settings, comp, close_components=True), base_url="http://localhost") as c:
        body = c.get("/admin/memory").json()
    assert body["enabled"] is False and "budget_mb" in body["hint"]
