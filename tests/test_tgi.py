"""TGI's native API adapter against a wire-faithful fake (tests/fakes/tgi_fake.py)."""
import pytest
import pytest_asyncio

from nlweb_local.config.settings import DeploymentSettings
from nlweb_local.core.errors import (BadRequestError, ContextLengthError, ModelOutputError, OverloadedError, ProviderError,
                                     RateLimitedError)
from nlweb_local.core.types import ChatRequest, Message, TaskKind
from nlweb_local.providers.registry import build_provider
from nlweb_local.providers.structured import ProviderStructuredLLM
from nlweb_local.providers.tgi import TgiProvider, label_mass, render_prompt

from fakes.base import fake_fixtures
from fakes.tgi_fake import TgiFake
from provider_contract import CITY_SCHEMA, FakeEngineContract, plain

ALL_FAULTS = ("rate_limit", "overloaded", "mid_stream", "hang", "model_missing", "bad_json")


fake, clean = fake_fixtures(TgiFake)


def settings(fake, **kw):
    return DeploymentSettings(**{"name": "tgi-test", "engine": "tgi", "url": fake.url, "model": "smollm2", **kw})


@pytest_asyncio.fixture(loop_scope="function")
async def tgi(clean):
    p = build_provider(settings(clean), {})
    yield p
    await p.close()


class TestTgiContract(FakeEngineContract):
    FAULTS = ALL_FAULTS

    @pytest.fixture()
    def provider(self, tgi):
        return tgi


# -- request mapping --------------------------------------------------------------------------------

async def test_greedy_request_parameters(tgi, clean):
    await tgi.complete(plain("Hi", max_tokens=12, stop=["\n\n"], seed=3, repeat_penalty=1.1))
    body = clean.requests[-1]["body"]
    assert clean.requests[-1]["path"] == "/generate_stream"
    p = body["parameters"]
    assert p["do_sample"] is False and "temperature" not in p and "top_p" not in p  # TGI rejects temperature 0
    assert p["max_new_tokens"] == 12 and p["stop"] == ["\n\n"] and p["seed"] == 3 and p["repetition_penalty"] == 1.1
    assert p["details"] is True and "grammar" not in p


async def test_sampling_request_parameters(tgi, clean):
    await tgi.complete(plain(temperature=0.7, top_p=0.9))
    p = clean.requests[-1]["body"]["parameters"]
    assert p["do_sample"] is True and p["temperature"] == 0.7 and p["top_p"] == 0.9
    await tgi.complete(plain(temperature=0.7, top_p=1.0))  # TGI wants top_p < 1: leave it out
    assert "top_p" not in clean.requests[-1]["body"]["parameters"]


async def test_json_schema_is_sent_as_a_grammar(tgi, clean):
    r = await tgi.complete(plain(json_schema=CITY_SCHEMA))
    assert clean.requests[-1]["body"]["parameters"]["grammar"] == {"type": "json", "value": CITY_SCHEMA}
    assert r.content == '{"city": "Paris"}'


async def test_prompt_uses_chatml_by_default(tgi, clean):
    req = ChatRequest(messages=[Message("system", "Be brief."), Message("user", "Hi")])
    await tgi.complete(req)
    assert clean.requests[-1]["body"]["inputs"] == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_custom_template_from_options():
    tpl = {"prefix": "<s>", "message": "[{role}] {content}\n", "system": "<<SYS>>{content}<</SYS>>\n",
           "generation": "[assistant] "}
    out = render_prompt([Message("system", "S {x}"), Message("user", "U")], tpl)
    assert out == "<s><<SYS>>S {x}<</SYS>>\n[user] U\n[assistant] "
    with pytest.raises(BadRequestError, match="chat_template"):
        TgiProvider("http://127.0.0.1:1", template="nope")
    with pytest.raises(BadRequestError, match="generation"):
        TgiProvider("http://127.0.0.1:1", template={"message": "{content}"})


async def test_llama3_template_option(clean):
    p = build_provider(settings(clean, options={"chat_template": "llama3"}), {})
    await p.complete(plain("Hi"))
    assert clean.requests[-1]["body"]["inputs"] == (
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    await p.close()


async def test_bearer_key_from_the_environment(clean):
    p = build_provider(settings(clean, api_key_env="HF_TOKEN"), {"HF_TOKEN": "hf_secret"})
    await p.complete(plain())
    assert clean.requests[-1]["headers"]["Authorization"] == "Bearer hf_secret"
    await p.close()


# -- answers ---------------------------------------------------------------------------------------

async def test_stream_skips_the_special_eos_token_and_reports_usage(tgi):
    chunks = [c async for c in tgi.stream(plain())]
    assert "".join(c.delta for c in chunks) == "Hello! I am a fake model."
    assert len(chunks) > 3 and "</s>" not in "".join(c.delta for c in chunks)
    last = chunks[-1]
    assert last.finish_reason == "stop" and last.usage.completion_tokens == 9  # 8 tokens + EOS, as TGI counts
    assert last.usage.prompt_tokens > 0 and last.usage.time_to_first_token_s is not None


async def test_length_finish(tgi):
    r = await tgi.complete(plain(max_tokens=3))
    assert r.content == "Hello! I" and r.finish_reason == "length" and r.usage.completion_tokens == 3


async def test_stop_sequence_is_cut_from_the_text(tgi):
    chunks = [c async for c in tgi.stream(plain(stop=[" fake"]))]
    assert "".join(c.delta for c in chunks) == "Hello! I am a"  # TGI returns "... a fake": the adapter cuts it
    assert chunks[-1].finish_reason == "stop"
    r = await tgi.complete(plain(stop=["am a fake", "zzz"]))  # spans tokens
    assert r.content == "Hello! I " and r.finish_reason == "stop"
    r = await tgi.complete(plain(stop=["am a f"]))  # TGI matches a stop only where a token ends (TGI issue #1979)
    assert r.content == "Hello! I am a fake model."


async def test_info_sets_the_context_window_and_model(clean):
    p = build_provider(settings(clean, model=""), {})
    assert p.model == "tgi" and p.capabilities.context_window == 4096  # not known before /info
    await p.health()
    assert p.capabilities.context_window == 2048 and p.max_input_tokens == 1024 and p.model == TgiFake.model_id
    await p.close()
    pinned = build_provider(settings(clean, context_window=1024), {})
    await pinned.complete(plain())
    assert pinned.capabilities.context_window == 1024 and pinned.model == "smollm2"  # configured values win
    await pinned.close()


# -- errors as TGI sends them ---------------------------------------------------------------------------

async def test_tgi_own_429_is_a_full_queue(tgi, clean):
    clean.fault("queue_full")  # 429 {"error_type": "overloaded"}, no retry-after
    with pytest.raises(OverloadedError) as e:
        await tgi.complete(plain())
    assert not isinstance(e.value, RateLimitedError) and e.value.retry_after == 1.0


async def test_429_with_retry_after_is_a_rate_limit(tgi, clean):
    clean.fault("rate_limit")
    with pytest.raises(RateLimitedError) as e:
        await tgi.complete(plain())
    assert e.value.retry_after == 7


async def test_424_generation_error_is_a_retryable_provider_error(tgi, clean):
    clean.fault("generation_error")
    with pytest.raises(ProviderError, match="424") as e:
        await tgi.complete(plain())
    assert type(e.value) is ProviderError and e.value.retryable


async def test_overloaded_event_in_the_stream(tgi, clean):
    clean.fault("stream_overloaded")  # /generate_stream answers 200 then an error event
    with pytest.raises(OverloadedError):
        await tgi.complete(plain())


async def test_mid_stream_generation_error_keeps_its_message(tgi, clean):
    clean.fault("mid_stream")
    got = []
    with pytest.raises(ProviderError, match="CUDA out of memory") as e:
        async for ch in tgi.stream(plain()):
            got.append(ch.delta)
    assert "".join(got) == "Hello! I" and e.value.deployment == "tgi-test"


async def test_prompt_too_long_is_a_context_length_error(tgi):
    with pytest.raises(ContextLengthError, match="must be <= 2048"):
        await tgi.complete(plain("word " * 1000, max_tokens=1100))
    with pytest.raises(ContextLengthError, match="less than 1024"):
        await tgi.complete(plain("word " * 1100))


async def test_validation_error_in_the_stream(tgi):
    with pytest.raises(BadRequestError, match="stop sequences"):
        await tgi.complete(plain(stop=["a", "b", "c", "d", "e"]))


# -- health ----------------------------------------------------------------------------------------------

async def test_health_reads_metrics(tgi, clean):
    clean.queue_size, clean.batch_size = 4, 16
    h = await tgi.health()
    assert h.healthy and (h.waiting, h.running) == (4, 16)


async def test_unhealthy_tgi(tgi, clean):
    clean.healthy = False
    h = await tgi.health()
    assert not h.healthy and "unhealthy" in h.detail


async def test_unreachable_tgi():
    p = TgiProvider("http://127.0.0.1:9", name="gone")
    h = await p.health()
    assert not h.healthy and "cannot reach" in h.detail
    await p.close()


# -- classification from top_n_tokens -------------------------------------------------------------------------

async def test_classify_from_top_tokens(tgi, clean):
    assert tgi.capabilities.classify
    yes = await tgi.classify(plain("Reply with the single word Yes."), ["Yes", "No"])
    body = clean.requests[-1]["body"]
    assert clean.requests[-1]["path"] == "/generate"
    assert body["parameters"]["top_n_tokens"] == 5 and body["parameters"]["max_new_tokens"] == 1
    assert set(yes) == {"Yes", "No"} and abs(sum(yes.values()) - 1) < 1e-9 and yes["Yes"] > 0.8
    no = await ProviderStructuredLLM(tgi).classify(TaskKind.RANK, "Reply with the single word No.", ["Yes", "No"])
    assert no["No"] > 0.8


async def test_classify_with_no_label_in_the_top_tokens(clean):
    p = build_provider(settings(clean, options={"top_n_tokens": 1}), {})
    with pytest.raises(ModelOutputError, match="none of"):
        await p.classify(plain(), ["Maybe", "Never"])
    await p.close()


def test_label_mass_counts_each_token_once_and_matches_prefixes():
    toks = [{"id": 1, "text": "Yes", "logprob": -0.1}, {"id": 1, "text": "Yes", "logprob": -0.1},
            {"id": 2, "text": " yes", "logprob": -2.0}, {"id": 3, "text": "Defin", "logprob": -3.0},
            {"id": 4, "text": "N", "logprob": -1.0}, {"id": 5, "text": "</s>", "logprob": -1.0, "special": True}]
    m = label_mass(toks, ["Yes", "Definitely", "No"])
    assert m["No"] == 0.0  # a single letter is not a prefix match
    assert abs(m["Yes"] - (0.904837 + 0.135335)) < 1e-5 and m["Definitely"] > 0
