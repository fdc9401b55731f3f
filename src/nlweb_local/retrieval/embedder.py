"""`ProviderEmbedder`: the `Embedder` port (synchronous, what ingestion and search call) over an embedding
provider, so retrieval, /v1/embeddings and caches share one model and one vocabulary (`Provider.embed`).

    ingestion (its own thread) ─┐
    search (asyncio.to_thread) ─┴─► ProviderEmbedder.embed ──► provider.embed_blocking  (same thread, no loop)
    /v1/embeddings, caches ───────► ProviderEmbedder.provider.embed  (async; the provider's worker thread)

The synchronous path calls the provider's thread-safe `embed_blocking` directly rather than running an
event loop per call: ingestion keeps its batching and its speed. A provider without a blocking path
(an HTTP embedding service) is refused here with a message, not half-served.

`identity` (the provider's model name and `fingerprint`) is what the vector store records and checks.
"""
from __future__ import annotations

from typing import Any, Sequence

from ..core.errors import BadRequestError
from .base import EmbedderIdentity


class ProviderEmbedder:
    def __init__(self, provider: Any):
        """`provider`: a Provider with capabilities.embeddings, `dimension` and `embed_blocking(texts)`
        (providers.sentence_transformers.SentenceTransformersProvider is one)."""
        if not provider.capabilities.embeddings:
            raise BadRequestError(f"deployment {provider.name!r} does not serve embeddings")
        blocking = getattr(provider, "embed_blocking", None)
        if blocking is None:
            raise BadRequestError(f"deployment {provider.name!r} has no in-process embedding path; retrieval needs "
                                  "one (engine sentence_transformers)")
        self.provider = provider
        self._blocking = blocking
        self.dimension: int = int(provider.dimension)
        self.name: str = provider.model
        fingerprint = getattr(provider, "fingerprint", "") or f"name:{provider.model}"
        self.identity = EmbedderIdentity(provider.model, fingerprint)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Unit-normalised vectors, one per text, on the calling thread (async callers: asyncio.to_thread)."""
        return self._blocking(texts)
