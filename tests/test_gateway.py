"""The OpenAI-compatible gateway, with the official `openai` SDK as the client.

Routing and failover run against scripted deployments (fast, deterministic); the real local model
answers through the same path in the `slow` tests at the end.
"""
import json

import openai
import pytest

from conftest import LiveServer
from nlweb_local.core.errors import ProviderConnectionError
from nlweb_local.providers.testing import ScriptedProvider
from nlweb_local.server.app import create_app
from stand_ins import scripted_service, service_settings


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    """A gateway over two scripted deployments: `local` (free) and `cloud` (priced)."""
    from nlweb_local.retrieval.qdrant_store import QdrantStore

    local = ScriptedProvider("local", "local says hello")
    cloud = ScriptedProvider("cloud", "cloud says hello", local=False)
    data = tmp_path_factory.mktemp("gw")
    settings = service_settings(data, {"name": "cloud", "engine": "openai", "price_in_per_m": 2.5, "price_out_per_m": 10})
    settings.llm.breaker.min_calls = 100  # keep breakers closed: these tests look at single failovers
    store = QdrantStore(dimension=2, path=data / "q")
    comp = scripted_service(settings, {"local": local, "cloud": cloud}, store=store, telemetry=None)
    srv = LiveServer(create_app(settings, comp, close_components=False))
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
    yield client, local, cloud, srv
    srv.stop()
    store.close()


@pytest.fixture(autouse=True)
def _heal(request):
    yield
    if "scripted" in request.fixturenames:
        _, local, cloud, _ = request.getfixturevalue("scripted")
        local.fail_with = cloud.fail_with = None
        local.fail_after_tokens = cloud.fail_after_tokens = None


def test_chat_completion_says_where_it_was_served(scripted):
    client, local, cloud, _ = scripted
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": "hi"}])
    r = raw.parse()
    assert r.choices[0].message.content == "local says hello" and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 3
    assert raw.headers["x-nlweb-route"].startswith("local; local-first")


def test_failover_before_the_first_token_is_invisible_to_the_client(scripted):
    client, local, cloud, _ = scripted
    local.fail_with = ProviderConnectionError("refused", deployment="local")
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": "hi"}])
    assert raw.parse().choices[0].message.content == "cloud says hello"
    assert "after failover from local" in raw.headers["x-nlweb-route"]


def test_local_only_header_never_reaches_the_cloud(scripted):
    client, local, cloud, _ = scripted
    local.fail_with = ProviderConnectionError("refused", deployment="local")
    before = cloud.calls
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "secret"}],
                                       extra_headers={"x-nlweb-privacy": "local_only"})
    assert e.value.status_code == 503 and cloud.calls == before
    assert "local_only" in e.value.response.json()["error"]["message"]
    assert int(e.value.response.headers["retry-after"]) >= 1


def test_streaming_and_usage(scripted):
    client, *_ = scripted
    stream = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}], stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "local says hello"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


def test_failure_mid_stream_is_an_explicit_error(scripted):
    client, local, cloud, _ = scripted
    local.fail_after_tokens = 1
    got = []
    with pytest.raises(openai.APIError) as e:
        for c in client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}], stream=True):
            got.append(c.choices[0].delta.content or "")
    assert "".join(got) == "local " and "after the answer had started" in str(e.value)


def test_strategy_header_and_model_pinning(scripted):
    client, local, cloud, _ = scripted
    raw = client.chat.completions.with_raw_response.create(model="cloud", messages=[{"role": "user", "content": "hi"}])
    assert raw.parse().choices[0].message.content == "cloud says hello"
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": "hi"}],
                                                           extra_headers={"x-nlweb-strategy": "cost"})
    assert "cost" in raw.headers["x-nlweb-route"]
    with pytest.raises(openai.BadRequestError, match="unknown routing strategy"):
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}],
                                       extra_headers={"x-nlweb-strategy": "vibes"})


def test_openai_error_format_for_bad_requests(scripted):
    client, *_ = scripted
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="auto", messages=[])
    body = e.value.response.json()
    assert body["error"]["type"] == "invalid_request_error" and "messages" in body["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}], temperature=9)


def test_completions_and_models(scripted):
    client, *_ = scripted
    r = client.completions.create(model="auto", prompt="Say hi")
    assert r.choices[0].text == "local says hello"
    ids = {m.id for m in client.models.list().data}
    assert {"auto", "local", "cloud"} <= ids


def test_admin_breakers(scripted):
    import httpx

    client, local, cloud, srv = scripted
    snap = httpx.post(f"{srv.url}/admin/breakers/local/open", params={"seconds": "60"}).json()
    assert snap["state"] == "open"
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-nlweb-route"].startswith("cloud")
    assert httpx.post(f"{srv.url}/admin/breakers/local/reset").json()["state"] == "closed"
    states = {b["deployment"]: b["state"] for b in httpx.get(f"{srv.url}/admin/breakers").json()["breakers"]}
    assert states == {"local": "closed", "cloud": "closed"}
    assert httpx.post(f"{srv.url}/admin/breakers/nope/reset").status_code == 404


@pytest.mark.slow
def test_the_real_local_model_through_the_gateway(live_server):
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=12, temperature=0)
    r = raw.parse()
    assert r.choices[0].message.content.strip() and raw.headers["x-nlweb-route"].startswith("local;")
    schema = {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]}
    r = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "A colour as JSON."}],
                                       max_tokens=24, temperature=0,
                                       response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}})
    assert isinstance(json.loads(r.choices[0].message.content)["colour"], str)
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="local", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=12, temperature=0, stream=True)
        if c.choices)
    assert text.strip()
    emb = client.embeddings.create(model="all-MiniLM-L6-v2", input=["vegetarian curry", "tent"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 384


def test_ask_degrades_to_similarity_when_no_llm_can_serve(tmp_path, embedder):
    """Every breaker open: /ask still answers, ordered by embedding similarity, and the stream says so."""
    from starlette.testclient import TestClient

    from nlweb_local.core.types import Item
    from nlweb_local.retrieval.qdrant_store import QdrantStore

    store = QdrantStore(dimension=embedder.dimension, path=tmp_path / "q")
    names = ["Chickpea curry", "Lemon tart", "Rain jacket"]
    store.upsert([Item(f"https://d.example/{i}", n, "d", json.dumps({"@type": "Thing", "name": n})) for i, n in enumerate(names)],
                 embedder.embed(names))
    local = ScriptedProvider("local", classify=True)
    settings = service_settings(tmp_path)
    comp = scripted_service(settings, {"local": local}, embedder=embedder, store=store, telemetry=None)
    comp.router.force_open("local", 600)
    with TestClient(create_app(settings, comp, close_components=False), base_url="http://localhost") as c:
        r = c.get("/ask", params={"query": "curry", "streaming": "false", "min_score": 0})
    store.close()
    assert r.status_code == 200
    msgs = r.json()
    notes = [m["message"] for m in msgs if m["message_type"] == "intermediate_message"]
    assert notes and "similarity" in notes[0]
    items = [it for m in msgs if m["message_type"] == "result" for it in m["content"]]
    assert items[0]["name"] == "Chickpea curry" and local.calls == 0
