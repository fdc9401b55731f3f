"""The vector store remembers the embedding model that built it (real embedded Qdrant, tiny fake models):
it records the model when the collection is made, adopts a store made before the record existed after
checking its dimension, and refuses another model (another fingerprint or dimension) with a message that
names both and what to do — without touching the data. Nothing is downloaded."""
from __future__ import annotations

import json
import logging
import shutil
from types import SimpleNamespace

import pytest

from nlweb_local.core.errors import EmbedderMismatchError
from nlweb_local.core.types import Item
from nlweb_local.retrieval.base import EmbedderIdentity
from nlweb_local.retrieval.qdrant_store import EMBEDDER_KEY, QdrantStore

A = EmbedderIdentity("model-a", "aaaaaaaaaaaa")
B = EmbedderIdentity("model-b", "bbbbbbbbbbbb")
ITEM = Item("https://s.example/1", "one", "s", json.dumps({"@type": "Thing", "name": "one"}))


def fill(path, dimension: int, embedder: EmbedderIdentity | None) -> None:
    store = QdrantStore(dimension=dimension, path=path, embedder=embedder)
    try:
        store.upsert([ITEM], [[1.0] + [0.0] * (dimension - 1)])
    finally:
        store.close()


def record(path) -> dict | None:
    """The model record as it is on disk (read with no model at all)."""
    from qdrant_client import QdrantClient

    client = QdrantClient(path=str(path))
    try:
        return (client.get_collection("nlweb_items").config.metadata or {}).get(EMBEDDER_KEY)
    finally:
        client.close()


def still_there(path, dimension: int) -> None:
    """The refused open changed nothing: the item is found by the model that built the store."""
    store = QdrantStore(dimension=dimension, path=path)
    try:
        hits = store.search([1.0] + [0.0] * (dimension - 1), None, 5)
        assert [h.item.url for h in hits] == [ITEM.url]
    finally:
        store.close()


def test_a_new_collection_records_its_model_and_reopens_with_it(tmp_path):
    fill(tmp_path / "q", 3, A)
    assert record(tmp_path / "q") == {"name": "model-a", "fingerprint": "aaaaaaaaaaaa", "dimension": 3}
    store = QdrantStore(dimension=3, path=tmp_path / "q", embedder=A)  # the same model: opens
    try:
        assert [h.item.url for h in store.search([1.0, 0.0, 0.0], None, 5)] == [ITEM.url]
    finally:
        store.close()


def test_another_model_of_the_same_dimension_is_refused(tmp_path):
    fill(tmp_path / "q", 3, A)
    with pytest.raises(EmbedderMismatchError) as e:
        QdrantStore(dimension=3, path=tmp_path / "q", embedder=B)
    msg = e.value.message
    assert "model-a (3 dimensions, fingerprint aaaaaaaaaaaa)" in msg
    assert "model-b (3 dimensions, fingerprint bbbbbbbbbbbb)" in msg
    assert "embedding.model_path back to model-a's folder" in msg
    assert "store.path" in msg and "store.collection" in msg and "Nothing was changed" in msg
    assert str(tmp_path / "q") in msg
    assert record(tmp_path / "q")["fingerprint"] == A.fingerprint  # not overwritten
    still_there(tmp_path / "q", 3)  # (and the refused open let go of the folder)


def test_another_dimension_is_refused(tmp_path):
    fill(tmp_path / "q", 3, A)
    with pytest.raises(EmbedderMismatchError) as e:
        QdrantStore(dimension=5, path=tmp_path / "q", embedder=B)
    assert "model-a (3 dimensions" in e.value.message and "model-b (5 dimensions" in e.value.message
    with pytest.raises(EmbedderMismatchError, match="a model of 5 dimensions"):  # a caller that names no model
        QdrantStore(dimension=5, path=tmp_path / "q")
    still_there(tmp_path / "q", 3)


def test_the_packaged_model_is_named_as_the_null_setting(tmp_path):
    minilm = EmbedderIdentity("all-MiniLM-L6-v2", "fa21cd475d67")
    fill(tmp_path / "q", 3, minilm)
    back = r"embedding.model_path back to null \(the packaged all-MiniLM-L6-v2\)"
    with pytest.raises(EmbedderMismatchError, match=back):
        QdrantStore(dimension=3, path=tmp_path / "q", embedder=B)


def test_a_store_without_a_record_is_adopted_after_its_dimension_is_checked(tmp_path, caplog):
    fill(tmp_path / "q", 3, None)  # as every store was before the record existed
    assert record(tmp_path / "q") is None
    with caplog.at_level(logging.WARNING, logger="nlweb_local.store"):
        store = QdrantStore(dimension=3, path=tmp_path / "q", embedder=A)
    store.close()
    assert "had no record of its embedding model" in caplog.text and "model-a" in caplog.text
    assert record(tmp_path / "q") == {"name": "model-a", "fingerprint": "aaaaaaaaaaaa", "dimension": 3}
    still_there(tmp_path / "q", 3)
    with pytest.raises(EmbedderMismatchError):  # adopted: from now on another model is refused
        QdrantStore(dimension=3, path=tmp_path / "q", embedder=B)


def test_a_store_without_a_record_and_another_dimension_is_refused_not_adopted(tmp_path):
    fill(tmp_path / "q", 3, None)
    with pytest.raises(EmbedderMismatchError) as e:
        QdrantStore(dimension=5, path=tmp_path / "q", embedder=B)
    msg = e.value.message
    assert "an embedding model of 3 dimensions (which one was not recorded)" in msg
    assert "model-b (5 dimensions" in msg and "back to the 3-dimension model" in msg
    assert record(tmp_path / "q") is None
    still_there(tmp_path / "q", 3)


def test_a_collection_with_named_vectors_is_not_taken_for_ours(tmp_path):
    from qdrant_client import QdrantClient
    from qdrant_client import models as qm

    client = QdrantClient(path=str(tmp_path / "q"))
    named = {"text": qm.VectorParams(size=3, distance=qm.Distance.COSINE)}
    client.create_collection("nlweb_items", vectors_config=named)
    client.close()
    with pytest.raises(EmbedderMismatchError, match="not made by nlweb-local"):
        QdrantStore(dimension=3, path=tmp_path / "q", embedder=A)


# -- the embedder's identity and the composition root ---------------------------------------------

class FakeEmbedder:
    def __init__(self, identity: EmbedderIdentity, dimension: int):
        self.identity, self.dimension = identity, dimension

    def embed(self, texts):
        return [[1.0] + [0.0] * (self.dimension - 1) for _ in texts]


def test_the_provider_embedder_takes_its_identity_from_the_provider():
    from nlweb_local.retrieval.embedder import ProviderEmbedder

    provider = SimpleNamespace(name="embeddings", model="m", dimension=4, fingerprint="0123456789ab",
                               capabilities=SimpleNamespace(embeddings=True), embed_blocking=lambda texts: [])
    assert ProviderEmbedder(provider).identity == EmbedderIdentity("m", "0123456789ab")
    del provider.fingerprint  # a provider that cannot say: its model name stands for it
    assert ProviderEmbedder(provider).identity == EmbedderIdentity("m", "name:m")


def test_build_store_records_and_checks_the_embedder(tmp_path):
    from nlweb_local.config.settings import load_settings
    from nlweb_local.server.components import build_store

    settings = load_settings(environ={"NLWEB_LOCAL_DATA_DIR": str(tmp_path)})
    build_store(settings, FakeEmbedder(A, 3)).close()
    assert record(settings.store_path)["name"] == "model-a"
    build_store(settings, FakeEmbedder(A, 3)).close()
    with pytest.raises(EmbedderMismatchError, match="model-b"):
        build_store(settings, FakeEmbedder(B, 3))


def test_ingest_refuses_another_model_in_one_line_without_a_traceback(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    from nlweb_local.cli.main import main
    from nlweb_local.config.settings import load_settings
    from nlweb_local.server import components

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NLWEB_LOCAL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NLWEB_LOCAL_SERVER__PORT", "1")  # no server there: the command runs in-process
    fill(load_settings(environ={"NLWEB_LOCAL_DATA_DIR": str(tmp_path / "data")}).store_path, 3, A)
    monkeypatch.setattr(components, "build_embedder", lambda settings: FakeEmbedder(B, 3))
    fixture = Path(__file__).parent / "data" / "fixture_site.jsonl"
    assert main(["ingest", str(fixture), "--site", "fx", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nlweb-local: error: the vector store") and "Traceback" not in err
    assert "model-a" in err and "model-b" in err and len(err.strip().splitlines()) == 1


# -- the fingerprint of a model folder ------------------------------------------------------------

def test_the_fingerprint_follows_what_decides_the_vectors(tmp_path):
    from nlweb_local.providers.sentence_transformers import model_fingerprint, packaged_minilm_path

    packaged = packaged_minilm_path()
    assert model_fingerprint(packaged) == model_fingerprint(packaged)  # stable (and cheap: weights are sampled)
    m = tmp_path / "m"
    (m / "1_Pooling").mkdir(parents=True)
    (m / "modules.json").write_text(json.dumps([{"path": ""}, {"path": "1_Pooling"}]))
    (m / "config.json").write_text('{"hidden_size": 384}')
    (m / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (m / "model.safetensors").write_bytes(bytes(range(256)) * 16)
    first = model_fingerprint(m)
    assert len(first) == 12
    (m / "README.md").write_text("notes")
    (m / "onnx").mkdir()
    (m / "onnx" / "model.onnx").write_bytes(b"an export")
    assert model_fingerprint(m) == first  # documentation and exports are not the model
    shutil.copytree(m, tmp_path / "renamed")
    assert model_fingerprint(tmp_path / "renamed") == first  # nor is the folder's name or place
    (m / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    assert model_fingerprint(m) != first  # another pooling: other vectors
    (m / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    assert model_fingerprint(m) == first
    (m / "model.safetensors").write_bytes(bytes(reversed(range(256))) * 16)  # fine-tuned: same size, other bytes
    assert model_fingerprint(m) != first
