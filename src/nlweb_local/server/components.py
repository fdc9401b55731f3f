"""Building the concrete parts from settings. Only the composition root and the CLI call this."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from ..config.settings import Settings
from ..providers.base import Provider
from ..retrieval.base import Embedder, VectorStore
from ..search.ports import StructuredLLM

log = logging.getLogger(__name__)


@dataclass
class Components:
    llm: StructuredLLM
    embedder: Embedder
    store: VectorStore
    provider: Provider | None = None  # what /ask's LLM calls go to (the router, or one provider in tests)
    closers: list[Callable[[], Any]] = field(default_factory=list)
    router: Any = None  # router.Router over every deployment: the /v1 gateway
    telemetry: Any = None  # telemetry.Telemetry: metrics, cost ledger, recent-call stats (None: not measured)


def llm_version(settings: Settings) -> str:
    """A fingerprint of the models that may answer: cached LLM answers are valid while it holds."""
    import hashlib
    import json

    llm = settings.llm
    what = [llm.model_path, llm.embedded_enabled, llm.search_deployment,
            sorted((d.name, d.engine, d.model, d.url) for d in llm.deployments)]
    return hashlib.blake2b(json.dumps(what, default=str).encode(), digest_size=8).hexdigest()


def build_embedder(settings: Settings) -> Embedder:
    """Retrieval's embedder: an adapter over the in-process embedding provider (`embedder.provider`), the
    one model that /v1/embeddings and caches embed with too."""
    from ..providers.sentence_transformers import SentenceTransformersProvider
    from ..retrieval.embedder import ProviderEmbedder

    e = settings.embedding
    return ProviderEmbedder(SentenceTransformersProvider.load(e.model_path, device=e.device, batch_size=e.batch_size))


def build_store(settings: Settings, dimension: int) -> VectorStore:
    from ..retrieval.qdrant_store import QdrantStore

    s = settings.store
    return QdrantStore(dimension=dimension, collection=s.collection, path=settings.store_path, url=s.url, api_key=s.api_key)


def build_provider(settings: Settings) -> Provider:
    """One provider: `llm.search_deployment` when set, else the embedded llama.cpp engine."""
    s = settings.llm
    if s.search_deployment:
        from ..core.errors import BadRequestError
        from ..providers.registry import build_provider as build_deployment

        chosen = next((d for d in s.deployments if d.name == s.search_deployment), None)
        if chosen is None:
            names = ", ".join(d.name for d in s.deployments) or "none configured"
            raise BadRequestError(f"llm.search_deployment {s.search_deployment!r} is not among llm.deployments ({names})")
        return build_deployment(chosen)
    return build_embedded(settings)


def build_embedded(settings: Settings) -> Provider:
    from ..providers.llama_cpp import LlamaCppProvider

    s = settings.llm
    return LlamaCppProvider(s.model_path, n_ctx=s.n_ctx, n_threads=s.n_threads, max_queue=s.max_queue,
                            call_timeout_s=s.call_timeout_s, seed=s.seed, name=s.embedded_name)


def build_router(settings: Settings, embedded: Provider | None, *, telemetry: Any = None):
    """Every deployment behind one router: the embedded engine first (when given), then llm.deployments.
    With `telemetry`, each deployment's provider is wrapped in a MeteredProvider priced for it."""
    from ..core.errors import BadRequestError
    from ..providers.registry import build_provider as build_deployment
    from ..router.breaker import BreakerSettings, CircuitBreaker
    from ..router.model import DeploymentInfo
    from ..router.router import Route, Router

    s = settings.llm
    b = s.breaker
    bs = BreakerSettings(window=b.window, min_calls=b.min_calls, failure_rate=b.failure_rate, slow_call_s=b.slow_call_s,
                         slow_rate=b.slow_rate, open_s=b.open_s, probe_calls=b.probe_calls,
                         restore_shares=tuple(b.restore_shares), calls_per_stage=b.calls_per_stage)

    def breaker(name: str) -> CircuitBreaker:
        return CircuitBreaker(name, bs, on_change=lambda n, old, new, why: log.warning(
            "breaker %s: %s -> %s (%s)", n, old.value, new.value, why))

    routes = []
    if embedded is not None:
        if telemetry is not None:
            embedded = telemetry.wrap(embedded, engine="llama_cpp")
        routes.append(Route(DeploymentInfo(s.embedded_name, True, context_window=s.n_ctx, max_concurrency=s.max_queue,
                                           json_schema=True, tools=False, tier=0), embedded, breaker(s.embedded_name)))
    for d in s.deployments:
        p = build_deployment(d)
        if telemetry is not None:
            p = telemetry.wrap(p, engine=d.engine, price_in_per_m=d.price_in_per_m, price_out_per_m=d.price_out_per_m)
        routes.append(Route(DeploymentInfo(d.name, p.capabilities.local, price_in_per_m=d.price_in_per_m,
                                           price_out_per_m=d.price_out_per_m, context_window=p.capabilities.context_window,
                                           max_concurrency=d.max_concurrency, json_schema=p.capabilities.json_schema,
                                           tools=p.capabilities.tools, tier=d.tier), p, breaker(d.name)))
    if not routes:
        raise BadRequestError("no LLM deployment: enable llm.embedded_enabled or configure llm.deployments")
    names = [r.info.name for r in routes]
    if len(set(names)) != len(names):
        raise BadRequestError(f"deployment names must be unique: {names}")
    import functools

    from ..router.strategies import STRATEGIES, quality_optimised, with_rollout

    strategies = dict(STRATEGIES, quality=functools.partial(quality_optimised, threshold=s.quality_threshold))
    if s.rollout_local_share is not None:
        strategies = {k: with_rollout(v, s.rollout_local_share) for k, v in strategies.items()}
    tracing = getattr(telemetry, "tracing", None)  # telemetry.tracing: a span per routed call, with its decision
    if tracing is not None:
        strategies = tracing.strategies(strategies)
    try:
        router = Router(routes, strategy=s.strategy, strategies=strategies, groups=s.groups)
    except ValueError as e:
        raise BadRequestError(f"llm.groups: {e}") from None
    return router if tracing is None else tracing.wrap_router(router)


def build_components(settings: Settings) -> Components:
    from ..providers.structured import ProviderStructuredLLM
    from ..router.router import Router

    embedder = build_embedder(settings)
    store = build_store(settings, embedder.dimension)
    s = settings.llm
    telemetry = None
    if settings.telemetry.metrics:
        from ..telemetry import build_telemetry

        telemetry = build_telemetry(settings)
    router = build_router(settings, build_embedded(settings) if s.embedded_enabled else None, telemetry=telemetry)
    if telemetry is not None:
        telemetry.watch(router)
    search = router
    if s.search_deployment:
        if s.search_deployment not in router.routes:
            from ..core.errors import BadRequestError

            raise BadRequestError(f"llm.search_deployment {s.search_deployment!r} is not a deployment "
                                  f"({', '.join(router.routes)})")
        search = Router([router.routes[s.search_deployment]])  # same route objects: breakers are shared
        if telemetry is not None and telemetry.tracing is not None:
            search = telemetry.tracing.wrap_router(search)
    return Components(llm=ProviderStructuredLLM(search), embedder=embedder, store=store, provider=search,
                      closers=[store.close] + ([telemetry.close] if telemetry is not None else []), router=router,
                      telemetry=telemetry)
