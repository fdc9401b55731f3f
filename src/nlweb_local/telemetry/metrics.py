"""Prometheus metrics of the gateway, on a registry passed in (never the process-global default one).

Label values are bounded by construction: deployment names come from configuration, task kinds from
`TaskKind`, error classes from the error tree; `BoundedLabel` folds anything past a fixed number of
distinct values into "other", so no caller can grow the series set (no user text, ids or URLs).

Per-call series (added to by `MeteredProvider` as plain numbers, turned into families at scrape time):

    nlweb_llm_requests_total{deployment,task,route}          calls started (route: local|cloud)
    nlweb_llm_errors_total{deployment,task,error}            calls failed, by error class
    nlweb_llm_time_to_first_token_seconds{deployment,task}   histogram
    nlweb_llm_request_duration_seconds{deployment,task}      histogram, whole call
    nlweb_llm_tokens_total{deployment,task,direction}        direction: in|out
    nlweb_prompt_tokens_total{deployment,kind}               prompt tokens of calls whose engine says how many it
                                                             took from its KV/prompt cache; kind: reused|computed
    nlweb_llm_output_tokens_per_second{deployment,task}      histogram, generation speed per call
    nlweb_llm_in_flight{deployment}                          gauge
    nlweb_llm_cost_usd_total{deployment,route}               what the calls cost
    nlweb_llm_reference_cost_usd_total{deployment,route}     what the reference cloud model would have charged
                                                             (savings = reference - cost)

Caches (`core.cache.BoundedCache`, reporting through `cache_lookups(name)`):

    nlweb_cache_requests_total{cache,result}                 lookups; result: hit|miss
    nlweb_cache_errors_total{cache,error}                    a shared backend's failures (cache.redis.RedisCache):
                                                             unavailable|rejected|corrupt|encode
    nlweb_cache_corrupt_entries_total{cache}                 stored values dropped because they did not read back
    nlweb_cache_saved_usd_total{cache}                       what the calls that hits replaced had cost

Pulled at scrape time from the router (`RouterCollector`): breaker state, queue depth, running calls,
health per deployment, and the engine's own prefix-cache counters where it reports them
(nlweb_engine_prefix_cache_tokens{deployment,kind=queried|hit}, from `LoadSnapshot.prompt_cache`). The ledger adds its queue depth and dropped rows.

Pulled at scrape time from the model memory budget (`MemoryCollector`, when `llm.memory` has one):

    nlweb_model_loads_total{deployment}                      models loaded into memory
    nlweb_model_evictions_total{deployment,reason}           models unloaded (or put to sleep); reason: budget|keep_alive
    nlweb_model_memory_budgeted_bytes{pool}                  memory counted against the budget (ram|gpu|host:NAME)
    nlweb_model_memory_budget_bytes{pool}                    the budget
    nlweb_model_loaded{deployment}                           1 while its model is loaded (or loading)
"""
from __future__ import annotations

import threading
from bisect import bisect_left
from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
SPEED_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)
BREAKER_VALUES = {"closed": 0, "restoring": 1, "half_open": 2, "open": 3}


class BoundedLabel:
    """Maps raw values to at most `limit` distinct label values; the rest become `other`."""

    def __init__(self, limit: int, other: str = "other"):
        self._limit = limit
        self._other = other
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self._limit:
                self._seen.add(value)
                return value
        return self._other


class Histogram:
    """A fixed-bucket histogram as plain numbers: `observe` is one bisect and two additions."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, n in zip((*(floatToGoString(b) for b in self.bounds), "+Inf"), self.counts):
            total += n
            out.append((bound, total))
        return out


class CallSeries:
    """The figures of one (deployment, task kind): plain attributes that MeteredProvider adds to.

    Updated on the event loop only, read when Prometheus scrapes (also on the loop): no locks, so a
    call costs a handful of additions instead of a dozen lock round trips."""

    __slots__ = ("deployment", "task", "route", "requests", "in_flight", "tokens_in", "tokens_out", "cost",
                 "reference_cost", "ttft", "duration", "speed", "errors", "_error_label", "prompt_reported",
                 "prompt_reused")

    def __init__(self, deployment: str, task: str, route: str, error_label: BoundedLabel):
        self.deployment, self.task, self.route = deployment, task, route
        self.requests = self.in_flight = self.tokens_in = self.tokens_out = 0
        self.prompt_reported = self.prompt_reused = 0  # prompt tokens of calls that said what they reused; reused
        self.cost = self.reference_cost = 0.0
        self.ttft = Histogram(LATENCY_BUCKETS)
        self.duration = Histogram(LATENCY_BUCKETS)
        self.speed = Histogram(SPEED_BUCKETS)
        self.errors: dict[str, int] = {}
        self._error_label = error_label

    def error(self, error_class: str) -> None:
        label = self._error_label(error_class)
        self.errors[label] = self.errors.get(label, 0) + 1


class GatewayMetrics:
    """The metric families, registered on `registry`. One instance per app."""

    def __init__(self, registry: CollectorRegistry, *, max_deployments: int = 64, max_error_classes: int = 32):
        self.registry = registry
        self.deployment_label = BoundedLabel(max_deployments)
        self.error_label = BoundedLabel(max_error_classes)
        self.task_label = BoundedLabel(16)
        self._series: dict[tuple[str, str], CallSeries] = {}
        registry.register(CallCollector(self._series))
        self.ledger_dropped = Counter("nlweb_ledger_dropped_rows", "ledger rows dropped because the write queue was full",
                                      registry=registry)
        self.ledger_written = Counter("nlweb_ledger_written_rows", "ledger rows written to the database",
                                      registry=registry)
        self.ledger_queue = Gauge("nlweb_ledger_queue_depth", "ledger rows waiting to be written", registry=registry)
        ProcessCollector(registry=registry)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        registry.register(ResourceCollector())
        self.cache_label = BoundedLabel(32)
        self._caches: dict[str, CacheTally] = {}
        registry.register(CacheCollector(self._caches))
        self.ask_answers = Counter("nlweb_ask_answers", "/ask answers by outcome: ok, degraded (the LLM was "
                                   "unavailable or overloaded: some items ordered by similarity only), error", ["outcome"],
                                   registry=registry)

    def for_call(self, deployment: str, task: str, local: bool) -> CallSeries:
        """The series of one (deployment, task) pair; the same object for every call of that pair."""
        d, t = self.deployment_label(deployment), self.task_label(task)
        s = self._series.get((d, t))
        if s is None:
            s = self._series[(d, t)] = CallSeries(d, t, "local" if local else "cloud", self.error_label)
        return s

    def watch_router(self, router: Any) -> None:
        """Export breaker states, queue depths and health of `router`'s deployments at scrape time."""
        self.registry.register(RouterCollector(router, self.deployment_label))

    def watch_memory(self, memory: Any) -> None:
        """Export the model memory budget's loads, evictions and memory in use at scrape time."""
        self.registry.register(MemoryCollector(memory, self.deployment_label))

    def cache_lookups(self, cache: str) -> "CacheTally":
        """The `on_lookup(hit)` callback of a `BoundedCache` named `cache`, counting into
        nlweb_cache_requests_total{cache, result}. Caches with one name share one tally."""
        name = self.cache_label(cache)
        tally = self._caches.get(name)
        if tally is None:
            tally = self._caches[name] = CacheTally(name)
        return tally

    def cache_stats(self) -> dict[str, dict[str, Any]]:
        """{cache: {hits, misses, hit_ratio, corrupt, saved_usd[, errors: {kind: n}]}} for /admin/stats;
        saved_usd is None for a cache whose hits are not priced (the ranking cache keeps scores, not costs)."""
        return {t.cache: {"hits": t.hits, "misses": t.misses,
                          "hit_ratio": t.hits / (t.hits + t.misses) if t.hits + t.misses else None,
                          "corrupt": t.corrupt, "saved_usd": t.saved_usd if t.priced else None,
                          **({"errors": dict(t.errors)} if t.errors else {})}
                for t in list(self._caches.values())}


class CallCollector:
    """Turns the CallSeries into Prometheus families when scraped."""

    def __init__(self, series: dict[tuple[str, str], CallSeries]):
        self._series = series

    def describe(self) -> Iterable:
        return []

    def collect(self) -> Iterable:
        dt = ("deployment", "task")
        requests = CounterMetricFamily("nlweb_llm_requests", "LLM calls started, per deployment and task kind",
                                       labels=(*dt, "route"))
        errors = CounterMetricFamily("nlweb_llm_errors", "LLM calls that failed, by error class", labels=(*dt, "error"))
        tokens = CounterMetricFamily("nlweb_llm_tokens", "tokens processed (direction: in = prompt, out = generated)",
                                     labels=(*dt, "direction"))
        ttft = HistogramMetricFamily("nlweb_llm_time_to_first_token_seconds", "time to the first token", labels=dt)
        duration = HistogramMetricFamily("nlweb_llm_request_duration_seconds", "whole successful LLM call", labels=dt)
        speed = HistogramMetricFamily("nlweb_llm_output_tokens_per_second", "generation speed of one call", labels=dt)
        cost = CounterMetricFamily("nlweb_llm_cost_usd", "cost of the calls in US dollars", labels=("deployment", "route"))
        ref = CounterMetricFamily("nlweb_llm_reference_cost_usd", "what the reference cloud model would have charged "
                                  "for the same tokens (savings = reference - cost)", labels=("deployment", "route"))
        in_flight = GaugeMetricFamily("nlweb_llm_in_flight", "LLM calls in progress", labels=("deployment",))
        prompt = CounterMetricFamily("nlweb_prompt_tokens", "prompt tokens of calls whose engine reports its prompt "
                                     "(KV) cache: reused from it, or computed", labels=("deployment", "kind"))
        by_deployment: dict[tuple[str, str], list[float]] = {}
        reuse: dict[str, list[int]] = {}
        for s in list(self._series.values()):
            labels = (s.deployment, s.task)
            requests.add_metric((*labels, s.route), s.requests)
            for err, n in list(s.errors.items()):
                errors.add_metric((*labels, err), n)
            tokens.add_metric((*labels, "in"), s.tokens_in)
            tokens.add_metric((*labels, "out"), s.tokens_out)
            for fam, h in ((ttft, s.ttft), (duration, s.duration), (speed, s.speed)):
                fam.add_metric(labels, h.cumulative(), h.sum)
            acc = by_deployment.setdefault((s.deployment, s.route), [0.0, 0.0, 0])
            acc[0] += s.cost
            acc[1] += s.reference_cost
            acc[2] += s.in_flight
            if s.prompt_reported:
                r = reuse.setdefault(s.deployment, [0, 0])
                r[0] += s.prompt_reused
                r[1] += s.prompt_reported - s.prompt_reused
        for (d, route), (c, r, f) in by_deployment.items():
            cost.add_metric((d, route), c)
            ref.add_metric((d, route), r)
            in_flight.add_metric((d,), f)
        for d, (reused, computed) in reuse.items():
            prompt.add_metric((d, "reused"), reused)
            prompt.add_metric((d, "computed"), computed)
        return [requests, errors, tokens, ttft, duration, speed, cost, ref, in_flight, prompt]


class RouterCollector:
    """Reads the router's live state when Prometheus scrapes: no work on the request path."""

    def __init__(self, router: Any, deployment_label: BoundedLabel):
        self._router = router
        self._label = deployment_label

    def describe(self) -> Iterable:
        return []

    def collect(self) -> Iterable:
        breaker = GaugeMetricFamily("nlweb_breaker_state", "circuit breaker state: 0 closed, 1 restoring, "
                                    "2 half_open, 3 open", labels=("deployment",))
        waiting = GaugeMetricFamily("nlweb_deployment_queue_depth", "requests queued in the engine (last probe)",
                                    labels=("deployment",))
        running = GaugeMetricFamily("nlweb_deployment_running", "calls the router has in flight", labels=("deployment",))
        healthy = GaugeMetricFamily("nlweb_deployment_healthy", "1 if the last health probe succeeded",
                                    labels=("deployment",))
        prefix = GaugeMetricFamily("nlweb_engine_prefix_cache_tokens", "an engine's own prefix (KV) cache since the "
                                   "engine started, from its metrics at the last probe: prompt tokens looked up "
                                   "(queried) and found there (hit)", labels=("deployment", "kind"))
        for v in self._router.deployments():  # (a view lets an expired OPEN period turn HALF_OPEN first)
            d = self._label(v.name)
            breaker.add_metric((d,), BREAKER_VALUES.get(v.breaker, -1))
            waiting.add_metric((d,), v.waiting)
            running.add_metric((d,), v.in_flight)
            healthy.add_metric((d,), 1.0 if v.healthy else 0.0)
            cache = self._router.load(v.name).prompt_cache
            if cache is not None:
                prefix.add_metric((d, "queried"), cache.queried_tokens)
                prefix.add_metric((d, "hit"), cache.hit_tokens)
        return [breaker, waiting, running, healthy, prefix]


class MemoryCollector:
    """Reads `fleet.memory.MemoryBudget.snapshot()` when Prometheus scrapes."""

    def __init__(self, memory: Any, deployment_label: BoundedLabel):
        self._memory = memory
        self._label = deployment_label

    def describe(self) -> Iterable:
        return []

    def collect(self) -> Iterable:
        snap = self._memory.snapshot()
        loads = CounterMetricFamily("nlweb_model_loads", "models loaded into memory by the memory budget",
                                    labels=("deployment",))
        evictions = CounterMetricFamily("nlweb_model_evictions", "models unloaded by the memory budget (budget: to make "
                                        "room for another; keep_alive: idle too long)", labels=("deployment", "reason"))
        loaded = GaugeMetricFamily("nlweb_model_loaded", "1 while the model is loaded (or loading)", labels=("deployment",))
        used = GaugeMetricFamily("nlweb_model_memory_budgeted_bytes", "memory of the loaded models, counted against "
                                 "the budget", labels=("pool",))
        budget = GaugeMetricFamily("nlweb_model_memory_budget_bytes", "the model memory budget", labels=("pool",))
        for m in snap["models"]:
            d = self._label(m["deployment"])
            loads.add_metric((d,), m["loads"])
            for reason in ("budget", "keep_alive"):
                evictions.add_metric((d, reason), m["evictions"].get(reason, 0))
            loaded.add_metric((d,), 0.0 if m["state"] == "unloaded" else 1.0)
        for pool, mb in snap["used_mb"].items():
            used.add_metric((pool,), mb * 2**20)
        for pool, mb in snap["budget_mb"].items():
            if mb is not None:
                budget.add_metric((pool,), mb * 2**20)
        return [loads, evictions, loaded, used, budget]


class ResourceCollector:
    """Machine CPU and memory (psutil, when installed) and, when a GPU and NVML are there, each GPU's
    utilisation and memory. Read at scrape time; whatever is missing is simply not exported."""

    def __init__(self):
        try:
            import psutil
        except ImportError:  # pragma: no cover - psutil ships with the ML stack here
            psutil = None
        self._psutil = psutil
        self._nvml = _nvml()

    def describe(self) -> Iterable:
        return []

    def collect(self) -> Iterable:
        out = []
        if self._psutil is not None:
            cpu = GaugeMetricFamily("nlweb_system_cpu_percent", "machine CPU use since the last scrape, percent")
            cpu.add_metric((), self._psutil.cpu_percent(interval=None))
            vm = self._psutil.virtual_memory()
            mem = GaugeMetricFamily("nlweb_system_memory_used_bytes", "machine memory in use")
            mem.add_metric((), vm.total - vm.available)
            total = GaugeMetricFamily("nlweb_system_memory_total_bytes", "machine memory")
            total.add_metric((), vm.total)
            out += [cpu, mem, total]
        if self._nvml is not None:
            out += gpu_families(self._nvml)
        return out


def _nvml() -> Any:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # noqa: BLE001 - no package, no driver or no GPU: no GPU metrics
        return None


def gpu_families(nvml: Any) -> list:
    util = GaugeMetricFamily("nlweb_gpu_utilization_percent", "GPU utilisation", labels=("gpu",))
    used = GaugeMetricFamily("nlweb_gpu_memory_used_bytes", "GPU memory in use", labels=("gpu",))
    total = GaugeMetricFamily("nlweb_gpu_memory_total_bytes", "GPU memory", labels=("gpu",))
    for i in range(nvml.nvmlDeviceGetCount()):
        h = nvml.nvmlDeviceGetHandleByIndex(i)
        mem = nvml.nvmlDeviceGetMemoryInfo(h)
        util.add_metric((str(i),), nvml.nvmlDeviceGetUtilizationRates(h).gpu)
        used.add_metric((str(i),), mem.used)
        total.add_metric((str(i),), mem.total)
    return [util, used, total]


class CacheTally:
    """Hits and misses of one named cache, as plain numbers (a call is one addition, no lock: exact on the
    event loop; caches used from several threads at once may, rarely, lose a count)."""

    __slots__ = ("cache", "hits", "misses", "errors", "corrupt", "saved_usd", "priced")

    def __init__(self, cache: str):
        self.cache = cache
        self.hits = self.misses = self.corrupt = 0
        self.saved_usd = 0.0
        self.priced = False  # a cache that knows what its hits saved (telemetry.cache_accounting) sets it
        self.errors: dict[str, int] = {}  # by kind; the kinds are a fixed set (see cache.redis)

    def error(self, kind: str) -> None:
        """The `on_error(kind)` callback of a shared cache."""
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def __call__(self, hit: bool) -> None:
        if hit:
            self.hits += 1
        else:
            self.misses += 1


class CacheCollector:
    def __init__(self, caches: dict[str, CacheTally]):
        self._caches = caches

    def describe(self) -> Iterable:
        return []

    def collect(self) -> Iterable:
        fam = CounterMetricFamily("nlweb_cache_requests", "cache lookups, by cache and result (hit or miss)",
                                  labels=("cache", "result"))
        errors = CounterMetricFamily("nlweb_cache_errors", "failures of a shared cache backend (the lookup is a miss, "
                                     "the store is dropped), by kind", labels=("cache", "error"))
        for t in list(self._caches.values()):
            fam.add_metric((t.cache, "hit"), t.hits)
            fam.add_metric((t.cache, "miss"), t.misses)
            for kind, n in list(t.errors.items()):
                errors.add_metric((t.cache, kind), n)
        corrupt = CounterMetricFamily("nlweb_cache_corrupt_entries", "cached values dropped because they did not "
                                      "read back as an entry", labels=("cache",))
        saved = CounterMetricFamily("nlweb_cache_saved_usd", "what the calls answered from a cache would have cost",
                                    labels=("cache",))
        for t in list(self._caches.values()):
            corrupt.add_metric((t.cache,), t.corrupt)
            saved.add_metric((t.cache,), t.saved_usd)
        return [fam, errors, corrupt, saved]


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=False)
