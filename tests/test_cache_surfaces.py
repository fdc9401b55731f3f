"""Where the caches' worth shows: /admin/stats and `nlweb-local cost report` give each cache — response, ask,
semantic, ranking — its hit rate and what its hits saved, apart (a semantic hit is the semantic cache's, not
also the response cache's). One service composed as `serve` does: the real MiniLM, embedded Qdrant with the
fixture site, a scripted engine and a priced cloud deployment, the semantic cache on, telemetry and ledger on.
(The dashboard's cache table: tests/test_telemetry_dashboard.py.)"""
import json

import httpx
import pytest

from conftest import FIXTURE_SITE
from nlweb_local.cli.main import main
from nlweb_local.ingest.pipeline import Ingestor
from nlweb_local.providers.testing import FunctionLLM, ScriptedProvider
from nlweb_local.retrieval.qdrant_store import QdrantStore
from nlweb_local.server.app import create_app
from stand_ins import scripted_service, service_settings
from test_answer_cache import answer
from test_response_cache import chat


async def test_stats_and_the_cost_report_give_each_cache_its_hit_rate_and_savings(tmp_path, embedder, monkeypatch,
                                                                                  capsys):
    settings = service_settings(tmp_path / "data", {"name": "cloud", "engine": "openai", "price_in_per_m": 2.5,
                                                    "price_out_per_m": 10.0})
    settings.semantic_cache.enabled = True
    settings.search.llm_rank_limit = 3
    store = QdrantStore(dimension=embedder.dimension, path=tmp_path / "q")
    Ingestor(embedder, store, settings.ingest, progress=False).ingest(FIXTURE_SITE, "fixture")
    cloud = ScriptedProvider("cloud", "Paris, on the Seine.", local=False)
    comp = scripted_service(settings, {"local": ScriptedProvider("local"), "cloud": cloud}, embedder=embedder,
                            store=store, llm=FunctionLLM(answer))
    app = create_app(settings, comp, close_components=False)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
            outcomes = []
            for text in ("What is the capital of France?", "What is the capital of France?",
                         "What's the capital city of France?"):
                r = await client.post("/v1/chat/completions", json=chat(text, model="cloud"))
                outcomes.append(r.headers["x-nlweb-cache"].split(";")[0])
            params = {"query": "spicy ginger tea", "site": "fixture", "streaming": "false"}
            for _ in range(2):
                outcomes.append((await client.get("/ask", params=params)).headers["x-nlweb-cache"])
            assert outcomes == ["miss", "hit", "semantic-hit", "miss", "hit"] and cloud.calls == 1
            stats = (await client.get("/admin/stats")).json()
    finally:
        await comp.close()
        store.close()

    caches, window = stats["caches"], stats["cache_hits"]
    cost = window["response"]["saved_usd"]
    assert cost > 0
    assert (caches["response"]["hits"], caches["response"]["misses"]) == (1, 2)  # exact lookups only
    assert caches["response"]["saved_usd"] == pytest.approx(cost)
    assert (caches["semantic"]["hits"], caches["semantic"]["saved_usd"]) == (1, pytest.approx(cost))
    assert (caches["semantic"]["misses"], caches["semantic"]["hit_ratio"]) == (2, 1 / 3)  # after the exact misses
    assert (caches["ask"]["hits"], caches["ask"]["misses"], caches["ask"]["hit_ratio"]) == (1, 1, 0.5)
    assert caches["ask"]["saved_usd"] == 0.0  # the scripted ranker costs nothing: priced, at zero
    assert caches["ranking"]["misses"] >= 1 and caches["ranking"]["saved_usd"] is None  # scores, not costs
    assert {k: v["hits"] for k, v in window.items()} == {"response": 1, "semantic": 1, "ask": 1}

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NLWEB_LOCAL_DATA_DIR", str(tmp_path / "data"))
    assert main(["cost", "report", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)["caches"]
    assert {k: v["hits"] for k, v in report.items()} == {"response": 1, "semantic": 1, "ask": 1}
    assert report["response"]["saved_usd"] == pytest.approx(cost) == report["semantic"]["saved_usd"]
    # requests in the ledger: 3 chats and the cached question (the first one's ranker is scripted, outside
    # the gateway: no ledger row)
    assert report["ask"]["request_share"] == pytest.approx(1 / 4)
    assert main(["cost", "report"]) == 0
    table = capsys.readouterr().out
    assert "semantic" in table and "25.0% of requests" in table
