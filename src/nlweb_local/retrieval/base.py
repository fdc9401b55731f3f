"""The `Embedder` and `VectorStore` ports. Both are synchronous; async callers use a worker thread.

The default `Embedder` (`embedder.ProviderEmbedder`) is an adapter over an embedding provider
(`providers.sentence_transformers`), the one model /v1/embeddings and caches use too."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from ..core.types import Item, ScoredItem


@dataclass(frozen=True, slots=True)
class EmbedderIdentity:
    """Which model made a store's vectors. Vectors of two embedders can be compared only when their
    fingerprints (and dimensions) are equal; `name` is for people (messages)."""
    name: str
    fingerprint: str


class Embedder(Protocol):
    dimension: int
    identity: EmbedderIdentity  # recorded by the vector store it fills, checked whenever the store opens

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Unit-normalised vectors, one per text."""
        ...


@dataclass(frozen=True, slots=True)
class SiteInfo:
    name: str
    item_count: int


class SiteWrite(Protocol):
    """An all-or-nothing write into one site (a context manager: leaving it uncommitted rolls back)."""

    def __enter__(self) -> "SiteWrite": ...

    def __exit__(self, *exc: object) -> None: ...

    def write(self, items: Sequence[Item], vectors: Sequence[Sequence[float]]) -> None:
        """Stage items of the site; nothing is visible before `commit()`."""
        ...

    def commit(self) -> None:
        """Make every staged item visible, and the items they replace (same url) invisible, at once."""
        ...


class VectorStore(Protocol):
    def begin(self, site: str) -> SiteWrite:
        """Start an all-or-nothing write into `site`."""
        ...

    def upsert(self, items: Sequence[Item], vectors: Sequence[Sequence[float]]) -> None:
        """Insert or replace items (keyed by url), committed at once."""
        ...

    def existing_urls(self, urls: Sequence[str]) -> set[str]: ...

    def url_sites(self, urls: Sequence[str]) -> dict[str, str]:
        """The site each of `urls` is in now (absent urls are left out): a url belongs to one site."""
        ...

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

    def index_version(self, sites: Sequence[str] | None = None) -> str:
        """A string that changes whenever what reads of `sites` (None or empty: all) see may have changed."""
        ...

    def close(self) -> None: ...
