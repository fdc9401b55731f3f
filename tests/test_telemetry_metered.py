"""MeteredProvider over ScriptedProvider: what each call adds to the metrics, the window and the ledger."""
import pytest
from prometheus_client import generate_latest

from nlweb_local.core.errors import ProviderConnectionError, RateLimitedError
from nlweb_local.core.types import ChatRequest, Message, TaskKind
from nlweb_local.providers.testing import ScriptedProvider
from nlweb_local.telemetry.context import REQUEST_ID
from nlweb_local.telemetry.metered import MeteredProvider, ThroughputMeter
from nlweb_local.telemetry.metrics import GatewayMetrics, new_registry
from nlweb_local.telemetry.prices import HardwareCost, Price
from nlweb_local.telemetry.stats import RecentCalls, percentile, summarize


class ManualClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def req(text="hello there", task=TaskKind.CHAT):
    return ChatRequest([Message("user", text)], task=task)


class Rows(list):
    def record(self, r):
        self.append(r)


def metered(inner, **kw):
    m = GatewayMetrics(new_registry())
    rows = Rows()
    return MeteredProvider(inner, m, ledger=rows, **kw), m, rows


def sample(m, name, **labels):
    return m.registry.get_sample_value(name, labels) or 0.0


async def test_complete_and_stream_are_counted_with_tokens_cost_and_latency():
    inner = ScriptedProvider("cloud", "one two three four", local=False)
    p, m, rows = metered(inner, price=Price(1.0, 2.0), reference=Price(3.0, 6.0))
    resp = await p.complete(req("x" * 40))  # 40 chars: prompt_tokens = 11, completion 4
    assert resp.content == "one two three four" and p.name == "cloud" and p.capabilities.local is False
    text = "".join([c.delta async for c in p.stream(req("y" * 8, TaskKind.RANK))])  # 3 in, 4 out
    assert text == "one two three four"
    assert sample(m, "nlweb_llm_requests_total", deployment="cloud", task="chat", route="cloud") == 1
    assert sample(m, "nlweb_llm_requests_total", deployment="cloud", task="rank", route="cloud") == 1
    assert sample(m, "nlweb_llm_tokens_total", deployment="cloud", task="chat", direction="in") == 11
    assert sample(m, "nlweb_llm_tokens_total", deployment="cloud", task="rank", direction="out") == 4
    assert sample(m, "nlweb_llm_request_duration_seconds_count", deployment="cloud", task="rank") == 1
    assert sample(m, "nlweb_llm_time_to_first_token_seconds_count", deployment="cloud", task="rank") == 1
    assert sample(m, "nlweb_llm_in_flight", deployment="cloud") == 0
    cost = (11 * 1 + 4 * 2 + 3 * 1 + 4 * 2) / 1e6
    assert sample(m, "nlweb_llm_cost_usd_total", deployment="cloud", route="cloud") == pytest.approx(cost)
    assert sample(m, "nlweb_llm_reference_cost_usd_total", deployment="cloud", route="cloud") == pytest.approx(3 * cost)
    assert [(r.task, r.tokens_in, r.tokens_out, r.error) for r in rows] == [("chat", 11, 4, ""), ("rank", 3, 4, "")]
    assert rows[0].savings_usd == pytest.approx(rows[0].reference_usd - rows[0].cost_usd) and rows[0].savings_usd > 0


async def test_errors_are_counted_by_class_and_cost_nothing():
    inner = ScriptedProvider("local", "a b c")
    p, m, rows = metered(inner, price=Price(1, 1))
    inner.fail_with = RateLimitedError("slow down", deployment="local")
    with pytest.raises(RateLimitedError):
        await p.complete(req())
    inner.fail_with = None
    inner.fail_after_tokens = 1
    with pytest.raises(ProviderConnectionError):
        async for _ in p.stream(req()):
            pass
    assert sample(m, "nlweb_llm_errors_total", deployment="local", task="chat", error="RateLimitedError") == 1
    assert sample(m, "nlweb_llm_errors_total", deployment="local", task="chat", error="ProviderConnectionError") == 1
    assert sample(m, "nlweb_llm_in_flight", deployment="local") == 0
    assert sample(m, "nlweb_llm_cost_usd_total", deployment="local", route="local") == 0
    assert [(r.error, r.cost_usd, r.tokens_out) for r in rows] == [("RateLimitedError", 0, 0), ("ProviderConnectionError", 0, 0)]


async def test_a_stream_abandoned_by_its_consumer_is_recorded_as_cancelled():
    inner = ScriptedProvider("local", "a b c d e")
    p, m, rows = metered(inner)
    gen = p.stream(req())
    await gen.__anext__()
    await gen.aclose()
    assert rows[-1].error == "Cancelled" and sample(m, "nlweb_llm_in_flight", deployment="local") == 0


async def test_classify_embed_health_admit_pass_through():
    inner = ScriptedProvider("local", classify=True)
    p, m, rows = metered(inner)
    assert await p.classify(req(task=TaskKind.RANK), ["yes", "no"]) == {"yes": 1.0, "no": 0.0}
    out = await p.embed(["abcd" * 4])
    assert out.vectors == [[16.0, 1.0]]
    assert (await p.health()).healthy and p.admit() is None
    assert [r.task for r in rows] == ["rank", "embed"] and rows[1].tokens_in == 4
    assert p.inner is inner and not hasattr(p, "fail_with")  # no pass-through: the engine is reached as `inner`


async def test_local_price_uses_measured_throughput_while_busy():
    clock = ManualClock()
    inner = ScriptedProvider("local", "a b c d")
    hw = HardwareCost(26_280, 3, 2_600, 1.0, assumed_tokens_per_s=100)  # $0.001 per second
    p, m, rows = metered(inner, price=hw, clock=clock)
    orig = inner.stream

    async def slow(request):  # each call takes 2 s of the manual clock
        async for ch in orig(request):
            clock.t += 0.5
            yield ch

    inner.stream = slow
    await p.complete(req("x" * 396))  # 100 tokens in, 4 out, in 2 s → 52 tokens/s
    assert p.meter.tokens_per_s() == pytest.approx(104 / 2)
    assert rows[0].cost_usd == pytest.approx(104 * 0.001 / 52)  # = 2 s of the machine: $0.002
    assert rows[0].latency_s == pytest.approx(2.0)


async def test_a_pricer_prices_as_the_price_model_does_at_the_meter_s_rate():
    """Governance prices each call twice with `pricer()`: the same dollars as the price model's `cost_at`
    at the throughput as of the last finished call (assumed until one has been measured)."""
    clock = ManualClock()
    hw = HardwareCost(26_280, 3, 2_600, 1.0, assumed_tokens_per_s=100)
    p, _, _ = metered(ScriptedProvider("local", "a b c d"), price=hw, clock=clock)
    price = p.pricer()
    assert p.meter.rate is None and price(300, 100) == hw.cost_at(300, 100, None) > 0
    p.meter.begin()
    clock.t += 4
    p.meter.end(1000)  # 250 tokens/s
    assert p.meter.rate == 250 and price(300, 100) == pytest.approx(hw.cost_at(300, 100, 250))
    assert price(300, 100) < hw.cost_at(300, 100, None)  # (faster than assumed: cheaper per token)
    fixed, _, _ = metered(ScriptedProvider("cloud", "x"), price=Price(2.5, 10.0))
    assert fixed.pricer()(1000, 100) == Price(2.5, 10.0).cost_at(1000, 100, None) == pytest.approx(0.0035)


def test_throughput_meter_counts_overlapping_calls_once():
    clock = ManualClock()
    t = ThroughputMeter(clock)
    assert t.tokens_per_s() is None
    t.begin()
    clock.t = 1
    t.begin()  # a second call while the first runs
    clock.t = 2
    t.end(100)
    clock.t = 4
    t.end(300)
    clock.t = 10  # idle time does not count
    assert t.busy_s == 4 and t.tokens_per_s() == 100


async def test_request_id_comes_from_the_context():
    p, m, rows = metered(ScriptedProvider("local"))
    token = REQUEST_ID.set("req-42")
    try:
        await p.complete(req())
    finally:
        REQUEST_ID.reset(token)
    await p.complete(req())
    assert rows[0].request_id == "req-42" and rows[1].request_id not in ("", "req-42")


async def test_label_cardinality_stays_bounded_whatever_the_traffic():
    """Unique user texts, ids and error classes never become label values."""
    reg = new_registry()
    m = GatewayMetrics(reg, max_error_classes=8)
    inner = ScriptedProvider("local", "fine")
    p = MeteredProvider(inner, m)
    for i in range(300):
        secret = f"user-{i}-secret-question-{i * 7919}"
        if i % 3 == 0:
            inner.fail_with = type(f"Weird{i}Error", (ProviderConnectionError,), {})("boom " + secret)
        else:
            inner.fail_with = None
        try:
            await p.complete(ChatRequest([Message("user", secret)], model=f"model-{i}", task=TaskKind.CHAT))
        except ProviderConnectionError:
            pass
    text = generate_latest(reg).decode()
    assert "secret" not in text and "user-" not in text and "model-" not in text
    errors = {s.labels["error"] for metric in reg.collect() if metric.name == "nlweb_llm_errors"
              for s in metric.samples}
    assert len(errors) == 9 and "other" in errors  # 8 classes, then everything folds into "other"
    series = sum(len(metric.samples) for metric in reg.collect())
    assert series < 150  # one deployment, one task: a fixed set, not one per request


def test_percentiles_and_summary_by_hand():
    assert percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 50) == 5
    assert percentile(list(range(1, 101)), 95) == 95 and percentile(list(range(1, 101)), 99) == 99
    assert percentile([], 50) is None
    from nlweb_local.telemetry.ledger import CallRecord

    def r(ts, lat, local, ok=True, rid=None):
        return CallRecord(ts, rid or f"q{ts}", "local" if local else "cloud", local, "chat", 10, 10, lat, lat / 2,
                          0.0 if local else 0.001, 0.002, 0.002 if local else 0.001, "" if ok else "ProviderError")

    rows = [r(1, 0.1, True), r(2, 0.2, True), r(3, 0.3, False), r(4, 9.0, True, ok=False, rid="x"), r(5, 0.4, False, rid="x")]
    s = summarize(rows, now=10.0, span_s=10.0, buckets=2)
    assert s["calls"] == 5 and s["errors"] == 1 and s["requests"] == 4
    assert s["availability"] == 1.0  # request x failed on local, then cloud served it
    assert s["success_rate"] == 0.8
    assert s["latency_s"] == {"p50": 0.2, "p95": 0.4, "p99": 0.4}
    assert s["share"]["local_calls"] == 0.5
    assert s["throughput"]["calls_per_s"] == 0.4 and s["throughput"]["tokens_per_s"] == 8.0
    assert s["cost_usd"] == pytest.approx(0.002) and s["savings_usd"] == pytest.approx(0.006)
    assert [b["calls"] for b in s["series"]] == [4, 1]  # buckets [0, 5) and [5, 10)


def test_recent_calls_window_is_bounded():
    from nlweb_local.telemetry.ledger import CallRecord

    clock = ManualClock()
    w = RecentCalls(100, clock=clock)
    for i in range(1000):
        w.add(CallRecord(float(i), str(i), "local", True, "chat", 1, 1, 0.1, None, 0, 0, 0, ""))
    clock.t = 1000.0
    rows, now, span, truncated = w.snapshot(window_s=50)
    assert len(w) == 100 and len(rows) == 50 and not truncated and span == 50
    rows, *_, truncated = w.snapshot(window_s=500)
    assert len(rows) == 100 and truncated  # the ring no longer holds the whole window, and says so


def test_resource_metrics_and_gpu_readings_through_a_fake_nvml():
    from types import SimpleNamespace

    from nlweb_local.telemetry.metrics import gpu_families

    reg = new_registry()
    GatewayMetrics(reg)
    assert reg.get_sample_value("process_resident_memory_bytes") > 0
    assert reg.get_sample_value("nlweb_system_memory_total_bytes") > 0
    nvml = SimpleNamespace(nvmlDeviceGetCount=lambda: 2, nvmlDeviceGetHandleByIndex=lambda i: i,
                           nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(used=(h + 1) * 2**30, total=80 * 2**30),
                           nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(gpu=40 + h))
    fams = {f.name: {s.labels["gpu"]: s.value for s in f.samples} for f in gpu_families(nvml)}
    assert fams["nlweb_gpu_utilization_percent"] == {"0": 40, "1": 41}
    assert fams["nlweb_gpu_memory_used_bytes"] == {"0": 2**30, "1": 2 * 2**30}
