"""Deployments whose engine processes nlweb-local launches itself (`replicas` / `autoscale`): for each, an
empty `Fleet` (its instances come as replicas start), a `ReplicaLauncher` and an `Autoscaler` (a fixed
`replicas: N` is an autoscaler held at N, which still replaces a replica that died).

    ReplicaSets.start()   launches every deployment's first replicas (at once; a failure stops the start,
                          naming the model file) and starts the autoscalers
    ReplicaSets.close()   stops the autoscalers, then every replica (drained first)
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config.settings import AutoscaleSettings, DeploymentSettings
from ..providers.base import Provider
from .autoscaler import Autoscaler, measure, queue_depth
from .fleet import Fleet
from .instance import InstanceStatus
from .launcher import ReplicaLauncher

log = logging.getLogger(__name__)


def launch_target(d: DeploymentSettings) -> tuple[Path, str]:
    """The model file a launched deployment's replicas load, and the name they serve it under."""
    if not d.model:
        from ..providers.llama_cpp import packaged_smollm2_path

        path = packaged_smollm2_path()
        return path, path.stem
    path = Path(d.model).expanduser()
    return path, path.stem if path.suffix.lower() == ".gguf" else d.model


def replica_settings(d: DeploymentSettings, url: str) -> DeploymentSettings:
    """The deployment as one replica's adapter sees it: an ordinary engine at `url`."""
    return d.model_copy(update={"url": url, "model": launch_target(d)[1], "replicas": None, "autoscale": None})


def scaling_of(d: DeploymentSettings) -> AutoscaleSettings:
    """`autoscale`, or for a fixed `replicas: N` an autoscaler held at N."""
    if d.autoscale is not None:
        return d.autoscale
    n = d.replicas or 1
    return AutoscaleSettings(min_replicas=n, max_replicas=n)


def replica_size_mb(d: DeploymentSettings, path: Path, gguf_factor: float) -> float:
    """MiB one replica's model takes: the deployment's memory_mb, else the GGUF estimate (file × factor + KV
    cache at launch.n_ctx)."""
    if d.memory_mb is not None:
        return d.memory_mb
    from ..core.errors import BadRequestError
    from .model_size import estimate_gguf_mb

    try:
        return estimate_gguf_mb(path, d.launch.n_ctx, gguf_factor)
    except (OSError, ValueError) as e:
        raise BadRequestError(f"deployment {d.name!r}: cannot estimate the size of {path} for llm.memory's budget "
                              f"({e}); set memory_mb", deployment=d.name) from e


def launched_fleet(d: DeploymentSettings, build: Callable[[DeploymentSettings], Provider],
                   breaker: Callable[[str], Any]) -> Fleet:
    """The fleet of a launched deployment, without instances until its replicas start."""
    template = build(replica_settings(d, "http://127.0.0.1:1/v1"))  # never called: its model and capabilities
    return Fleet(d.name, [], d.fleet, breaker=breaker, template=template)


@dataclass
class ReplicaSet:
    name: str
    launcher: ReplicaLauncher
    autoscaler: Autoscaler
    initial: int
    task: asyncio.Task | None = field(default=None, repr=False)

    def view(self) -> dict[str, Any]:
        return {"launched": self.launcher.replicas(), "autoscaler": self.autoscaler.view()}


class ReplicaSets:
    def __init__(self, sets: Sequence[ReplicaSet] = ()):
        self._sets = {s.name: s for s in sets}
        self._started = False

    def __bool__(self) -> bool:
        return bool(self._sets)

    def get(self, name: str) -> ReplicaSet | None:
        return self._sets.get(name)

    def __iter__(self):
        return iter(self._sets.values())

    async def start(self) -> None:
        if self._started or not self._sets:
            return
        self._started = True
        try:
            await asyncio.gather(*(s.launcher.launch() for s in self._sets.values() for _ in range(s.initial)))
        except BaseException:
            await self.close()
            raise
        for s in self._sets.values():
            s.autoscaler.desired = s.launcher.current
            s.task = asyncio.get_running_loop().create_task(s.autoscaler.run_forever())

    async def close(self) -> None:
        for s in self._sets.values():
            if s.task is not None:
                s.task.cancel()
                s.task = None
        await asyncio.gather(*(s.launcher.close() for s in self._sets.values()), return_exceptions=True)

    def gauges(self, router: Any, waiting_of: Callable[[str], Callable[[], int] | None] = lambda name: None
               ) -> list[dict[str, Any]]:
        """Per deployment of `router`, for the metrics: its queue depth (a fleet: over its instances; else
        the deployment as one instance, from the router's view) and, when launched, its replicas and scale
        events."""
        from ..providers.wrapper import find

        out = []
        for name in router.names():
            fleet = find(router.provider(name), Fleet)
            s = self._sets.get(name)
            if fleet is not None:
                depth = queue_depth(fleet, s.autoscaler.slots if s is not None else None, waiting_of(name))
            else:
                v, load = router.view(name), router.load(name)
                depth = measure([InstanceStatus(name, v.healthy and v.admits, v.healthy, load.detail, v.breaker,
                                                v.in_flight, load.waiting, load.running, v.ewma_ttft_s, None,
                                                None, 0, 0)], None).queue_depth
            row: dict[str, Any] = {"deployment": name, "queue_depth": depth}
            if s is not None:
                row.update(current=s.launcher.current, desired=s.autoscaler.desired,
                           scale_events=dict(s.autoscaler.scale_events))
            out.append(row)
        return out


def build_replica_sets(deployments: Sequence[DeploymentSettings], fleet_of: Callable[[str], Fleet | None],
                       build: Callable[[DeploymentSettings], Provider],
                       waiting_of: Callable[[str], Callable[[], int] | None] = lambda name: None, *,
                       memory: Any = None) -> ReplicaSets:
    """A `ReplicaSet` for each launched deployment whose chain holds a launched fleet (`fleet_of(name)`;
    None where a test gave the deployment another adapter). `waiting_of(name)`: how to read the calls held
    in front of its fleet (its admission gate), or None. `memory`: the host's `MemoryBudget` (each replica
    reserves its model's size in it), or None."""
    sets = []
    for d in deployments:
        fleet = fleet_of(d.name) if d.launched else None
        if fleet is None:
            continue
        path, alias = launch_target(d)
        size = replica_size_mb(d, path, memory.settings.gguf_factor) if memory is not None else None
        launcher = ReplicaLauncher(d.name, fleet, lambda url, d=d: build(replica_settings(d, url)), path, alias,
                                   d.launch, memory=memory, size_mb=size)
        scaling = scaling_of(d)
        scaler = Autoscaler(d.name, fleet, launcher, scaling, slots=d.launch.slots, waiting=waiting_of(d.name))
        sets.append(ReplicaSet(d.name, launcher, scaler, d.replicas or scaling.min_replicas))
    return ReplicaSets(sets)
