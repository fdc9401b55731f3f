"""The `Embedder` and `VectorStore` ports. Both are synchronous; async callers use a worker thread.

The default `Embedder` (`embedder.ProviderEmbedder`) is an adapter over an embedding provider
(`providers.sentence_transformers`), the one model /v1/embeddings and caches use too."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from ..core.types import Item, ScoredItem


class Embedder(Protocol):
    dimension: int

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Unit-normalised vectors, one per text."""
        ...


@dataclass(frozen=True, slots=True)
class SiteInfo:
    name: str
    item_count: int


class VectorStore(Protocol):
    def upsert(self, items: Sequence[Item], vectors: Sequence[Sequence[float]]) -> None:
        """Insert or replace items (keyed by url)."""
        ...

    def existing_urls(self, urls: Sequence[str]) -> set[str]: ...

    def search(self, vector: Sequence[float], sites: Sequence[str] | None, limit: int) -> list[ScoredItem]:
        """Most similar items; `sites` None or empty = all sites."""
        ...

    def delete_site(self, site: str) -> int:
        """Remove every item of a site; returns how many were removed."""
        ...

    def delete_urls(self, urls: Sequence[str]) -> None: ...

    def sites(self) -> list[SiteInfo]: ...

    def sample(self, site: str, limit: int) -> list[Item]: ...

    def count(self) -> int: ...

    def close(self) -> None: ...
