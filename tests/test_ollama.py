"""The native Ollama adapter and model lifecycle against a wire-faithful fake Ollama (tests/fakes)."""
from __future__ import annotations

import json

import pytest
import pytest_asyncio

from nlweb_local.config.settings import DeploymentSettings
from nlweb_local.core.errors import ModelNotFoundError, ProviderConnectionError, ProviderError
from nlweb_local.core.types import ChatRequest, Message
from nlweb_local.providers.ollama import OllamaProvider, from_settings
from nlweb_local.providers.ollama_models import OllamaModels, PullProgress, canonical, context_length
from nlweb_local.providers.registry import build_provider

from fakes.base import fake_fixtures
from fakes.ollama_fake import ANSWER, OllamaFake
from provider_contract import CITY_SCHEMA, FakeEngineContract, plain

MODEL = "fake-model"


fake, clean = fake_fixtures(lambda: OllamaFake(models=[MODEL, "fake-embed"]))


# one provider per test, in the test's own event loop (its aiohttp session belongs to that loop)
@pytest_asyncio.fixture(loop_scope="function")
async def provider(fake):
    p = OllamaProvider(MODEL, url=fake.url, name="ollama-test", timeout_s=10, keep_alive="10m", num_ctx=4096)
    yield p
    await p.close()


@pytest_asyncio.fixture(loop_scope="function")
async def models(fake):
    m = OllamaModels.at(fake.url, deployment="ollama-test", timeout_s=10)
    yield m
    await m.close()


class TestOllamaContract(FakeEngineContract):
    FAULTS = ("rate_limit", "overloaded", "mid_stream", "hang", "model_missing", "bad_json")


# -- chat -------------------------------------------------------------------------------------------
async def test_options_reach_ollama_as_sent(provider, fake):
    req = plain(max_tokens=7, temperature=0.3, json_schema=CITY_SCHEMA, stop=["\n\n"], seed=42, top_p=0.9,
                repeat_penalty=1.1, extra={"think": False, "options": {"top_k": 20}})
    r = await provider.complete(req)
    assert json.loads(r.content) == {"city": "Paris"}
    sent = fake.last("/api/chat")
    assert sent["options"] == {"temperature": 0.3, "num_predict": 7, "num_ctx": 4096, "stop": ["\n\n"], "seed": 42,
                               "top_p": 0.9, "repeat_penalty": 1.1, "top_k": 20}
    assert sent["format"] == CITY_SCHEMA and sent["keep_alive"] == "10m" and sent["stream"] is True
    assert sent["model"] == MODEL and sent["messages"] == [{"role": "user", "content": "Say hello."}]
    assert sent["think"] is False


async def test_usage_comes_from_the_final_line(provider):
    chunks = [c async for c in provider.stream(plain())]
    assert "".join(c.delta for c in chunks) == ANSWER and len(chunks) > 3
    u = chunks[-1].usage
    assert chunks[-1].finish_reason == "stop" and u is not None
    assert u.completion_tokens == 6 and u.prompt_tokens == 12  # the fake: 10 template tokens + 2 words
    assert u.time_to_first_token_s is not None and u.time_to_first_token_s >= 0
    assert u.tokens_per_second == pytest.approx(50.0)  # eval_count / eval_duration: 20 ms a token in the fake


async def test_token_limit_is_finish_length(provider):
    r = await provider.complete(plain(max_tokens=2))
    assert r.finish_reason == "length" and r.content == "Hello! I "


async def test_tool_calls_pass_through_as_openai_deltas(provider, fake):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                             "required": ["city"]}}}]
    r = await provider.complete(plain("Weather in Paris?", tools=tools))
    assert fake.last("/api/chat")["tools"] == tools
    assert r.finish_reason == "tool_calls" and r.content == ""
    assert r.tool_calls == [{"id": "call_0", "type": "function",
                             "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris", "days": 1})}}]


async def test_not_pulled_model_says_to_pull_it(fake):
    p = OllamaProvider("llama-absent:7b", url=fake.url, name="absent")
    try:
        with pytest.raises(ModelNotFoundError, match=r"ollama pull llama-absent:7b") as e:
            await p.complete(plain())
        assert e.value.deployment == "absent" and "try pulling it first" in e.value.message
    finally:
        await p.close()


async def test_stream_cut_without_done_is_a_connection_error(provider, fake):
    fake.fault("cut")
    got = []
    with pytest.raises(ProviderConnectionError, match="without its final"):
        async for ch in provider.stream(plain()):
            got.append(ch.delta)
    assert "".join(got) == "Hello! I "


# -- embeddings and health ----------------------------------------------------------------------------
async def test_embeddings(fake):
    p = OllamaProvider("fake-embed", url=fake.url, name="emb")
    try:
        r = await p.embed(["a sentence", "another"])
        assert fake.last("/api/embed") == {"model": "fake-embed", "input": ["a sentence", "another"]}
        assert len(r.vectors) == 2 and len(r.vectors[0]) == 8 and r.vectors[0] != r.vectors[1]
        assert r.vectors[0] == OllamaFake.vector("a sentence") and r.prompt_tokens > 0 and r.deployment == "emb"
        assert (await p.embed([])).vectors == []
    finally:
        await p.close()


async def test_health_reports_whether_the_model_is_loaded(provider, models):
    await models.unload(MODEL)
    h = await provider.health()
    assert h.healthy and "not loaded" in h.detail and "ollama 0.6.5" in h.detail
    await provider.complete(plain())
    h = await provider.health()
    assert h.healthy and f"{MODEL} loaded until" in h.detail and "in VRAM" in h.detail  # load_parsers.ollama_snapshot


async def test_health_of_an_unreachable_server():
    p = OllamaProvider(MODEL, url="http://127.0.0.1:9", name="down", timeout_s=2)
    try:
        h = await p.health()
        assert not h.healthy and "cannot reach" in h.detail
    finally:
        await p.close()


# -- lifecycle -------------------------------------------------------------------------------------------
async def test_pull_reports_progress_in_order_then_lists_the_model(models):
    assert not await models.is_installed("tinyllama")
    events = [p async for p in models.pull("tinyllama")]
    assert events[0].status == "pulling manifest" and events[-1].done
    assert [e.status for e in events[-3:]] == ["verifying sha256 digest", "writing manifest", "success"]
    layers: dict[str, list[int]] = {}
    for e in events:
        if e.digest and e.completed is not None:
            layers.setdefault(e.digest, []).append(e.completed)
    assert len(layers) == 2 and all(done == sorted(done) for done in layers.values())
    assert [e.fraction for e in events if e.fraction is not None][-1] == 1.0
    names = [m.name for m in await models.installed()]
    assert "tinyllama:latest" in names
    info = next(m for m in await models.installed() if m.name == "tinyllama:latest")
    assert info.family == "llama" and info.quantization_level and info.size > 0


async def test_ensure_pulls_only_when_missing_with_a_callback(models):
    seen: list[PullProgress] = []
    assert await models.ensure("qwen-small:0.5b", seen.append) is True
    assert seen[0].status == "pulling manifest" and seen[-1].status == "success"

    async def async_cb(p):
        seen.append(p)

    n = len(seen)
    assert await models.ensure("qwen-small:0.5b", async_cb) is False and len(seen) == n


async def test_pull_of_an_unknown_model_fails_with_the_engines_message(models):
    with pytest.raises(ProviderError, match="file does not exist"):
        async for _ in models.pull("nonexistent-model"):
            pass
    assert not await models.is_installed("nonexistent-model")


async def test_load_unload_delete(models, fake):
    async for _ in models.pull("smollm2:135m"):
        pass
    assert not await models.is_loaded("smollm2:135m")
    await models.load("smollm2:135m", keep_alive=-1)
    loaded = {m.name: m for m in await models.loaded()}
    assert "smollm2:135m" in loaded and loaded["smollm2:135m"].size_vram > 0 and loaded["smollm2:135m"].expires_at
    assert fake.last("/api/generate") == {"model": "smollm2:135m", "stream": False, "keep_alive": -1}
    await models.unload("smollm2:135m")
    assert fake.last("/api/generate")["keep_alive"] == 0
    assert not await models.is_loaded("smollm2:135m")
    await models.load("smollm2:135m")
    await models.delete("smollm2:135m")
    assert not await models.is_installed("smollm2:135m") and not await models.is_loaded("smollm2:135m")
    with pytest.raises(ModelNotFoundError):
        await models.delete("smollm2:135m")
    with pytest.raises(ModelNotFoundError):
        await models.load("smollm2:135m")


async def test_show(models):
    info = await models.show(MODEL)
    assert info["details"]["family"] == "llama" and context_length(info) == 8192
    with pytest.raises(ModelNotFoundError):
        await models.show("absent-model")


def test_model_names_are_compared_with_their_default_tag():
    assert canonical("llama3.2") == "llama3.2:latest" and canonical("qwen2.5:0.5b") == "qwen2.5:0.5b"
    assert canonical("localhost:5000/ns/model") == "localhost:5000/ns/model:latest"


# -- settings ---------------------------------------------------------------------------------------------
async def test_from_settings_through_the_registry():
    d = DeploymentSettings(name="local-ollama", engine="ollama", model="llama3.2:3b",
                           options={"keep_alive": "1h", "num_ctx": 8192})
    p = build_provider(d, environ={})
    try:
        assert isinstance(p, OllamaProvider) and p.name == "local-ollama" and p.model == "llama3.2:3b"
        assert p._http.base_url == "http://127.0.0.1:11434"
        assert p.capabilities.context_window == 8192 and p.capabilities.json_schema and not p.capabilities.classify
        body = p.chat_body(plain())
        assert body["keep_alive"] == "1h" and body["options"]["num_ctx"] == 8192
    finally:
        await p.close()


@pytest.mark.parametrize("host,url", [("gpu-box", "http://gpu-box:11434"), ("0.0.0.0:8080", "http://0.0.0.0:8080"),
                                      ("https://ollama.example.org/", "https://ollama.example.org")])
async def test_ollama_host_is_honoured(host, url):
    d = DeploymentSettings(name="o", engine="ollama", model="m", context_window=4096, api_key="k")
    p = from_settings(d, {"OLLAMA_HOST": host})
    try:
        assert p._http.base_url == url and p.chat_body(plain())["options"]["num_ctx"] == 4096
        assert p._http._headers == {"Authorization": "Bearer k"}
    finally:
        await p.close()


async def test_a_model_name_is_required():
    from nlweb_local.core.errors import BadRequestError

    with pytest.raises(BadRequestError, match="needs a model"):
        from_settings(DeploymentSettings(name="o", engine="ollama"), {})


def test_request_types_are_plain_messages():
    # the adapter sends exactly the roles and contents it was given
    p = OllamaProvider(MODEL, url="http://127.0.0.1:1")
    body = p.chat_body(ChatRequest(messages=[Message("system", "s"), Message("user", "u")]))
    assert body["messages"] == [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert "format" not in body and "tools" not in body and "keep_alive" not in body


# -- ModelLifecycle: what the memory manager drives ----------------------------------------------------------
async def test_the_model_lifecycle_drives_ollamas_own_load_and_unload(provider, fake):
    from nlweb_local.core.errors import BadRequestError
    from nlweb_local.providers.base import ModelLifecycle

    assert isinstance(provider, ModelLifecycle)
    await provider.unload()  # (earlier tests' chats loaded it)
    assert canonical(MODEL) not in fake.loaded()
    await provider.load()
    assert fake.last("/api/generate") == {"model": MODEL, "stream": False, "keep_alive": "10m"}  # its keep_alive
    assert canonical(MODEL) in fake.loaded() and (await provider.health()).healthy
    await provider.unload()
    assert fake.last("/api/generate") == {"model": MODEL, "keep_alive": 0, "stream": False}
    assert canonical(MODEL) not in fake.loaded() and not await provider.is_sleeping()
    with pytest.raises(BadRequestError, match="cannot sleep"):
        await provider.sleep()


async def test_a_deployments_keep_alive_reaches_ollama_unless_its_option_overrides_it():
    d = DeploymentSettings(name="o", engine="ollama", model="m", keep_alive="30m")
    p = from_settings(d, {})
    q = from_settings(d.model_copy(update={"options": {"keep_alive": -1}}), {})
    try:
        assert p.chat_body(plain())["keep_alive"] == "30m" and q.chat_body(plain())["keep_alive"] == -1
    finally:
        await p.close()
        await q.close()
