"""Limits that hold under concurrency (governance/limits.py): a burst of 50 concurrent requests against a
token or money budget for 10 never overspends (in process and in a real Redis); requests/minute per key
and per team; over a limit: 429 + Retry-After with an OpenAI error naming the limit on /v1 and an NLWeb
error on /ask; a reservation is settled on the real usage."""
import asyncio
import time

import pytest

from governance_app import client, governed_service
from nlweb_local.governance.counters import STALE, Charge, InProcessCounters, Tally
from nlweb_local.governance.governed import estimate_prompt
from nlweb_local.governance.identity import Limits
from nlweb_local.core.types import ChatRequest, Message
from redis_server import RedisServer

PROMPT = "what is a good soup for a cold evening?"
MAX_TOKENS = 40
CHAT = {"model": "auto", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS}
ESTIMATE = estimate_prompt(ChatRequest([Message("user", PROMPT)])) + MAX_TOKENS  # what each call reserves


def _day() -> int:
    return int(time.time() // 86_400)


async def _burst(service, name: str, body: dict, n: int = 50):
    async with client(service, headers=service.headers(name)) as c:
        return await asyncio.gather(*(c.post("/v1/chat/completions", json=body) for _ in range(n)))


def _used_tokens(responses) -> int:
    return sum(r.json()["usage"]["total_tokens"] for r in responses if r.status_code == 200)


@pytest.fixture()
def redis_server(tmp_path):
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.mark.parametrize("backend", ["in-process", "redis"])
async def test_fifty_concurrent_requests_against_a_token_budget_for_ten_never_overspend(tmp_path, backend, request):
    auth = {}
    if backend == "redis":
        auth["limits_redis_url"] = request.getfixturevalue("redis_server").url
    service = governed_service(tmp_path, auth=auth)
    service.local.token_delay_s = 0.2  # every call is still in flight when the others ask (0.6 s)
    limit = 10 * ESTIMATE
    key = service.key("burst", "user", limits=Limits(tokens_per_day=limit))
    responses = await _burst(service, "burst", CHAT)
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(ok) == 10 and len(refused) == 40
    counter = await service.comp.governance.limits.counters.value(f"tok:key:{key.split('_')[1]}:{_day()}")
    assert counter == _used_tokens(responses) <= limit  # settled on the real usage, below the budget
    body = refused[0].json()["error"]
    assert body["type"] == "rate_limit_error" and body["code"] == "tokens_per_day"
    assert "over its tokens_per_day limit" in body["message"] and "resets at" in body["message"]
    assert int(refused[0].headers["retry-after"]) >= 1
    await service.comp.close()


async def test_fifty_concurrent_requests_against_a_money_budget_for_ten_never_overspend(tmp_path):
    service = governed_service(tmp_path, cloud_price=(2.5, 10.0))
    service.cloud.token_delay_s = 0.2
    price = (2.5 * (ESTIMATE - MAX_TOKENS) + 10.0 * MAX_TOKENS) / 1e6  # each call's estimate at the cloud's price
    budget = 10.5 * price
    service.key("spender", "user", limits=Limits(usd_per_day=budget))
    responses = await _burst(service, "spender", {**CHAT, "model": "cloud"})
    ok = [r for r in responses if r.status_code == 200]
    assert len(ok) == 10
    spent = sum((2.5 * r.json()["usage"]["prompt_tokens"] + 10.0 * r.json()["usage"]["completion_tokens"]) / 1e6
                for r in ok)
    assert spent <= budget
    refused = next(r for r in responses if r.status_code == 429).json()["error"]
    assert refused["code"] == "usd_per_day" and "$" in refused["message"]


async def test_a_reservation_is_settled_on_the_real_usage_for_streams_too(tmp_path):
    service = governed_service(tmp_path)
    key = service.key("s", "user", limits=Limits(tokens_per_day=100_000))
    counter = f"tok:key:{key.split('_')[1]}:{_day()}"
    async with client(service, headers=service.headers("s")) as c:
        r = await c.post("/v1/chat/completions", json=CHAT)
        used = r.json()["usage"]["total_tokens"]
        assert await service.comp.governance.limits.counters.value(counter) == used < ESTIMATE
        r = await c.post("/v1/chat/completions", json={**CHAT, "stream": True,
                                                        "stream_options": {"include_usage": True}})
        assert r.status_code == 200 and "[DONE]" in r.text
    assert await service.comp.governance.limits.counters.value(counter) == 2 * used


async def test_a_failed_call_releases_its_reservation(tmp_path):
    from nlweb_local.core.errors import ProviderConnectionError

    service = governed_service(tmp_path)
    key = service.key("f", "user", models=["local"], limits=Limits(tokens_per_day=10 * ESTIMATE))
    service.local.fail_with = ProviderConnectionError("refused", deployment="local")
    async with client(service, headers=service.headers("f")) as c:
        assert (await c.post("/v1/chat/completions", json=CHAT)).status_code >= 500
    assert await service.comp.governance.limits.counters.value(f"tok:key:{key.split('_')[1]}:{_day()}") == 0


async def test_requests_per_minute_per_key_and_per_team(tmp_path):
    service = governed_service(tmp_path, auth={"teams": {"search": {"requests_per_minute": 3}}})
    service.key("solo", "user", limits=Limits(requests_per_minute=2))
    service.key("a", "user", team="search")
    service.key("b", "user", team="search")
    async with client(service) as c:
        codes = [(await c.post("/v1/chat/completions", json=CHAT, headers=service.headers("solo"))).status_code
                 for _ in range(3)]
        assert codes == [200, 200, 429]
        r = await c.get("/ask", params={"query": "soup"}, headers=service.headers("solo"))
        assert r.status_code == 429 and r.json()["status"] == 429  # /ask: NLWeb's error shape
        assert "requests_per_minute" in r.json()["error"] and int(r.headers["retry-after"]) >= 1
        team = [(await c.post("/v1/chat/completions", json=CHAT, headers=service.headers(n))).status_code
                for n in ("a", "b", "a", "b")]
        assert team == [200, 200, 200, 429]
        r = await c.post("/v1/chat/completions", json=CHAT, headers=service.headers("b"))
        assert "team 'search' is over its requests_per_minute limit of 3 requests a minute" in r.json()["error"]["message"]


async def test_ask_answers_429_in_nlweb_form_when_the_day_budget_is_spent(tmp_path):
    service = governed_service(tmp_path)
    key = service.key("k", "user", limits=Limits(tokens_per_day=ESTIMATE))
    counters = service.comp.governance.limits.counters
    async with client(service, headers=service.headers("k")) as c:
        r = await c.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200
        assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 429  # the rest cannot fit a call
        counter = f"tok:key:{key.split('_')[1]}:{_day()}"
        await counters.adjust([(counter, ESTIMATE - await counters.value(counter), 60)])  # the rest spent elsewhere
        r = await c.get("/ask", params={"query": "soup"})
    assert r.status_code == 429 and "tokens_per_day" in r.json()["error"] and r.json()["status"] == 429
    assert int(r.headers["retry-after"]) >= 1


async def test_in_process_counters_reserve_all_or_nothing_and_expire():
    now = [0.0]
    c = InProcessCounters(clock=lambda: now[0])
    assert await c.reserve([Charge("a", 5, 10, 60), Charge("b", 5, 5, 60)]) is None
    refused = await c.reserve([Charge("a", 1, 10, 60), Charge("b", 1, 5, 60)])
    assert refused is not None and refused.index == 1 and refused.used == 5 and refused.reset_in_s == 60
    assert await c.value("a") == 5  # nothing was taken from "a" either
    await c.adjust([("a", -2, 60)])
    assert await c.value("a") == 3
    now[0] = 61
    assert await c.value("a") == 0 and await c.reserve([Charge("b", 5, 5, 60)]) is None


async def test_lent_cells_are_the_counters_all_or_nothing_and_go_stale_when_they_expire():
    """The in-process fast path (`cells`, `take`, `give`) charges the very counters `value`/`reserve` see;
    the tally says which amount each counter takes (here "a" the first, "b" the second)."""
    now = [0.0]
    c = InProcessCounters(clock=lambda: now[0])
    await c.reserve([Charge("a", 2, 10, 30)])
    cells = c.cells(["a", "b"], 60)
    tally = Tally((0, 1))
    assert cells.until == 30  # "a" expires first (its window ends first)
    assert c.take(cells, tally, 5, 5, [10, 5]) is None
    assert await c.value("a") == 7 and await c.value("b") == 5
    refused = c.take(cells, tally, 1, 1, [10, 5])
    assert refused is not None and refused.index == 1 and refused.used == 5 and refused.reset_in_s == 60
    assert await c.value("a") == 7  # nothing taken from "a" either
    c.give(cells, tally, -3, -1)
    assert await c.value("a") == 4 and await c.value("b") == 4
    now[0] = 30  # "a"'s window is over: the cells are stale, nothing is charged
    assert c.take(cells, tally, 1, 1, [10, 5]) is STALE and await c.value("b") == 4
    fresh = c.cells(["a", "b"], 60)
    assert c.take(fresh, tally, 1, 1, [10, 5]) is None and await c.value("a") == 1 and await c.value("b") == 5


@pytest.mark.parametrize("kinds", [(), (0,), (1,), (0, 1), (1, 0, 0), (0, 1, 0, 1), (1,) * 9])
def test_a_tally_fits_all_or_nothing_and_adds_the_amount_each_counter_counts(kinds):
    """`Tally` compiles its pattern into straight-line code: checked against the plain rule for each
    counter in turn being the one that does not fit, and for all fitting."""
    tally = Tally(kinds)
    assert tally.kinds == kinds
    first, second = 3, 1000
    for over in [None, *range(len(kinds))]:
        cells = [[10 * i, 99.0] for i in range(len(kinds))]
        limits = [10 * i + (first, second)[k] - (1 if i == over else 0) for i, k in enumerate(kinds)]
        before = [list(c) for c in cells]
        got = tally.fit(cells, first, second, limits)
        if over is None:
            assert got == -1 and [c[0] for c in cells] == [10 * i + (first, second)[k] for i, k in enumerate(kinds)]
        else:
            assert got == over and cells == before  # all or nothing
        tally.add(cells, -first, -second)
        assert [c[0] for c in cells] == [b[0] - (first, second)[k] + (0 if over is not None else (first, second)[k])
                                         for b, k in zip(before, kinds)]


def test_a_tally_over_too_many_counters_is_refused():
    with pytest.raises(ValueError, match="over 65 counters"):
        Tally((0,) * 65)


async def test_redis_counters_are_atomic_and_expire(redis_server):
    from nlweb_local.governance.counters_redis import RedisCounters

    c = RedisCounters(redis_server.url)
    try:
        results = await asyncio.gather(*(c.reserve([Charge("tok:k", 3, 30, 60), Charge("tok:t", 3, 1000, 60)])
                                         for _ in range(50)))
        assert sum(r is None for r in results) == 10
        assert await c.value("tok:k") == 30 and await c.value("tok:t") == 30  # the refused took nothing
        refused = next(r for r in results if r is not None)
        assert refused.index == 0 and refused.used == 30 and 0 < refused.reset_in_s <= 60
        raw = redis_server.client()
        assert 0 < raw.pttl("nlweb:limits:tok:k") <= 60_000
        scripts = sum(v["calls"] for k, v in raw.info("commandstats").items() if k in ("cmdstat_evalsha", "cmdstat_eval"))
        assert scripts < 10  # the burst was coalesced into a few script runs, not 50
        await c.adjust([("tok:k", -10, 60)])
        assert await c.value("tok:k") == 20
    finally:
        await c.close()


async def test_redis_down_refuses_with_503_rather_than_letting_calls_through(tmp_path):
    from nlweb_local.core.errors import OverloadedError
    from nlweb_local.governance.counters_redis import RedisCounters

    with RedisServer(tmp_path / "r") as server:
        url = server.url
    c = RedisCounters(url, timeout_s=0.2)
    with pytest.raises(OverloadedError, match="limits store"):
        await c.reserve([Charge("x", 1, 10, 60)])
    await c.close()


async def test_a_cancelled_caller_s_reservation_is_undone(redis_server):
    from nlweb_local.governance.counters_redis import RedisCounters

    c = RedisCounters(redis_server.url)
    try:
        task = asyncio.ensure_future(c.reserve([Charge("tok:c", 7, 100, 60)]))
        await asyncio.sleep(0)  # queued, the script on its way
        await asyncio.sleep(0)
        task.cancel()
        for _ in range(200):  # until the undo has been written
            if await c.value("tok:c") == 0 and not c._tasks:
                break
            await asyncio.sleep(0.01)
        assert await c.value("tok:c") == 0
    finally:
        await c.close()


async def test_a_month_budget_spans_the_days_of_a_utc_calendar_month():
    """usd_per_month (a team's here): spend on one day counts on the next, a day budget resets and the month's
    does not; refused with 429 naming usd_per_month and the first of the next month; the new month starts
    afresh; the budget alert sees the month's share."""
    from datetime import datetime, timezone

    from nlweb_local.core.errors import QuotaExceededError
    from nlweb_local.governance.identity import Identity, Role
    from nlweb_local.governance.limits import LimitPolicy

    t = [datetime(2026, 11, 29, 12, tzinfo=timezone.utc).timestamp()]
    counters = InProcessCounters(clock=lambda: t[0])
    policy = LimitPolicy(counters, teams={"red": Limits(usd_per_day=0.7, usd_per_month=1.0)}, now=lambda: t[0])
    member = Identity(key_id="k1", name="m", role=Role.USER, team="red")
    held = await policy.reserve(member, 0, 0.6)
    await policy.settle(held, 0, 0.6)
    with pytest.raises(QuotaExceededError) as e:  # the same day: past 0.7 a day and 1.0 a month
        await policy.reserve(member, 0, 0.3)
    assert e.value.limit == "usd_per_day"
    t[0] += 86_400  # the next day (the 30th): the day budget is fresh, the month's is not
    uses = {u.what: u for u in await policy.usage()}
    assert round(uses["usd_per_month"].share, 6) == 0.6 and uses["usd_per_day"].used == 0
    assert await policy.reserve(member, 0, 0.3) is not None  # 0.9 of the month
    with pytest.raises(QuotaExceededError) as e:
        await policy.reserve(member, 0, 0.2)
    assert e.value.limit == "usd_per_month"
    assert "$1 a month" in e.value.message and "2026-12-01T00:00:00Z" in e.value.message
    assert 0 < e.value.retry_after <= 86_400 + 60
    t[0] = datetime(2026, 12, 1, 0, 0, 30, tzinfo=timezone.utc).timestamp()  # a new month
    assert await policy.reserve(member, 0, 0.6) is not None


def test_keys_create_takes_a_month_budget(tmp_path, monkeypatch, capsys):
    import json

    from nlweb_local.cli.main import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NLWEB_LOCAL_DATA_DIR", str(tmp_path / "data"))
    assert main(["keys", "create", "--name", "m", "--role", "user", "--usd-per-month", "25"]) == 0
    capsys.readouterr()
    assert main(["keys", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["limits"] == {"usd_per_month": 25.0}
