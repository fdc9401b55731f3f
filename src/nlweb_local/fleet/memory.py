"""`MemoryBudget`: which in-process models are loaded, within the host's memory budget (`llm.memory`), and
`BudgetedModel`, the wrapper that puts a deployment's calls under it.

    call ─► BudgetedModel ─► budget.use(deployment) ─► loaded? serve : evict LRU idle models, load, serve

- A model is loaded on its first call. When it would not fit, the least recently used *idle* models (no call
  in progress) of the same memory pool (RAM, or GPU) are unloaded first; a call waits (within its deadline,
  else `llm.memory.wait_s`) while busy models hold the memory, then gets 503 + Retry-After.
- A model larger than the whole budget is never loaded: `InsufficientMemoryError` (507) names the budget
  and the model's size. No call can make the process take more than the budget for models.
- An idle model is unloaded `keep_alive` after its last call (as Ollama: "5m", seconds, -1 never, 0 at once).
- A model's size is its deployment's `memory_mb`, else the engine's estimate (`model_size.py`: GGUF file
  size × `gguf_factor` + KV cache). The RSS growth measured around each load is kept beside it
  (`/admin/memory`), and a load that grew RSS well past its estimate is logged, so the figure can be set.
- Loads and evictions are counted per deployment (`snapshot()`; telemetry exports them as
  nlweb_model_loads_total / nlweb_model_evictions_total and the budgeted memory in use as a gauge).
- Pools: "ram" (in-process models on the CPU), "gpu" (in-process models on this host's GPU: `gpu_budget_mb`,
  else `gpu_share` of what NVML reports; without NVML no GPU budget, and `/admin/memory` says so), and
  "host:NAME" for remote engines that can free their accelerator (vLLM's sleep mode, `SleepWake`):
  `remote_budgets_mb` gives each remote host's budget; loading is waking up, unloading is putting to sleep.
  A remote engine may be awake before nlweb-local starts: the budget asks (`is_sleeping`) once, counts the
  awake ones as loaded, and a sweep puts idle models to sleep while a pool is over its budget. Ollama
  (`OllamaResidency`) is driven in the same pool by its own controls: loading is an empty request with
  its keep_alive, unloading one with `keep_alive: 0`, and "awake" is being listed by `/api/ps`, whose
  `size` / `size_vram` are kept as the measured size (`resident_mb`) instead of this process's RSS growth.

Launched engine processes (`launcher.py`: replicas of a deployment) hold their model outside this process:
each launch `reserve()`s the model's size against the same budget before the process starts (refused with
`InsufficientMemoryError` when it would not fit beside what is held) and frees it once the process has
exited; in-process models count the reservations as held memory (they are never evicted for a load).

Memory is reserved before a load starts and freed after an unload ends, so what is counted never falls
below what is held. Loads and unloads run outside the lock: calls to loaded models go on meanwhile.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Literal, TypeVar

from ..core.errors import BadRequestError, InsufficientMemoryError, QueueFullError
from ..core.types import ChatChunk, ChatRequest
from ..providers.base import LoadSnapshot, ModelLifecycle, Provider
from ..providers.wrapper import CallKind, WrapperProvider, close_after_error

log = logging.getLogger(__name__)
T = TypeVar("T")
Pool = str  # "ram", "gpu", or "host:NAME" (a remote host's accelerator)
State = Literal["unloaded", "loading", "loaded", "unloading"]
POLL_S = 0.5  # a waiting call looks again at least this often (a release by a cancelled call notifies nobody)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_seconds(value: str | float | int | None) -> float | None:
    """Ollama's keep_alive as seconds: "5m", "1h30m", "90s", 300 → seconds; negative → None (never unload)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return None if value < 0 else float(value)
    text = str(value).strip()
    try:
        n = float(text)
        return None if n < 0 else n
    except ValueError:
        pass
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    if not parts or "".join(a + u for a, u in parts) != text.lstrip("-"):
        raise BadRequestError(f"keep_alive {value!r} is not a duration (e.g. \"5m\", \"1h\", \"30s\", 300, -1)")
    if text.startswith("-"):
        return None
    return sum(float(a) * _UNITS[u] for a, u in parts)


def process_rss_mb() -> float:
    """This process's resident memory in MiB (/proc/self/status; psutil elsewhere; 0 when neither)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except Exception:  # noqa: BLE001 - no way to measure: nothing measured
        return 0.0


def nvml_gpu_memory() -> dict[str, Any]:
    """GPU 0's memory as NVML reports it (`pynvml`, from the optional nvidia-ml-py): {"nvml": True, "total_mb",
    "used_mb"}, else {"nvml": False, "why": ...} (no package, no driver, no GPU)."""
    try:
        import pynvml
    except ImportError:
        return {"nvml": False, "why": "pynvml is not installed (pip install nvidia-ml-py)"}
    try:
        pynvml.nvmlInit()
        info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0))
        return {"nvml": True, "total_mb": round(info.total / 2**20, 1), "used_mb": round(info.used / 2**20, 1)}
    except Exception as e:  # noqa: BLE001 - no driver or GPU
        return {"nvml": False, "why": f"NVML reports no GPU ({type(e).__name__}: {e})"[:200]}


def _setting_of(pool: Pool) -> str:
    """The setting that gives `pool`'s budget."""
    if pool.startswith("host:"):
        return f"llm.memory.remote_budgets_mb[{pool[5:]!r}]"
    return "llm.memory.budget_mb" if pool == "ram" else "llm.memory.gpu_budget_mb"


@dataclass
class ResidentModel:
    """One model the budget manages, and its state."""

    deployment: str
    lifecycle: ModelLifecycle
    size_mb: float
    keep_alive_s: float | None  # None: never unloaded for idleness
    pool: Pool = "ram"
    state: State = "unloaded"
    in_use: int = 0
    last_used: float = 0.0
    loads: int = 0
    evictions: dict[str, int] = field(default_factory=dict)  # reason (budget | keep_alive) → count
    measured_mb: float | None = None  # RSS growth around its last load (a remote engine: what it reports)
    measured_vram_mb: float | None = None  # of which on the GPU (engines that say so: Ollama's size_vram)

    def view(self, now: float) -> dict[str, Any]:
        return {"deployment": self.deployment, "pool": self.pool, "state": self.state, "size_mb": round(self.size_mb, 1),
                "measured_mb": None if self.measured_mb is None else round(self.measured_mb, 1),
                **({} if self.measured_vram_mb is None else {"measured_vram_mb": round(self.measured_vram_mb, 1)}),
                "in_use": self.in_use, "idle_s": round(now - self.last_used, 1) if self.state == "loaded" and not self.in_use else None,
                "keep_alive_s": self.keep_alive_s, "loads": self.loads, "evictions": dict(self.evictions)}


@dataclass(eq=False)
class Reservation:
    """Memory held outside this process against the budget (a launched replica's model), until `free`d."""

    deployment: str
    owner: str  # what holds it, for /admin/memory (e.g. "replica on port 8123")
    size_mb: float
    pool: Pool = "ram"

    def view(self) -> dict[str, Any]:
        return {"deployment": self.deployment, "owner": self.owner, "pool": self.pool, "size_mb": round(self.size_mb, 1)}


class MemoryBudget:
    """The memory budget of one host: `budget_mb` of RAM, `gpu_budget_mb` of GPU memory (None: no budget)."""

    def __init__(self, settings: Any, *, clock: Callable[[], float] = time.monotonic,
                 rss_mb: Callable[[], float] = process_rss_mb, gpu: Callable[[], dict[str, Any]] = nvml_gpu_memory):
        self.settings = settings
        self.budget_mb: dict[Pool, float | None] = {"ram": settings.budget_mb, "gpu": settings.gpu_budget_mb}
        self._gpu = gpu
        gpu_now = gpu()
        self.gpu_budget_source = "llm.memory.gpu_budget_mb" if settings.gpu_budget_mb is not None else None
        if self.budget_mb["gpu"] is None and gpu_now["nvml"]:
            self.budget_mb["gpu"] = gpu_now["total_mb"] * settings.gpu_share
            self.gpu_budget_source = f"NVML: {settings.gpu_share:g} of GPU 0's {gpu_now['total_mb']:.0f} MiB"
        for host, mb in (getattr(settings, "remote_budgets_mb", None) or {}).items():
            self.budget_mb[f"host:{host}"] = float(mb)
        self.default_keep_alive_s = keep_alive_seconds(settings.keep_alive)
        self._clock, self._rss = clock, rss_mb
        self._models: dict[str, ResidentModel] = {}
        self._reserved: list[Reservation] = []  # (one per launched replica: bounded by their max_replicas)
        self._cond = asyncio.Condition()
        self._reaper: asyncio.Task | None = None
        self._synced: asyncio.Task | None = None  # the first look at remote engines (awake or asleep)

    # -- registration ----------------------------------------------------------------------------
    def register(self, deployment: str, lifecycle: ModelLifecycle, size_mb: float, *,
                 keep_alive: str | float | None = None, pool: Pool = "ram") -> ResidentModel:
        """`pool` "host:NAME" without a budget in `remote_budgets_mb`: only keep_alive applies to it."""
        budget = self.budget_mb.setdefault(pool, None)
        ka = self.default_keep_alive_s if keep_alive is None else keep_alive_seconds(keep_alive)
        m = self._models[deployment] = ResidentModel(deployment, lifecycle, size_mb, ka, pool)
        if budget is not None and size_mb > budget:
            log.warning("deployment %s: its model (%.0f MiB) is larger than the %s budget (%.0f MiB); its calls "
                        "will be refused", deployment, size_mb, pool, budget)
        return m

    def model(self, deployment: str) -> ResidentModel:
        return self._models[deployment]

    def used_mb(self, pool: Pool = "ram") -> float:
        """Memory counted against the budget: models loaded, loading (reserved) or still unloading, and what
        launched processes hold (`reserve`)."""
        return (sum(m.size_mb for m in self._models.values() if m.pool == pool and m.state != "unloaded")
                + sum(r.size_mb for r in self._reserved if r.pool == pool))

    # -- memory held by other processes (launched replicas) ---------------------------------------
    def room(self, size_mb: float, pool: Pool = "ram") -> int | None:
        """How many more holders of `size_mb` fit beside what is held now (None: no budget)."""
        budget = self.budget_mb[pool]
        if budget is None:
            return None
        return max(0, int((budget - self.used_mb(pool)) // size_mb)) if size_mb > 0 else None

    def reserve(self, deployment: str, owner: str, size_mb: float, pool: Pool = "ram") -> Reservation:
        """Hold `size_mb` against the budget for `owner` (a process about to load a model), or refuse with
        `InsufficientMemoryError` (507) naming the budget, when it would not fit beside what is held now."""
        budget, used = self.budget_mb[pool], self.used_mb(pool)
        if budget is not None and used + size_mb > budget:
            setting = "budget_mb" if pool == "ram" else "gpu_budget_mb"
            held = ", ".join(f"{o['deployment']} {o['size_mb']:.0f} MiB" for o in self._holders(pool)) or "nothing"
            raise InsufficientMemoryError(
                f"deployment {deployment!r}: {owner} needs {size_mb:.0f} MiB, but the memory budget "
                f"(llm.memory.{setting} = {budget:.0f} MiB) has {max(0.0, budget - used):.0f} MiB free (held: {held}); "
                "raise the budget, lower max_replicas, or serve a smaller model or context (launch.n_ctx)",
                retry_after=60.0, deployment=deployment)
        r = Reservation(deployment, owner, size_mb, pool)
        self._reserved.append(r)
        log.info("memory: %.0f MiB reserved for %s of %s (%.0f MiB in use)", size_mb, owner, deployment, self.used_mb(pool))
        return r

    def free(self, r: Reservation) -> None:
        """Give back a reservation (its process has exited); freeing twice does nothing."""
        if r in self._reserved:
            self._reserved.remove(r)

    def _holders(self, pool: Pool) -> list[dict[str, Any]]:
        models = [{"deployment": m.deployment, "size_mb": m.size_mb} for m in self._models.values()
                  if m.pool == pool and m.state != "unloaded"]
        return models + [r.view() for r in self._reserved if r.pool == pool]

    # -- calls -----------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def use(self, deployment: str, deadline_s: float | None = None) -> AsyncIterator[ResidentModel]:
        """Hold `deployment`'s model loaded for the duration (loading it, and evicting others, first)."""
        m = await self.acquire(deployment, deadline_s)
        try:
            yield m
        finally:
            await self.release(m)

    async def acquire(self, deployment: str, deadline_s: float | None = None) -> ResidentModel:
        self._start_reaper()
        if self._synced is not None:
            await asyncio.shield(self._synced)
        m = self._models[deployment]
        budget = self.budget_mb[m.pool]
        if budget is not None and m.size_mb > budget:
            raise InsufficientMemoryError(
                f"model of deployment {deployment!r} needs {m.size_mb:.0f} MiB, more than the whole memory budget "
                f"({_setting_of(m.pool)} = {budget:.0f} MiB); raise the "
                "budget, or serve a smaller model or context (n_ctx)", retry_after=3600.0, deployment=deployment)
        end = time.monotonic() + (deadline_s or self.settings.wait_s)  # (real time: `clock` is for idleness)
        async with self._cond:
            while True:
                if m.state == "loaded":
                    m.in_use += 1
                    m.last_used = self._clock()
                    return m
                if m.state == "unloaded":
                    victims = self._victims(m, budget)
                    if victims is not None:
                        break
                await self._wait(end, m, budget)
            for v in victims:
                v.state = "unloading"
            m.state = "loading"
        # evicting and loading run to the end in a task of their own even if this call is cancelled, so the
        # states always say what is in memory; the call that started them holds the model (in_use) once loaded
        task = asyncio.ensure_future(self._make_room_and_load(victims, m))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(lambda t: None if t.cancelled() or t.exception() else self._drop(m))
            raise
        return m

    def _drop(self, m: ResidentModel) -> None:
        """Give back a hold whose caller went away (on the event loop; waiters re-check within a poll)."""
        m.in_use -= 1
        m.last_used = self._clock()

    def _victims(self, m: ResidentModel, budget: float | None) -> list[ResidentModel] | None:
        """The idle models to unload (least recently used first) so that `m` fits; None: it cannot fit now."""
        if budget is None:
            return []
        free = budget - self.used_mb(m.pool)
        chosen: list[ResidentModel] = []
        idle = sorted((o for o in self._models.values() if o.pool == m.pool and o.state == "loaded" and not o.in_use),
                      key=lambda o: o.last_used)
        for o in idle:
            if free >= m.size_mb:
                break
            chosen.append(o)
            free += o.size_mb
        return chosen if free >= m.size_mb else None

    async def _wait(self, end: float, m: ResidentModel, budget: float | None) -> None:
        """Wait for a change (a release, a load, an unload), at most `POLL_S` before looking again."""
        left = end - time.monotonic()
        if left > 0:
            try:
                await asyncio.wait_for(self._cond.wait(), min(left, POLL_S))
            except TimeoutError:
                pass
            return
        busy = ", ".join(f"{o.deployment} ({o.size_mb:.0f} MiB, {o.in_use} calls)" for o in self._models.values()
                         if o.pool == m.pool and o.state != "unloaded" and o is not m)
        raise QueueFullError(f"model of deployment {m.deployment!r} ({m.size_mb:.0f} MiB) is waiting for memory: the "
                             f"budget of {budget or 0:.0f} MiB is held by models in use ({busy or 'loading'})",
                             retry_after=max(1.0, self.settings.wait_s / 2), deployment=m.deployment)

    async def _make_room_and_load(self, victims: list[ResidentModel], m: ResidentModel) -> None:
        if not await self._evict(victims, "budget"):
            async with self._cond:
                m.state = "unloaded"
                self._cond.notify_all()
            raise QueueFullError(f"model of deployment {m.deployment!r} cannot be loaded: unloading "
                                 f"{', '.join(v.deployment for v in victims)} to make room failed (see the log)",
                                 retry_after=5.0, deployment=m.deployment)
        await self._load(m)

    async def _load(self, m: ResidentModel) -> None:
        reported = getattr(m.lifecycle, "resident_mb", None)  # a remote engine that says what its model takes
        before = self._rss()
        try:
            await m.lifecycle.load()
        except BaseException:
            async with self._cond:
                m.state = "unloaded"
                self._cond.notify_all()
            raise
        grown, vram = (self._rss() - before, None) if reported is None else await self._reported(m, reported)
        async with self._cond:
            m.state, m.loads, m.last_used = "loaded", m.loads + 1, self._clock()
            m.in_use += 1  # the call that loaded it
            m.measured_mb = grown if grown > 0 else None
            m.measured_vram_mb = vram
            self._cond.notify_all()
        how = "RSS +" if reported is None else "the engine reports "
        log.info("memory: loaded %s (%.0f MiB budgeted, %s%.0f MiB; %.0f MiB in use)", m.deployment, m.size_mb,
                 how, grown, self.used_mb(m.pool))
        if grown > 1.25 * m.size_mb + 16:
            log.warning("memory: loading %s took %.0f MiB (%s), more than its %.0f MiB estimate; set its memory_mb",
                        m.deployment, grown, how.strip(" +"), m.size_mb)

    @staticmethod
    async def _reported(m: ResidentModel, reported: Callable[[], Awaitable[tuple[float, float] | None]]
                        ) -> tuple[float, float | None]:
        """(MiB, of which on the GPU) as the engine reports its loaded model; (0, None) when it cannot say."""
        try:
            got = await reported()
        except Exception as e:  # noqa: BLE001 - only a figure for /admin/memory: the load itself succeeded
            log.warning("memory: cannot read what %s takes (%r)", m.deployment, e)
            return 0.0, None
        return got if got is not None else (0.0, None)

    async def _evict(self, victims: list[ResidentModel], reason: str) -> bool:
        """Unload `victims` (marked "unloading"); False when one of them could not be (it stays counted)."""
        ok = True
        for v in victims:
            try:
                await v.lifecycle.unload()
            except Exception as e:  # noqa: BLE001 - it stays counted as loaded: the budget never undercounts
                log.error("memory: unloading %s failed (%r); it stays counted", v.deployment, e)
                async with self._cond:
                    v.state = "loaded"
                    self._cond.notify_all()
                ok = False
                continue
            async with self._cond:
                v.state = "unloaded"
                v.evictions[reason] = v.evictions.get(reason, 0) + 1
                self._cond.notify_all()
            log.info("memory: unloaded %s (%s)", v.deployment, reason)
        return ok

    async def release(self, m: ResidentModel) -> None:
        self._drop(m)  # at once, even if this task is cancelled while it waits for the lock below
        async with self._cond:
            self._cond.notify_all()
        if m.keep_alive_s == 0:
            await self.sweep()

    # -- keep-alive ------------------------------------------------------------------------------
    async def sweep(self) -> None:
        """Unload the idle models whose keep_alive has run out, then, in a pool over its budget (remote
        engines found awake), idle models least recently used first until it fits."""
        now = self._clock()
        async with self._cond:
            expired = [m for m in self._models.values() if m.state == "loaded" and not m.in_use
                       and m.keep_alive_s is not None and now - m.last_used >= m.keep_alive_s]
            for m in expired:
                m.state = "unloading"
        await asyncio.shield(self._evict(expired, "keep_alive"))  # (states stay true if the sweep is cancelled)
        await self._fit()

    async def _fit(self) -> None:
        """In each pool over its budget, unload idle models (least recently used first) until it fits."""
        async with self._cond:
            over: list[ResidentModel] = []
            for pool, budget in self.budget_mb.items():
                excess = self.used_mb(pool) - budget if budget is not None else 0.0
                for m in sorted((m for m in self._models.values() if m.pool == pool and m.state == "loaded"
                                 and not m.in_use), key=lambda m: m.last_used):
                    if excess <= 0:
                        break
                    m.state = "unloading"
                    over.append(m)
                    excess -= m.size_mb
        await asyncio.shield(self._evict(over, "budget"))

    async def sync(self) -> None:
        """Ask the engines that can sleep whether they are awake (a remote engine starts awake, and may have
        been woken by someone else): an awake one is counted as loaded, idle since now."""
        async def ask(m: ResidentModel) -> tuple[ResidentModel, bool | None]:
            try:
                return m, not await m.lifecycle.is_sleeping()
            except Exception as e:  # noqa: BLE001 - unknown: it stays as it is counted
                log.warning("memory: cannot tell whether %s is awake (%r)", m.deployment, e)
                return m, None

        remote = [m for m in self._models.values() if m.pool.startswith("host:")]
        answers = await asyncio.gather(*(ask(m) for m in remote))
        async with self._cond:
            for m, awake in answers:
                if awake and m.state == "unloaded":
                    m.state, m.last_used = "loaded", self._clock()
                    log.info("memory: %s is awake (counted: %.0f MiB of %s)", m.deployment, m.size_mb, m.pool)
            self._cond.notify_all()
        await self._fit()

    def _start_reaper(self) -> None:
        if self._synced is None and any(m.pool.startswith("host:") for m in self._models.values()):
            self._synced = asyncio.get_running_loop().create_task(self.sync())
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            try:
                await self.sweep()
            except Exception:  # noqa: BLE001 - the next sweep tries again
                log.exception("memory: keep-alive sweep failed")

    # -- views -----------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """For /admin/memory and the metrics: the budgets, what is in use, and every model."""
        now = self._clock()
        gpu = self._gpu()
        gpu["budget"] = self.gpu_budget_source or ("none: " + ("set llm.memory.gpu_budget_mb" if gpu["nvml"] else
                                                              "RAM only (no NVML to read the GPU's memory from)"))
        return {"budget_mb": {p: (None if b is None else round(b, 1)) for p, b in self.budget_mb.items()},
                "used_mb": {p: round(self.used_mb(p), 1) for p in self.budget_mb},
                "process_rss_mb": round(self._rss(), 1), "gpu": gpu,
                "models": [m.view(now) for m in self._models.values()],
                "reserved": [r.view() for r in self._reserved]}

    async def close(self) -> None:
        for task in (self._reaper, self._synced):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


class BudgetedModel(WrapperProvider):
    """A deployment's calls under the memory budget: each holds its model loaded until it ends."""

    def __init__(self, inner: Provider, budget: MemoryBudget):
        super().__init__(inner)
        self.budget = budget

    async def around_call(self, kind: CallKind, subject: Any, run: Callable[[], Awaitable[T]]) -> T:
        deadline = subject.deadline_s if isinstance(subject, ChatRequest) else None
        async with self.budget.use(self.name, deadline):
            return await run()

    def around_stream(self, request: ChatRequest, chunks: AsyncIterator[ChatChunk]) -> AsyncIterator[ChatChunk]:
        return self._held(request, chunks)

    async def _held(self, request: ChatRequest, chunks: AsyncIterator[ChatChunk]) -> AsyncIterator[ChatChunk]:
        error: BaseException | None = None
        try:
            async with self.budget.use(self.name, request.deadline_s):
                async for ch in chunks:
                    yield ch
        except BaseException as e:
            error = e
            raise
        finally:
            await close_after_error(chunks, error)

    async def health(self) -> LoadSnapshot:
        if self.budget.model(self.name).state == "unloaded":
            return LoadSnapshot(healthy=True, detail=f"{self.model} (not loaded: loads on its next call)", models=())
        return await self.inner.health()


class SleepWake:
    """A remote engine's sleep mode as the lifecycle the budget drives: loading is waking it up, unloading is
    putting it to sleep (vLLM in dev mode: POST /wake_up, POST /sleep?level=1, GET /is_sleeping). Level 1
    only: it keeps the weights in the engine's CPU memory, so /wake_up alone restores them (after level 2
    vLLM needs its weights reloaded, which /wake_up does not do)."""

    def __init__(self, engine: ModelLifecycle, *, deployment: str, level: int = 1):
        if level != 1:
            raise BadRequestError(f"deployment {deployment!r}: options.sleep_level {level} is not supported; the memory "
                                  "budget puts vLLM to sleep at level 1 (weights kept in CPU memory)", deployment=deployment)
        self.engine, self.level = engine, level

    async def load(self, model: str | None = None) -> None:
        if await self.engine.is_sleeping():
            await self.engine.wake()

    async def unload(self, model: str | None = None) -> None:
        await self.engine.sleep(self.level)

    async def sleep(self, level: int = 1) -> None:
        await self.engine.sleep(level)

    async def wake(self) -> None:
        await self.engine.wake()

    async def is_sleeping(self) -> bool:
        return await self.engine.is_sleeping()


class OllamaResidency:
    """Ollama's own controls as the lifecycle the budget drives (`ollama` deployments on a host of
    `remote_budgets_mb`): loading is an empty `/api/generate` with the deployment's keep_alive, unloading an
    empty one with `keep_alive: 0`, and a model "sleeps" while `/api/ps` does not list it. Ollama may unload
    a model by itself (its keep_alive): then the budget counts memory no longer held, never the reverse."""

    def __init__(self, engine: Any, *, deployment: str):
        self.engine, self.deployment = engine, deployment  # an OllamaProvider (load, unload, resident)

    async def load(self, model: str | None = None) -> None:
        await self.engine.load()

    async def unload(self, model: str | None = None) -> None:
        await self.engine.unload()

    async def is_sleeping(self) -> bool:
        return await self.engine.resident() is None

    async def resident_mb(self) -> tuple[float, float] | None:
        """(size, size_vram) in MiB as `/api/ps` lists the model; None when it is not loaded."""
        got = await self.engine.resident()
        return None if got is None else (got.size / 2**20, got.size_vram / 2**20)

    async def sleep(self, level: int = 1) -> None:
        raise BadRequestError(f"deployment {self.deployment!r} (ollama) cannot sleep; it is unloaded instead",
                              deployment=self.deployment)

    async def wake(self) -> None:
        raise BadRequestError(f"deployment {self.deployment!r} (ollama) cannot wake; it is loaded instead",
                              deployment=self.deployment)
