"""Prompt-prefix (KV cache) reuse as engines report it: `Usage.cached_tokens` read from OpenAI-style answers,
carried on streams, completions and classifications, and counted per deployment in
nlweb_prompt_tokens_total{deployment,kind=reused|computed}. (The embedded llama.cpp engine's own counts are
tested with the real model in test_llama_cpp.py.)"""
from nlweb_local.core.types import ChatChunk, ChatRequest, LabelProbs, Message, TaskKind, Usage
from nlweb_local.providers.openai_compat import _usage
from nlweb_local.providers.testing import ScriptedProvider
from nlweb_local.telemetry.metered import MeteredProvider
from nlweb_local.telemetry.metrics import GatewayMetrics, new_registry


def test_cached_tokens_are_read_from_openai_style_usage():
    # OpenAI, vLLM (--enable-prompt-tokens-details) and llama-server all answer this way
    u = _usage({"prompt_tokens": 1200, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 1024}},
               ttft=None, total=0.5)
    assert (u.prompt_tokens, u.completion_tokens, u.cached_tokens) == (1200, 7, 1024)
    assert _usage({"prompt_tokens": 12, "completion_tokens": 3}, ttft=None, total=0.1).cached_tokens is None
    for odd in ({"cached_tokens": None}, {"cached_tokens": -1}, {"cached_tokens": "7"}, None, "x"):
        assert _usage({"prompt_tokens": 12, "prompt_tokens_details": odd}, ttft=None, total=0.1).cached_tokens is None


class ReusingEngine(ScriptedProvider):
    """Reports that the first `cached` tokens of each 100-token prompt came from its KV cache."""

    def __init__(self, name, cached):
        super().__init__(name, "ok", classify=True)
        self.cached = cached

    async def stream(self, request):
        yield ChatChunk("ok", "stop", Usage(prompt_tokens=100, completion_tokens=1, cached_tokens=self.cached))

    async def classify(self, request, labels):
        return LabelProbs({labels[0]: 0.9, labels[1]: 0.1}, usage=Usage(prompt_tokens=100, cached_tokens=self.cached))


def req(task=TaskKind.RANK):
    return ChatRequest([Message("user", "Is this item relevant?")], task=task)


async def test_reused_and_computed_prompt_tokens_are_counted_per_deployment():
    metrics = GatewayMetrics(new_registry())
    warm = MeteredProvider(ReusingEngine("local", cached=90), metrics)
    silent = MeteredProvider(ScriptedProvider("cloud", "ok"), metrics)  # reports no reuse: not in the family
    await warm.classify(req(), ["Yes", "No"])
    _ = [c async for c in warm.stream(req(TaskKind.CHAT))]
    await warm.complete(req(TaskKind.CHAT))
    await silent.complete(req(TaskKind.CHAT))
    get = lambda **labels: metrics.registry.get_sample_value("nlweb_prompt_tokens_total", labels)  # noqa: E731
    assert get(deployment="local", kind="reused") == 270 and get(deployment="local", kind="computed") == 30
    assert get(deployment="cloud", kind="reused") is None
    # the classification's tokens in are the engine's count, not an estimate from characters
    assert metrics.registry.get_sample_value("nlweb_llm_tokens_total",
                                             {"deployment": "local", "task": "rank", "direction": "in"}) == 100


async def test_an_engines_own_prefix_cache_counters_are_exported_from_its_last_probe(tmp_path):
    """vLLM's prefix-cache counters, as its health probe reads them into the load snapshot, on /metrics."""
    from nlweb_local.providers.base import LoadSnapshot
    from nlweb_local.providers.load_parsers import vllm_snapshot
    from nlweb_local.telemetry import build_telemetry

    from stand_ins import scripted_service, service_settings
    from test_load_parsers import VLLM_PREFIX_CACHE_METRICS

    class VllmLike(ScriptedProvider):
        async def health(self) -> LoadSnapshot:
            return vllm_snapshot(VLLM_PREFIX_CACHE_METRICS)

    settings = service_settings(tmp_path, {"name": "gpu", "engine": "openai", "url": "http://127.0.0.1:9/v1"})
    tel = build_telemetry(settings, ledger=False)
    comp = scripted_service(settings, {"local": ScriptedProvider("local"), "gpu": VllmLike("gpu")}, telemetry=tel)
    await comp.router.probe()
    get = lambda d, kind: tel.metrics.registry.get_sample_value("nlweb_engine_prefix_cache_tokens",  # noqa: E731
                                                                 {"deployment": d, "kind": kind})
    assert (get("gpu", "queried"), get("gpu", "hit")) == (16000, 10024)
    assert get("local", "queried") is None  # reports nothing: not exported
    await comp.close()
    tel.close()
