"""Property-based fuzzing of every HTTP endpoint: whatever a client sends, the answer is never a 5xx and
never shows a traceback.

The app is the one `serve` composes (`scripted_service`): two scripted deployments (fast), the /ask
pipeline over a scripted LLM, a temporary store with a few items, metrics on. Requests are valid ones
mutated (a field replaced by any JSON value, removed, or added), raw bodies (garbage, truncated, NaN,
1e400, nesting thousands of levels deep), odd query strings and header values (non-ASCII, control
characters, numbers that are not finite). Response headers must be ASCII. Bounded and reproducible: a fixed number of examples per
endpoint with `derandomize=True`; the whole file runs in well under a minute on two cores.

Excluded on purpose: a valid but tiny `x-nlweb-deadline-ms` (it expires, and 504 is the honest answer)
and admin commands that leave a breaker open for later tests (each admin example resets them).
"""
from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from nlweb_local.core.types import Item
from nlweb_local.providers.testing import FunctionLLM, ScriptedProvider
from nlweb_local.server.app import create_app
from stand_ins import NoEmbedder, scripted_service, service_settings

FUZZ = settings(max_examples=80, deadline=None, derandomize=True, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
TRACEBACK = ("Traceback", 'File "')


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from nlweb_local.retrieval.qdrant_store import QdrantStore

    data = tmp_path_factory.mktemp("fuzz")
    s = service_settings(data, {"name": "cloud", "engine": "openai", "price_in_per_m": 1.0})
    s.server.autoload_demo = False
    s.server.max_body_bytes = 200_000
    s.server.body_timeout_s = 5.0
    s.search.llm_rank_limit = 3
    embedder = NoEmbedder()
    store = QdrantStore(dimension=2, path=data / "q")
    items = [Item(f"https://e.example/{i}", name, site, json.dumps({"@type": "Recipe", "name": name}))
             for i, (name, site) in enumerate([("Apple pie", "e"), ("Pho", "f"), ("Ramen", "f"), ("Tent", "g")])]
    store.upsert(items, embedder.embed([i.name for i in items]))
    llm = FunctionLLM(lambda task, prompt, schema: '{"score": 80, "description": "fits", "decontextualized_query": "q",'
                      ' "answer": "an answer", "summary": "a summary"}')
    comp = scripted_service(s, {"local": ScriptedProvider("local", "local answer"),
                                "cloud": ScriptedProvider("cloud", "cloud answer", local=False)},
                            llm=llm, embedder=embedder, store=store)
    with TestClient(create_app(s, comp, close_components=True), raise_server_exceptions=False, base_url="http://localhost") as client:
        yield client, comp
    store.close()


def check(r) -> None:
    """The properties: no 5xx, no traceback, no crash reported inside an /ask stream either, and response
    headers in plain ASCII (some are built from what the client sent: Mcp-Session-Id, x-request-id)."""
    text = r.text
    assert all(k.isascii() and v.isascii() for k, v in r.headers.raw), r.headers.raw
    assert r.status_code < 500, (r.request.method, str(r.request.url)[:300], r.status_code, text[:600])
    assert not any(t in text for t in TRACEBACK), text[:600]
    assert "internal error while answering" not in text, text[:600]


# --- strategies -------------------------------------------------------------------------------------

AWKWARD_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=24) | st.sampled_from(
    ["", " ", "auto", "local", "cloud", "nan", "inf", "-inf", "1e400", "-5", "0", "\x00", "\u202e", "≥", "名前", "[", "[[",
     "{}", "null", "true", "a" * 3000])
NUMBERS = (st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from([0, 1, -1, 2**63, 10**400, 1.5, 1e308]))
SCALARS = st.none() | st.booleans() | NUMBERS | AWKWARD_TEXT
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(AWKWARD_TEXT, inner, max_size=4), max_leaves=10)


def deep(n: int, open_: str = "[", close: str = "]") -> str:
    return open_ * n + close * n


RAW_BODIES = st.one_of(
    st.binary(max_size=64),
    st.integers(10, 5000).map(lambda n: deep(n).encode()),
    st.integers(10, 3000).map(lambda n: ('{"a":' * n + "1" + "}" * n).encode()),
    st.sampled_from([b"", b"{", b"null", b"[]", b"{}", b'{"a": NaN}', b'{"a": Infinity}', b'{"max_tokens": 1e400}',
                     b"\xef\xbb\xbf{}", b'"just a string"', b"\xff\xfe", b"1" * 5000]),
)


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every location inside a JSON value (keys and indices), the value itself first."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, prefix + (i,))
    return out


@st.composite
def mutated(draw, template: dict) -> Any:
    """`template` with up to three mutations: a location replaced by any JSON value (or a deeply nested
    one), removed, or given an extra member."""
    body: Any = copy.deepcopy(template)
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(paths(body)))
        op = draw(st.sampled_from(["replace", "replace", "deep", "remove", "add"]))
        if op in ("replace", "deep"):
            new = draw(JSON_VALUES) if op == "replace" else json.loads(deep(draw(st.integers(20, 400))))
            if not where:
                body = new
                continue
            parent = _at(body, where[:-1])
            parent[where[-1]] = new
        elif op == "remove" and where:
            parent = _at(body, where[:-1])
            del parent[where[-1]]
        else:
            target = _at(body, where)
            if isinstance(target, dict):
                target[draw(AWKWARD_TEXT)] = draw(JSON_VALUES)
            elif isinstance(target, list):
                target.append(draw(JSON_VALUES))
    return body


def _at(value: Any, where: tuple) -> Any:
    for key in where:
        value = value[key]
    return value


def encode(body: Any) -> bytes:
    try:
        return json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError):
        return b"{"


HEADER_VALUES = st.one_of(
    st.binary(max_size=24).map(lambda b: bytes(c for c in b if c in (9,) or 32 <= c <= 126 or c >= 128)),
    st.sampled_from([b"nan", b"inf", b"-inf", b"-5", b"0", b"1e400", b"60000", b"local_only", b"any", b"cost",
                     b"quality", b"vibes", b"99999999999999999999999", b"\xe2\x89\xa5", b"application/json"]),
)
FUZZED_HEADERS = ["x-nlweb-deadline-ms", "x-nlweb-priority", "x-nlweb-privacy", "x-nlweb-strategy",
                  "x-nlweb-conversation", "x-request-id", "content-type", "accept", "mcp-session-id",
                  "mcp-protocol-version"]


@st.composite
def headers(draw, base: dict[str, str] | None = None) -> list[tuple[bytes, bytes]]:
    out = {k.encode(): v.encode() for k, v in (base or {}).items()}
    for name in draw(st.lists(st.sampled_from(FUZZED_HEADERS), max_size=3, unique=True)):
        value = draw(HEADER_VALUES)
        if name == "x-nlweb-deadline-ms" and _tiny_deadline(value):
            value = b"60000"  # a deadline that really expires gets an honest 504 (see the module docstring)
        out[name.encode()] = value
    return list(out.items())


def _tiny_deadline(value: bytes) -> bool:
    try:
        return 0 < float(value) < 1000
    except ValueError:
        return False


def post(client: TestClient, path: str, body: bytes, hdrs: list[tuple[bytes, bytes]]):
    return client.request("POST", path, content=body, headers=hdrs)


CHAT = {"model": "auto", "messages": [{"role": "system", "content": "be brief"},
                                      {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_tokens": 16, "temperature": 0.2, "top_p": 1, "n": 1, "seed": 3, "stop": ["\n"], "stream": False,
        "stream_options": {"include_usage": True}, "response_format": {"type": "json_object"}, "user": "u",
        "tool_choice": "auto", "logit_bias": {"1": 1}}
COMPLETION = {"model": "auto", "prompt": "Say hi", "max_tokens": 8, "stream": True, "stop": "\n", "echo": False}
EMBEDDING = {"model": "all-MiniLM-L6-v2", "input": ["a", "b"], "encoding_format": "float"}
ASK = {"query": "pie", "site": ["e", "f"], "prev": ["cake"], "last_ans": [{"title": "Pie", "url": "u"}],
       "generate_mode": "summarize", "max_results": 5, "min_score": 10, "streaming": True, "api": "v3",
       "query_id": "q1", "conversation_id": "c1", "decontextualized_query": "apple pie"}
ASK_V05 = {"query": {"text": "pie", "site": "e", "num_results": 3}, "context": {"prev": ["x"]},
           "prefer": {"mode": "generate", "streaming": False}, "meta": {"session_context": {"conversation_id": "c"}}}
MCP = [{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}},
       {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "ask", "arguments": {"query": "pie", "site": ["e"], "generate_mode": "summarize"}}},
       {"jsonrpc": "2.0", "id": "w", "method": "tools/call", "params": {"name": "who", "arguments": {"query": "pho"}}},
       {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "list_sites", "arguments": {}}},
       {"jsonrpc": "2.0", "method": "notifications/initialized"}]
BODIES = {"/v1/chat/completions": CHAT, "/v1/completions": COMPLETION, "/v1/embeddings": EMBEDDING}


def bodies(template: Any) -> st.SearchStrategy[bytes]:
    return st.one_of(mutated(template).map(encode), mutated(template).map(encode), RAW_BODIES)


# --- the properties, per endpoint ---------------------------------------------------------------------

@settings(FUZZ, max_examples=150)
@given(data=st.data(), path=st.sampled_from(sorted(BODIES)), stream=st.booleans())
def test_openai_endpoints(app, data, path, stream):
    client, _ = app
    body = data.draw(bodies({**BODIES[path], "stream": stream} if path != "/v1/embeddings" else BODIES[path]))
    check(post(client, path, body, data.draw(headers({"content-type": "application/json"}))))


@FUZZ
@given(data=st.data())
def test_ask_post(app, data):
    client, _ = app
    kind = data.draw(st.sampled_from(["json", "v05", "form", "raw"]))
    if kind == "form":
        fields = data.draw(st.dictionaries(st.sampled_from(sorted(ASK)) | AWKWARD_TEXT, AWKWARD_TEXT, max_size=5))
        r = client.post("/ask", data=fields, headers=data.draw(headers()))
    else:
        body = data.draw(RAW_BODIES if kind == "raw" else bodies(ASK if kind == "json" else ASK_V05))
        r = post(client, "/ask", body, data.draw(headers({"content-type": "application/json"})))
    check(r)


ASK_PARAMS = st.dictionaries(
    st.sampled_from(sorted(ASK) + ["mode", "api"]) | AWKWARD_TEXT,
    AWKWARD_TEXT | NUMBERS.map(str) | st.integers(10, 3000).map(deep) | JSON_VALUES.map(json.dumps)
    | st.lists(AWKWARD_TEXT, max_size=3), max_size=6)


@FUZZ
@given(params=ASK_PARAMS, data=st.data())
def test_ask_get(app, params, data):
    client, _ = app
    params.setdefault("query", "pie") if data.draw(st.booleans()) else None
    check(client.get("/ask", params=params, headers=data.draw(headers())))


@FUZZ
@given(data=st.data())
def test_mcp(app, data):
    client, _ = app
    shape = data.draw(st.sampled_from(["one", "batch", "raw"]))
    if shape == "one":
        body = data.draw(mutated(data.draw(st.sampled_from(MCP))).map(encode))
    elif shape == "batch":
        body = data.draw(mutated(MCP).map(encode))
    else:
        body = data.draw(RAW_BODIES)
    base = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    method = data.draw(st.sampled_from(["POST"] * 8 + ["GET", "DELETE"]))
    check(client.request(method, "/mcp", content=body, headers=data.draw(headers(base))))


GETS = ["/sites", "/who", "/v1/models", "/admin/breakers", "/admin/stats", "/metrics", "/health", "/ready", "/",
        "/ask", "/dashboard", "/static/../../etc/passwd", "/v1/chat/completions", "/nowhere", "/admin/registry",
        "/admin/registry/aliases/chat", "/admin/registry/aliases/chat/rollback"]
QUERY = st.dictionaries(st.sampled_from(["query", "window", "buckets", "seconds", "site", "history"]) | AWKWARD_TEXT,
                        AWKWARD_TEXT | NUMBERS.map(str), max_size=3)


@settings(FUZZ, max_examples=80)
@given(path=st.sampled_from(GETS), params=QUERY, data=st.data())
def test_reads(app, path, params, data):
    client, _ = app
    method = data.draw(st.sampled_from(["GET"] * 6 + ["HEAD", "POST", "DELETE", "OPTIONS"]))
    check(client.request(method, path, params=params, headers=data.draw(headers())))


@settings(FUZZ, max_examples=60)
@given(name=st.sampled_from(["local", "cloud", "local", "cloud", "ghost", "≥", "a b", "%00", "local\x00"]),
       action=st.sampled_from(["open", "reset", "open", "open", "close", "", "\u202e"]),
       seconds=st.sampled_from(["60", "0.5", "0", "-1", "nan", "inf", "-inf", "1e400", "1e308", "x"]) | AWKWARD_TEXT
       | NUMBERS.map(str), data=st.data())
def test_admin_breaker_commands(app, name, action, seconds, data):
    from urllib.parse import quote

    client, comp = app
    method = data.draw(st.sampled_from(["POST"] * 4 + ["GET"]))
    try:
        r = client.request(method, f"/admin/breakers/{quote(name, safe='')}/{quote(action, safe='')}",
                           params={"seconds": seconds})
        check(r)
        check(client.get("/admin/breakers"))
        check(client.get("/admin/stats"))
        check(client.get("/metrics"))
    finally:
        for deployment in comp.router.names():
            comp.router.reset(deployment)  # (an open breaker would turn later examples into honest 503s)
