"""Cost report from ledger rows: spend by route, cost per 1K tokens, savings, and a projection.

Pure functions of (rows, assumptions): the CLI reads the rows and prints; tests compute by hand.

Routes: `local` (calls a local deployment served), `cloud`, and `hybrid` — all calls together, the
mix this gateway actually ran. Failed calls are counted but cost nothing.

Projection, per scale (LLM calls per day), from the measured mix (local share of calls, tokens per
call, cloud cost per cloud call, local throughput while busy):

    all-cloud / month   = calls/month × reference cost per call (measured tokens at the reference price)
    machines            = ceil(local tokens/month ÷ (local tokens/s × 3600 × hours/month × max_utilization))
    hybrid opex / month = cloud calls/month × measured cost per cloud call + machines × power (always on)
    hybrid / month      = hybrid opex + machines × hardware ÷ lifetime months
    break-even month    = ceil(machines × hardware ÷ (all-cloud − hybrid opex)), or never
    3-year TCO          = all-cloud × 36  vs  machines × hardware × purchases in 3 years + hybrid opex × 36

Daily (UTC days, gaps filled with zeros): local and cloud spend, what the reference model would have
charged for the same tokens (the cloud-equivalent cost) and the savings — what `--chart` draws.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from .ledger import CallRecord
from .prices import HardwareCost, Price
from .stats import cache_hits

DAYS_PER_MONTH = 365.25 / 12
HOURS_PER_MONTH = 24 * DAYS_PER_MONTH
TCO_MONTHS = 36


@dataclass(frozen=True)
class Assumptions:
    reference_model: str
    reference: Price
    hardware: HardwareCost
    max_utilization: float = 0.6
    scales: dict[str, int] = field(default_factory=lambda: {"small": 1_000, "medium": 10_000, "large": 100_000})
    price_table_as_of: str = ""


def busy_seconds(rows: Iterable[CallRecord]) -> float:
    """Length of the union of the calls' [end − latency, end] intervals: time with ≥ 1 call running."""
    spans = sorted((r.ts - r.latency_s, r.ts) for r in rows)
    total, cur_start, cur_end = 0.0, None, None
    for start, end in spans:
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None:
        total += cur_end - cur_start
    return total


def route_totals(rows: list[CallRecord]) -> dict[str, dict[str, Any]]:
    out = {}
    for route, pick in (("local", lambda r: r.local), ("cloud", lambda r: not r.local), ("hybrid", lambda r: True)):
        mine = [r for r in rows if pick(r)]
        ok = [r for r in mine if r.ok]
        tin, tout = sum(r.tokens_in for r in ok), sum(r.tokens_out for r in ok)
        cost, ref = sum(r.cost_usd for r in ok), sum(r.reference_usd for r in ok)
        toks = tin + tout
        out[route] = {"calls": len(mine), "errors": len(mine) - len(ok), "tokens_in": tin, "tokens_out": tout,
                      "cost_usd": cost, "reference_usd": ref, "savings_usd": ref - cost,
                      "cost_per_1k_tokens": cost / toks * 1000 if toks else None,
                      "reference_per_1k_tokens": ref / toks * 1000 if toks else None}
    return out


def daily(rows: Iterable[CallRecord]) -> list[dict[str, Any]]:
    """Per UTC day from the first call's to the last's: calls, local and cloud spend, reference
    (cloud-equivalent) cost and savings of the successful calls."""
    days: dict[str, dict[str, Any]] = {}
    for r in rows:
        day = datetime.fromtimestamp(r.ts, timezone.utc).date().isoformat()
        d = days.get(day)
        if d is None:
            d = days[day] = {"day": day, "calls": 0, "local_usd": 0.0, "cloud_usd": 0.0, "reference_usd": 0.0}
        d["calls"] += 1
        if r.ok:
            d["local_usd" if r.local else "cloud_usd"] += r.cost_usd
            d["reference_usd"] += r.reference_usd
    if not days:
        return []
    first, last = (datetime.fromisoformat(x).date() for x in (min(days), max(days)))
    out = []
    for i in range((last - first).days + 1):
        day = (first + timedelta(days=i)).isoformat()
        d = days.get(day) or {"day": day, "calls": 0, "local_usd": 0.0, "cloud_usd": 0.0, "reference_usd": 0.0}
        d["savings_usd"] = d["reference_usd"] - d["local_usd"] - d["cloud_usd"]
        out.append(d)
    return out


def measured(rows: list[CallRecord], a: Assumptions) -> dict[str, Any]:
    ok = [r for r in rows if r.ok]
    local = [r for r in ok if r.local]
    cloud = [r for r in ok if not r.local]
    busy = busy_seconds(local)
    local_tokens = sum(r.tokens_in + r.tokens_out for r in local)
    tps = local_tokens / busy if busy > 0 and local_tokens else None
    return {
        "ok_calls": len(ok),
        "period": {"first": rows[0].ts if rows else None, "last": rows[-1].ts if rows else None},
        "tokens_in_per_call": sum(r.tokens_in for r in ok) / len(ok) if ok else 0.0,
        "tokens_out_per_call": sum(r.tokens_out for r in ok) / len(ok) if ok else 0.0,
        "local_share": len(local) / len(ok) if ok else 0.0,
        "local_tokens_per_call": local_tokens / len(local) if local else 0.0,
        "local_tokens_per_s": tps,
        "local_busy_s": busy,
        "cloud_cost_per_call": sum(r.cost_usd for r in cloud) / len(cloud) if cloud else 0.0,
        "reference_cost_per_call": a.reference.cost(
            sum(r.tokens_in for r in ok) / len(ok), sum(r.tokens_out for r in ok) / len(ok)) if ok else 0.0,
    }


def projection(m: dict[str, Any], a: Assumptions) -> list[dict[str, Any]]:
    hw = a.hardware
    tps = m["local_tokens_per_s"] or hw.assumed_tokens_per_s
    capacity = tps * 3600 * HOURS_PER_MONTH * a.max_utilization  # local tokens one machine can do per month
    power_month = hw.power_watts / 1000 * HOURS_PER_MONTH * hw.electricity_usd_per_kwh
    lifetime_months = hw.lifetime_years * 12
    out = []
    for name, per_day in sorted(a.scales.items(), key=lambda kv: kv[1]):
        calls = per_day * DAYS_PER_MONTH
        all_cloud = calls * m["reference_cost_per_call"]
        cloud_part = calls * (1 - m["local_share"]) * m["cloud_cost_per_call"]
        local_tokens = calls * m["local_share"] * m["local_tokens_per_call"]
        machines = math.ceil(local_tokens / capacity) if local_tokens > 0 and capacity > 0 else 0
        capex = machines * hw.hardware_usd
        opex = cloud_part + machines * power_month
        saving = all_cloud - opex
        if capex == 0:
            breakeven: int | None = 0 if saving >= 0 else None
        else:
            breakeven = math.ceil(capex / saving) if saving > 0 else None
        purchases = math.ceil(TCO_MONTHS / lifetime_months) if lifetime_months > 0 else 1
        tco_hybrid = capex * purchases + opex * TCO_MONTHS
        out.append({"scale": name, "calls_per_day": per_day, "machines": machines,
                    "all_cloud_per_month": all_cloud, "hybrid_opex_per_month": opex,
                    "hybrid_per_month": opex + (capex / lifetime_months if lifetime_months > 0 else 0.0),
                    "cloud_part_per_month": cloud_part, "power_per_month": machines * power_month,
                    "hardware_usd": capex, "breakeven_month": breakeven,
                    "breakeven_within_lifetime": breakeven is not None and breakeven <= lifetime_months,
                    "tco_3y_all_cloud": all_cloud * TCO_MONTHS, "tco_3y_hybrid": tco_hybrid,
                    "tco_3y_savings": all_cloud * TCO_MONTHS - tco_hybrid})
    return out


def build_report(rows: list[CallRecord], a: Assumptions, *, since: float | None = None,
                 until: float | None = None) -> dict[str, Any]:
    """Answers a cache gave (rows with `cache` set) are reported apart (`caches`); the rest is LLM calls."""
    requests = len({r.request_id for r in rows})
    hits = [r for r in rows if r.cache]
    if hits:
        rows = [r for r in rows if not r.cache]
    m = measured(rows, a)
    hw = a.hardware
    return {
        "since": since, "until": until,
        "routes": route_totals(rows),
        "measured": m,
        "projection": projection(m, a),
        "daily": daily(rows),
        "caches": cache_figures(hits, requests),
        "assumptions": {
            "reference_model": a.reference_model, "reference_price": asdict(a.reference),
            "price_table_as_of": a.price_table_as_of,
            "hardware_usd": hw.hardware_usd, "hardware_lifetime_years": hw.lifetime_years,
            "power_watts": hw.power_watts, "electricity_usd_per_kwh": hw.electricity_usd_per_kwh,
            "local_usd_per_hour": hw.per_hour,
            "local_tokens_per_s": m["local_tokens_per_s"] or hw.assumed_tokens_per_s,
            "local_tokens_per_s_source": "measured (tokens ÷ busy time)" if m["local_tokens_per_s"] else "assumed",
            "max_utilization": a.max_utilization, "days_per_month": DAYS_PER_MONTH,
            "power": "machines draw power_watts around the clock",
            "mix": "future traffic has the measured local share and tokens per call",
        },
    }


def cache_figures(hits: list[CallRecord], requests: int) -> dict[str, dict[str, Any]]:
    """Per cache: its hits, what they saved, and the requests it answered (wholly, or partly: an /ask
    whose ranking calls hit the response cache) as a share of all the requests in the ledger. (Misses are
    not in the ledger: hit rates per lookup are in /admin/stats and /metrics.)"""
    out = {}
    for name, v in cache_hits(hits).items():
        answered = len({r.request_id for r in hits if r.cache == name})
        out[name] = {"hits": v["hits"], "saved_usd": v["saved_usd"], "reference_usd": v["reference_usd"],
                     "requests": answered, "request_share": answered / requests if requests else None}
    return out


# -- rendering --------------------------------------------------------------------------------------
def _money(x: float | None) -> str:
    if x is None:
        return "-"
    return f"${x:,.2f}" if abs(x) >= 1 else f"${x:.6f}".rstrip("0").rstrip(".") if x else "$0"


def render_table(rep: dict[str, Any]) -> str:
    lines = ["Spend by route"]
    hdr = f"{'route':<8}{'calls':>8}{'errors':>8}{'tokens in':>12}{'tokens out':>12}{'cost':>14}{'per 1K tok':>13}" \
          f"{'reference':>14}{'savings':>14}"
    lines += [hdr, "-" * len(hdr)]
    for route, t in rep["routes"].items():
        lines.append(f"{route:<8}{t['calls']:>8}{t['errors']:>8}{t['tokens_in']:>12}{t['tokens_out']:>12}"
                     f"{_money(t['cost_usd']):>14}{_money(t['cost_per_1k_tokens']):>13}{_money(t['reference_usd']):>14}"
                     f"{_money(t['savings_usd']):>14}")
    if rep.get("caches"):
        lines += ["", "Answered from caches (cost nothing; saved = what the calls they replaced had cost; "
                  "of requests = requests it answered, wholly or in part)"]
        for name, c in rep["caches"].items():
            share = "-" if c.get("request_share") is None else f"{c['request_share']:.1%}"
            lines.append(f"  {name:<10}{c['hits']:>8} hits   {share:>6} of requests   saved {_money(c['saved_usd'])}   "
                         f"reference {_money(c['reference_usd'])}")
    m = rep["measured"]
    tps = m["local_tokens_per_s"]
    lines += ["", "Measured", f"  successful calls {m['ok_calls']}, local share {m['local_share']:.1%}, "
              f"{m['tokens_in_per_call']:.1f} tokens in + {m['tokens_out_per_call']:.1f} out per call",
              f"  local throughput {'%.1f tokens/s while busy' % tps if tps else 'not measured'}; "
              f"cloud cost per cloud call {_money(m['cloud_cost_per_call'])}; "
              f"reference cost per call {_money(m['reference_cost_per_call'])}"]
    lines += ["", "Projection (per month unless said)"]
    hdr = f"{'scale':<8}{'calls/day':>11}{'machines':>10}{'all-cloud':>14}{'hybrid':>14}{'break-even':>19}" \
          f"{'3y TCO cloud':>15}{'3y TCO hybrid':>15}"
    lines += [hdr, "-" * len(hdr)]
    for p in rep["projection"]:
        be = "never" if p["breakeven_month"] is None else f"month {p['breakeven_month']}" + (
            "" if p["breakeven_within_lifetime"] else " (>life)")
        lines.append(f"{p['scale']:<8}{p['calls_per_day']:>11,}{p['machines']:>10}{_money(p['all_cloud_per_month']):>14}"
                     f"{_money(p['hybrid_per_month']):>14}{be:>19}{_money(p['tco_3y_all_cloud']):>15}"
                     f"{_money(p['tco_3y_hybrid']):>15}")
    a = rep["assumptions"]
    ref = a["reference_price"]
    lines += ["", "Assumptions",
              f"  reference cloud model {a['reference_model']}: ${ref['in_per_m']}/1M in, ${ref['out_per_m']}/1M out "
              f"(price table as of {a['price_table_as_of'] or '?'})",
              f"  local hardware ${a['hardware_usd']:,.0f} over {a['hardware_lifetime_years']:g} years, "
              f"{a['power_watts']:g} W at ${a['electricity_usd_per_kwh']}/kWh = ${a['local_usd_per_hour']:.4f}/h",
              f"  local throughput {a['local_tokens_per_s']:.1f} tokens/s ({a['local_tokens_per_s_source']}), "
              f"planned utilisation at most {a['max_utilization']:.0%}",
              f"  {a['days_per_month']:.2f} days a month; {a['power']}; {a['mix']}",
              "  hybrid/month = cloud part + power + hardware amortised over its lifetime; "
              "break-even counts hardware against monthly savings ((>life): later than the hardware lasts)"]
    return "\n".join(lines) + "\n"


def render_csv(rep: dict[str, Any]) -> str:
    """Long format — section, name, metric, value — so one file holds every part of the report."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["section", "name", "metric", "value"])
    for route, t in rep["routes"].items():
        for k, v in t.items():
            w.writerow(["route", route, k, "" if v is None else v])
    for k, v in rep["measured"].items():
        if k != "period":
            w.writerow(["measured", "", k, "" if v is None else v])
    for p in rep["projection"]:
        for k, v in p.items():
            if k != "scale":
                w.writerow(["projection", p["scale"], k, "never" if v is None else v])
    for name, c in rep.get("caches", {}).items():
        for k, v in c.items():
            w.writerow(["cache", name, k, v])
    for d in rep.get("daily", ()):
        for k, v in d.items():
            if k != "day":
                w.writerow(["day", d["day"], k, v])
    for k, v in rep["assumptions"].items():
        w.writerow(["assumption", "", k, v if not isinstance(v, dict) else ";".join(f"{a}={b}" for a, b in v.items())])
    return buf.getvalue()
