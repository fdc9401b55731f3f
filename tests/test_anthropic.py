"""Anthropic's Messages API adapter against a wire-faithful fake (tests/fakes/anthropic_fake.py)."""
import json

import pytest
import pytest_asyncio

from nlweb_local.config.settings import DeploymentSettings
from nlweb_local.core.errors import AuthError, BadRequestError, ModelNotFoundError, OverloadedError
from nlweb_local.core.types import ChatRequest, Message, TaskKind
from nlweb_local.providers.anthropic import DEFAULT_URL, MessageStream
from nlweb_local.providers.registry import build_provider
from nlweb_local.providers.structured import ProviderStructuredLLM

from fakes.anthropic_fake import AnthropicFake
from fakes.base import fake_fixtures
from provider_contract import CITY_SCHEMA, FakeEngineContract, plain

ALL_FAULTS = ("rate_limit", "overloaded", "mid_stream", "hang", "model_missing", "bad_json")
ENV = {"ANTHROPIC_API_KEY": AnthropicFake.api_key}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


fake, clean = fake_fixtures(AnthropicFake)


def settings(fake, **kw):
    return DeploymentSettings(**{"name": "claude", "engine": "anthropic", "url": fake.url, "model": "claude-haiku-4-5", **kw})


@pytest_asyncio.fixture(loop_scope="function")
async def claude(clean):
    p = build_provider(settings(clean), ENV)
    yield p
    await p.close()


class TestAnthropicContract(FakeEngineContract):
    FAULTS = ALL_FAULTS

    @pytest.fixture()
    def provider(self, claude):
        return claude


def test_cloud_capabilities_and_default_url(fake):
    p = build_provider(DeploymentSettings(name="c", engine="anthropic", model="claude-sonnet-4-5"), ENV)
    assert p.capabilities.local is False and p.capabilities.tools and p.capabilities.json_schema
    assert p.capabilities.context_window == 200_000 and p._http.base_url == DEFAULT_URL


# -- request shape ----------------------------------------------------------------------------------

async def test_headers_system_prompt_and_parameters(claude, clean):
    req = ChatRequest(messages=[Message("system", "Be brief."), Message("user", "Hi"), Message("user", "Again"),
                                Message("assistant", "Hello."), Message("system", "Use English.")],
                      max_tokens=50, temperature=1.4, stop=["\n\nHuman:"], top_p=0.9)
    await claude.complete(req)
    sent = clean.requests[-1]
    assert sent["headers"]["x-api-key"] == AnthropicFake.api_key
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    body = sent["body"]
    assert body["system"] == "Be brief.\n\nUse English."
    assert body["messages"] == [{"role": "user", "content": "Hi\n\nAgain"}, {"role": "assistant", "content": "Hello."}]
    assert body["max_tokens"] == 50 and body["stream"] is True and body["model"] == "claude-haiku-4-5"
    assert body["temperature"] == 1.0 and body["top_p"] == 0.9 and body["stop_sequences"] == ["\n\nHuman:"]
    assert "tools" not in body and "tool_choice" not in body


async def test_tool_messages_become_user_text(claude, clean):
    req = ChatRequest(messages=[Message("user", "Weather?"), Message("assistant", "Checking."), Message("tool", '{"t": 21}')])
    await claude.complete(req)
    assert clean.requests[-1]["body"]["messages"][-1] == {"role": "user", "content": 'Tool result:\n{"t": 21}'}


async def test_missing_key_names_the_variable(clean):
    p = build_provider(settings(clean, api_key_env="MY_CLAUDE_KEY"), {})
    with pytest.raises(BadRequestError, match="MY_CLAUDE_KEY"):
        await p.complete(plain())
    h = await p.health()
    assert not h.healthy and "MY_CLAUDE_KEY" in h.detail
    assert clean.requests == []
    await p.close()


async def test_wrong_key_is_an_auth_error(clean):
    p = build_provider(settings(clean, api_key="sk-ant-wrong"), {})
    with pytest.raises(AuthError, match="invalid x-api-key"):
        await p.complete(plain())
    await p.close()


async def test_unknown_model_is_model_not_found(clean):
    p = build_provider(settings(clean, model="claude-9"), ENV)
    with pytest.raises(ModelNotFoundError, match="claude-9"):
        await p.complete(plain())
    await p.close()


def test_model_is_required():
    with pytest.raises(BadRequestError, match="model"):
        build_provider(DeploymentSettings(name="c", engine="anthropic"), ENV)


# -- answers -----------------------------------------------------------------------------------------

async def test_usage_and_finish(claude):
    chunks = [c async for c in claude.stream(plain("Say hello to me now"))]
    assert "".join(c.delta for c in chunks) == "Hello! I am a fake model."
    last = chunks[-1]
    assert last.finish_reason == "stop" and last.usage.prompt_tokens == 5 and last.usage.completion_tokens == 4
    assert last.usage.time_to_first_token_s is not None and last.usage.total_s >= last.usage.time_to_first_token_s


async def test_max_tokens_and_stop_sequence(claude):
    r = await claude.complete(plain(max_tokens=2))
    assert r.content == "Hello! I am" and r.finish_reason == "length"
    r = await claude.complete(plain(stop=[" fake"]))
    assert r.content == "Hello! I am a" and r.finish_reason == "stop"


async def test_forced_tool_gives_json_content(claude, clean):
    r = await claude.complete(plain(json_schema=CITY_SCHEMA))
    body = clean.requests[-1]["body"]
    assert body["tools"] == [{"name": "answer", "description": "Give the answer in the required JSON shape.",
                              "input_schema": CITY_SCHEMA}]
    assert body["tool_choice"] == {"type": "tool", "name": "answer"}
    assert json.loads(r.content) == {"city": "Paris"} and r.finish_reason == "stop" and r.tool_calls == []


async def test_non_object_schema_is_wrapped_and_unwrapped(claude, clean):
    schema = {"type": "array", "items": {"type": "string"}}
    fed = MessageStream("x", json_mode=True, wrapped=True)
    events = [{"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "answer", "input": {}}},
              {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"value": ["a",'}},
              {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": ' "b"]}'}},
              {"type": "content_block_stop", "index": 0},
              {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}},
              {"type": "message_stop"}]
    chunks = [c for ev in events for c in fed.feed(ev)]
    assert "".join(c.delta for c in chunks) == '["a", "b"]' and chunks[-1].finish_reason == "stop"
    await claude.complete(plain(json_schema=schema))
    sent = clean.requests[-1]["body"]["tools"][0]["input_schema"]
    assert sent == {"type": "object", "properties": {"value": schema}, "required": ["value"]}


async def test_structured_llm_over_anthropic(claude):
    out = await ProviderStructuredLLM(claude).ask(TaskKind.JSON, "A city in France?", CITY_SCHEMA)
    assert out == {"city": "Paris"}


async def test_tool_use_streams_as_openai_tool_calls(claude, clean):
    req = plain("Weather in Paris?", tools=TOOLS, tool_choice="auto")
    chunks = [c async for c in claude.stream(req)]
    body = clean.requests[-1]["body"]
    assert body["tools"] == [{"name": "get_weather", "description": "Weather in a city",
                              "input_schema": TOOLS[0]["function"]["parameters"]}]
    assert body["tool_choice"] == {"type": "auto"}
    first_call = next(c for c in chunks if c.tool_calls)
    assert first_call.tool_calls[0]["id"].startswith("toolu_") and first_call.tool_calls[0]["function"]["name"] == "get_weather"
    r = await claude.complete(req)
    assert r.content == "Let me check." and r.finish_reason == "tool_calls"
    assert r.tool_calls == [{"id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function",
                             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]


async def test_tool_choice_mapping(claude, clean):
    await claude.complete(plain(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    assert clean.requests[-1]["body"]["tool_choice"] == {"type": "tool", "name": "get_weather"}
    await claude.complete(plain(tools=TOOLS, tool_choice="required"))
    assert clean.requests[-1]["body"]["tool_choice"] == {"type": "any"}


async def test_json_schema_with_tools_lets_the_model_pick(claude, clean):
    r = await claude.complete(plain(tools=TOOLS, json_schema=CITY_SCHEMA))
    body = clean.requests[-1]["body"]
    assert [t["name"] for t in body["tools"]] == ["get_weather", "answer"] and body["tool_choice"] == {"type": "any"}
    assert json.loads(r.content) == {"city": "Paris"} and r.tool_calls == []  # the fake picked `answer`


# -- errors ------------------------------------------------------------------------------------------------

async def test_overloaded_529(claude, clean):
    clean.fault("overloaded")
    with pytest.raises(OverloadedError) as e:
        await claude.complete(plain())
    assert e.value.retry_after == 2 and "Overloaded" in str(e.value)


async def test_mid_stream_error_event_is_overloaded(claude, clean):
    clean.fault("mid_stream")
    got = []
    with pytest.raises(OverloadedError, match="overloaded_error"):
        async for c in claude.stream(plain()):
            got.append(c.delta)
    assert "".join(got) == "Hello! I am a fake"


async def test_model_missing_fault(claude, clean):
    clean.fault("model_missing")
    with pytest.raises(ModelNotFoundError, match="model: claude-haiku-4-5"):
        await claude.complete(plain())


def test_unknown_and_ping_events_are_ignored():
    s = MessageStream("x")
    assert list(s.feed({"type": "ping"})) == [] and list(s.feed({"type": "something_new"})) == []
    list(s.feed({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}))
    assert list(s.feed({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}})) == []
