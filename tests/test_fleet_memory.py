"""Launched replicas under the host's memory budget (fleet/memory.py `reserve`, fleet/launcher.py): each launch
reserves its model's size before a process starts, a launch that would not fit is refused with 507 naming
the budget, the memory comes back when the process has exited, in-process models count it, and the
autoscaler holds at the count that fits and says why. The launcher's process is a stand-in here (the budget
logic needs none); tests/test_fleet_launcher.py checks the reservation of a real llama_cpp.server."""
from __future__ import annotations

import asyncio
import collections

import pytest

from nlweb_local.config.settings import AutoscaleSettings, MemorySettings
from nlweb_local.core.errors import InsufficientMemoryError
from nlweb_local.core.types import ChatRequest, Message
from nlweb_local.fleet.autoscaler import Autoscaler
from nlweb_local.fleet.fleet import Fleet
from nlweb_local.fleet.launcher import Replica, ReplicaLauncher
from nlweb_local.fleet.memory import BudgetedModel, MemoryBudget
from nlweb_local.providers.llama_cpp import packaged_smollm2_path
from nlweb_local.providers.testing import LoadableModel, ScriptedProvider

from test_fleet_scaling import Clock, SimDeployment, run


def budget(mb: float) -> MemoryBudget:
    return MemoryBudget(MemorySettings(budget_mb=mb), rss_mb=lambda: 0.0, gpu=lambda: {"nvml": False, "why": "no GPU in this test"})


class StandInProcess:
    """What the launcher uses of an `asyncio.subprocess.Process`: a pid, a return code, terminate/kill/wait."""

    _pids = iter(range(40000, 50000))

    def __init__(self):
        self.pid, self.returncode, self.stdout = next(self._pids), None, None

    def terminate(self):
        self.returncode = -15

    kill = terminate

    async def wait(self):
        return self.returncode


class StandInLauncher(ReplicaLauncher):
    """The real launcher (reservation, states, fleet registration, drain and stop) over stand-in processes."""

    spawned = 0

    async def _spawn(self, port: int) -> Replica:
        self.spawned += 1
        r = Replica(port, f"http://127.0.0.1:{port}/v1", StandInProcess(), collections.deque(), self._clock())
        self._replicas.append(r)
        return r

    async def _until_ready(self, r: Replica) -> None:
        r.provider = self._adapter(r.url)


def launcher(memory: MemoryBudget | None, size_mb: float = 300.0) -> StandInLauncher:
    fleet = Fleet("smol", [], template=ScriptedProvider("smol"))
    return StandInLauncher("smol", fleet, lambda url: ScriptedProvider("smol", text=url), packaged_smollm2_path(),
                           "smol", memory=memory, size_mb=size_mb)


async def test_each_replica_reserves_its_model_and_a_launch_past_the_budget_is_refused_naming_it():
    memory = budget(1000)
    launch = launcher(memory)
    a, b, c = [await launch.launch() for _ in range(3)]
    assert memory.used_mb() == 900 and launch.room() == 0 and launch.current == 3
    assert [r["reserved_mb"] for r in launch.replicas()] == [300.0] * 3
    assert [r["owner"] for r in memory.snapshot()["reserved"]] == ["a launched replica (" + launch.model_path.name + ")"] * 3
    with pytest.raises(InsufficientMemoryError) as e:
        await launch.launch()
    assert e.value.status == 507
    assert "300 MiB" in e.value.message and "llm.memory.budget_mb = 1000 MiB" in e.value.message
    assert "100 MiB free" in e.value.message and launch.last_error == e.value.message
    assert launch.spawned == 3 and launch.current == 3 and memory.used_mb() == 900  # no process was started
    await launch.stop(b)  # drained, terminated: its memory is back
    assert b.process.returncode is not None and memory.used_mb() == 600 and launch.room() == 1
    await launch.launch()
    assert memory.used_mb() == 900
    await launch.close()
    assert memory.used_mb() == 0 and memory.snapshot()["reserved"] == []


async def test_a_launch_that_fails_gives_its_reservation_back():
    memory = budget(1000)
    launch = launcher(memory)

    async def refuses(r):
        from nlweb_local.fleet.launcher import LaunchError

        raise LaunchError("smol: the engine exited while loading")

    launch._until_ready = refuses
    with pytest.raises(Exception, match="exited while loading"):
        await launch.launch()
    assert memory.used_mb() == 0 and launch.current == 0


async def test_without_a_budget_nothing_is_reserved():
    launch = launcher(None)
    await launch.launch()
    assert launch.room() is None and launch.replicas()[0]["reserved_mb"] is None
    await launch.close()


async def test_in_process_models_count_what_replicas_hold():
    memory = budget(1000)
    model = LoadableModel("local", 500)
    memory.register("local", model, 500)
    local = BudgetedModel(model, memory)
    reservation = memory.reserve("smol", "a launched replica", 600)
    with pytest.raises(InsufficientMemoryError, match="600 MiB"):  # 500 (the idle model) + 600 held: no room
        memory.reserve("smol", "another replica", 600)
    # the in-process model cannot load beside the replica (only idle in-process models are evicted): it waits
    from nlweb_local.core.errors import QueueFullError

    with pytest.raises(QueueFullError, match="waiting for memory"):
        await local.complete(ChatRequest([Message("user", "hi")], deadline_s=0.2))
    memory.free(reservation)
    assert (await local.complete(ChatRequest([Message("user", "hi")]))).content
    assert memory.used_mb() == 500 and memory.room(600) == 0 and memory.room(250) == 2
    await memory.close()


class BudgetedSim(SimDeployment):
    """The simulated deployment whose launcher reserves `size_mb` per replica in a `MemoryBudget`."""

    def __init__(self, clock, memory, size_mb, **kw):
        super().__init__(clock, **kw)
        self.memory, self.size_mb = memory, size_mb
        self.held = [memory.reserve("d", "replica", size_mb) for _ in range(self.current)]

    def room(self):
        return self.memory.room(self.size_mb)

    def scale_to(self, n):
        super().scale_to(n)
        while len(self.held) < self.current:
            self.held.append(self.memory.reserve("d", "replica", self.size_mb))  # refuses past the budget
        while len(self.held) > self.current:
            self.memory.free(self.held.pop())


def test_the_autoscaler_holds_at_the_count_that_fits_and_says_why():
    clock, memory = Clock(), budget(1000)
    sim = BudgetedSim(clock, memory, 400, start_ticks=1)
    a = AutoscaleSettings(min_replicas=1, max_replicas=4, scale_up_cooldown_s=0, scale_down_cooldown_s=0, window_s=1)
    scaler = Autoscaler("d", sim, sim, a, clock=clock)
    run(scaler, sim, clock, [(5, 8)])  # 8 calls on one-slot replicas: the policy wants 4; 2 of 400 MiB fit in 1000
    assert sim.current == 2 and scaler.desired == 2 and memory.used_mb() == 800
    view = scaler.view()
    assert view["wanted"] == 4 and view["desired"] == 2
    assert "holding at 2 of the 4 replicas wanted" in view["memory_hold"] and "400 MiB" in view["memory_hold"]
    assert [e["to"] for e in scaler.events] == [2]  # one change, no retries against the budget
    memory.budget_mb["ram"] = 2000  # the budget raised (or another holder gone): room for the rest
    run(scaler, sim, clock, [(3, 8)])
    assert sim.current == 4 and scaler.view()["memory_hold"] is None and scaler.view()["wanted"] is None
    run(scaler, sim, clock, [(5, 0)])  # idle: back to min, memory freed
    assert sim.current == 1 and memory.used_mb() == 400


def test_a_dead_replica_is_replaced_only_as_far_as_the_budget_allows():
    clock, memory = Clock(), budget(1000)
    sim = BudgetedSim(clock, memory, 400, start_ticks=1, replicas=2)
    a = AutoscaleSettings(min_replicas=2, max_replicas=2, scale_up_cooldown_s=0, scale_down_cooldown_s=0, window_s=1)
    scaler = Autoscaler("d", sim, sim, a, clock=clock)
    run(scaler, sim, clock, [(2, 1)])
    sim.dead = 1
    memory.free(sim.held.pop())  # (its process exited: its memory is back)
    other = memory.reserve("other", "another deployment's replica", 400)  # and taken at once by another
    run(scaler, sim, clock, [(2, 1)])
    assert sim.current == 1 and scaler.desired == 1 and "room for 0 more replicas" in scaler.view()["memory_hold"]
    memory.free(other)
    run(scaler, sim, clock, [(2, 1)])
    assert sim.current == 2 and scaler.view()["memory_hold"] is None


async def test_launches_not_yet_spawned_count_as_starting():
    """Spawning a process can take longer than an autoscaler tick: the launches `scale_to` began count as
    starting replicas before their process exists, so the autoscaler does not read them as replicas that
    died and launch again (a CI run once got 5 replicas for a max of 3 that way)."""
    launch = launcher(None)
    spawn_gate = asyncio.Event()
    real_spawn = launch._spawn

    async def slow_spawn(port):
        await spawn_gate.wait()
        return await real_spawn(port)

    launch._spawn = slow_spawn
    launch.scale_to(3)
    await asyncio.sleep(0.01)
    assert launch.spawned == 0 and launch.starting == 3 and launch.current == 3
    launch.scale_to(3)  # asked again while they start: nothing more is launched
    spawn_gate.set()
    await launch.settled()
    assert launch.spawned == 3 and launch.starting == 0 and launch.current == 3
    assert [r["state"] for r in launch.replicas()] == ["serving"] * 3
    await launch.close()
