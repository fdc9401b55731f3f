"""Price math with hand-computed expectations: the table, the local hardware model, the report's projection."""
import math

import pytest

from nlweb_local.core.errors import BadRequestError
from nlweb_local.telemetry.ledger import CallRecord
from nlweb_local.telemetry.prices import HardwareCost, Price, PriceTable, deployment_price
from nlweb_local.telemetry.report import (DAYS_PER_MONTH, HOURS_PER_MONTH, Assumptions, build_report, busy_seconds,
                                          render_csv, render_table)


def test_shipped_table_is_dated_and_matches_by_longest_prefix():
    t = PriceTable.load()
    assert t.as_of >= "2025-01-01"
    assert t.lookup("gpt-4o") == Price(2.5, 10.0, t.prices["gpt-4o"].source)
    assert t.lookup("gpt-4o-mini-2024-07-18").in_per_m == 0.15  # not gpt-4o's price: longest prefix wins
    assert t.lookup("claude-3-5-haiku-20241022").out_per_m == 4.0
    assert t.lookup("openai/gpt-4.1-mini").in_per_m == 0.40
    assert t.lookup("my-local-llama") is None
    assert "2025" in t.prices["gpt-4o"].source


def test_price_cost_is_per_million_tokens():
    p = Price(2.5, 10.0)
    assert p.cost(1_000_000, 0) == pytest.approx(2.5)
    assert p.cost(2_000, 500) == pytest.approx((2_000 * 2.5 + 500 * 10.0) / 1e6)  # 0.005 + 0.005
    assert p.cost(2_000, 500) == pytest.approx(0.01)


def test_local_price_is_hardware_plus_power_over_throughput():
    # $26,280 over 3 years = $1/h; 2,600 W at $1/kWh = $2.6/h: $3.6/h = $0.001/s.
    hw = HardwareCost(26_280, 3, 2_600, 1.0, assumed_tokens_per_s=100)
    assert hw.hardware_per_hour == pytest.approx(1.0)
    assert hw.power_per_hour == pytest.approx(2.6)
    # at 100 tokens/s a token costs $0.001 / 100 = $1e-5, i.e. $10 per 1M
    assert hw.at(None).in_per_m == pytest.approx(10.0) and "assumed" in hw.at(None).source
    # measured 400 tokens/s: a quarter of that
    p = hw.at(400.0)
    assert (p.in_per_m, p.out_per_m) == (pytest.approx(2.5), pytest.approx(2.5)) and "measured" in p.source
    assert p.cost(300, 100) == pytest.approx(400 * 2.5e-6)


def test_defaults_give_an_honest_small_price():
    hw = HardwareCost(1500, 3, 100, 0.15, 50)
    per_hour = 1500 / (3 * 8760) + 0.1 * 0.15
    assert hw.per_hour == pytest.approx(per_hour)
    assert hw.at(None).in_per_m == pytest.approx(per_hour / (50 * 3600) * 1e6)  # ≈ $0.40 per 1M


def test_deployment_price_precedence():
    t = PriceTable.load()
    hw = HardwareCost(1, 1, 0, 0)
    kw = dict(table=t, hardware=hw)
    assert deployment_price(model="gpt-4o", engine="openai", local=False, price_in_per_m=1, price_out_per_m=2,
                           **kw) == Price(1, 2, "deployment settings")
    assert deployment_price(model="gpt-4o", engine="openai", local=False, price_in_per_m=0, price_out_per_m=0,
                            **kw).in_per_m == 2.5
    assert deployment_price(model="gpt-35-turbo", engine="azure_openai", local=False, price_in_per_m=0,
                            price_out_per_m=0, **kw).out_per_m == 1.5
    assert deployment_price(model="llama3.2", engine="ollama", local=True, price_in_per_m=0, price_out_per_m=0,
                            **kw) is hw
    unknown = deployment_price(model="mystery", engine="openai", local=False, price_in_per_m=0, price_out_per_m=0, **kw)
    assert unknown.cost(1000, 1000) == 0 and "price_in_per_m" in unknown.source


def test_bad_price_tables_say_what_is_wrong(tmp_path):
    with pytest.raises(BadRequestError, match="numeric 'in' and 'out'"):
        PriceTable.parse({"models": {"x": {"m": {"in": "cheap"}}}})
    with pytest.raises(BadRequestError, match="cannot be read"):
        PriceTable.load(tmp_path / "nope.yaml")
    own = tmp_path / "p.yaml"
    own.write_text("as_of: '2030-01-01'\nmodels:\n  acme:\n    acme-1: {in: 1, out: 3}\n")
    assert PriceTable.load(own).lookup("acme-1-latest") == Price(1.0, 3.0, "acme list price acme-1 (2030-01-01)")


def _row(ts, latency, *, local, tin, tout, cost, ref, error="", rid="r"):
    return CallRecord(ts, rid, "local" if local else "cloud", local, "chat", tin, tout, latency, None, cost, ref,
                      ref - cost, error)


def test_busy_time_counts_overlapping_calls_once():
    rows = [_row(10, 4, local=True, tin=0, tout=0, cost=0, ref=0),  # [6, 10]
            _row(9, 2, local=True, tin=0, tout=0, cost=0, ref=0),   # [7, 9] inside
            _row(12, 1, local=True, tin=0, tout=0, cost=0, ref=0),  # [11, 12]
            _row(12.5, 1, local=True, tin=0, tout=0, cost=0, ref=0)]  # [11.5, 12.5] overlaps
    assert busy_seconds(rows) == pytest.approx(4 + 1.5)


def test_report_figures_by_hand():
    ref = Price(2.5, 10.0)  # reference: gpt-4o
    hw = HardwareCost(26_280, 3, 2_600, 1.0, assumed_tokens_per_s=100)  # $3.6/h, $1,000/kW-month scale below
    a = Assumptions("gpt-4o", ref, hw, max_utilization=0.5, scales={"small": 1000, "big": 1_000_000})
    # 3 local calls of 100 in + 100 out tokens over 2 s of busy time each, back to back: 600 tokens in 6 s
    local = [_row(100 + 2 * i, 2, local=True, tin=100, tout=100, cost=0.002, ref=ref.cost(100, 100)) for i in range(3)]
    # 1 cloud call, 1000 in + 500 out, at $0.15/$0.60
    cloud = [_row(200, 1, local=False, tin=1000, tout=500, cost=Price(0.15, 0.6).cost(1000, 500), ref=ref.cost(1000, 500))]
    failed = [_row(201, 1, local=False, tin=0, tout=0, cost=0, ref=0, error="RateLimitedError")]
    rep = build_report(local + cloud + failed, a)
    r = rep["routes"]
    assert r["local"] == {"calls": 3, "errors": 0, "tokens_in": 300, "tokens_out": 300, "cost_usd": pytest.approx(0.006),
                          "reference_usd": pytest.approx(3 * 0.00125), "savings_usd": pytest.approx(0.00375 - 0.006),
                          "cost_per_1k_tokens": pytest.approx(0.01), "reference_per_1k_tokens": pytest.approx(0.00625)}
    assert r["cloud"]["calls"] == 2 and r["cloud"]["errors"] == 1
    assert r["cloud"]["cost_usd"] == pytest.approx(0.00015 + 0.0003)
    assert r["cloud"]["reference_usd"] == pytest.approx(0.0025 + 0.005)
    assert r["hybrid"]["tokens_in"] == 1300 and r["hybrid"]["cost_usd"] == pytest.approx(0.00645)
    assert r["hybrid"]["cost_per_1k_tokens"] == pytest.approx(0.00645 / 2100 * 1000)

    m = rep["measured"]
    assert m["ok_calls"] == 4 and m["local_share"] == 0.75
    assert m["local_tokens_per_s"] == pytest.approx(600 / 6)
    assert m["tokens_in_per_call"] == 325 and m["tokens_out_per_call"] == 200
    assert m["reference_cost_per_call"] == pytest.approx(ref.cost(325, 200))  # 0.0008125 + 0.002 = 0.0028125
    assert m["cloud_cost_per_call"] == pytest.approx(0.00045)

    small, big = rep["projection"]
    calls = 1000 * DAYS_PER_MONTH
    assert small["all_cloud_per_month"] == pytest.approx(calls * 0.0028125)
    # local tokens/month: calls × 0.75 × 200 = 4.565M; one machine does 100 tok/s × 3600 × 730.5 h × 0.5 = 131.49M
    assert small["machines"] == 1
    power = 2.6 * HOURS_PER_MONTH  # 2.6 kW around the clock at $1/kWh
    opex = calls * 0.25 * 0.00045 + power
    assert small["hybrid_opex_per_month"] == pytest.approx(opex)
    assert small["hybrid_per_month"] == pytest.approx(opex + 26_280 / 36)
    # small scale: cloud would cost ~$85.6/month, the machine's power alone ~$1,899: it never pays off
    assert small["breakeven_month"] is None and not small["breakeven_within_lifetime"]
    assert small["tco_3y_all_cloud"] == pytest.approx(36 * calls * 0.0028125)
    assert small["tco_3y_hybrid"] == pytest.approx(26_280 + 36 * opex)

    calls = 1_000_000 * DAYS_PER_MONTH
    machines = math.ceil(calls * 0.75 * 200 / (100 * 3600 * HOURS_PER_MONTH * 0.5))  # 4.565e9 / 1.3149e8 → 35
    assert big["machines"] == machines == 35
    opex = calls * 0.25 * 0.00045 + machines * power
    saving = calls * 0.0028125 - opex
    assert big["breakeven_month"] == math.ceil(machines * 26_280 / saving)
    assert big["tco_3y_savings"] == pytest.approx(36 * calls * 0.0028125 - (machines * 26_280 + 36 * opex))

    text = render_table(rep)
    for needed in ("Spend by route", "hybrid", "Projection", "Assumptions", "gpt-4o", "never", "100.0 tokens/s"):
        assert needed in text
    csv_text = render_csv(rep)
    assert "projection,big,machines,35" in csv_text and "route,local,tokens_in,300" in csv_text
