"""Shared fixtures and test-wide rules. Heavy things (embedding model, LLM, a served app) load once per session.

Rules for every test: no connection leaves the machine (tests/network_guard.py); contract tests of a fault
that the class cannot simulate are deselected, not skipped (`simulated_fault`, tests/provider_contract.py).
"""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = ["network_guard", "pytester"]


def pytest_collection_modifyitems(config, items):
    """Deselect a `simulated_fault(kind)` test where its class's FAULTS lacks the kind (a bare mark: FAULTS is empty),
    e.g. every fault test of a contract run against a real engine: it cannot apply there, so it is not a skip."""
    keep, drop = [], []
    for item in items:
        mark = item.get_closest_marker("simulated_fault")
        simulated = getattr(item.cls, "FAULTS", ())
        if mark is not None and (mark.args[0] not in simulated if mark.args else not simulated):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


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


FIXTURE_SITE = os.path.join(os.path.dirname(__file__), "data", "fixture_site.jsonl")


def e2e_settings(data_dir):
    """Settings of the end-to-end server: defaults, with the LLM scoring 5 candidates to keep tests quick."""
    from nlweb_local.config.settings import load_settings

    s = load_settings(environ={"NLWEB_LOCAL_DATA_DIR": str(data_dir)})
    s.search.llm_rank_limit = 5
    s.server.autoload_demo = False
    return s


@pytest.fixture(scope="session")
def real_components(tmp_path_factory, embedder):
    """The real parts, loaded once: SmolLM2 in llama.cpp, MiniLM, embedded Qdrant with the fixture site."""
    import asyncio

    from nlweb_local.ingest.pipeline import Ingestor
    from nlweb_local.server.components import build_components, build_store

    data = tmp_path_factory.mktemp("e2e")
    settings = e2e_settings(data)
    store = build_store(settings, embedder)
    Ingestor(embedder, store, settings.ingest, progress=False).ingest(FIXTURE_SITE, "fixture")
    comp = build_components(settings, embedder=embedder, store=store, telemetry=None)  # as serve composes it
    yield comp
    asyncio.run(comp.close())
    store.close()


from nlweb_local.server.threaded import ThreadedServer as LiveServer  # noqa: E402  (tests import it from here)


@pytest.fixture(scope="session")
def live_server(real_components):
    """A real nlweb-local (real LLM, embedder and store) serving the 24-item site `fixture` on a free port."""
    from nlweb_local.server.app import create_app

    srv = LiveServer(create_app(real_components.settings, real_components, close_components=False))
    yield srv
    srv.stop()
