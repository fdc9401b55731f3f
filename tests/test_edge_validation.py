"""Hostile and malformed input at the HTTP edge (issue 11, items 6, 7 and 9): every bad request is a 4xx
that names the field, decided before any model is called; the limits that bound a request's work hold.

The app is the one `serve` composes, with scripted engines (fast) and an inert store."""
import json
import socket
import time

import openai
import pytest
from starlette.testclient import TestClient

from conftest import LiveServer
from nlweb_local.core.types import Item
from nlweb_local.providers.testing import FunctionLLM, ScriptedProvider
from nlweb_local.server.app import create_app
from stand_ins import NoEmbedder, scripted_service, service_settings

CHAT = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}


class CountingEmbedder(NoEmbedder):
    def __init__(self):
        self.calls = 0

    def embed(self, texts):
        self.calls += 1
        return super().embed(texts)


@pytest.fixture()
def gw(tmp_path):
    """(client, local, cloud, embedder) over two scripted deployments."""
    from nlweb_local.retrieval.qdrant_store import QdrantStore

    settings = service_settings(tmp_path, {"name": "cloud", "engine": "openai", "price_in_per_m": 1.0})
    settings.server.max_embedding_inputs = 8
    settings.server.max_embedding_tokens = 1000
    local, cloud = ScriptedProvider("local", "local says hi"), ScriptedProvider("cloud", "cloud says hi", local=False)
    embedder = CountingEmbedder()
    store = QdrantStore(dimension=2, path=tmp_path / "q")
    store.upsert([Item("https://e.example/a", "Apple pie", "e", json.dumps({"@type": "Recipe", "name": "Apple pie"}))],
                 embedder.embed(["Apple pie"]))
    embedder.calls = 0
    comp = scripted_service(settings, {"local": local, "cloud": cloud}, embedder=embedder, store=store, telemetry=None,
                            llm=FunctionLLM(lambda t, p, s: '{"score": 90, "description": "pie"}'))
    with TestClient(create_app(settings, comp, close_components=True), raise_server_exceptions=False, base_url="http://localhost") as c:
        yield c, local, cloud, embedder  # (closing the app closes the components: the audit, registry and key stores)
    store.close()


@pytest.mark.parametrize(("extra", "param"), [
    ({"messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [1]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages[0].content[0].text"),
    ({"messages": [{"role": "user", "content": {"text": "x"}}]}, "messages[0].content"),
    ({"messages": "hi"}, "messages"),
    ({"messages": []}, "messages"),
    ({"model": ["auto"]}, "model"),
    ({"n": 100}, "n"),
    ({"n": "1"}, "n"),
    ({"top_p": "x"}, "top_p"),
    ({"top_p": 7}, "top_p"),
    ({"temperature": "hot"}, "temperature"),
    ({"seed": "x"}, "seed"),
    ({"seed": 2**70}, "seed"),
    ({"max_tokens": True}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"response_format": "json"}, "response_format"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": "x"}}}, "response_format.json_schema.schema"),
    ({"stream_options": "yes"}, "stream_options"),
    ({"stream": True, "stream_options": ["include_usage"]}, "stream_options"),
    ({"stream": "yes"}, "stream"),
    ({"stop": 5}, "stop"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": ["a", 1]}, "stop[1]"),
    ({"tools": "search"}, "tools"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0].function.name"),
    ({"tool_choice": "maybe"}, "tool_choice"),
])
def test_a_bad_chat_field_is_a_400_naming_it_before_any_model_runs(gw, extra, param):
    c, local, cloud, _ = gw
    r = c.post("/v1/chat/completions", json={**CHAT, **extra})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and f"'{param}'" in error["message"]
    assert "retry-after" not in r.headers
    assert local.calls == cloud.calls == 0


def test_a_stream_with_bad_stream_options_fails_before_the_model_starts(gw):
    c, local, cloud, _ = gw
    r = c.post("/v1/chat/completions", json={**CHAT, "stream": True, "stream_options": 5})
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    assert local.calls == cloud.calls == 0


@pytest.mark.parametrize("path,body", [("/v1/chat/completions", CHAT),
                                       ("/v1/completions", {"model": "auto", "prompt": "hi"}),
                                       ("/v1/embeddings", {"input": "hi"})])
@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4o-mini"])
def test_an_unknown_model_is_404_model_not_found(gw, path, body, model):
    """OpenAI's own answer: 404 {"error": {"type": "invalid_request_error", "code": "model_not_found", ...}};
    the message lists what is there to use instead."""
    c, local, cloud, embedder = gw
    r = c.post(path, json={**body, "model": model})
    assert r.status_code == 404
    error = r.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "model_not_found", "model")
    assert f"'{model}'" in error["message"] and "/v1/models" in error["message"]
    for available in ("auto", "local", "cloud"):
        assert available in error["message"]
    if path == "/v1/embeddings":
        assert "all-MiniLM-L6-v2" in error["message"]
    assert local.calls == cloud.calls == embedder.calls == 0


def test_the_openai_client_raises_not_found_for_an_unknown_model(tmp_path):
    """What an OpenAI SDK user sees: `openai.NotFoundError` carrying code model_not_found (not an answer by
    the local model with the unknown name echoed back)."""
    settings = service_settings(tmp_path)
    comp = scripted_service(settings, {"local": ScriptedProvider("local", "local says hi")}, telemetry=None)
    srv = LiveServer(create_app(settings, comp, close_components=False))
    try:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.NotFoundError) as e:
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert e.value.code == "model_not_found" and e.value.param == "model"
        assert client.chat.completions.create(messages=[{"role": "user", "content": "hi"}],
                                              model="auto").choices[0].message.content == "local says hi"
    finally:
        srv.stop()


def test_known_models_and_aliases_are_served(gw):
    c, local, cloud, _ = gw
    for model, served in (("auto", "local"), ("local", "local"), ("cloud", "cloud"), (None, "local")):
        r = c.post("/v1/chat/completions", json={**CHAT, "model": model})
        assert r.status_code == 200 and r.headers["x-nlweb-route"].startswith(served), model
    assert c.post("/v1/embeddings", json={"input": "hi", "model": "all-MiniLM-L6-v2"}).status_code == 200


@pytest.mark.parametrize("body,param", [
    ({**CHAT, "max_tokens": 10**9}, "max_tokens"),
    ({**CHAT, "max_tokens": 4096}, "messages"),  # the window exactly, plus a prompt
    ({"model": "auto", "messages": [{"role": "user", "content": "x" * 600_000}]}, "messages"),
    ({"model": "local", "messages": [{"role": "user", "content": "x" * 20_000}]}, "messages"),
])
def test_what_fits_no_context_window_is_400_context_length_exceeded_not_503(gw, body, param):
    c, local, cloud, _ = gw
    r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 400 and "retry-after" not in r.headers
    assert r.json()["error"]["code"] == "context_length_exceeded" and r.json()["error"]["param"] == param
    assert local.calls == cloud.calls == 0


def test_a_long_prompt_without_max_tokens_gets_what_fits(gw):
    c, local, _, _ = gw
    r = c.post("/v1/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": "x" * 15_000}]})
    assert r.status_code == 200 and local.calls == 1  # 3,750 of 4,096 tokens: no room for the default 512


def test_tools_nobody_can_call_are_a_400(gw):
    c, local, cloud, _ = gw
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    r = c.post("/v1/chat/completions", json={**CHAT, "tools": tools})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
    assert local.calls == cloud.calls == 0


def test_fields_openai_clients_send_are_accepted(gw):
    c, local, _, _ = gw
    body = {**CHAT, "user": "u-1", "logit_bias": {"50256": -100}, "presence_penalty": 0.5, "frequency_penalty": 0.1,
            "logprobs": False, "metadata": {"k": "v"}, "store": False, "parallel_tool_calls": True, "n": 1,
            "temperature": 0, "top_p": 1, "seed": 7, "stop": "\n", "max_completion_tokens": 32,
            "response_format": {"type": "json_object"}, "service_tier": "auto", "stream_options": None}
    r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    messages = [{"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}]},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                                       "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "content": "42", "tool_call_id": "c1"}]
    assert c.post("/v1/chat/completions", json={**CHAT, "messages": messages}).status_code == 200


def test_the_official_sdk_with_every_optional_field(gw):
    c, local, _, _ = gw
    client = openai.OpenAI(base_url="http://localhost/v1", api_key="unused", http_client=c, max_retries=0)
    r = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}], user="u",
                                       presence_penalty=0.1, frequency_penalty=0.1, logit_bias={"1": 1}, n=1, seed=1,
                                       top_p=0.9, stop=["\n"], metadata={"a": "b"}, store=False, max_tokens=20)
    assert r.choices[0].message.content == "local says hi"
    chunks = list(client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}],
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None
    assert client.completions.create(model="auto", prompt="hi", max_tokens=5, user="u").choices[0].text == "local says hi"
    assert len(client.embeddings.create(model="all-MiniLM-L6-v2", input=["a", "b"]).data) == 2
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="n=1"):
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}], n=3)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-5", "0", "1e400", "soon", "1e12"])
def test_a_non_finite_or_absurd_deadline_header_is_a_400(gw, value):
    c, local, _, _ = gw
    r = c.post("/v1/chat/completions", json=CHAT, headers={"x-nlweb-deadline-ms": value})
    assert r.status_code == 400 and r.json()["error"]["param"] == "x-nlweb-deadline-ms"
    assert local.calls == 0


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
def test_deeply_nested_gateway_bodies_are_a_400(gw, path):
    c, *_ = gw
    deep = {"model": "auto", "user": json.loads("[" * 500 + "]" * 500)}
    r = c.post(path, json=deep)
    assert r.status_code == 400 and "deeper than" in r.json()["error"]["message"]
    r = c.post(path, content=b'{"input": 1e400, "prompt": 1e400}', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_embeddings_are_bounded_in_inputs_and_tokens(gw):
    c, _, _, embedder = gw
    r = c.post("/v1/embeddings", json={"input": ["x"] * 9})
    assert r.status_code == 400 and "server.max_embedding_inputs" in r.json()["error"]["message"]
    r = c.post("/v1/embeddings", json={"input": ["x" * 2000, "y" * 2100]})
    assert r.status_code == 400 and "server.max_embedding_tokens" in r.json()["error"]["message"]
    assert embedder.calls == 0
    for bad in ([], [1, 2], None, {"a": 1}, [["a"]]):
        r = c.post("/v1/embeddings", json={"input": bad})
        assert r.status_code == 400 and r.json()["error"]["param"].startswith("input"), bad
    assert embedder.calls == 0
    assert len(c.post("/v1/embeddings", json={"input": ["x"] * 8}).json()["data"]) == 8


# --- /ask ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["max_results", "min_score"])
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400", "Infinity"])
def test_ask_numbers_must_be_finite(gw, name, value):
    c, *_ = gw
    r = c.get("/ask", params={"query": "pie", name: value})
    assert r.status_code == 400 and name in r.json()["error"]
    r = c.post("/ask", json={"query": "pie", name: 10**400})
    assert r.status_code == 400 and name in r.json()["error"]


@pytest.mark.parametrize("where", ["body", "prev", "last_ans", "prev-param", "last_ans-param"])
def test_deeply_nested_ask_input_is_a_400_not_a_recursion_error(gw, where):
    c, *_ = gw
    deep = "[" * 50_000 + "]" * 50_000
    if where == "body":
        r = c.post("/ask", content=('{"query": "pie", "x": ' + deep + "}").encode(), headers={"content-type": "application/json"})
    elif where in ("prev", "last_ans"):
        r = c.post("/ask", content=('{"query": "pie", "' + where + '": ' + "[" * 200 + "]" * 200 + "}").encode(),
                   headers={"content-type": "application/json"})
    else:  # (Python's json.loads, which read these before, raised RecursionError past ~1,000 levels)
        r = c.get("/ask", params={"query": "pie", where.split("-")[0]: deep[45_000:55_000], "streaming": "false"})
        if where == "last_ans-param":  # a last answer that is no JSON is read as a title: harmless
            assert r.status_code == 200
            return
    assert r.status_code == 400 and "deeper than" in r.json()["error"], r.text[:200]


def test_ask_still_reads_json_arrays_in_parameters(gw):
    c, *_ = gw
    r = c.get("/ask", params={"query": "and pie?", "prev": '["apple", "cake"]', "streaming": "false",
                              "last_ans": '[{"title": "Apple pie"}]'})
    assert r.status_code == 200 and r.json()[0]["message_type"] == "begin-nlweb-response"


# --- a slow body ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def slow_body_server(tmp_path_factory):
    settings = service_settings(tmp_path_factory.mktemp("slow"))
    settings.server.body_timeout_s = 0.5
    comp = scripted_service(settings, {"local": ScriptedProvider("local")}, telemetry=None)
    srv = LiveServer(create_app(settings, comp, close_components=False))
    yield srv
    srv.stop()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings", "/ask", "/mcp"])
def test_a_body_that_trickles_in_gets_408(slow_body_server, path):
    with socket.create_connection(("127.0.0.1", slow_body_server.port), timeout=20) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  f"Accept: application/json\r\nContent-Length: 1000\r\n\r\n".encode())
        s.settimeout(0.2)
        answer = b""
        for _ in range(200):  # a byte every 0.1 s: 1,000 bytes would take 100 s
            s.sendall(b" ")
            try:
                answer += s.recv(4096)
            except TimeoutError:
                time.sleep(0.0)
            if b"\r\n\r\n" in answer:
                break
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"server.body_timeout_s" in answer


@pytest.mark.parametrize("body", [
    {"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
    {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": ""}], "stream": True},
    {"model": "local", "messages": [{"role": "assistant", "content": "x"}], "max_tokens": 7, "temperature": 0},
    {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 9, "max_tokens": 3, "temperature": 1.5,
     "user": "u-1"},
])
def test_the_fast_path_gives_exactly_what_the_full_validation_gives(body):
    from nlweb_local.server.openai_schema import ChatCompletionRequest, simple_chat, validate

    fast = simple_chat(body)
    assert fast is not None and fast == validate(ChatCompletionRequest, body).chat_request()


@pytest.mark.parametrize("body", [
    {"messages": [{"role": "user", "content": "x"}], "max_tokens": True},
    {"messages": [{"role": "user", "content": "x"}], "temperature": 3},
    {"messages": [{"role": "user", "content": ["x"]}]},
    {"messages": [{"role": "tool", "content": "x"}]},
    {"messages": [{"role": "user", "content": "x", "name": "n"}]},
    {"messages": [{"role": "user", "content": "x"}], "n": 2},
    {"messages": [{"role": "user", "content": "x"}], "model": ["a"]},
    {"messages": []},
])
def test_anything_else_takes_the_full_validation(body):
    from nlweb_local.server.openai_schema import simple_chat

    assert simple_chat(body) is None
