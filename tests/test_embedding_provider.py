"""The embedding model as a provider (`sentence_transformers`): vectors of the model's dimension, computed
off the event loop; retrieval's embedder and /v1/embeddings are adapters over the same provider."""
import asyncio
import math
import threading

import httpx
import pytest

from nlweb_local.core.errors import BadRequestError
from nlweb_local.core.types import ChatRequest, Message
from nlweb_local.providers.sentence_transformers import SentenceTransformersProvider
from nlweb_local.retrieval.embedder import ProviderEmbedder


@pytest.fixture(scope="module")
def provider(embedder):
    """The provider inside the session's default embedder (the real all-MiniLM-L6-v2, loaded once)."""
    return embedder.provider


async def test_embed_returns_unit_vectors_of_the_models_dimension(provider):
    out = await provider.embed(["vegetarian chickpea curry", "two-person tent", "curry with chickpeas"])
    assert provider.dimension == 384 and provider.capabilities.embeddings and provider.capabilities.local
    assert not provider.capabilities.streaming
    assert len(out.vectors) == 3 and all(len(v) == 384 for v in out.vectors)
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-4) for v in out.vectors)
    cos = lambda a, b: math.fsum(x * y for x, y in zip(a, b))  # noqa: E731
    assert cos(out.vectors[0], out.vectors[2]) > cos(out.vectors[0], out.vectors[1])  # a real model, not noise
    assert out.model == "all-MiniLM-L6-v2" and out.deployment == provider.name
    assert out.prompt_tokens >= 3 * 3  # the model's own tokenizer: [CLS] ... [SEP] per text
    assert (await provider.embed([])).vectors == []


async def test_embedding_runs_in_a_worker_thread_while_the_loop_stays_free(provider, monkeypatch):
    """The model call is held until the event loop itself releases it: if it ran on the loop, the loop could
    never get there (the wait would time out and the test fail)."""
    loop_thread = threading.current_thread()
    released = threading.Event()
    seen = []
    real = provider._st.encode

    def held(*a, **kw):
        seen.append(threading.current_thread())
        assert released.wait(30), "the event loop did not run while the model was embedding"
        return real(*a, **kw)

    monkeypatch.setattr(provider._st, "encode", held)
    task = asyncio.create_task(provider.embed(["a question about tents"]))
    ticks = 0
    while not seen:  # the loop keeps running other work while the embedding is under way
        ticks += 1
        await asyncio.sleep(0.001)
    released.set()
    out = await task
    assert seen[0] is not loop_thread and ticks >= 1
    assert len(out.vectors[0]) == 384


async def test_retrievals_embedder_and_the_provider_give_the_same_vectors(embedder, provider):
    texts = ["Red lentil dal", "Pocket stove"]
    assert isinstance(embedder, ProviderEmbedder) and embedder.dimension == provider.dimension
    assert embedder.name == provider.model
    sync = embedder.embed(texts)
    via_provider = (await provider.embed(texts)).vectors
    assert [[round(x, 5) for x in v] for v in sync] == [[round(x, 5) for x in v] for v in via_provider]


def test_several_threads_share_one_model(embedder):
    """Ingestion and search threads take turns on the model (torch modules are not thread-safe)."""
    texts = [f"item number {i}" for i in range(8)]
    expected = embedder.embed(texts)
    results: dict[int, list] = {}

    def work(n):
        results[n] = embedder.embed(texts)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all([[round(x, 5) for x in v] for v in r] == [[round(x, 5) for x in v] for v in expected]
               for r in results.values())


async def test_chat_is_refused_with_a_reason(provider):
    with pytest.raises(BadRequestError, match="serves embeddings only"):
        await provider.complete(ChatRequest([Message("user", "hi")]))


def test_the_adapter_refuses_a_provider_it_cannot_serve_retrieval_with():
    from nlweb_local.providers.testing import ScriptedProvider

    with pytest.raises(BadRequestError, match="does not serve embeddings"):
        ProviderEmbedder(ScriptedProvider("chat-only"))


def test_a_sentence_transformers_deployment_builds_through_the_engine_registry():
    from nlweb_local.config.settings import DeploymentSettings
    from nlweb_local.providers.registry import build_provider

    p = build_provider(DeploymentSettings(name="emb", engine="sentence_transformers", options={"batch_size": 8}),
                       environ={})
    assert isinstance(p, SentenceTransformersProvider)
    assert p.name == "emb" and p.model == "all-MiniLM-L6-v2" and p.dimension == 384 and p._batch_size == 8
    with pytest.raises(BadRequestError, match="does not exist"):
        build_provider(DeploymentSettings(name="emb", engine="sentence_transformers", model="/nonexistent/model"),
                       environ={})


async def test_v1_embeddings_are_served_by_the_embedding_provider(embedder, provider, monkeypatch):
    from nlweb_local.config.settings import load_settings
    from nlweb_local.providers.testing import ScriptedProvider
    from nlweb_local.server.app import create_app
    from stand_ins import scripted_service

    calls = []
    real = provider.embed

    async def spy(texts):
        calls.append(list(texts))
        return await real(texts)

    monkeypatch.setattr(provider, "embed", spy)
    settings = load_settings(environ={})
    comp = scripted_service(settings, {"local": ScriptedProvider("local")}, embedder=embedder, telemetry=None)
    app = create_app(settings, comp, close_components=False)  # as serve composes it
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
        r = await client.post("/v1/embeddings", json={"input": ["vegetarian curry", "tent"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert calls == [["vegetarian curry", "tent"]]
    assert body["model"] == "all-MiniLM-L6-v2" and r.headers["x-nlweb-route"].startswith("embedded;")
    assert [len(d["embedding"]) for d in body["data"]] == [384, 384]
    expected = embedder.embed(["vegetarian curry", "tent"])
    assert [round(x, 5) for x in body["data"][1]["embedding"]] == [round(x, 5) for x in expected[1]]
