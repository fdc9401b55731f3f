"""Mixed traffic through the real gateway app (local, a priced "cloud", injected failures): /metrics,
the ledger totals, /admin/stats and `nlweb-local cost report` against exactly what was sent.

Prices are chosen to be checkable by hand: the local machine costs $3.6/h ($26,280 over 3 years = $1/h,
plus 2.6 kW at $1/kWh) and, with calls taking no time on the frozen clock, is priced at the assumed
100 tokens/s: $10 per 1M tokens. The cloud deployment runs gpt-4o-mini (table: $0.15 / $0.60), the
reference model is gpt-4o ($2.50 / $10).
"""
import json

import httpx
import pytest
import pytest_asyncio

from nlweb_local.config.settings import DeploymentSettings, load_settings
from nlweb_local.core.errors import ProviderConnectionError, ProviderTimeoutError, RateLimitedError
from nlweb_local.providers.testing import ScriptedProvider
from nlweb_local.server.app import create_app
from nlweb_local.telemetry import build_telemetry
from nlweb_local.telemetry.prices import Price
from stand_ins import scripted_service

LOCAL_PER_TOKEN = 10.0 / 1e6
CLOUD = Price(0.15, 0.60)
REFERENCE = Price(2.5, 10.0)


def telemetry_settings(tmp_path):
    return load_settings(environ={
        "NLWEB_LOCAL_DATA_DIR": str(tmp_path), "NLWEB_LOCAL_TELEMETRY__HARDWARE_USD": "26280",
        "NLWEB_LOCAL_TELEMETRY__HARDWARE_LIFETIME_YEARS": "3", "NLWEB_LOCAL_TELEMETRY__POWER_WATTS": "2600",
        "NLWEB_LOCAL_TELEMETRY__ELECTRICITY_USD_PER_KWH": "1", "NLWEB_LOCAL_TELEMETRY__ASSUMED_LOCAL_TOKENS_PER_S": "100",
        "NLWEB_LOCAL_TELEMETRY__REFERENCE_MODEL": "gpt-4o"})


@pytest_asyncio.fixture(loop_scope="function")
async def gateway(tmp_path):
    settings = telemetry_settings(tmp_path)
    tel = build_telemetry(settings, clock=lambda: 0.0)  # frozen: every call takes 0 s, local price = assumed rate
    local = ScriptedProvider("local", "local says hello")
    cloud = ScriptedProvider("cloud", "cloud says hello there", local=False)
    cloud.model = "gpt-4o-mini-2024-07-18"
    settings.llm.deployments = [DeploymentSettings(name="cloud", engine="openai", model=cloud.model)]
    settings.llm.breaker.min_calls = 1000
    settings.llm.rounds = 1
    comp = scripted_service(settings, {"local": local, "cloud": cloud}, telemetry=tel)
    app = create_app(settings, comp, close_components=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
        yield client, local, cloud, tel, settings
    tel.close()


def chat(text, **extra):
    return {"model": extra.pop("model", "auto"), "messages": [{"role": "user", "content": text}], **extra}


def prompt_tokens(text):  # what ScriptedProvider reports for a one-message request
    return len(text) // 4 + 1


def metric(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, value = line.rsplit(" ", 1)
            got = head[len(name):].strip("{}")
            if ",".join(sorted(got.split(","))) == want:
                return float(value)
    return 0.0


async def test_mixed_traffic_metrics_ledger_stats_and_report(gateway, capsys):
    client, local, cloud, tel, settings = gateway
    sent = {"local": [0, 0, 0], "cloud": [0, 0, 0]}  # calls ok, tokens in, tokens out

    def served(where, text):
        words = len((local if where == "local" else cloud).text.split())
        sent[where][0] += 1
        sent[where][1] += prompt_tokens(text)
        sent[where][2] += words

    # 5 plain calls and 3 streamed ones, served locally
    for i in range(5):
        text = f"question number {i} about the user's private thing"
        r = await client.post("/v1/chat/completions", json=chat(text))
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "local says hello"
        served("local", text)
    for i in range(3):
        text = f"streamed {i}"
        r = await client.post("/v1/chat/completions", json=chat(text, stream=True))
        assert r.status_code == 200 and "local" in r.text
        served("local", text)
    # 4 pinned to the cloud deployment
    for i in range(4):
        text = f"cloud please {i}" * (i + 1)
        r = await client.post("/v1/chat/completions", json=chat(text, model="cloud"))
        assert r.json()["choices"][0]["message"]["content"] == "cloud says hello there"
        served("cloud", text)
    # 2 failovers: local refuses, cloud serves; one request id ties both ledger rows
    local.fail_with = ProviderConnectionError("refused", deployment="local")
    failover_ids = []
    for i in range(2):
        text = f"failover {i}"
        r = await client.post("/v1/chat/completions", json=chat(text), headers={"x-request-id": f"fo-{i}"})
        assert r.status_code == 200 and "after failover from local" in r.headers["x-nlweb-route"]
        assert r.headers["x-request-id"].startswith(f"fo-{i}/")  # the caller's id, namespaced
        failover_ids.append(r.headers["x-request-id"])
        served("cloud", text)
    # 1 request nobody can serve
    local.fail_with = ProviderTimeoutError("too slow", deployment="local")
    cloud.fail_with = RateLimitedError("slow down", deployment="cloud", retry_after=1)
    r = await client.post("/v1/chat/completions", json=chat("doomed"))
    assert r.status_code == 503
    # 1 stream that breaks after its first token
    local.fail_with = cloud.fail_with = None
    local.fail_after_tokens = 1
    r = await client.post("/v1/chat/completions", json=chat("broken", stream=True))
    assert "stream_interrupted" in r.text
    local.fail_after_tokens = None

    # -- /metrics ----------------------------------------------------------------------------------
    m = (await client.get("/metrics")).text
    L, C = sent["local"], sent["cloud"]
    assert metric(m, "nlweb_llm_requests_total", deployment="local", task="chat", route="local") == L[0] + 2 + 1 + 1
    assert metric(m, "nlweb_llm_requests_total", deployment="cloud", task="chat", route="cloud") == C[0] + 1
    assert metric(m, "nlweb_llm_errors_total", deployment="local", task="chat", error="ProviderConnectionError") == 3
    assert metric(m, "nlweb_llm_errors_total", deployment="local", task="chat", error="ProviderTimeoutError") == 1
    assert metric(m, "nlweb_llm_errors_total", deployment="cloud", task="chat", error="RateLimitedError") == 1
    assert metric(m, "nlweb_llm_tokens_total", deployment="local", task="chat", direction="in") == L[1]
    assert metric(m, "nlweb_llm_tokens_total", deployment="local", task="chat", direction="out") == L[2]
    assert metric(m, "nlweb_llm_tokens_total", deployment="cloud", task="chat", direction="in") == C[1]
    assert metric(m, "nlweb_llm_tokens_total", deployment="cloud", task="chat", direction="out") == C[2]
    assert metric(m, "nlweb_llm_request_duration_seconds_count", deployment="local", task="chat") == L[0]
    local_cost = (L[1] + L[2]) * LOCAL_PER_TOKEN
    cloud_cost = CLOUD.cost(C[1], C[2])
    assert metric(m, "nlweb_llm_cost_usd_total", deployment="local", route="local") == pytest.approx(local_cost)
    assert metric(m, "nlweb_llm_cost_usd_total", deployment="cloud", route="cloud") == pytest.approx(cloud_cost)
    assert metric(m, "nlweb_breaker_state", deployment="local") == 0
    assert metric(m, "nlweb_llm_in_flight", deployment="local") == 0
    assert "private" not in m and "question" not in m

    # -- ledger ------------------------------------------------------------------------------------
    assert tel.ledger.flush()
    rows = tel.ledger.query()
    ok = [r for r in rows if r.ok]
    assert len(rows) == L[0] + C[0] + 2 + 2 + 1  # + failed local attempts of failovers, the 503's two, the broken stream
    assert sum(r.tokens_in for r in ok if r.local) == L[1] and sum(r.tokens_out for r in ok if r.local) == L[2]
    assert sum(r.tokens_in for r in ok if not r.local) == C[1] and sum(r.tokens_out for r in ok if not r.local) == C[2]
    assert sum(r.cost_usd for r in rows) == pytest.approx(local_cost + cloud_cost)
    reference = REFERENCE.cost(L[1] + C[1], L[2] + C[2])
    assert sum(r.reference_usd for r in rows) == pytest.approx(reference)
    assert sum(r.savings_usd for r in rows) == pytest.approx(reference - local_cost - cloud_cost)
    for rid in failover_ids:
        assert [(r.deployment, r.error) for r in rows if r.request_id == rid] == [("local", "ProviderConnectionError"),
                                                                               ("cloud", "")]

    # -- /admin/stats ------------------------------------------------------------------------------
    s = (await client.get("/admin/stats", params={"window": "60"})).json()
    requests = 5 + 3 + 4 + 2 + 1 + 1
    assert s["calls"] == len(rows) and s["requests"] == requests
    assert s["availability"] == pytest.approx((requests - 2) / requests)
    assert s["share"]["local_calls"] == pytest.approx(L[0] / (L[0] + C[0]))
    assert s["cost_usd"] == pytest.approx(local_cost + cloud_cost)
    assert s["breakers"] == {"local": "closed", "cloud": "closed"}
    assert s["errors_by_class"] == {"ProviderConnectionError": 3, "ProviderTimeoutError": 1, "RateLimitedError": 1}
    assert s["ledger"]["dropped"] == 0

    # -- nlweb-local cost report -------------------------------------------------------------------
    from nlweb_local.cli import cost

    class Args:
        since = until = None
        format = "json"

    capsys.readouterr()
    assert cost.run(Args(), settings) == 0
    rep = json.loads(capsys.readouterr().out)
    lr, cr, hr = rep["routes"]["local"], rep["routes"]["cloud"], rep["routes"]["hybrid"]
    assert (lr["calls"], lr["errors"], lr["tokens_in"], lr["tokens_out"]) == (L[0] + 4, 4, L[1], L[2])
    assert (cr["calls"], cr["errors"], cr["tokens_in"], cr["tokens_out"]) == (C[0] + 1, 1, C[1], C[2])
    assert lr["cost_usd"] == pytest.approx(local_cost) and cr["cost_usd"] == pytest.approx(cloud_cost)
    assert lr["cost_per_1k_tokens"] == pytest.approx(LOCAL_PER_TOKEN * 1000)
    assert hr["savings_usd"] == pytest.approx(reference - local_cost - cloud_cost)
    assert rep["measured"]["local_share"] == pytest.approx(L[0] / (L[0] + C[0]))
    assert rep["assumptions"]["local_usd_per_hour"] == pytest.approx(3.6)
    small = rep["projection"][0]
    per_call = REFERENCE.cost((L[1] + C[1]) / (L[0] + C[0]), (L[2] + C[2]) / (L[0] + C[0]))
    assert small["scale"] == "small" and small["all_cloud_per_month"] == pytest.approx(1000 * 365.25 / 12 * per_call)
    Args.format = "table"
    assert cost.run(Args(), settings) == 0
    table = capsys.readouterr().out
    assert "Spend by route" in table and "Assumptions" in table and "3y TCO" in table


async def test_metrics_endpoint_is_prometheus_text(gateway):
    client, *_ = gateway
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "# TYPE nlweb_llm_requests_total counter" in r.text
    assert (await client.get("/admin/stats", params={"window": "-1"})).status_code == 400


def test_cost_report_cli_without_a_ledger_says_what_to_do(tmp_path, capsys):
    from nlweb_local.cli.main import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'empty'}\n")
    assert main(["--config", str(cfg), "cost", "report"]) == 2
    assert "no cost ledger" in capsys.readouterr().err


def test_report_time_arguments():
    from nlweb_local.cli.cost import parse_when

    now = 1_754_000_000.0
    assert parse_when("24h", now) == now - 86400
    assert parse_when("30m", now) == now - 1800
    assert parse_when("1754000000", now) == 1_754_000_000
    assert parse_when("2025-08-01", now) == 1_754_006_400
    assert parse_when("2025-08-01T02:00+02:00", now) == 1_754_006_400


def test_build_router_wraps_every_deployment_with_its_price(tmp_path):
    import yaml

    from nlweb_local.server.components import build_router
    from nlweb_local.telemetry.metered import MeteredProvider
    from nlweb_local.telemetry.prices import HardwareCost

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(tmp_path), "llm": {"deployments": [
        {"name": "oai", "engine": "openai", "model": "gpt-4o-mini-2024-07-18", "url": "http://127.0.0.1:9/v1",
         "api_key": "unused", "location": "cloud"},  # (a loopback stand-in for the cloud API: local by address)
        {"name": "gpu", "engine": "vllm", "model": "qwen", "url": "http://127.0.0.1:9", "price_in_per_m": 0.5,
         "price_out_per_m": 0.7}]}}))
    settings = load_settings(cfg, environ={})
    tel = build_telemetry(settings)
    try:
        router = build_router(settings, providers={"local": ScriptedProvider("local")}, telemetry=tel)
        providers = {n: router.provider(n) for n in router.names()}
        assert all(isinstance(p, MeteredProvider) for p in providers.values())
        assert isinstance(providers["local"].price, HardwareCost)  # the embedded engine: priced by its hardware
        assert providers["oai"].price.in_per_m == 0.15 and "gpt-4o-mini" in providers["oai"].price.source
        assert providers["gpu"].price == Price(0.5, 0.7, "deployment settings")
        assert providers["oai"].reference.in_per_m == 2.5  # gpt-4o, the default reference
    finally:
        tel.close()
