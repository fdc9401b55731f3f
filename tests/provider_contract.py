"""The contract every `Provider` adapter must meet. Each adapter's test module subclasses
`ProviderContract` (real engine or wire-faithful fake) and provides:

- fixture `provider`: the adapter under test, pointed at its engine or fake;
- fixture `faults` (fakes only; `FakeEngineContract` supplies it from fixture `fake`): `faults(kind)` makes the
  fake's NEXT request fail in that way;
  class attribute `FAULTS` lists the kinds the fake supports (empty for a real engine), among:
  "rate_limit"   429 with `retry-after: 7` (OpenAI-style error body)
  "overloaded"   the engine's overload answer (503, or 529 for Anthropic), with `retry-after: 2`
  "mid_stream"   200, a few tokens, then the engine's in-stream error framing (or a cut connection)
  "hang"         accepts the request and never answers
  "model_missing" the engine's "model not found / not pulled" answer
  "bad_json"     a JSON-mode request answered with text that is not JSON at all
- Fakes answer "Hello! I am a fake model." (in several chunks) to a plain request and
  `{"city": "Paris"}` to a request that asks for JSON output.

The failure-mode tests carry `@pytest.mark.simulated_fault(kind)`; tests/conftest.py deselects each one
whose kind the class's `FAULTS` does not list (all of them for a real engine), so that a run reports
them as deselected and a real skip stands out.
"""
from __future__ import annotations

import asyncio
import json
import time

import pytest

from nlweb_local.core.errors import (ModelNotFoundError, ModelOutputError, OverloadedError, ProviderError,
                                     ProviderTimeoutError, RateLimitedError)
from nlweb_local.core.types import ChatRequest, Message, TaskKind
from nlweb_local.providers.base import Capabilities, LoadSnapshot
from nlweb_local.providers.structured import ProviderStructuredLLM

CITY_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def plain(text: str = "Say hello.", **kw) -> ChatRequest:
    return ChatRequest(messages=[Message("user", text)], **{"max_tokens": 24, "temperature": 0.0, **kw})


class ProviderContract:
    FAULTS: tuple[str, ...] = ()

    @pytest.fixture()
    def faults(self):
        pytest.fail(f"{type(self).__name__} simulates no faults: its simulated_fault tests should have been deselected")

    # -- behaviour every adapter has ------------------------------------------------------------
    async def test_complete_has_content_and_usage(self, provider):
        r = await provider.complete(plain())
        assert r.content.strip()
        assert r.finish_reason in ("stop", "length")
        assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0
        assert r.deployment == provider.name

    async def test_stream_assembles_to_the_complete_answer(self, provider):
        await provider.complete(plain("Say hello twice."))  # same cache state for both calls below
        chunks = [c async for c in provider.stream(plain("Say hello twice."))]
        assert chunks and chunks[-1].finish_reason in ("stop", "length")
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
        whole = await provider.complete(plain("Say hello twice."))
        assert "".join(c.delta for c in chunks) == whole.content

    async def test_json_schema_is_honoured(self, provider):
        if not provider.capabilities.json_schema:
            pytest.skip("no JSON-schema output on this deployment")
        out = await ProviderStructuredLLM(provider).ask(TaskKind.JSON, "Name a city in France as JSON.", CITY_SCHEMA,
                                                        max_tokens=24)
        assert isinstance(out["city"], str) and out["city"]

    async def test_health_is_a_load_snapshot(self, provider):
        h = await provider.health()
        assert isinstance(h, LoadSnapshot) and h.healthy
        assert h.waiting >= 0 and h.running >= 0

    def test_capabilities_are_declared(self, provider):
        assert isinstance(provider.capabilities, Capabilities) and provider.capabilities.context_window > 0
        assert provider.name and provider.model

    # -- failure modes (wire-faithful fakes; deselected where FAULTS lacks the kind) -------------------
    @pytest.mark.simulated_fault("rate_limit")
    async def test_rate_limit_carries_retry_after(self, provider, faults):
        faults("rate_limit")
        with pytest.raises(RateLimitedError) as e:
            await provider.complete(plain())
        assert e.value.retry_after == 7 and e.value.retryable and e.value.deployment == provider.name

    @pytest.mark.simulated_fault("overloaded")
    async def test_overload_is_retryable_with_retry_after(self, provider, faults):
        faults("overloaded")
        with pytest.raises(OverloadedError) as e:
            await provider.complete(plain())
        assert e.value.retry_after == 2 and e.value.retryable

    @pytest.mark.simulated_fault("mid_stream")
    async def test_error_in_the_middle_of_a_stream(self, provider, faults):
        faults("mid_stream")
        got = []
        with pytest.raises(ProviderError):
            async for ch in provider.stream(plain()):
                got.append(ch.delta)
        assert "".join(got), "tokens before the error must reach the caller"

    @pytest.mark.simulated_fault("hang")
    async def test_hanging_engine_hits_the_deadline(self, provider, faults):
        faults("hang")
        t0 = time.monotonic()
        with pytest.raises(ProviderTimeoutError):
            await provider.complete(plain(deadline_s=0.5))
        assert time.monotonic() - t0 < 3

    @pytest.mark.simulated_fault("model_missing")
    async def test_missing_model(self, provider, faults):
        faults("model_missing")
        with pytest.raises(ModelNotFoundError):
            await provider.complete(plain())

    @pytest.mark.simulated_fault("bad_json")
    async def test_malformed_json_from_the_model(self, provider, faults):
        faults("bad_json")
        with pytest.raises(ModelOutputError):
            await ProviderStructuredLLM(provider).ask(TaskKind.JSON, "Name a city as JSON.", CITY_SCHEMA)

    @pytest.mark.simulated_fault
    async def test_still_serves_after_faults(self, provider, faults):
        for kind in self.FAULTS:
            if kind == "hang":
                continue
            faults(kind)
            try:
                await asyncio.wait_for(provider.complete(plain()), 5)
            except ProviderError:
                pass
            except Exception as e:  # noqa: BLE001
                if not hasattr(e, "status"):
                    raise
        r = await provider.complete(plain())
        assert r.content.strip()


class FakeEngineContract(ProviderContract):
    """The contract against a wire-faithful fake (tests/fakes): the module supplies fixture `fake` (a FakeEngine)
    besides `provider`, and the class lists in `FAULTS` the faults to test; each test starts with a reset fake."""

    @pytest.fixture()
    def faults(self, fake):
        fake.reset()
        yield fake.fault
        fake.clear_faults()


def sse(obj) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"
