"""`ReplicaLauncher`: the engine processes of a deployment with `replicas`, started and stopped by nlweb-local.

    launch   python -m llama_cpp.server --model FILE --host 127.0.0.1 --port P (a free loopback port) as a
             child process (its own session, so a Ctrl-C to the server's terminal does not kill it mid-call;
             on Linux it gets SIGTERM if the server dies without stopping it), its output drained into a
             bounded buffer; once its /v1/models answers with its model, and a one-token warm-up call
             (`warm_up`) has paged the model in, its adapter joins the fleet as an instance
    stop     drain first: the instance leaves the fleet (no new call, no failover to it), its calls in flight
             finish (for up to `drain_timeout_s`), then SIGTERM, and SIGKILL after `stop_timeout_s`

Memory: with a host budget (`llm.memory`, fleet/memory.py), each launch first reserves the model's size
(`size_mb`: the deployment's memory_mb, else the GGUF estimate) and frees it once the process has exited; a
launch that would not fit is refused with `InsufficientMemoryError` (507) naming the budget, before any
process starts. `room()` says how many more replicas fit now (the autoscaler holds at that count).

A replica is `starting`, `serving`, `draining` or `stopping`; `scale_to(n)` starts or drains replicas in the
background (`current` counts those starting and serving). A launch that fails — the model file missing,
the process exiting while it loads, or not answering within `start_timeout_s` — raises `LaunchError`
naming the file and quoting the end of the engine's output.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import importlib.util
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Literal

from ..config.settings import LaunchSettings
from ..core.errors import BadRequestError, InsufficientMemoryError, NlwebError
from ..core.types import ChatRequest, Message
from ..providers.base import Provider

log = logging.getLogger(__name__)
State = Literal["starting", "serving", "draining", "stopping"]
OUTPUT_LINES = 60  # the end of each engine's output kept in memory (for errors and /admin/fleet)
PORT_TRIES = 3  # a port taken between picking and binding: try another
POLL_S = 0.05
SERVER_MODULES = ("fastapi", "sse_starlette", "starlette_context", "pydantic_settings", "uvicorn")  # its extra's
CHILD_ENV_DROP = ("HOST", "PORT", "CONFIG_FILE", "MODEL")  # llama_cpp.server reads these over its arguments


class LaunchError(BadRequestError):
    """A replica did not start (its model file, what the engine printed)."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, between fork and exec
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: SIGTERM when the server dies without stopping it


try:
    import ctypes

    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _PRCTL = None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass(eq=False)
class Replica:
    port: int
    url: str  # the instance's base URL (…/v1)
    process: asyncio.subprocess.Process
    output: collections.deque[str]
    started_at: float
    state: State = "starting"
    reader: asyncio.Task | None = None
    provider: Provider | None = None
    reservation: Any = None  # its model's memory, held against the budget until the process has exited

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, lines: int = 15) -> str:
        return "\n".join(list(self.output)[-lines:])


class ReplicaLauncher:
    """The replicas of deployment `name`: each a `python -m llama_cpp.server` serving `model_path` under the
    name `alias`, registered into `fleet` (a `fleet.Fleet`) through `adapter(url)` (the deployment's engine
    adapter for that URL)."""

    def __init__(self, name: str, fleet: Any, adapter: Callable[[str], Provider], model_path: Path, alias: str,
                 settings: LaunchSettings = LaunchSettings(), *, python: str = sys.executable,
                 clock: Callable[[], float] = time.monotonic, memory: Any = None, size_mb: float | None = None):
        """`memory`: the host's `MemoryBudget` (None: no budget); `size_mb`: what one replica's model takes."""
        self.name, self.fleet, self._adapter = name, fleet, adapter
        self.memory, self.size_mb = memory, size_mb
        self.model_path, self.alias, self.settings = Path(model_path), alias, settings
        self._python, self._clock = python, clock
        self._replicas: list[Replica] = []
        self._launching: set[asyncio.Task] = set()
        self._draining: set[asyncio.Task] = set()
        self.launch_failures = 0
        self.last_error: str | None = None
        self._closed = False
        self.check_model()

    # -- reading -------------------------------------------------------------------------------------
    @property
    def current(self) -> int:
        """Replicas starting or serving (those being drained are on their way out)."""
        return sum(r.state == "serving" for r in self._replicas) + self.starting

    @property
    def starting(self) -> int:
        """Replicas starting, counting the launches `scale_to` began whose process is not spawned yet (spawning
        a process can take longer than an autoscaler tick: uncounted, it read as a replica that died)."""
        return max(sum(r.state == "starting" for r in self._replicas), len(self._launching))

    def replicas(self) -> list[dict[str, Any]]:
        now = self._clock()
        return [{"pid": r.pid, "port": r.port, "url": r.url, "state": r.state, "age_s": round(now - r.started_at, 1),
                 "reserved_mb": None if r.reservation is None else round(r.reservation.size_mb, 1)}
                for r in self._replicas]

    def room(self) -> int | None:
        """How many more replicas the memory budget admits now (None: no budget, or no size known)."""
        if self.memory is None or not self.size_mb:
            return None
        return self.memory.room(self.size_mb)

    def _reserve(self) -> Any:
        if self.memory is None or not self.size_mb:
            return None
        return self.memory.reserve(self.name, f"a launched replica ({self.model_path.name})", self.size_mb)

    def check_model(self) -> None:
        missing = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
        if missing:
            raise LaunchError(f"deployment {self.name!r}: launching replicas runs python -m llama_cpp.server, which "
                              f"needs {', '.join(missing)}: pip install 'nlweb-local[replicas]'", deployment=self.name)
        if not self.model_path.is_file():
            raise LaunchError(f"deployment {self.name!r}: the model file {self.model_path} does not exist; set model "
                              "to a GGUF file (or leave it empty for the packaged SmolLM2)", deployment=self.name)

    def command(self, port: int) -> list[str]:
        s = self.settings
        return [self._python, "-m", "llama_cpp.server", "--model", str(self.model_path), "--model_alias", self.alias,
                "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(s.n_ctx), "--verbose", "False",
                *(["--n_threads", str(s.n_threads)] if s.n_threads else []), *s.args]

    # -- launching -----------------------------------------------------------------------------------
    async def launch(self) -> Replica:
        """Start one replica and wait until it answers; then it is an instance of the fleet. Its model's
        memory is reserved first (`InsufficientMemoryError` when the budget cannot hold it)."""
        self.check_model()
        try:
            reservation = self._reserve()
        except NlwebError as e:
            self.last_error = e.message
            raise
        try:
            replica = await self._start()
        except BaseException:
            if reservation is not None:
                self.memory.free(reservation)
            raise
        replica.reservation = reservation
        return replica

    async def _start(self) -> Replica:
        for attempt in range(PORT_TRIES):
            replica = await self._spawn(free_port())
            try:
                await self._until_ready(replica)
            except LaunchError as e:
                await self._terminate(replica)
                self._replicas.remove(replica)
                if "address already in use" in replica.tail(40).lower() and attempt + 1 < PORT_TRIES:
                    continue  # the port was taken between picking and binding
                self.launch_failures += 1
                self.last_error = e.message
                raise
            except BaseException:
                await self._terminate(replica)
                self._replicas.remove(replica)
                raise
            if self._closed:
                await self._terminate(replica)
                self._replicas.remove(replica)
                raise LaunchError(f"deployment {self.name!r}: closed while a replica started", deployment=self.name)
            self.fleet.add(replica.url, replica.provider)
            replica.state = "serving"
            log.info("fleet %s: replica pid %d serving at %s", self.name, replica.pid, replica.url)
            return replica
        raise AssertionError("unreachable")

    async def _spawn(self, port: int) -> Replica:
        env = {k: v for k, v in os.environ.items() if k not in CHILD_ENV_DROP}
        proc = await asyncio.create_subprocess_exec(
            *self.command(port), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True,
            preexec_fn=_die_with_parent if _PRCTL is not None else None)
        r = Replica(port, f"http://127.0.0.1:{port}/v1", proc, collections.deque(maxlen=OUTPUT_LINES), self._clock())
        r.reader = asyncio.get_running_loop().create_task(self._drain_output(r))
        self._replicas.append(r)
        return r

    @staticmethod
    async def _drain_output(r: Replica) -> None:
        """Read the engine's output as it comes (a full pipe would block it), keeping its last lines."""
        assert r.process.stdout is not None
        while line := await r.process.stdout.readline():
            r.output.append(line.decode(errors="replace").rstrip()[:500])

    async def _until_ready(self, r: Replica) -> None:
        r.provider = self._adapter(r.url)
        deadline = self._clock() + self.settings.start_timeout_s
        while True:
            if r.process.returncode is not None:
                with contextlib.suppress(asyncio.TimeoutError):  # the rest of what it printed
                    await asyncio.wait_for(asyncio.shield(r.reader), 1.0)
                raise LaunchError(f"deployment {self.name!r}: llama_cpp.server exited (code {r.process.returncode}) "
                                  f"while loading {self.model_path}: {r.tail()}", deployment=self.name)
            snap = await r.provider.health()
            if snap.healthy and await self._serves_alias(r):
                if self.settings.warm_up:
                    await self._warm_up(r, deadline)
                return
            if self._clock() > deadline:
                raise LaunchError(f"deployment {self.name!r}: llama_cpp.server with {self.model_path} did not answer "
                                  f"within {self.settings.start_timeout_s:g}s (launch.start_timeout_s): {r.tail()}",
                                  deployment=self.name)
            await asyncio.sleep(POLL_S)

    async def _warm_up(self, r: Replica, deadline: float) -> None:
        """One one-token call: the engine's first call pages its model in and sets up its buffers."""
        left = max(1.0, deadline - self._clock())
        try:
            await r.provider.complete(ChatRequest([Message("user", "Hi")], max_tokens=1, deadline_s=left))
        except NlwebError as e:
            raise LaunchError(f"deployment {self.name!r}: llama_cpp.server with {self.model_path} answered, but its "
                              f"first call failed ({e.message}): {r.tail()}", deployment=self.name) from e

    async def _serves_alias(self, r: Replica) -> bool:
        """The server that answers on the port is this replica (its model under our alias), not another process
        that took the port between our picking it and the replica binding it."""
        import aiohttp

        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
                async with s.get(f"{r.url}/models") as resp:
                    body = await resp.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return False
        data = body.get("data") if isinstance(body, dict) else None
        ids = [m.get("id") for m in data or () if isinstance(m, dict)]
        return r.process.returncode is None and self.alias in ids

    # -- stopping ------------------------------------------------------------------------------------
    async def stop(self, r: Replica) -> None:
        """Drain, then terminate: the replica takes no new call, finishes its calls in flight (for up to
        `drain_timeout_s`), then exits (SIGTERM; SIGKILL after `stop_timeout_s`)."""
        if r.state in ("draining", "stopping"):
            return
        inst = None
        if r.state == "serving":
            r.state = "draining"
            inst = self.fleet.detach(r.url)
            deadline = self._clock() + self.settings.drain_timeout_s
            while inst.in_flight > 0 and self._clock() < deadline:
                await asyncio.sleep(POLL_S)
            if inst.in_flight:
                log.warning("fleet %s: replica pid %d still had %d calls after %gs of draining; stopping it",
                            self.name, r.pid, inst.in_flight, self.settings.drain_timeout_s)
        await self._terminate(r)
        with contextlib.suppress(ValueError):
            self._replicas.remove(r)
        log.info("fleet %s: replica pid %d at %s stopped", self.name, r.pid, r.url)

    async def _terminate(self, r: Replica) -> None:
        r.state = "stopping"
        proc = r.process
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), self.settings.stop_timeout_s)
            except asyncio.TimeoutError:
                log.warning("fleet %s: replica pid %d ignored SIGTERM for %gs; killing it", self.name, r.pid,
                            self.settings.stop_timeout_s)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if r.reader is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(r.reader, 1.0)
        if r.provider is not None:
            await r.provider.close()
        if r.reservation is not None and proc.returncode is not None:  # exited: its memory is back
            self.memory.free(r.reservation)
            r.reservation = None

    def reap(self) -> int:
        """Drop the serving replicas whose process has exited (crashed, killed): out of the fleet, adapters
        closed in the background. Returns how many."""
        dead = [r for r in self._replicas if r.state == "serving" and r.process.returncode is not None]
        for r in dead:
            log.warning("fleet %s: replica pid %d at %s exited (code %s): %s", self.name, r.pid, r.url,
                        r.process.returncode, r.tail(5))
            self.fleet.detach(r.url)
            self._replicas.remove(r)
            self._background(self._terminate(r), self._draining)
        return len(dead)

    # -- scaling -------------------------------------------------------------------------------------
    def scale_to(self, n: int) -> None:
        """Start or drain replicas in the background until `current` is `n`: new ones are launched; surplus
        ones are drained, those with the fewest calls in flight (then the newest) first."""
        delta = n - self.current
        for _ in range(max(0, delta)):
            self._background(self._launch_logged(), self._launching)
        if delta < 0:
            serving = [r for r in self._replicas if r.state == "serving"]
            in_flight = {r.url: s.in_flight for r in serving for s in self.fleet.status() if s.url == r.url}
            serving.sort(key=lambda r: (in_flight.get(r.url, 0), -r.started_at))
            for r in serving[:-delta]:
                self._background(self.stop(r), self._draining)

    async def _launch_logged(self) -> None:
        try:
            await self.launch()
        except (LaunchError, InsufficientMemoryError) as e:
            log.error("fleet %s: %s", self.name, e.message)

    @staticmethod
    def _background(coro: Any, tasks: set[asyncio.Task]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def settled(self) -> None:
        """Wait until every launch and drain started by `scale_to` is done."""
        while self._launching or self._draining:
            await asyncio.gather(*self._launching, *self._draining, return_exceptions=True)

    async def close(self) -> None:
        """Stop every replica (drained, as at any stop); launches under way are abandoned."""
        self._closed = True
        for task in list(self._launching):
            task.cancel()
        await self.settled()
        await asyncio.gather(*(self.stop(r) for r in list(self._replicas)), return_exceptions=True)
