"""Bad input at the HTTP edge: the right status, a message that says what to fix, never a 500."""
import json

import pytest
from starlette.testclient import TestClient

from nlweb_local.config.settings import load_settings
from nlweb_local.core.types import Item
from nlweb_local.providers.testing import FunctionLLM, ScriptedProvider
from nlweb_local.server.app import create_app
from stand_ins import scripted_service


def make_client(store, embedder, answer=None, **llm_kw):
    store.upsert([Item("https://e.example/a", "Apple pie", "e", json.dumps({"@type": "Recipe", "name": "Apple pie"}))],
                 embedder.embed(["Apple pie"]))
    llm = FunctionLLM(answer or (lambda t, p, s: '{"score": 90, "description": "pie"}'), **llm_kw)
    settings = load_settings(environ={})
    settings.server.max_body_bytes = 4096
    comp = scripted_service(settings, {"local": ScriptedProvider("local")}, llm=llm, embedder=embedder, store=store,
                            telemetry=None)
    app = create_app(settings, comp, close_components=False)
    return TestClient(app, base_url="http://localhost")


@pytest.fixture()
def client(store, embedder):
    with make_client(store, embedder) as c:
        yield c


def test_missing_query_names_the_parameter(client):
    r = client.get("/ask")
    assert r.status_code == 400 and "'query'" in r.json()["error"]
    r = client.post("/ask", json={"site": "e"})
    assert r.status_code == 400 and "'query'" in r.json()["error"]


@pytest.mark.parametrize("params,fragment", [
    ({"query": "pie", "generate_mode": "poem"}, "generate_mode"),
    ({"query": "pie", "max_results": "lots"}, "max_results"),
    ({"query": "pie", "min_score": "101"}, "min_score"),
    ({"query": "pie", "api": "v9"}, "api"),
    ({"query": "pie", "prev": "[not json"}, "prev"),
    ({"query": "x" * 2001}, "query"),
])
def test_bad_parameters(client, params, fragment):
    r = client.get("/ask", params=params)
    assert r.status_code == 400 and fragment in r.json()["error"]


def test_bad_bodies(client):
    r = client.post("/ask", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = client.post("/ask", content=b"\x00\x01\xff binary", headers={"content-type": "application/octet-stream"})
    assert r.status_code == 400 and "binary" in r.json()["error"]
    r = client.post("/ask", content=json.dumps({"query": "pie", "pad": "x" * 5000}), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]
    r = client.post("/ask", json=["query", "pie"])
    assert r.status_code == 400


def test_form_body_is_merged(client):
    r = client.post("/ask", data={"query": "pie", "streaming": "false"})
    assert r.status_code == 200
    assert [m["message_type"] for m in r.json()][0] == "begin-nlweb-response"


def test_unknown_site_is_a_clear_empty_answer(client):
    r = client.get("/ask", params={"query": "pie", "site": "nosuch", "streaming": "false"})
    assert r.status_code == 200
    types = [m["message_type"] for m in r.json()]
    assert types == ["begin-nlweb-response", "no_results", "end-nlweb-response"]


def test_full_queue_is_503_with_retry_after(store, embedder):
    with make_client(store, embedder, max_queue=0) as c:
        r = c.get("/ask", params={"query": "pie"})
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
    assert "retry" in r.json()["error"]


def test_a_crash_inside_the_pipeline_ends_the_stream_cleanly(store, embedder):
    def broken(task, prompt, schema):
        raise RuntimeError("boom")
    with make_client(store, embedder, answer=broken) as c:
        r = c.get("/ask", params={"query": "pie"})
    msgs = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert r.status_code == 200
    assert msgs[-2]["message_type"] == "error" and msgs[-2]["status"] == 500
    assert msgs[-1] == {**msgs[-1], "message_type": "end-nlweb-response", "error": True}


def test_who_needs_a_query(client):
    r = client.get("/who")
    assert r.status_code == 400 and "'query'" in r.json()["error"]


def test_page_and_static_files_are_served(client):
    r = client.get("/")
    assert r.status_code == 200 and "<html" in r.text.lower()


def test_sse_keepalive_comments_while_the_model_is_slow(store, embedder):
    store.upsert([Item("https://e.example/a", "Apple pie", "e", json.dumps({"@type": "Recipe", "name": "Apple pie"}))],
                 embedder.embed(["Apple pie"]))
    llm = FunctionLLM(lambda t, p, s: '{"score": 90}', delay_s=0.35)
    settings = load_settings(environ={})
    settings.server.keepalive_s = 0.1
    comp = scripted_service(settings, {"local": ScriptedProvider("local")}, llm=llm, embedder=embedder, store=store,
                            telemetry=None)
    app = create_app(settings, comp, close_components=False)
    with TestClient(app, base_url="http://localhost") as c:
        r = c.get("/ask", params={"query": "pie"})
    assert r.status_code == 200
    blocks = r.text.split("\n\n")
    assert ": keepalive" in blocks  # a comment line of its own, between messages
    types = [json.loads(b[6:])["message_type"] for b in blocks if b.startswith("data: ")]
    assert types[0] == "begin-nlweb-response" and types[-1] == "end-nlweb-response" and "result" in types
