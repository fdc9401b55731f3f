"""The OpenAI-compatible adapter: the provider contract against a wire-faithful fake (openai, azure_openai,
vllm profiles) and against the real llama-cpp-python server (llama_cpp_server profile, slow), plus
unit tests of error mapping, tool-call assembly, Azure URLs, request bodies and health parsing."""
from __future__ import annotations

import math
import socket
import time

import pytest

from fakes.base import fake_fixtures
from fakes.openai_fake import FAULTS, LLAMA_SERVER_METRICS, VLLM_METRICS, OpenAIFake
from nlweb_local.config.settings import DeploymentSettings
from nlweb_local.core.errors import (AuthError, BadRequestError, ContextLengthError, ModelNotFoundError, ModelOutputError,
                                     OverloadedError, PayloadTooLargeError, ProviderError, ProviderTimeoutError,
                                     RateLimitedError)
from nlweb_local.core.types import TaskKind
from nlweb_local.providers.base import assemble, merge_tool_call_delta
from nlweb_local.providers.openai_compat import OpenAICompatProvider, from_settings
from nlweb_local.providers.profiles import PROFILES
from nlweb_local.providers.registry import build_provider
from nlweb_local.providers.structured import ProviderStructuredLLM

from llama_server import LlamaServer
from provider_contract import CITY_SCHEMA, FakeEngineContract, ProviderContract, plain

# One event loop for the module: the fake server and the providers' pooled sessions live in it. The
# mark also lands on the contract's few sync tests, which pytest-asyncio warns about; that is harmless.
pytestmark = [pytest.mark.asyncio(loop_scope="session"),
              pytest.mark.filterwarnings("ignore:.*is marked with '@pytest.mark.asyncio' but it is not an async")]

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def deployment(engine: str, url: str | None, **kw) -> DeploymentSettings:
    return DeploymentSettings(name=f"{engine}-test", engine=engine, url=url, **kw)


def openai_settings(fake: OpenAIFake, **kw) -> DeploymentSettings:
    return deployment("openai", fake.url + "/v1", model="fake-model", api_key_env="TEST_OPENAI_KEY", **kw)


def azure_settings(fake: OpenAIFake, options: dict | None = None, **kw) -> DeploymentSettings:
    return deployment("azure_openai", fake.url, model="gpt-4o-mini", options=options or {"deployment": "gpt-fake"}, **kw)


OPENAI_ENV = {"TEST_OPENAI_KEY": "sk-test"}
AZURE_ENV = {"AZURE_OPENAI_API_KEY": "azure-test"}


fake, clean = fake_fixtures(OpenAIFake)


@pytest.fixture(scope="module")
async def openai_p(fake):
    p = from_settings(openai_settings(fake), OPENAI_ENV)
    yield p
    await p.close()


@pytest.fixture(scope="module")
async def azure_p(fake):
    p = from_settings(azure_settings(fake), AZURE_ENV)
    yield p
    await p.close()


@pytest.fixture(scope="module")
async def vllm_p(fake):
    p = from_settings(deployment("vllm", fake.url + "/v1", model="fake-model", api_key="sk-test"), {})
    yield p
    await p.close()


# -- the contract, against the fake -------------------------------------------------------------------
class _FakeContract(FakeEngineContract):
    FAULTS = FAULTS


class TestOpenAIContract(_FakeContract):
    @pytest.fixture()
    def provider(self, openai_p):
        return openai_p


class TestAzureContract(_FakeContract):
    @pytest.fixture()
    def provider(self, azure_p):
        return azure_p


class TestVllmContract(_FakeContract):
    @pytest.fixture()
    def provider(self, vllm_p):
        return vllm_p


@pytest.fixture(scope="module", params=["llama_server", "ollama_openai", "tgi_openai"])
async def other_p(request, fake):
    """The remaining OpenAI-compatible profiles: same wire protocol, their own URL/JSON-mode/health details."""
    p = from_settings(deployment(request.param, fake.url + "/v1", model="fake-model", api_key="sk-test"), {})
    yield p
    await p.close()


class TestOtherOpenAICompatibleProfiles(_FakeContract):
    @pytest.fixture()
    def provider(self, other_p):
        return other_p


# -- errors ---------------------------------------------------------------------------------------------
def err(message: str, type_: str = "invalid_request_error", code=None) -> dict:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


@pytest.mark.parametrize("status,body,headers,expected", [
    (400, err("Invalid value for 'temperature'"), {}, BadRequestError),
    (400, err("This model's maximum context length is 8192 tokens.", code="context_length_exceeded"), {}, ContextLengthError),
    (401, err("Incorrect API key provided", code="invalid_api_key"), {}, AuthError),
    (403, err("Country, region, or territory not supported", code="unsupported_country_region_territory"), {}, AuthError),
    (404, err("The model `x` does not exist", code="model_not_found"), {}, ModelNotFoundError),
    (404, {"error": {"code": "DeploymentNotFound", "message": "The API deployment for this resource does not exist."}},
     {}, ModelNotFoundError),
    (413, err("Request too large"), {}, PayloadTooLargeError),
    (429, err("Rate limit reached", "requests", "rate_limit_exceeded"), {"retry-after": "3"}, RateLimitedError),
    (500, err("The server had an error", "server_error"), {}, ProviderError),
    (503, err("The engine is currently overloaded", "server_error"), {"retry-after": "4"}, OverloadedError),
    (504, err("Gateway timeout", "server_error"), {}, ProviderTimeoutError),
])
async def test_each_status_maps_to_one_error(openai_p, clean, status, body, headers, expected):
    clean.answer_next(status, body, headers)
    with pytest.raises(expected) as e:
        await openai_p.complete(plain())
    assert type(e.value) is expected and e.value.deployment == "openai-test"
    if "retry-after" in headers:
        assert e.value.retry_after == float(headers["retry-after"])


async def test_errors_in_streams_map_the_same_way(openai_p, clean):
    clean.answer_next(429, err("slow down", "requests", "rate_limit_exceeded"), {"retry-after": "5"})
    with pytest.raises(RateLimitedError):
        async for _ in openai_p.stream(plain()):
            pass


async def test_vllm_style_error_object_in_a_stream(openai_p, clean):
    body = (b'data: {"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
            b'data: {"object":"error","message":"KV cache exhausted","type":"InternalServerError","code":503}\n\n')
    clean.answer_next(200, body)
    got = []
    with pytest.raises(OverloadedError):
        async for ch in openai_p.stream(plain()):
            got.append(ch.delta)
    assert got == ["Hi"]


async def test_a_stream_cut_before_done_is_an_error(openai_p, clean):
    clean.answer_next(200, b'data: {"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}\n\n')
    with pytest.raises(ProviderError, match="ended before"):
        [c async for c in openai_p.stream(plain())]


async def test_the_deployment_timeout_is_the_default_deadline(fake, clean):
    p = from_settings(openai_settings(fake, timeout_s=0.3), OPENAI_ENV)
    clean.fault("hang")
    t0 = time.monotonic()
    with pytest.raises(ProviderTimeoutError):
        await p.complete(plain())
    assert time.monotonic() - t0 < 2
    await p.close()


async def test_wrong_key_is_an_auth_error(fake, clean):
    for s, env in ((openai_settings(fake), {"TEST_OPENAI_KEY": "sk-wrong"}), (azure_settings(fake), {"AZURE_OPENAI_API_KEY": "no"})):
        p = from_settings(s, env)
        with pytest.raises(AuthError, match="API key"):
            await p.complete(plain())
        assert not (await p.health()).healthy
        await p.close()


def test_missing_cloud_key_names_the_variable(fake):
    with pytest.raises(BadRequestError, match="OPENAI_API_KEY.*api_key_env"):
        from_settings(deployment("openai", None, model="gpt-4o-mini"), {})
    with pytest.raises(BadRequestError, match="MY_AZURE_KEY"):
        from_settings(azure_settings(fake, api_key_env="MY_AZURE_KEY"), {})
    with pytest.raises(BadRequestError, match="needs url"):
        from_settings(deployment("azure_openai", None, model="m"), AZURE_ENV)
    with pytest.raises(BadRequestError, match="needs model"):
        from_settings(deployment("vllm", None), {})
    with pytest.raises(BadRequestError, match="unknown option.*n_ctx"):
        from_settings(deployment("vllm", None, model="m", options={"n_ctx": 4}), {})


# -- Azure ------------------------------------------------------------------------------------------------
async def test_azure_puts_the_deployment_in_the_path(azure_p, clean):
    await azure_p.complete(plain())
    got = clean.requests[-1]
    assert got["path"] == "/openai/deployments/gpt-fake/chat/completions"
    assert got["query"] == {"api-version": "2024-10-21"}
    assert got["headers"]["api-key"] == "azure-test" and "Authorization" not in got["headers"]
    p = from_settings(azure_settings(clean, options={"deployment": "gpt-fake", "api_version": "2025-01-01-preview",
                                                     "embedding_deployment": "emb"}), AZURE_ENV)
    assert p.capabilities.local is False
    await p.complete(plain())
    assert clean.requests[-1]["query"] == {"api-version": "2025-01-01-preview"}
    with pytest.raises(ModelNotFoundError, match="'emb'"):
        await p.embed(["x"])  # the fake knows no deployment "emb"
    assert clean.requests[-1]["path"] == "/openai/deployments/emb/embeddings"
    await p.close()


async def test_embeddings(openai_p, azure_p, clean):
    for p in (openai_p, azure_p):
        r = await p.embed(["one", "two", "three"])
        assert len(r.vectors) == 3 and len(r.vectors[0]) == 8 and r.prompt_tokens > 0 and r.deployment == p.name
    assert clean.requests[-1]["path"] == "/openai/deployments/gpt-fake/embeddings"


# -- tool calls -------------------------------------------------------------------------------------------
def test_tool_call_deltas_fold_into_calls():
    calls: dict[int, dict] = {}
    for d in ({"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_", "arguments": ""}},
              {"index": 1, "id": "call_b", "function": {"name": "lookup", "arguments": "{\"q\""}},
              {"index": 0, "function": {"name": "weather", "arguments": "{\"city\": "}},
              {"index": 1, "function": {"arguments": ": 1}"}},
              {"index": 0, "function": {"arguments": "\"Paris\"}"}}):
        merge_tool_call_delta(calls, d)
    assert calls[0] == {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    assert calls[1]["function"] == {"name": "lookup", "arguments": '{"q": 1}'}


async def test_streamed_tool_calls_assemble_like_the_complete_answer(openai_p, clean):
    req = plain("Weather in Paris?", tools=TOOLS, tool_choice="auto")
    streamed = await assemble(openai_p.stream(req), deployment=openai_p.name, model=openai_p.model)
    whole = await openai_p.complete(req)
    want = [{"id": "call_fake1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    assert streamed.tool_calls == whole.tool_calls == want
    assert streamed.finish_reason == whole.finish_reason == "tool_calls"
    body = clean.requests[-1]["body"]
    assert body["tools"] == TOOLS and body["tool_choice"] == "auto"


# -- request bodies -----------------------------------------------------------------------------------------
def test_request_bodies_follow_the_profile(fake):
    req = plain(json_schema=CITY_SCHEMA, repeat_penalty=1.1, stop=["\n"], seed=3, extra={"top_k": 5, "temperature": 0.5})
    openai = from_settings(openai_settings(fake), OPENAI_ENV).body(req, stream=True)
    assert openai["response_format"] == {"type": "json_schema", "json_schema": {"name": "answer", "schema": CITY_SCHEMA,
                                                                                "strict": True}}
    assert openai["max_completion_tokens"] == 24 and "max_tokens" not in openai and "repeat_penalty" not in openai
    assert openai["stream_options"] == {"include_usage": True} and openai["stop"] == ["\n"] and openai["seed"] == 3
    assert openai["top_k"] == 5 and openai["temperature"] == 0.5  # extra is merged last
    cpp = from_settings(deployment("llama_cpp_server", None), {}).body(req, stream=False)
    assert cpp["response_format"] == {"type": "json_object", "schema": CITY_SCHEMA} and cpp["repeat_penalty"] == 1.1
    assert "stream_options" not in cpp and cpp["max_tokens"] == 24
    vllm = from_settings(deployment("vllm", None, model="m"), {}).body(req, stream=False)
    assert vllm["repetition_penalty"] == 1.1 and vllm["response_format"]["type"] == "json_schema"
    tgi = from_settings(deployment("tgi_openai", None), {}).body(req, stream=False)
    assert tgi["response_format"] == {"type": "json_object", "value": CITY_SCHEMA}


def test_every_engine_builds_through_the_registry():
    env = {"OPENAI_API_KEY": "k", "AZURE_OPENAI_API_KEY": "k"}
    for engine, profile in PROFILES.items():
        p = build_provider(deployment(engine, None if profile.default_url else "https://r.openai.azure.com", model="m"), env)
        assert isinstance(p, OpenAICompatProvider)
        assert p.capabilities.local is (engine not in ("openai", "azure_openai"))
        assert p._http.base_url == (profile.default_url or "https://r.openai.azure.com")


def test_options_override_the_profile(fake):
    p = from_settings(openai_settings(fake, context_window=8000, options={"classify": False, "json_mode": "none"}), OPENAI_ENV)
    assert not p.capabilities.classify and not p.capabilities.json_schema and p.capabilities.context_window == 8000
    assert "response_format" not in p.body(plain(json_schema=CITY_SCHEMA), stream=False)


async def test_usage_is_estimated_and_flagged_when_the_engine_sends_none(openai_p, clean):
    chunks = [c async for c in openai_p.stream(plain(extra={"stream_options": {"include_usage": False}}))]
    u = chunks[-1].usage
    assert getattr(u, "estimated", False) and u.completion_tokens == 8 and u.prompt_tokens > 0
    exact = [c async for c in openai_p.stream(plain())][-1].usage
    assert not getattr(exact, "estimated", False) and exact.time_to_first_token_s is not None


# -- classify ------------------------------------------------------------------------------------------------
async def test_classify_reads_first_token_logprobs(openai_p, clean):
    yes = await openai_p.classify(plain("Reply with the single word Yes."), ["Yes", "No"])
    assert math.isclose(yes["Yes"], 0.85 / 0.9) and math.isclose(sum(yes.values()), 1)
    body = clean.requests[-1]["body"]
    assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["max_completion_tokens"] == 1
    assert not body["stream"]
    no = await ProviderStructuredLLM(openai_p).classify(TaskKind.RANK, "Reply with the single word No.", ["Yes", "No"])
    assert no["No"] > 0.9
    with pytest.raises(ModelOutputError):
        await openai_p.classify(plain("Say banana."), ["Yes", "No"])


# -- health ---------------------------------------------------------------------------------------------------
async def test_vllm_health_reads_metrics(vllm_p):
    h = await vllm_p.health()
    assert h.healthy and h.running == 3 and h.waiting == 2 and h.kv_cache_usage == 0.25


async def test_llama_server_health_loading_then_slots(fake):
    p = from_settings(deployment("llama_server", fake.url + "/v1"), {})
    fake.loading = True
    try:
        h = await p.health()
        assert not h.healthy and h.loading
    finally:
        fake.loading = False
    h = await p.health()
    assert h.healthy and not h.loading and h.running == 1
    await p.close()


@pytest.fixture()
def engine_state(fake):
    """The fake's load signals, restored after the test (the fake is shared by the module)."""
    saved = (fake.metrics_text, fake.legacy_health, fake.slots, fake.loading)
    yield fake
    fake.metrics_text, fake.legacy_health, fake.slots, fake.loading = saved


async def test_vllm_health_is_for_the_model_the_deployment_names(engine_state):
    """/metrics of a vLLM serving another model: not this deployment (the old parser summed any model)."""
    engine_state.metrics_text = VLLM_METRICS.replace('model_name="fake-model"', 'model_name="other/model"')
    p = from_settings(deployment("vllm", engine_state.url + "/v1", model="fake-model"), {})
    try:
        h = await p.health()
        assert not h.healthy and "other/model" in h.detail
    finally:
        await p.close()


async def test_vllm_label_values_with_braces_and_escapes(engine_state):
    """Label values may hold `}`, `,` and escaped quotes; a value after `NaN` lines still counts."""
    engine_state.metrics_text = (
        'vllm:num_requests_running{model_name="fake-model",note="a},b \\"c\\""} 2\n'
        'vllm:num_requests_waiting{model_name="fake-model"} NaN\n'
        'vllm:num_requests_waiting{model_name="fake-model",engine="1"} 4\n')
    p = from_settings(deployment("vllm", engine_state.url + "/v1", model="fake-model"), {})
    try:
        h = await p.health()
        assert h.healthy and (h.running, h.waiting) == (2, 4)
    finally:
        await p.close()


async def test_llama_server_all_slots_busy_is_loaded_not_down(engine_state):
    """An older llama-server answers /health 503 "no slot available" while every slot works: healthy and
    busy (the old adapter called it unhealthy and the router stopped sending it anything)."""
    engine_state.legacy_health = True
    engine_state.metrics_text = None  # started without --metrics: 501
    engine_state.slots = [{"id": 0, "state": 1}, {"id": 1, "state": 1}]
    p = from_settings(deployment("llama_server", engine_state.url + "/v1"), {})
    try:
        h = await p.health()
        assert h.healthy and not h.loading and h.running == 2 and "busy" in h.detail
        engine_state.loading = True
        h = await p.health()
        assert not h.healthy and h.loading
    finally:
        await p.close()


async def test_llama_server_metrics_give_queue_depth(engine_state):
    """With --metrics, deferred requests are the queue (the old adapter read /slots only: waiting was 0)."""
    engine_state.metrics_text = LLAMA_SERVER_METRICS
    p = from_settings(deployment("llama_server", engine_state.url + "/v1"), {})
    try:
        h = await p.health()
        assert h.healthy and (h.running, h.waiting, h.kv_cache_usage) == (2, 3, 0.25)
    finally:
        await p.close()


async def test_unreachable_engine_is_unhealthy():
    with socket.socket() as s:  # bound and not listening for the whole test: connections to it are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        p = from_settings(deployment("ollama_openai", f"http://127.0.0.1:{port}/v1", model="m"), {})
        h = await p.health()
    assert not h.healthy and "cannot reach" in h.detail
    await p.close()


# -- the real llama-cpp-python server -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama_cpp_server(tmp_path_factory):
    with LlamaServer(tmp_path_factory.mktemp("llama_cpp_server") / "server.log", n_ctx=1024) as engine:
        yield engine.url


@pytest.fixture(scope="module")
async def cpp_p(llama_cpp_server):
    p = from_settings(deployment("llama_cpp_server", llama_cpp_server + "/v1", model="smollm2", context_window=1024), {})
    yield p
    await p.close()


@pytest.mark.slow
class TestLlamaCppServerContract(ProviderContract):
    """The contract against the real llama-cpp-python server running SmolLM2 (no faults: a real engine)."""

    @pytest.fixture()
    def provider(self, cpp_p):
        return cpp_p


@pytest.mark.slow
async def test_real_server_streams_without_usage_so_it_is_estimated(cpp_p):
    chunks = [c async for c in cpp_p.stream(plain("Name a fruit."))]
    assert getattr(chunks[-1].usage, "estimated", False) and chunks[-1].usage.completion_tokens == len(chunks) - 1
    whole = await cpp_p.complete(plain("Name a fruit."))
    assert not getattr(whole.usage, "estimated", False) and whole.usage.prompt_tokens > 5


@pytest.mark.slow
async def test_real_server_classify(cpp_p):
    yes = await cpp_p.classify(plain("Reply with the single word Yes."), ["Yes", "No"])
    no = await cpp_p.classify(plain("Reply with the single word No."), ["Yes", "No"])
    assert abs(sum(yes.values()) - 1) < 1e-6
    assert yes["Yes"] > 0.7 and no["No"] > 0.7


def test_tool_turns_are_sent_in_openai_shape():
    from nlweb_local.core.types import ChatRequest, Message

    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}
    req = ChatRequest(messages=[Message("user", "Weather in Oslo?"), Message("assistant", "", tool_calls=(call,)),
                                Message("tool", "rain, 7°C", tool_call_id="call_1", name="weather")])
    body = from_settings(deployment("vllm", "http://127.0.0.1:1/v1", model="m"), {}).body(req, stream=False)
    assert body["messages"][1] == {"role": "assistant", "content": "", "tool_calls": [call]}
    assert body["messages"][2] == {"role": "tool", "content": "rain, 7°C", "tool_call_id": "call_1", "name": "weather"}


async def test_vllm_sleep_and_wake(vllm_p, openai_p, fake):
    assert await vllm_p.is_sleeping() is False
    await vllm_p.sleep(level=2)
    assert fake.sleeping_level == 2 and await vllm_p.is_sleeping() is True
    await vllm_p.wake()
    assert await vllm_p.is_sleeping() is False
    from nlweb_local.core.errors import BadRequestError
    from nlweb_local.providers.base import ModelLifecycle

    assert isinstance(vllm_p, ModelLifecycle)  # the explicit capability protocol, not a pass-through
    with pytest.raises(BadRequestError, match="loads its model when the server starts"):
        await vllm_p.load("other")

    with pytest.raises(BadRequestError, match="vLLM endpoint"):
        await openai_p.sleep()
