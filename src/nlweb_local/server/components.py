"""The composition root: every concrete part is built here, from settings, and nowhere else.

`build_components(settings, **overrides)` is what `serve`, the CLI and the tests all call. Overrides
inject parts instead of building them from settings — `embedder`, `store`, `providers` (an adapter per
deployment name, e.g. a scripted one in a test), `telemetry`, `llm` (the /ask port), `state` (router
state), `audit` (an `AuditLog`, or None for none) — so a test runs the same composition as `serve` with
only the parts it names replaced.

The chain every LLM call goes through is built by one fold:

    each deployment:  compose(adapter, telemetry.deployment_wrappers(...))   metered, then traced
    the gateway:      compose(Router(routes, state), [*telemetry.router_wrappers(), response cache, A/B split,
                      privacy floor, request priority, governed, audit trail]) (privacy floor: the strictest
                      privacy class of the call, the request, the key and its team, onto the call's context;
                      request priority: x-nlweb-priority or the key's/team's class, onto it too; governed: governance's
                      identity, model scope and limits; the audit trail outermost, so it sees what was served and
                      what governance refused)
    /v1/embeddings:   in process (no embedding deployment): compose(the embedding provider, [governed, audit
                      trail]) inside the response cache, so its tokens count against the caller's limits and
                      its audit row names what served it, as a chat call's does
    locality:         each deployment is local or cloud by its declared location or address
                      (governance/locality.py); with `air_gap` a cloud one is not built; with `privacy.redact`
                      a cloud one's adapter is wrapped by the redaction (placeholders out, originals back in)
    /ask:             ProviderStructuredLLM(gateway); with llm.search_deployment, pinned to it and falling
                      back to the embedded engine when it cannot serve (FallbackStructuredLLM),
                      and the pipeline's answer cache (search.answer_cache) keyed on the store's index version
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..config.settings import DeploymentSettings, Settings
from ..core.cache import BoundedCache, Cache
from ..core.errors import BadRequestError
from ..core.types import CallContext
from ..providers.base import Provider
from ..providers.wrapper import compose
from ..retrieval.base import Embedder, VectorStore
from ..router.router import Router
from ..router.state import RouterState
from ..search.answer_cache import AnswerCache
from ..search.pipeline import AskPipeline
from ..search.ports import StructuredLLM

log = logging.getLogger(__name__)
_BUILD = object()  # an override left out: build the part from settings


@dataclass
class Components:
    """The parts of one running service. `close()` releases what they hold (engines, store, ledger)."""

    settings: Settings
    embedder: Embedder
    store: VectorStore
    llm: StructuredLLM  # the /ask pipeline's LLM port
    pipeline: AskPipeline  # /ask, /mcp's ask tool and `nlweb-local ask` share it
    router: Router | None = None  # the typed router API (views, breakers, aliases)
    gateway: Provider | None = None  # the composed chain over the router: every LLM call goes through it
    embeddings: Provider | None = None  # what serves /v1/embeddings when no deployment embeds: the in-process model, cached
    telemetry: Any = None  # telemetry.Telemetry (None: not measured)
    registry: Any = None  # registry.ModelRegistry: models, versions, aliases (its `view`: the router's)
    canary: Any = None  # registry.canary_watch.CanaryWatch: canary stage decisions (started by the app)
    governance: Any = None  # governance.Governance: keys, roles, limits (None: no auth at all)
    audit: Any = None  # governance.audit.AuditLog (None: audit.enabled off)
    memory: Any = None  # fleet.memory.MemoryBudget (None: llm.memory has no budget)
    replicas: Any = None  # fleet.replicas.ReplicaSets: launched engine processes (started and stopped by the app)
    closers: list[Callable[[], Any]] = field(default_factory=list)

    async def close(self) -> None:
        if self.gateway is not None:
            await self.gateway.close()  # the router closes every deployment's chain
        for close in self.closers:
            done = close()
            if inspect.isawaitable(done):  # an async closer (a Redis cache's connections)
                await done


def llm_version(settings: Settings) -> str:
    """A fingerprint of the models that may answer: cached LLM answers are valid while it holds."""
    llm = settings.llm
    what = [llm.model_path, llm.embedded_enabled, llm.search_deployment,
            sorted((d.name, d.engine, d.model, d.url) for d in llm.deployments)]
    return hashlib.blake2b(json.dumps(what, default=str).encode(), digest_size=8).hexdigest()


def deployment_version(d: DeploymentSettings) -> str:
    """A fingerprint of what one deployment serves (engine, model, URL)."""
    return hashlib.blake2b(json.dumps([d.engine, d.model, d.url]).encode(), digest_size=6).hexdigest()


def build_embedder(settings: Settings) -> Embedder:
    """Retrieval's embedder: an adapter over the in-process embedding provider (`embedder.provider`), the
    one model that /v1/embeddings and caches embed with too."""
    from ..providers.sentence_transformers import SentenceTransformersProvider
    from ..retrieval.embedder import ProviderEmbedder

    e = settings.embedding
    return ProviderEmbedder(SentenceTransformersProvider.load(e.model_path, device=e.device, batch_size=e.batch_size))


def build_store(settings: Settings, embedder: Embedder) -> VectorStore:
    """The vector store for `embedder`'s vectors: it records the model when the collection is created and
    refuses another one (`EmbedderMismatchError`) when it opens (an embedder without an `identity`: the
    dimension is checked only)."""
    from ..retrieval.qdrant_store import QdrantStore

    s = settings.store
    return QdrantStore(dimension=embedder.dimension, collection=s.collection, path=settings.store_path, url=s.url,
                       api_key=s.api_key, embedder=getattr(embedder, "identity", None))


def build_router(settings: Settings, *, providers: Mapping[str, Provider] | None = None, telemetry: Any = None,
                 state: RouterState | None = None, registry: Any = None, memory: Any = None) -> Router:
    """Every deployment behind one router, each adapter composed with the telemetry wrappers.
    `providers` replaces the adapter of the deployments it names (tests). `registry` (a
    `registry.ModelRegistry` with its `view`): deployments that `serve` a registered version are
    checked against it, and the router resolves its aliases per request. `memory` (a `fleet.memory.MemoryBudget`):
    in-process deployments load on their first call, within its budget (`budgeted`)."""
    from ..router.breaker import CircuitBreaker
    from ..router.model import DeploymentInfo
    from ..router.router import Route
    from ..router.state import InProcessRouterState

    from ..governance.locality import Locality, located

    s = settings.llm
    given = dict(providers or {})
    locality = Locality(s.local_hosts)  # where each deployment runs (its address, not its engine type)
    deployments, groups = s.all_deployments(), s.groups
    if settings.air_gap:  # no cloud deployment is even built
        deployments, groups = _air_gapped(deployments, groups, locality)
        given = {k: v for k, v in given.items() if k in {d.name for d in deployments}}
    if not deployments:
        raise BadRequestError("no LLM deployment: enable llm.embedded_enabled or configure llm.deployments"
                              + (" (air_gap: only local deployments are built)" if settings.air_gap else ""))
    names = [d.name for d in deployments]
    if len(set(names)) != len(names):
        raise BadRequestError(f"deployment names must be unique: {names}")
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise BadRequestError(f"providers given for deployments that are not configured: {unknown} (configured: {names})")
    routes = []
    for d in deployments:
        if d.serves:
            if registry is None:
                raise BadRequestError(f"deployment {d.name!r} serves {d.serves}, but no model registry was given")
            d = registry.deployment(d)
        placement = locality.of(d)
        in_budget = memory is not None and manages(memory, d)
        if in_budget and d.engine in BUDGETED_ENGINES and d.name not in given:
            d = d.model_copy(update={"options": {**d.options, "lazy_load": True}})
        adapter = given[d.name] if d.name in given else build_adapter(d, s.breaker)
        max_concurrency = d.max_concurrency
        if d.fleet.slots is not None and d.engine not in IN_PROCESS_ENGINES:  # a bounded, prioritised queue
            adapter, max_concurrency = _gated(d, adapter, s)
        if in_budget:
            adapter = budgeted(d, adapter, memory)
        adapter = located(adapter, placement)
        version = d.serves or deployment_version(d)
        wrappers = (telemetry.deployment_wrappers(engine=d.engine, price_in_per_m=d.price_in_per_m,
                                                  price_out_per_m=d.price_out_per_m, model_version=version)
                    if telemetry is not None else [])
        if not placement.local and settings.privacy.redact:  # personal data never reaches a cloud deployment
            wrappers = [_redaction(settings, telemetry), *wrappers]
        info = DeploymentInfo.of(d.name, adapter.capabilities, model=adapter.model, model_version=version,
                                 price_in_per_m=d.price_in_per_m, price_out_per_m=d.price_out_per_m,
                                 max_concurrency=max_concurrency, tier=d.tier, serves=d.serves or "")
        routes.append(Route(info, compose(adapter, wrappers)))
    import functools

    from ..router.strategies import STRATEGIES, quality_optimised, with_rollout

    strategies = dict(STRATEGIES, quality=functools.partial(quality_optimised, threshold=s.quality_threshold))
    if s.rollout_local_share is not None:
        strategies = {k: with_rollout(v, s.rollout_local_share) for k, v in strategies.items()}
    tracing = getattr(telemetry, "tracing", None)  # telemetry.tracing: a span per routed call, with its decision
    if tracing is not None:
        strategies = tracing.strategies(strategies)
    if state is None:
        state = InProcessRouterState(lambda name: CircuitBreaker(name, s.breaker, on_change=_log_breaker))
    try:
        return Router(routes, strategy=s.strategy, strategies=strategies, groups=groups, state=state, rounds=s.rounds,
                      registry=getattr(registry, "view", None))
    except ValueError as e:
        raise BadRequestError(f"llm.groups: {e}") from None


def _gated(d: DeploymentSettings, adapter: Provider, llm: Any) -> tuple[Provider, int]:
    """The deployment behind its admission gate (fleet/admission.py), and the router's in-flight bound for it:
    the gate bounds the deployment (running + waiting), so the router leaves it room to displace a waiter."""
    from ..core.priority import PriorityClasses
    from ..fleet.admission import AdmissionGate

    p = llm.priority
    try:
        gate = AdmissionGate(adapter, d.fleet, classes=PriorityClasses(p.classes, p.default_class),
                             weights=p.tenant_weights, ageing_s=llm.priority_ageing_s)
    except BadRequestError as e:
        raise BadRequestError(f"deployment {d.name!r}: {e.message}", deployment=d.name) from None
    return gate, gate.gate.capacity + 2 * d.fleet.max_waiting + 1


def _air_gapped(deployments: list[DeploymentSettings], groups: dict[str, list[str]],
                locality: Any) -> tuple[list[DeploymentSettings], dict[str, list[str]]]:
    """`air_gap`: the local deployments only, and the groups without the others (governance/air_gap.py)."""
    from ..governance.air_gap import air_gapped

    kept, skipped = air_gapped(deployments, locality)
    pruned = {k: [m for m in v if m not in skipped] for k, v in groups.items()}
    for k, v in pruned.items():
        if not v:
            log.warning("air_gap: llm.groups.%s has no local deployment; requests for it are refused", k)
    return kept, {k: v for k, v in pruned.items() if v}


def _redaction(settings: Settings, telemetry: Any) -> Callable[[Provider], Provider]:
    """`privacy.redact`'s wrapper for a cloud deployment's chain, counting into nlweb_redactions_total."""
    from ..governance.redacting import redacting, redaction_counter
    from ..governance.redaction import Detector

    p = settings.privacy
    detector = Detector(p.redact_kinds, p.redact_patterns, phone_region=p.phone_region)
    return redacting(detector, redaction_counter(telemetry.metrics) if telemetry is not None else None)


from ..governance.locality import IN_PROCESS_ENGINES  # noqa: E402  (engines that run inside nlweb-local)
BUDGETED_ENGINES = frozenset({"llama_cpp", "transformers"})  # in-process engines whose models llm.memory loads and unloads
SLEEPING_ENGINES = frozenset({"vllm"})  # remote engines whose sleep mode llm.memory drives (fleet/memory.py: SleepWake)
LOADING_ENGINES = frozenset({"ollama"})  # remote engines llm.memory loads and unloads on a budgeted host (OllamaResidency)


def _host(d: DeploymentSettings) -> str:
    from urllib.parse import urlsplit

    return urlsplit(d.url or "").hostname or ""


def manages(memory: Any, d: DeploymentSettings) -> bool:
    """Whether llm.memory manages deployment `d`: an in-process engine when a RAM or GPU budget is set; a vllm
    deployment (one url) with a keep_alive, or on a host of remote_budgets_mb; an ollama deployment (one url)
    on a host of remote_budgets_mb (without one, Ollama's own keep_alive applies)."""
    m = memory.settings
    if d.engine in BUDGETED_ENGINES:
        return m.budget_mb is not None or m.gpu_budget_mb is not None
    if d.engine in LOADING_ENGINES:
        return not d.instances and _host(d) in m.remote_budgets_mb
    return d.engine in SLEEPING_ENGINES and not d.instances and (d.keep_alive is not None or _host(d) in m.remote_budgets_mb)


def build_memory(settings: Settings) -> Any:
    """The host's model memory budget (`llm.memory`), or None when it has nothing to manage: no budget_mb,
    gpu_budget_mb or remote_budgets_mb, and no vllm deployment with a keep_alive."""
    m = settings.llm.memory
    sleepers = any(d.engine in SLEEPING_ENGINES and d.keep_alive is not None for d in settings.llm.all_deployments())
    if m.budget_mb is None and m.gpu_budget_mb is None and not m.remote_budgets_mb and not sleepers:
        return None
    from ..fleet.memory import MemoryBudget

    return MemoryBudget(m)


def budgeted(d: DeploymentSettings, adapter: Provider, memory: Any) -> Provider:
    """`adapter` under the memory budget: registered with its size (`memory_mb`, else the engine's estimate)
    and keep_alive, and wrapped so that each call holds its model loaded."""
    from ..fleet.memory import BudgetedModel
    from ..providers.base import ModelLifecycle
    from ..providers.wrapper import find

    lifecycle = find(adapter, ModelLifecycle)
    if lifecycle is None:
        raise BadRequestError(f"deployment {d.name!r}: engine {d.engine!r} cannot load and unload its model, so "
                              "llm.memory cannot manage it", deployment=d.name)
    pool, size, keep_alive = getattr(lifecycle, "memory_pool", "ram"), d.memory_mb, d.keep_alive
    if d.engine in SLEEPING_ENGINES | LOADING_ENGINES:  # vLLM: waking up and putting to sleep; Ollama: its own load/unload
        from ..fleet.memory import OllamaResidency, SleepWake

        if d.engine in SLEEPING_ENGINES:
            lifecycle = SleepWake(lifecycle, deployment=d.name, level=int(d.options.get("sleep_level", 1)))
        else:
            lifecycle = OllamaResidency(lifecycle, deployment=d.name)
            keep_alive = d.options.get("keep_alive", d.keep_alive)  # what the adapter sends Ollama
        pool = f"host:{_host(d)}"
        if size is None and _host(d) in memory.settings.remote_budgets_mb:
            raise BadRequestError(f"deployment {d.name!r}: set memory_mb (the MiB its model takes loaded) for "
                                  f"llm.memory.remote_budgets_mb[{_host(d)!r}]", deployment=d.name)
        size = size or 0.0
    if size is None:
        estimate = getattr(lifecycle, "estimated_memory_mb", None)
        if estimate is None:
            raise BadRequestError(f"deployment {d.name!r}: set memory_mb (the MiB its model takes) for llm.memory's "
                                  "budget", deployment=d.name)
        try:
            size = estimate(memory.settings.gguf_factor)
        except (OSError, ValueError) as e:
            raise BadRequestError(f"deployment {d.name!r}: cannot estimate its model's size ({e}); set memory_mb",
                                  deployment=d.name) from e
    memory.register(d.name, lifecycle, size, keep_alive=keep_alive, pool=pool)
    return BudgetedModel(adapter, memory)


def build_adapter(d: DeploymentSettings, breaker: Any) -> Provider:
    """A deployment's engine adapter: one for its `url`; with `instances`, a `fleet.Fleet` over one adapter per
    URL, each with its own breaker (`breaker`: the `BreakerSettings` of llm.breaker)."""
    from ..providers.registry import build_provider

    from ..router.breaker import CircuitBreaker

    if d.launched:  # replicas nlweb-local launches: a fleet without instances until they start (fleet/replicas.py)
        from ..fleet.replicas import launched_fleet

        return launched_fleet(d, build_provider, lambda name: CircuitBreaker(name, breaker, on_change=_log_breaker))
    if not d.instances:
        return build_provider(d)
    from ..fleet.fleet import Fleet

    if d.engine in IN_PROCESS_ENGINES:
        raise BadRequestError(f"deployment {d.name!r}: engine {d.engine!r} runs inside nlweb-local and has no instances; "
                              "list the URLs of HTTP engines (llama_server, vllm, ollama, tgi, ...)", deployment=d.name)
    members = [(url, build_provider(d.model_copy(update={"url": url, "instances": []}))) for url in d.instances]
    return Fleet(d.name, members, d.fleet, breaker=lambda name: CircuitBreaker(name, breaker, on_change=_log_breaker))


def build_model_registry(settings: Settings) -> Any:
    """The model registry (`registry.database_url`), with its `view`: the in-memory aliases the router resolves
    requests with, reloaded at once by a change made through this registry, else by polling."""
    from ..registry import RegistryAliases, build_registry

    registry = build_registry(settings)
    try:
        registry.view = RegistryAliases(registry.store, poll_s=settings.registry.poll_s)
    except BaseException:
        registry.close()
        raise
    registry.on_change = registry.view.reload
    return registry


def _log_breaker(name: str, old: Any, new: Any, why: str) -> None:
    log.warning("breaker %s: %s -> %s (%s)", name, old.value, new.value, why)


def build_cache(name: str, settings: Settings, metrics: Any = None, max_entries: int = 10_000,
                ttl_s: float | None = None, *, count_lookups: bool = True) -> Cache:
    """The cache called `name`: in process (`BoundedCache` of `max_entries`) by default, in Redis when
    `cache_store.redis_url` (or its other name, `cache.redis_url`) is set, so every replica shares it
    (entries are bounded there by the server's maxmemory, their expiry and `redis_max_value_bytes`).
    `ttl_s`: the expiry of entries set without one (None: until evicted; in Redis
    `cache_store.redis_default_ttl_s`). `metrics` (a `GatewayMetrics`, or None) counts its lookups
    (nlweb_cache_requests_total; not with `count_lookups=False`, for a cache that counts its own) and, in
    Redis, its failures (nlweb_cache_errors_total)."""
    tally = metrics.cache_lookups(name) if metrics is not None else None
    on_lookup = tally if count_lookups else None
    c = settings.cache_store
    url = c.redis_url or settings.cache.redis_url
    if not url:
        return BoundedCache(max_entries, on_lookup=on_lookup, default_ttl_s=ttl_s)
    from ..cache.redis import RedisCache

    return RedisCache(url, name, timeout_s=c.redis_timeout_s, retry_s=c.redis_retry_s,
                      max_connections=c.redis_max_connections, default_ttl_s=ttl_s or c.redis_default_ttl_s,
                      compress_over=c.redis_compress_over, max_value_bytes=c.redis_max_value_bytes,
                      on_lookup=on_lookup, on_error=tally.error if tally is not None else None)


def build_pipeline(settings: Settings, llm: StructuredLLM, embedder: Embedder, store: VectorStore,
                   telemetry: Any = None, closers: list[Callable[[], Any]] | None = None, *,
                   semantic: Any = None) -> AskPipeline:
    """The /ask pipeline, with its ranking cache (in process or in Redis: `build_cache`; counted in the
    metrics when telemetry is on). A cache that holds connections adds its `close` to `closers`."""
    n = settings.search.rank_cache_entries
    cache = None
    if n > 0:
        cache = build_cache("ranking", settings, telemetry.metrics if telemetry is not None else None, n)
        if closers is not None and hasattr(cache, "close"):
            closers.append(cache.close)
    return AskPipeline(llm, embedder, store, settings.search, rank_cache=cache, model_version=llm_version(settings),
                       answer_cache=build_answer_cache(settings, store, telemetry, semantic=semantic, closers=closers))


def build_cache_store(settings: Settings, name: str, max_entries: int, telemetry: Any = None,
                      closers: list[Callable[[], Any]] | None = None) -> Cache[dict]:
    """Where the response and answer caches keep their entries: `build_cache`'s backend (in process,
    bounded; or Redis, shared by replicas, with near copies in process: `cache.near`). These caches count their own lookups (exact and semantic
    apart), so the store counts only a shared backend's failures. A store that holds connections adds
    its `close` to `closers`."""
    store = build_cache(name, settings, telemetry.metrics if telemetry is not None else None, max_entries,
                        count_lookups=False)
    c = settings.cache_store
    if hasattr(store, "redis_key") and c.near_entries > 0:  # shared in Redis: keep near copies of what is hot
        from ..cache.near import NearCache

        store = NearCache(store, max_entries=c.near_entries, ttl_s=c.near_ttl_s)
    if closers is not None and hasattr(store, "close"):
        closers.append(store.close)
    return store


def _semantic_accounts(telemetry: Any, semantic: Any) -> Any:
    """The semantic cache's accounts (its hits are the response and /ask caches' paraphrase hits)."""
    return telemetry.cache_accounts("semantic") if telemetry is not None and semantic is not None else None


def build_response_cache(settings: Settings, router: Router, telemetry: Any = None, *, semantic: Any = None,
                         closers: list[Callable[[], Any]] | None = None) -> Callable[..., Provider] | None:
    """The response cache as a wrapper (for the gateway's fold), or None when `cache.enabled` is off."""
    from ..cache.keys import ServingVersions
    from ..cache.response import ResponseCache

    c = settings.cache
    if not c.enabled:
        return None
    store = build_cache_store(settings, "response", c.max_entries, telemetry, closers)
    accounting = telemetry.cache_accounts("response", router=router) if telemetry is not None else None
    semantic_accounting = _semantic_accounts(telemetry, semantic)
    versions = ServingVersions(router)

    def wrap(inner: Provider, *, routed: bool = True) -> Provider:
        """`routed`: `inner` is the router chain (keys name the deployments that may serve); else a lone
        provider (the in-process embedding model: its own name and model make the version)."""
        return ResponseCache(inner, store, c, versions=versions if routed else None, accounting=accounting,
                             semantic=semantic if routed else None, semantic_accounting=semantic_accounting)

    return wrap


def build_answer_cache(settings: Settings, store: VectorStore, telemetry: Any = None, *, semantic: Any = None,
                       closers: list[Callable[[], Any]] | None = None) -> AnswerCache | None:
    """/ask's answer cache, or None (off, or a store that cannot say its index version); `semantic`: a
    `cache.semantic.SemanticIndex` for paraphrased questions (None: exact only). In Redis, replicas
    share answers when they share the index (a Qdrant server: `store.url`), whose index version is
    read from the server at each question — an ingest through any replica changes it for all."""
    c = settings.cache
    index_version = getattr(store, "index_version", None)
    if not (c.enabled and c.ask_enabled) or index_version is None:
        return None
    version = hashlib.blake2b(json.dumps([llm_version(settings), settings.search.model_dump(mode="json")],
                                         sort_keys=True).encode(), digest_size=8).hexdigest()
    accounting = telemetry.cache_accounts("ask") if telemetry is not None else None
    return AnswerCache(build_cache_store(settings, "ask", c.ask_max_entries, telemetry, closers), index_version,
                       model_version=version, ttl_s=c.ask_ttl_s, accounting=accounting, semantic=semantic,
                       semantic_accounting=_semantic_accounts(telemetry, semantic))


def build_components(settings: Settings, *, embedder: Any = _BUILD, store: Any = _BUILD,
                     providers: Mapping[str, Provider] | None = None, telemetry: Any = _BUILD, llm: Any = _BUILD,
                     state: RouterState | None = None, governance: Any = _BUILD, audit: Any = _BUILD) -> Components:
    """Every part of the service from `settings`, except the ones given (see the module docstring).
    `telemetry=None` turns measuring off; left out, it follows `telemetry.metrics`. `close()` closes what
    it built and the deployments' engines; a given store or telemetry stays the caller's to close."""
    from ..providers.structured import FallbackStructuredLLM, ProviderStructuredLLM

    closers: list[Callable[[], Any]] = []
    if embedder is _BUILD:
        embedder = build_embedder(settings)
    if store is _BUILD:
        store = build_store(settings, embedder)
        closers.append(store.close)
    if telemetry is _BUILD:
        telemetry = None
        if settings.telemetry.metrics:
            from ..telemetry import build_telemetry

            telemetry = build_telemetry(settings)
            closers.append(telemetry.close)
    if audit is _BUILD:
        from ..governance.audit import build_audit

        audit = build_audit(settings)  # a damaged audit log stops the start here, with its path and why
        if audit is not None:
            closers.append(audit.close)
    registry = build_model_registry(settings)
    closers.append(registry.close)
    memory = build_memory(settings)
    router = build_router(settings, providers=providers, telemetry=telemetry, state=state, registry=registry,
                          memory=memory)
    if memory is not None:
        closers.append(memory.close)
    waiting_of = gate_waiting(router)
    replicas = build_replicas(settings, router, waiting_of, memory)
    closers.append(replicas.close)
    if telemetry is not None:
        telemetry.watch(router)
        from ..telemetry.fleet_metrics import FleetCollector

        telemetry.metrics.registry.register(FleetCollector(lambda: replicas.gauges(router, waiting_of),
                                                           telemetry.metrics.deployment_label))
        if memory is not None:
            telemetry.metrics.watch_memory(memory)
    semantic = None
    if settings.semantic_cache.enabled:  # paraphrased questions answered from the cache (off by default)
        from ..cache.semantic import SemanticIndex

        semantic = SemanticIndex(getattr(embedder, "provider", embedder), settings.semantic_cache)
    cached = build_response_cache(settings, router, telemetry, semantic=semantic, closers=closers)
    if governance is _BUILD:
        from ..governance import build_governance

        governance = build_governance(settings)
        closers.append(governance.close)
    from ..governance.privacy import CallerPrivacy, privacy_floor
    from ..providers.priority import request_priority
    from ..registry.experiment_split import split_wrapper

    split = split_wrapper(registry, router, telemetry)  # A/B experiments: inside governance, outside the cache
    if governance is not None and telemetry is not None and telemetry.monitor is not None:
        telemetry.monitor.budgets = governance.limits.usage  # keys' and teams' budgets at 80 %: the budget alert
    canary, canary_split = build_canary(settings, registry, router, telemetry)  # canaries: next to the router
    governed_audited = [*([governed_wrapper(governance, router, telemetry)] if governance is not None else []),
                        *([_audited] if audit is not None else [])]  # outermost: the audit trail sees what was served
    wrappers = [canary_split, *(telemetry.router_wrappers() if telemetry is not None else []),
                *([cached] if cached else []),
                *([split] if split is not None else []),
                privacy_floor(CallerPrivacy.from_settings(settings.auth)),  # every call's privacy class, on its context
                request_priority,  # the request's priority (header, key, team: the HTTP edge's), on every call's context
                *governed_audited]
    gateway = compose(router, wrappers)
    in_process = getattr(embedder, "provider", None)  # retrieval's embedder adapts a provider: /v1/embeddings uses it
    if in_process is not None:  # held to the caller's limits and noted in the audit trail like any call (a cache
        in_process = compose(in_process, governed_audited)  # hit, outside them, costs nothing, as on the gateway)
    embeddings = cached(in_process, routed=False) if cached is not None and in_process is not None else in_process
    if llm is _BUILD:
        search = settings.llm.search_deployment
        if search and settings.air_gap and search not in router.names():
            log.warning("air_gap: llm.search_deployment %r is not built; /ask's calls are routed like any call", search)
            search = None
        context = CallContext(deadline_s=settings.search.llm_deadline_s)
        llm = ProviderStructuredLLM(gateway, context=context)
        if search:
            if search not in router.names():
                raise BadRequestError(f"llm.search_deployment {search!r} is not a deployment ({', '.join(router.names())})")
            # /ask's calls go to it (with its shared breaker) and, when it cannot serve, to the embedded
            # engine (or wherever the router sends any call) rather than degrading to similarity
            local = settings.llm.embedded_name
            fallback = context.with_(deployments=(local,)) if local in router.names() and local != search else context
            llm = FallbackStructuredLLM(ProviderStructuredLLM(gateway, context=context.with_(deployments=(search,))),
                                        ProviderStructuredLLM(gateway, context=fallback), name=search)
    pipeline = build_pipeline(settings, llm, embedder, store, telemetry, closers, semantic=semantic)
    return Components(settings, embedder, store, llm, pipeline, router=router, gateway=gateway, embeddings=embeddings,
                      telemetry=telemetry, registry=registry, governance=governance, audit=audit, closers=closers,
                      canary=canary, memory=memory, replicas=replicas)


def build_replicas(settings: Settings, router: Router, waiting_of: Callable[[str], Any], memory: Any = None) -> Any:
    """The launched deployments' replicas and autoscalers (`fleet.replicas.ReplicaSets`; the app starts them);
    `waiting_of`: `gate_waiting(router)`; `memory`: the host's budget, which each replica's model counts in."""
    from ..fleet.fleet import Fleet
    from ..fleet.replicas import build_replica_sets
    from ..providers.registry import build_provider
    from ..providers.wrapper import find

    built = set(router.names())
    return build_replica_sets([d for d in settings.llm.deployments if d.name in built],
                              lambda name: find(router.provider(name), Fleet), build_provider, waiting_of, memory=memory)


def gate_waiting(router: Router) -> Callable[[str], Callable[[], int] | None]:
    """name -> how to read the calls waiting in that deployment's admission gate (`fleet.slots`), or None."""
    from ..fleet.admission import AdmissionGate  # (fleet/admission.py: a deployment's bounded queue)
    from ..providers.wrapper import find

    def of(name: str) -> Callable[[], int] | None:
        gate = find(router.provider(name), AdmissionGate)
        return (lambda: gate.gate.waiting) if gate is not None else None

    return of


def build_canary(settings: Settings, registry: Any, router: Router, telemetry: Any) -> tuple[Any, Any]:
    """The canary split (the wrapper next to the router) and its watch (stage decisions, alerts on rollback)."""
    from ..registry.canary_split import CanarySplit, CanaryTally, CanaryView
    from ..registry.canary_watch import CanaryWatch, feedback_ratings
    from ..telemetry.context import current_request_id

    view, tally = CanaryView(registry.canaries), CanaryTally()
    view.reload()
    alias_reload = registry.on_change
    registry.on_change = lambda: (alias_reload() if alias_reload else None, view.reload())
    monitor = getattr(telemetry, "monitor", None)
    notifiers = monitor.engine.notifiers if monitor is not None else []
    watch = CanaryWatch(registry.canaries, view, tally, interval_s=settings.registry.canary_check_s,
                        on_change=alias_reload, notifiers=notifiers, ratings=feedback_ratings(registry.store))
    return watch, lambda inner: CanarySplit(inner, view, tally, serving=router.resolve_model,
                                            request_id=current_request_id)


def governed_wrapper(governance: Any, router: Router, telemetry: Any = None) -> Callable[[Provider], Provider]:
    """Governance's wrapper, pricing calls as the cost ledger does (each deployment's meter; without
    telemetry, the deployment's configured prices)."""
    from ..providers.wrapper import find

    meters: dict[str, Any] = {}
    if telemetry is not None:
        from ..telemetry.metered import MeteredProvider

        meters = {n: find(router.provider(n), MeteredProvider) for n in router.names()}
    infos = {v.name: v.info for v in router.deployments()}

    def price(name: str) -> Callable[[int, int], float]:
        """The pricer of one deployment (asked once per deployment)."""
        meter = meters.get(name)
        if meter is not None:  # (its price model, at its measured throughput where that matters)
            return meter.pricer()
        info = infos.get(name)
        if info is None:
            return lambda tokens_in, tokens_out: 0.0
        p_in, p_out = info.price_in_per_m, info.price_out_per_m
        return lambda tokens_in, tokens_out: (tokens_in * p_in + tokens_out * p_out) / 1e6

    return governance.wrapper(resolve=router.resolve_model, deployments=router.names, price=price)


def _audited(inner: Provider) -> Provider:
    from ..governance.audit_trail import AuditedProvider

    return AuditedProvider(inner)
