"""Shared fixtures. Heavy things (embedding model, LLM, a served app) load once per session."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def embedder():
    """The real default embedder (all-MiniLM-L6-v2 from its PyPI package), loaded once."""
    from nlweb_local.retrieval.sentence_embedder import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder()


@pytest.fixture()
def store(tmp_path, embedder):
    """A fresh embedded Qdrant store in a temporary folder."""
    from nlweb_local.retrieval.qdrant_store import QdrantStore

    s = QdrantStore(dimension=embedder.dimension, path=tmp_path / "qdrant")
    yield s
    s.close()
