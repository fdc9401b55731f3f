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
    provider: Provider | None = None
    closers: list[Callable[[], Any]] = field(default_factory=list)


def build_embedder(settings: Settings) -> Embedder:
    from ..retrieval.sentence_embedder import SentenceTransformerEmbedder

    e = settings.embedding
    return SentenceTransformerEmbedder(e.model_path, device=e.device, batch_size=e.batch_size)


def build_store(settings: Settings, dimension: int) -> VectorStore:
    from ..retrieval.qdrant_store import QdrantStore

    s = settings.store
    return QdrantStore(dimension=dimension, collection=s.collection, path=settings.store_path, url=s.url, api_key=s.api_key)


def build_provider(settings: Settings) -> Provider:
    """The provider /ask uses: `llm.search_deployment` when set, else the embedded llama.cpp engine."""
    from ..providers.llama_cpp import LlamaCppProvider

    s = settings.llm
    if s.search_deployment:
        from ..core.errors import BadRequestError
        from ..providers.registry import build_provider as build_deployment

        chosen = next((d for d in s.deployments if d.name == s.search_deployment), None)
        if chosen is None:
            names = ", ".join(d.name for d in s.deployments) or "none configured"
            raise BadRequestError(f"llm.search_deployment {s.search_deployment!r} is not among llm.deployments ({names})")
        return build_deployment(chosen)
    return LlamaCppProvider(s.model_path, n_ctx=s.n_ctx, n_threads=s.n_threads, max_queue=s.max_queue,
                            call_timeout_s=s.call_timeout_s, seed=s.seed)


def build_components(settings: Settings) -> Components:
    from ..providers.structured import ProviderStructuredLLM

    embedder = build_embedder(settings)
    store = build_store(settings, embedder.dimension)
    provider = build_provider(settings)
    return Components(llm=ProviderStructuredLLM(provider), embedder=embedder, store=store, provider=provider,
                      closers=[store.close])
