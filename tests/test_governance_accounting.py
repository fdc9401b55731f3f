"""Who spent what: the cost ledger's rows name the caller (key id) and team, `cost report --by key|team`
groups them; /v1/models lists only what the caller's key may use; a key's or a team's day budget at 80 %
raises the budget alert (telemetry/alerts.py)."""
import argparse
import json

from governance_app import client, governed_service
from nlweb_local.governance.identity import Limits
from nlweb_local.telemetry import ledger_path
from nlweb_local.telemetry.ledger import read_calls

CHAT = {"model": "local", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 20}


def _key_id(svc, name):
    return next(r.key_id for r in svc.comp.governance.keyring.list() if r.name == name)


async def test_ledger_rows_name_the_caller_and_team_and_cost_report_groups_them(tmp_path, capsys):
    from nlweb_local.cli.cost import run as cost_run

    svc = governed_service(tmp_path, telemetry=True, cloud_price=(2.5, 10.0))
    svc.settings.auth.teams = {}
    svc.key("alice", "user", team="red")
    svc.key("bob", "user", team="blue")
    for name, model, n in (("alice", "cloud", 2), ("bob", "local", 1)):
        async with client(svc, headers=svc.headers(name)) as c:
            for _ in range(n):
                r = await c.post("/v1/chat/completions", json={**CHAT, "model": model})
                assert r.status_code == 200, r.text
    assert svc.comp.telemetry.ledger.flush()
    rows = read_calls(ledger_path(svc.settings))
    alice, bob = _key_id(svc, "alice"), _key_id(svc, "bob")
    assert sorted((r.caller, r.team, r.deployment) for r in rows) == sorted([
        (alice, "red", "cloud"), (alice, "red", "cloud"), (bob, "blue", "local")])

    def report(by, fmt="json"):
        args = argparse.Namespace(action="report", since=None, until=None, format=fmt, chart=None, by=by)
        assert cost_run(args, svc.settings) == 0
        return capsys.readouterr().out

    teams = json.loads(report("team"))
    assert [(g["team"], g["calls"]) for g in teams] == [("red", 2), ("blue", 1)]  # dearest first
    assert teams[0]["cost_usd"] > 0 and abs(teams[1]["cost_usd"] - sum(r.cost_usd for r in rows if r.team == "blue")) < 1e-9
    keys = {g["key"]: g for g in json.loads(report("key"))}
    assert keys[alice]["calls"] == 2 and keys[bob]["tokens_out"] == sum(r.tokens_out for r in rows if r.caller == bob)
    table = report("team", "table")
    assert "red" in table and "blue" in table
    assert report("key", "csv").splitlines()[0] == "key,calls,errors,tokens_in,tokens_out,cost_usd,saved_usd"
    svc.comp.telemetry.close()


async def test_models_lists_only_what_the_key_may_use(tmp_path):
    svc = governed_service(tmp_path)
    svc.key("local-only", "user", models=["local"])
    svc.key("anything", "user")
    async with client(svc, headers=svc.headers("local-only")) as c:
        ids = {m["id"] for m in (await c.get("/v1/models")).json()["data"]}
    assert "local" in ids and "auto" in ids and "cloud" not in ids
    async with client(svc, headers=svc.headers("anything")) as c:
        ids = {m["id"] for m in (await c.get("/v1/models")).json()["data"]}
    assert {"local", "cloud", "auto"} <= ids


async def test_a_key_or_team_budget_at_80_percent_raises_the_budget_alert(tmp_path):
    svc = governed_service(tmp_path, telemetry=True, auth={"teams": {}})
    from nlweb_local.governance.identity import Limits as L
    from nlweb_local.governance.limits import LimitPolicy

    monitor = svc.comp.telemetry.monitor
    assert monitor is not None and monitor.budgets is not None  # wired by build_components
    svc.key("thrifty", "user", limits=Limits(tokens_per_day=100))
    async with client(svc, headers=svc.headers("thrifty")) as c:
        r = await c.post("/v1/chat/completions", json={**CHAT, "max_tokens": 5})
        assert r.status_code == 200
    used = r.json()["usage"]["total_tokens"]
    assert used < 80  # not yet at 80 %
    changes = await monitor.run_once()
    assert not [a for s, a in changes if a.key.startswith("budget:")]
    # spend up to 85 tokens on this key's counter (as settled calls would)
    ident = await svc.comp.governance.authenticator.authenticate(svc.keys["thrifty"])
    held = await svc.comp.governance.limits.reserve(ident, 85 - used, 0.0)
    assert held is not None
    changes = await monitor.run_once()
    fired = [a for s, a in changes if s == "firing" and a.key.startswith("budget:key:")]
    assert len(fired) == 1 and fired[0].severity == "warning" and "85%" in fired[0].summary
    assert fired[0].key == f"budget:key:{ident.key_id}:tokens_per_day"

    # a team's budget, through the policy alone
    policy = LimitPolicy(svc.comp.governance.limits.counters, teams={"red": L(usd_per_day=1.0)})
    member = type(ident)(key_id="k2", name="m", role=ident.role, team="red")
    await policy.reserve(member, 0, 0.9)
    uses = {(u.scope, u.who, u.what): u for u in await policy.usage()}
    assert round(uses[("team", "red", "usd_per_day")].share, 6) == 0.9
    svc.comp.telemetry.close()
