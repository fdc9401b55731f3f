"""Launched replicas with real `python -m llama_cpp.server` processes (the packaged SmolLM2): launch on a free
loopback port, register into the fleet, drain before stop (a call in flight on a replica being stopped
finishes), errors naming the model file, and the autoscaler scaling 1 -> 3 -> 1 under a load ramp through
the gateway with no failed request. No step waits a fixed time: each waits, with a bound, for what it needs."""
import asyncio
import os
import time

import pytest

from nlweb_local.config.settings import BreakerSettings, DeploymentSettings
from nlweb_local.core.types import ChatRequest, Message
from nlweb_local.fleet.launcher import LaunchError, ReplicaLauncher
from nlweb_local.fleet.replicas import build_replica_sets
from nlweb_local.providers.registry import build_provider
from nlweb_local.server.components import build_adapter

pytest.importorskip("llama_cpp.server.app", reason="pip install 'llama-cpp-python[server]'")
LAUNCH = {"n_ctx": 512, "n_threads": 1, "start_timeout_s": 120, "drain_timeout_s": 60}


def launched(**fields):
    d = DeploymentSettings(**{"name": "smol", "engine": "llama_cpp_server", "timeout_s": 60, "launch": LAUNCH, **fields})
    fleet = build_adapter(d, BreakerSettings())
    sets = build_replica_sets([d], lambda name: fleet, build_provider)
    return fleet, sets, sets.get("smol")


def ask(text, max_tokens=2):
    return ChatRequest([Message("user", text)], max_tokens=max_tokens)


async def until(predicate, timeout_s, what, state=lambda: None):
    end = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"{what} did not happen within {timeout_s:.0f} s: {state()}")
        await asyncio.sleep(0.05)


def alive(pid):
    """Running (a zombie, exited but not yet reaped by whoever adopted it, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_missing_model_file_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere" / "model.gguf"
    with pytest.raises(LaunchError, match=f"the model file {missing} does not exist"):
        launched(model=str(missing), replicas=1)


def test_a_missing_server_package_is_an_error_saying_what_to_install(monkeypatch):
    from nlweb_local.fleet import launcher

    monkeypatch.setattr(launcher, "SERVER_MODULES", ("fastapi", "no_such_module_for_the_test"))
    with pytest.raises(LaunchError, match=r"needs no_such_module_for_the_test: pip install 'nlweb-local\[replicas\]'"):
        launched(replicas=1)


async def test_a_file_that_is_not_a_model_fails_the_launch_naming_it(tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf file at all")
    fleet, sets, s = launched(model=str(bogus), replicas=1)
    try:
        with pytest.raises(LaunchError) as e:
            await sets.start()
        assert f"llama_cpp.server exited (code 1) while loading {bogus}" in e.value.message
        assert s.launcher.current == 0 and fleet.status() == []
    finally:
        await sets.close()
        await fleet.close()


@pytest.mark.slow
async def test_launch_serve_and_drain_a_call_in_flight_before_stopping(tmp_path):
    fleet, sets, s = launched(replicas=2, fleet={"policy": "least-outstanding"})
    launcher: ReplicaLauncher = s.launcher
    pids = []
    try:
        await asyncio.gather(launcher.launch(), launcher.launch())  # (no autoscaler: it would replace the one stopped)
        reps = launcher.replicas()
        pids = [r["pid"] for r in reps]
        assert [r["state"] for r in reps] == ["serving", "serving"] and len({r["port"] for r in reps}) == 2
        assert sorted(i.url for i in fleet.status()) == sorted(r["url"] for r in reps)
        assert all(r["url"].startswith("http://127.0.0.1:") for r in reps)
        first = await fleet.complete(ask("Say hi."))
        assert first.content is not None

        alive_at_answer, busy_box = [], []

        async def long_story():
            # the replica's state is read in the same step as the answer (a done-callback would run one
            # loop turn later, by when the drain loop may already have moved the replica to "stopping")
            answer = await fleet.complete(ask("Write a long story about a cat.", max_tokens=48))
            alive_at_answer.append((busy_box[0].state, alive(busy_box[0].pid)))
            return answer

        long_call = asyncio.create_task(long_story())
        await until(lambda: any(i.in_flight for i in fleet.status()), 30, "the long call in flight")
        busy_url = next(i.url for i in fleet.status() if i.in_flight)
        busy = next(r for r in launcher._replicas if r.url == busy_url)
        busy_box.append(busy)
        stopping = asyncio.create_task(launcher.stop(busy))
        await until(lambda: busy.state == "draining", 5, "draining")
        assert [i.url for i in fleet.status()] != [] and busy_url not in [i.url for i in fleet.status()]
        # new calls meanwhile go to the other replica; the draining one still runs the long call
        during = await asyncio.gather(*(fleet.complete(ask(f"Hi {n}")) for n in range(3)))
        assert all(r.content is not None for r in during)
        await stopping
        assert long_call.result().content and alive_at_answer == [("draining", True)]  # answered before SIGTERM
        assert busy.process.returncode is not None and not alive(busy.pid)
        assert [r["state"] for r in launcher.replicas()] == ["serving"]
    finally:
        await sets.close()
        await fleet.close()
    assert not any(alive(p) for p in pids)  # every replica stopped with the set


@pytest.mark.slow
async def test_autoscaling_1_to_3_under_a_ramp_and_back_to_1_with_no_failed_request(tmp_path):
    from prometheus_client import generate_latest

    from nlweb_local.server.fleet_admin import fleet_view, with_replicas
    from stand_ins import scripted_service, service_settings

    autoscale = {"min_replicas": 1, "max_replicas": 3, "ttft_slo_s": 60, "target_utilisation": 1.0,
                 "scale_up_cooldown_s": 0, "scale_down_cooldown_s": 1, "interval_s": 0.2, "window_s": 1}
    settings = service_settings(tmp_path, {"name": "smol", "engine": "llama_cpp_server", "timeout_s": 60,
                                           "autoscale": autoscale, "launch": LAUNCH}, embedded_enabled=False)
    comp = scripted_service(settings, {})
    s = comp.replicas.get("smol")
    failures, served, users = [], [0], []
    stop = asyncio.Event()

    def state():
        return {"replicas": s.launcher.replicas(), "autoscaler": s.autoscaler.view(), "failures": failures[:3]}

    async def user(i):
        n = 0
        while not stop.is_set() and i < active[0]:
            n += 1
            try:
                r = await comp.gateway.complete(ask(f"User {i}, question {n}: say hi."))
                assert r.content is not None
                served[0] += 1
            except Exception as e:  # noqa: BLE001 - every failure is recorded and fails the test
                failures.append(repr(e))

    def users_now(n):
        active[0] = n
        while len([u for u in users if not u.done()]) < n:
            users.append(asyncio.create_task(user(len(users))))

    active = [0]
    pids = set()
    try:
        await comp.replicas.start()
        assert s.launcher.current == 1
        users_now(1)
        await until(lambda: served[0] >= 2, 60, "one user served", state)
        assert s.launcher.current == 1  # one user on one replica: no queue, hold

        users_now(4)  # the ramp
        t_ramp = time.monotonic()
        await until(lambda: sum(r["state"] == "serving" for r in s.launcher.replicas()) == 3, 180,
                    "3 replicas serving", state)
        pids |= {r["pid"] for r in s.launcher.replicas()}
        print(f"\nramp to 4 users -> 3 replicas serving: {time.monotonic() - t_ramp:.1f} s")
        view = with_replicas(fleet_view(comp.router), comp.replicas)["deployments"][0]
        assert [r["state"] for r in view["replicas"]["launched"]] == ["serving"] * 3
        assert view["replicas"]["autoscaler"]["desired"] == 3 and len(view["instances"]) == 3
        fleet = comp.replicas.get("smol").autoscaler.fleet
        await until(lambda: all(i.served for i in fleet.status()), 120, "each of the 3 replicas serving", state)
        metrics = generate_latest(comp.telemetry.metrics.registry).decode()
        assert 'nlweb_fleet_replicas{deployment="smol"} 3.0' in metrics
        assert 'nlweb_fleet_queue_depth{deployment="smol"}' in metrics

        active[0] = 1  # down to one user, who goes on calling while replicas are drained and stopped
        t_calm = time.monotonic()
        await until(lambda: len(s.launcher.replicas()) == 1 and s.autoscaler.desired == 1, 120, "back to 1 replica", state)
        left = served[0]
        print(f"back to 1 user -> 1 replica: {time.monotonic() - t_calm:.1f} s")
        await until(lambda: served[0] >= left + 1, 60, "the last replica serving", state)
        active[0] = 0  # idle: stays at min_replicas
        await asyncio.gather(*users)
        assert s.launcher.current == 1 and s.autoscaler.scale_events == {"up": 1, "down": 1}
        assert [(e["from"], e["to"]) for e in s.autoscaler.events] == [(1, 3), (3, 1)]
        assert s.autoscaler.events[1]["in_flight"] == 1  # scaled down while the user's calls went on
        metrics = generate_latest(comp.telemetry.metrics.registry).decode()
        assert 'nlweb_fleet_scale_events_total{deployment="smol",direction="up"} 1.0' in metrics
        assert 'nlweb_fleet_replicas_desired{deployment="smol"} 1.0' in metrics
    finally:
        stop.set()
        await asyncio.gather(*users, return_exceptions=True)
        await comp.close()
    print(f"calls served: {served[0]}, failed: {len(failures)}")
    assert failures == [] and served[0] > 0
    assert pids and not any(alive(p) for p in pids)


@pytest.mark.slow
def test_the_server_launches_replicas_at_start_shows_them_and_stops_them_at_shutdown(tmp_path):
    from starlette.testclient import TestClient

    from nlweb_local.server.app import create_app
    from stand_ins import scripted_service, service_settings

    from nlweb_local.config.settings import MemorySettings

    settings = service_settings(tmp_path, {"name": "smol", "engine": "llama_cpp_server", "replicas": 1, "launch": LAUNCH},
                                embedded_enabled=False, memory=MemorySettings(budget_mb=4000))
    comp = scripted_service(settings, {}, telemetry=None)
    with TestClient(create_app(settings, comp, close_components=True), base_url="http://localhost") as c:
        r = c.post("/v1/chat/completions", json={"model": "smol", "max_tokens": 2,
                                                 "messages": [{"role": "user", "content": "Say hi."}]})
        assert r.status_code == 200, r.text
        smol = c.get("/admin/fleet").json()["deployments"][0]
        (held,) = c.get("/admin/memory").json()["reserved"]  # the replica's model counts in the host's budget
    (replica,) = smol["replicas"]["launched"]
    assert held["deployment"] == "smol" and held["size_mb"] == replica["reserved_mb"] > 50
    assert replica["state"] == "serving" and replica["url"] == f"http://127.0.0.1:{replica['port']}/v1"
    assert [i["url"] for i in smol["instances"]] == [replica["url"]] and smol["instances"][0]["served"] == 1
    auto = smol["replicas"]["autoscaler"]
    assert (auto["current"], auto["desired"], auto["min_replicas"], auto["max_replicas"]) == (1, 1, 1, 1)
    assert not alive(replica["pid"])  # stopped with the server


async def test_instances_join_and_leave_a_fleet_at_runtime():
    """What the launcher relies on: an empty fleet refuses with 503 until an instance joins; a detached
    instance gets no new call while its call in flight finishes."""
    from nlweb_local.core.errors import OverloadedError
    from nlweb_local.fleet.fleet import Fleet
    from nlweb_local.providers.testing import ScriptedProvider

    fleet = Fleet("d", [], template=ScriptedProvider("d"))
    with pytest.raises(OverloadedError, match="no instance yet") as e:
        await fleet.complete(ask("hi"))
    assert e.value.status == 503 and fleet.status() == [] and not (await fleet.health()).healthy
    slow, quick = ScriptedProvider("d", text="slow", token_delay_s=0.05), ScriptedProvider("d", text="quick")
    fleet.add("http://a", slow)
    with pytest.raises(ValueError, match="already an instance"):
        fleet.add("http://a", quick)
    in_flight = asyncio.create_task(fleet.complete(ask("hi")))
    await until(lambda: fleet.status()[0].in_flight == 1, 5, "a call on a")
    fleet.add("http://b", quick)
    inst = fleet.detach("http://a")
    assert [s.url for s in fleet.status()] == ["http://b"] and inst.in_flight == 1
    assert {(await fleet.complete(ask(f"hi {n}"))).content for n in range(4)} == {"quick"}
    assert (await in_flight).content == "slow" and inst.in_flight == 0 and slow.calls == 1
    await fleet.close()


ORPHAN = """
import asyncio, sys
sys.path.insert(0, sys.argv[1])
from test_fleet_launcher import launched

async def main():
    fleet, sets, s = launched(replicas=1)
    replica = await s.launcher.launch()
    print(replica.pid, flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="Linux only: PR_SET_PDEATHSIG")
def test_replicas_do_not_outlive_a_server_killed_without_stopping_them(tmp_path):
    import selectors
    import signal
    import subprocess
    import sys

    here = os.path.dirname(__file__)
    server = subprocess.Popen([sys.executable, "-c", ORPHAN, here], stdout=subprocess.PIPE, env={**os.environ})
    pid = None
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(server.stdout, selectors.EVENT_READ)
            line = server.stdout.readline() if sel.select(120) else b""
        assert line.strip().isdigit(), f"the replica did not start: {line!r}"
        pid = int(line)
        assert alive(pid)
        server.send_signal(signal.SIGKILL)  # no shutdown, no stop
        server.wait()
        end = time.monotonic() + 30
        while alive(pid) and time.monotonic() < end:
            time.sleep(0.05)
        assert not alive(pid), "the replica outlived its server"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        if pid is not None and alive(pid):  # (the test failed: leave no engine behind)
            os.kill(pid, signal.SIGKILL)
