"""A/B experiments (registry/experiments.py, experiment_store.py, experiment_split.py, server/feedback.py,
server/experiments_admin.py, cli/ab.py): the rules (one running experiment per alias, nothing changed on a
refusal — SQLite and PostgreSQL), sticky weighted assignment in the running gateway, per-variant counters in
/metrics, feedback tied to the served version, and the report."""
from __future__ import annotations

import json
import random
from collections import Counter

import httpx
import pytest
import pytest_asyncio

from nlweb_local.core.errors import BadRequestError, NotFoundError
from nlweb_local.providers.testing import ScriptedProvider
from nlweb_local.registry import ModelRegistry, build_registry
from nlweb_local.registry.ab_report import render_text, report
from nlweb_local.registry.experiment_store import Feedback
from nlweb_local.registry.experiments import Experiment, Experiments, Variant, parse_variants
from nlweb_local.server.app import create_app
from nlweb_local.server.feedback import parse_feedback
from nlweb_local.telemetry import build_telemetry
from nlweb_local.telemetry.ledger import CallRecord
from stand_ins import scripted_service, service_settings
from test_registry_store import opener  # noqa: F401  (the sqlite + postgres fixture)

SERVED = ({"name": "smol-v1", "engine": "llama_cpp", "serves": "smol@v1"},
          {"name": "smol-v2", "engine": "llama_cpp", "serves": "smol@v2"})


def rules_on(store, tmp_path) -> Experiments:
    registry = ModelRegistry(store, engines=["llama_cpp"])
    for v in ("v1", "v2", "v3"):
        path = tmp_path / f"smol-{v}.gguf"
        path.write_bytes(f"weights {v}".encode())
        registry.register("smol", v, file=path, by="ci")
    registry.set_alias("chat-default", "smol", "v1", by="ci")
    return Experiments(registry, served={"smol@v1", "smol@v2", "smol@v3"}, clock=lambda: 1000.0)


def test_one_running_experiment_per_alias_and_a_refusal_changes_nothing(opener, tmp_path):
    exps = rules_on(opener(), tmp_path)
    e = exps.start("chat-default", "v1:50,v2:50", metric="quality", min_samples=10, by="ana")
    assert e.keys == ("smol@v1", "smol@v2") and e.running and e.id > 0
    version = exps.registry.store.version()
    with pytest.raises(BadRequestError, match="already runs on alias 'chat-default'.*ab stop --alias chat-default"):
        exps.start("chat-default", "v1:10,v3:90", by="bob")
    exps.registry.set_alias("other", "smol", "v1", by="ci")
    with pytest.raises(NotFoundError, match="smol@v9 is not registered"):
        exps.start("other", "v1:50,v9:50", by="bob")
    assert [x.id for x in exps.list()] == [e.id]
    assert exps.registry.store.version() == version + 1  # (only the alias "other" was made)
    # another process sees the same: the running experiment, from the database
    other = Experiments(ModelRegistry(opener(), engines=["llama_cpp"]))
    assert list(other.store.running()) == ["chat-default"]
    stopped = exps.stop("chat-default", by="ana")
    assert not stopped.running and stopped.stopped_by == "ana"
    with pytest.raises(NotFoundError, match="no experiment runs on alias 'chat-default'"):
        exps.stop("chat-default", by="ana")
    again = exps.start("chat-default", "v2:1,v3:1", by="ana")  # a new one after the stop
    assert [x.running for x in exps.list("chat-default")] == [False, True] and again.id > e.id


def test_start_refuses_bad_input_saying_what_to_fix(tmp_path):
    s = service_settings(tmp_path, *SERVED, embedded_enabled=False)
    exps = rules_on(build_registry(s).store, tmp_path)
    exps._served = frozenset({"smol@v1", "smol@v2"})
    cases = [("nope", "v1:50,v2:50", "no alias 'nope'"),
             ("chat-default", "v1:50", "at least two variants"),
             ("chat-default", "v1:50,v1:50", "each version once"),
             ("chat-default", "v1:x,v2:50", "is not a number"),
             ("chat-default", "v1:0,v2:50", "positive number"),
             ("chat-default", "v1,v2", "VERSION:WEIGHT"),
             ("chat-default", "other@v1:1,v2:1", "names model 'other'"),
             ("chat-default", "v1:50,v3:50", "no configured deployment serves smol@v3")]
    for alias, variants, message in cases:
        with pytest.raises((BadRequestError, NotFoundError), match=message):
            exps.start(alias, variants, by="x")
    with pytest.raises(BadRequestError, match="--metric must be one of"):
        exps.start("chat-default", "v1:1,v2:1", metric="vibes", by="x")
    with pytest.raises(BadRequestError, match="--min-samples"):
        exps.start("chat-default", "v1:1,v2:1", min_samples=0, by="x")
    assert exps.list() == []
    exps.registry.close()


def test_assignment_is_sticky_and_follows_the_weights():
    e = Experiment(7, "chat-default", "smol", parse_variants("v1:20,v2:80", "smol"))
    assert all(e.assign(f"c{i}") == e.assign(f"c{i}") for i in range(100))
    share = Counter(e.assign(f"conversation-{i}") for i in range(5000))
    assert 0.17 < share["smol@v1"] / 5000 < 0.23
    other = Experiment(8, "chat-default", "smol", e.variants)  # a new experiment reshuffles
    assert sum(e.assign(f"c{i}") != other.assign(f"c{i}") for i in range(1000)) > 100


def test_feedback_bodies():
    assert parse_feedback({"request_id": "abc-1", "rating": 1}) == ("abc-1", "", 1.0, 1.0, "")
    assert parse_feedback({"query_id": "q1", "rating": "down", "comment": "wrong"})[2:] == (-1.0, 0.0, "wrong")
    assert parse_feedback({"query_id": "q1", "rating": 4})[3] == 0.75
    assert parse_feedback({"query_id": "q1", "rating": 1, "scale": "stars"})[3] == 0.0
    for body, message in (({"rating": 1}, "request_id"), ({"query_id": "q", "rating": 0}, "thumbs rating is"),
                          ({"query_id": "q", "rating": 6}, "star rating is 1-5"),
                          ({"query_id": "q", "rating": 2.5}, "whole number"),
                          ({"query_id": "q", "rating": True}, "rating must be"),
                          ({"query_id": "q w", "rating": 1}, "query_id must be"),
                          ({"query_id": "q", "rating": 1, "comment": "x" * 3000}, "comment"), ([], "send")):
        with pytest.raises(BadRequestError, match=message):
            parse_feedback(body)


def _row(ts, rid, version, latency, cost=0.0, error=""):
    return CallRecord(ts, rid, version.replace("@", "-"), True, "chat", 10, 10, latency, latency / 2, cost, 0.0, 0.0,
                      error, "", 0.0, version)


def test_report_on_synthetic_evidence_detects_a_known_effect():
    e = Experiment(3, "chat-default", "smol", (Variant("v1", 1), Variant("v2", 1)), "quality", 100, 1000.0, "ana")
    rng = random.Random(5)
    calls, feedback = [], []
    for i in range(1200):
        v = "smol@v1" if i % 2 else "smol@v2"
        rid = f"r{i}"
        calls.append(_row(1000.0 + i, rid, v, rng.lognormvariate(0.0 if v == "smol@v1" else 0.3, 0.4), 0.001))
        up = rng.random() < (0.55 if v == "smol@v1" else 0.70)
        # half the ratings know their version, half are found in the ledger by request id
        feedback.append(Feedback(1000.5 + i, rid, "", 1.0 if up else -1.0, 1.0 if up else 0.0, "", "",
                                 v if i % 4 < 2 else ""))
    calls.append(_row(900.0, "early", "smol@v1", 99.0))  # before the experiment: not counted
    out = report(e, calls, feedback, now=5000.0, resamples=500)
    assert out["counts"]["smol@v1"] == {"requests": 600, "errors": 0, "ratings": 600}
    q = out["verdicts"]["quality"]
    assert q["comparisons"][0]["decision"] == "better" and q["comparisons"][0]["p_value"] < 0.05
    assert out["verdict"].startswith("smol@v2 better than smol@v1 on quality")
    assert out["verdicts"]["latency"]["comparisons"][0]["decision"] == "worse"
    assert out["verdicts"]["cost"]["comparisons"][0]["decision"] == "no significant difference"
    text = render_text(out)
    assert "VERDICT (quality): smol@v2 better" in text and "95% CI" in text
    json.dumps(out)  # valid JSON (no NaN)
    small = report(e, calls[:40], feedback[:40], now=5000.0, resamples=200)
    assert small["verdict"].startswith("too few samples") and "NaN" not in json.dumps(small)


@pytest_asyncio.fixture(loop_scope="function")
async def served(tmp_path):
    s = service_settings(tmp_path, *SERVED, embedded_enabled=False)
    s.registry.poll_s = 0.05
    s.llm.rounds = 1
    registry = build_registry(s)
    for v in ("v1", "v2"):
        path = tmp_path / f"smol-{v}.gguf"
        path.write_bytes(f"weights {v}".encode())
        registry.register("smol", v, file=path, by="ci")
    registry.set_alias("chat-default", "smol", "v1", by="ci")
    registry.close()
    tel = build_telemetry(s)
    engines = {"smol-v1": ScriptedProvider("smol-v1", "one"), "smol-v2": ScriptedProvider("smol-v2", "two")}
    comp = scripted_service(s, engines, telemetry=tel)
    app = create_app(s, comp, close_components=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
        yield client, comp, s
    await comp.close()
    tel.close()


async def chat(client, conversation=None, model="chat-default"):
    headers = {"x-nlweb-conversation": conversation} if conversation else {}
    r = await client.post("/v1/chat/completions", headers=headers,
                          json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    return r.headers["x-nlweb-route"].rpartition("version=")[2], r.headers["x-request-id"]


async def test_a_running_experiment_splits_the_alias_sticky_per_conversation(served):
    client, comp, _ = served
    r = await client.post("/admin/experiments/chat-default/start",
                          json={"variants": "v1:50,v2:50", "min_samples": 5})
    assert r.status_code == 201, r.text
    e = r.json()
    first = {}
    for i in range(120):
        first[f"c{i}"] = (await chat(client, f"c{i}"))[0]
    assert 30 < sum(v == "smol@v2" for v in first.values()) < 90  # both variants serve, near the weights
    for i in range(0, 120, 10):  # the same conversation stays on its variant
        assert (await chat(client, f"c{i}"))[0] == first[f"c{i}"]
    async with client.stream("POST", "/v1/chat/completions", headers={"x-nlweb-conversation": "c7"},
                             json={"model": "chat-default", "stream": True,
                                   "messages": [{"role": "user", "content": "hi"}]}) as r:  # streamed: the same
        assert r.status_code == 200 and r.headers["x-nlweb-route"].endswith("version=" + first["c7"])
        await r.aread()
    metrics = (await client.get("/metrics")).text
    assert 'nlweb_ab_assignments_total{alias="chat-default",variant="smol@v2"}' in metrics
    # a second start is refused and changes nothing
    r = await client.post("/admin/experiments/chat-default/start", json={"variants": "v1:10,v2:90"})
    assert r.status_code == 400 and "already runs" in r.json()["error"]["message"]
    listed = (await client.get("/admin/experiments")).json()["experiments"]
    assert [(x["id"], x["running"]) for x in listed] == [(e["id"], True)]
    # feedback on an answer: tied to the version that served it
    version, rid = await chat(client, "c1")
    r = await client.post("/feedback", json={"request_id": rid, "rating": 1, "comment": "good"})
    assert r.status_code == 201 and r.json() == {"recorded": True, "model_version": version, "experiment": e["id"]}
    assert (await client.post("/feedback", json={"request_id": rid, "rating": 7})).status_code == 400
    assert 'nlweb_ab_feedback_total{alias="chat-default",rating="positive",variant="' + version + '"}' \
        in (await client.get("/metrics")).text
    rep = (await client.get("/admin/experiments/report?alias=chat-default")).json()
    assert sum(c["requests"] for c in rep["counts"].values()) == 134 and rep["counts"][version]["ratings"] == 1
    assert rep["verdict"].startswith("too few samples")
    # stop: the alias serves its version again, for everyone
    assert (await client.post("/admin/experiments/chat-default/stop")).status_code == 200
    assert {(await chat(client, f"c{i}"))[0] for i in range(20)} == {"smol@v1"}
    assert (await client.post("/admin/experiments/chat-default/stop")).status_code == 404


async def test_requests_not_for_the_alias_are_left_alone(served):
    client, comp, _ = served
    await client.post("/admin/experiments/chat-default/start", json={"variants": "v1:1,v2:99"})
    assert (await chat(client, "c1", model="smol-v1"))[0] == "smol@v1"  # a deployment by name
    assert (await chat(client, "c1", model="smol@v1"))[0] == "smol@v1"  # a version by name


def test_cli_start_list_report_stop(tmp_path, capsys):
    from nlweb_local.cli.ab import run
    from nlweb_local.cli.main import build_parser

    s = service_settings(tmp_path, *SERVED, embedded_enabled=False)
    registry = build_registry(s)
    for v in ("v1", "v2"):
        path = tmp_path / f"smol-{v}.gguf"
        path.write_bytes(f"weights {v}".encode())
        registry.register("smol", v, file=path, by="ci")
    registry.set_alias("chat-default", "smol", "v1", by="ci")
    registry.close()

    def ab(*argv):
        args = build_parser().parse_args(["ab", *argv])
        assert run(args, s) == 0
        return capsys.readouterr().out

    assert "started experiment" in ab("start", "--alias", "chat-default", "--variants", "v1:50,v2:50",
                                      "--metric", "latency", "--min-samples", "20", "--by", "ana")
    with pytest.raises(BadRequestError, match="already runs"):
        ab("start", "--alias", "chat-default", "--variants", "v1:50,v2:50")
    assert "chat-default" in ab("list")
    out = json.loads(ab("report", "--alias", "chat-default", "--format", "json"))
    assert out["metric"] == "latency" and out["verdict"].startswith("too few samples")
    assert "VERDICT (latency)" in ab("report")
    assert "it serves smol@v1 again" in ab("stop", "--alias", "chat-default")


def test_eval_rank_deployment_names_a_variant(tmp_path):
    """`eval rank --deployment` takes a deployment, or the NAME@VERSION a deployment serves (offline evidence
    per variant), with the version's registered file as its model."""
    from nlweb_local.cli.eval_cmd import _deployment
    from nlweb_local.core.errors import SourceError

    s = service_settings(tmp_path, *SERVED, embedded_enabled=False)
    registry = build_registry(s)
    path = tmp_path / "smol-v2.gguf"
    path.write_bytes(b"weights v2")
    registry.register("smol", "v2", file=path, by="ci")
    registry.close()
    d = _deployment(s, "smol@v2")
    assert d.name == "smol-v2" and d.model == str(path.resolve())
    with pytest.raises(SourceError, match="neither a deployment nor a version"):
        _deployment(s, "smol@v7")
