"""Canary guards and stages: parsing (clear errors for bad syntax) and judging, pure."""
from __future__ import annotations

import pytest

from nlweb_local.core.errors import BadRequestError
from nlweb_local.registry.canary import Canary, parse_stages
from nlweb_local.registry.canary_watch import decide
from nlweb_local.registry.guards import Figures, judge, parse_guards, ttft_bucket


def test_guards_parse_with_units():
    g = parse_guards("error_rate<2%, p95_ttft < 1.5x,quality>=-0.02")
    assert [(x.metric, x.op, x.value, x.unit) for x in g] == [
        ("error_rate", "<", 0.02, "%"), ("p95_ttft", "<", 1.5, "x"), ("quality", ">=", -0.02, "")]
    assert parse_guards("p95_ttft<=800ms")[0].value == pytest.approx(0.8)
    assert parse_guards("error_rate<0.05")[0].value == 0.05
    assert parse_guards("") == []


@pytest.mark.parametrize("text, says", [
    ("error_rate=2%", "is not `metric<value`"),
    ("latency<2s", "unknown metric 'latency'"),
    ("error_rate<2ms", "error_rate takes the unit"),
    ("quality<0.1", "bounds it from below: use > or >="),
    ("error_rate>2%", "bounds it from above: use < or <="),
    ("p95_ttft<0x", "a ratio must be above 0"),
    ("error_rate<150%", "an error rate lies in [0, 100%]"),
    ("error_rate<2%,error_rate<1.5x", "names error_rate more than once"),
    ("error_rate<2%,,p95_ttft<2x", "guard 2 (''"),
])
def test_bad_guards_say_what_to_fix(text, says):
    with pytest.raises(BadRequestError) as e:
        parse_guards(text)
    assert says in e.value.message


@pytest.mark.parametrize("text, says", [("5,25,50", "must end at 100"), ("5,5,100", "must rise"),
                                        ("0,100", "must rise"), ("a,100", "rising percentages")])
def test_bad_stages(text, says):
    with pytest.raises(BadRequestError, match=says):
        parse_stages(text)
    assert parse_stages("5,25,50,100") == (5, 25, 50, 100)


def figures(requests, errors, ttft_s=0.1):
    return Figures(requests, errors, {ttft_bucket(ttft_s): requests - errors} if requests > errors else {})


def test_judging_absolute_ratio_and_skipped_quality():
    base, cand = figures(100, 1, 0.1), figures(100, 3, 0.2)
    rate, ttft, quality = parse_guards("error_rate<2%,p95_ttft<1.5x,quality>=-0.02")
    assert judge(rate, base, cand).holds is False and "3.00% (3 of 100)" in judge(rate, base, cand).text
    assert judge(ttft, base, cand).holds is False  # 0.2 s vs 0.1 s: 2x
    assert judge(ttft, base, figures(100, 0, 0.12)).holds is True
    q = judge(quality, base, cand)
    assert q.holds is None and "no feedback source" in q.text
    ratio = parse_guards("error_rate<1.5x")[0]
    assert judge(ratio, figures(50, 0), figures(50, 0)).holds is True  # 0 against 0 is 1x
    assert judge(ratio, figures(50, 0), figures(50, 1)).holds is False


def canary(**kw):
    base = dict(id=1, alias="chat", name="m", version="v2", base_name="m", base_version="v1", stages=(5, 25, 100),
                stage=0, guards="error_rate<2%,p95_ttft<1.5x", min_requests=50, status="running", reason="",
                started_at=0, started_by="t", stage_at=0)
    return Canary(**{**base, **kw})


def test_decisions_hold_advance_promote_and_roll_back():
    assert decide(canary(), figures(500, 0), figures(10, 0)).action == "hold"
    assert decide(canary(), figures(20, 0), figures(60, 0)).action == "hold"  # the baseline's evidence is short
    assert decide(canary(), figures(500, 0), figures(60, 0)).action == "advance"
    assert decide(canary(stage=1), figures(500, 0), figures(60, 0)).action == "promote"
    d = decide(canary(), figures(500, 0), figures(60, 5))
    assert d.action == "rollback" and "error_rate<2%" in d.reason
    early = decide(canary(), figures(30, 0), figures(5, 1))  # 1 of at least 50 is already 2%: cannot pass
    assert early.action == "rollback"
    assert decide(canary(guards="error_rate<5%"), figures(30, 0), figures(5, 1)).action == "hold"
