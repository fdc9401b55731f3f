"""The Qdrant store's all-or-nothing site writes (embedded mode, 2-d vectors): staged items stay hidden
until the one-write commit, a crash at any step leaves the site as it was or fully updated, and the
next open cleans up. A "crash" here is closing the client mid-write without rolling back: what stays
on disk is what `kill -9` would leave (the subprocess test in test_kill_ingest.py does it for real)."""
from __future__ import annotations

import json

import pytest

from nlweb_local.core.types import Item
from nlweb_local.retrieval.qdrant_store import QdrantStore, point_id


def items(site: str, n: int, *, tag: str = "v1", start: int = 0) -> list[Item]:
    return [Item(f"https://{site}.example/{i}", f"{tag} item {i}", site, json.dumps({"@type": "Thing", "name": f"{tag} {i}"}))
            for i in range(start, start + n)]


def vecs(n: int) -> list[list[float]]:
    return [[1.0, i / 100] for i in range(n)]


def open_store(tmp_path) -> QdrantStore:
    return QdrantStore(dimension=2, path=tmp_path / "q")


def crash(store: QdrantStore) -> None:
    """Stop as kill -9 would: no rollback, no clean-up; only what was written stays."""
    store._client.close()


def view(store: QdrantStore, site: str) -> dict[str, str]:
    """url -> name of everything a reader can see of `site`, through every read path."""
    sampled = {it.url: it.name for it in store.sample(site, 1000)}
    found = [h.item for h in store.search([1.0, 0.0], [site], 1000)]
    assert len(found) == len({it.url for it in found}), "a url is visible twice"
    assert {it.url: it.name for it in found} == sampled
    counts = {s.name: s.item_count for s in store.sites()}
    assert counts.get(site, 0) == len(sampled)
    return sampled


@pytest.fixture()
def store(tmp_path):
    s = open_store(tmp_path)
    yield s
    s.close()


def test_staged_items_are_invisible_until_commit_then_all_at_once(store):
    store.upsert(items("other", 3), vecs(3))
    with store.begin("s") as write:
        write.write(items("s", 4), vecs(4))
        write.write(items("s", 4, start=4), vecs(4))
        assert view(store, "s") == {} and store.count() == 3
        assert store.existing_urls(["https://s.example/0"]) == set()
        assert {h.item.site for h in store.search([1.0, 0.0], None, 100)} == {"other"}
        write.commit()
    assert len(view(store, "s")) == 8 and store.count() == 11


def test_crash_before_commit_leaves_nothing_and_the_next_open_cleans_up(tmp_path):
    store = open_store(tmp_path)
    write = store.begin("s")
    write.write(items("s", 5), vecs(5))
    crash(store)
    store = open_store(tmp_path)
    try:
        assert [(r.site, r.uncommitted) for r in store.recovered] == [("s", 5)]
        assert view(store, "s") == {} and store.count() == 0
        assert store._client.count("nlweb_items", exact=True).count == 0  # the leftovers are gone, not just hidden
        store.upsert(items("s", 5), vecs(5))
        assert len(view(store, "s")) == 5
    finally:
        store.close()


def test_crash_mid_replace_keeps_the_old_items_visible(tmp_path):
    store = open_store(tmp_path)
    store.upsert(items("s", 6), vecs(6))
    old = view(store, "s")
    write = store.begin("s")
    write.write(items("s", 3, tag="v2"), vecs(3))  # replaces 0..2, which are now marked
    assert view(store, "s") == old and store.count() == 6
    crash(store)
    store = open_store(tmp_path)
    try:
        assert view(store, "s") == old
        again = store.begin("s")  # the marks of the dead write must not hide anything later
        again.write(items("s", 1, tag="v3", start=5), vecs(1))
        again.commit()
        assert view(store, "s") == {**old, "https://s.example/5": "v3 item 5"}
    finally:
        store.close()


def test_commit_replaces_by_url_without_duplicates(store):
    store.upsert(items("s", 4), vecs(4))
    with store.begin("s") as write:
        write.write(items("s", 2, tag="v2", start=3), vecs(2))  # 3 replaced, 4 new
        write.commit()
    assert view(store, "s") == {"https://s.example/0": "v1 item 0", "https://s.example/1": "v1 item 1",
                                "https://s.example/2": "v1 item 2", "https://s.example/3": "v2 item 3",
                                "https://s.example/4": "v2 item 4"}
    assert store._client.count("nlweb_items", exact=True).count == 5  # the replaced point was deleted


def test_crash_between_the_switch_and_the_purge_shows_the_new_items_once(tmp_path, monkeypatch):
    store = open_store(tmp_path)
    store.upsert(items("s", 3), vecs(3))
    write = store.begin("s")
    write.write(items("s", 3, tag="v2"), vecs(3))
    monkeypatch.setattr(store, "_delete", lambda flt: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError):
        write.commit()  # the switch was written; the purge of the replaced points was not
    monkeypatch.undo()
    assert set(view(store, "s").values()) == {"v2 item 0", "v2 item 1", "v2 item 2"}
    crash(store)
    store = open_store(tmp_path)
    try:
        assert [(r.uncommitted, r.purged) for r in store.recovered] == [(0, 3)]
        assert set(view(store, "s").values()) == {"v2 item 0", "v2 item 1", "v2 item 2"}
    finally:
        store.close()


def test_an_error_inside_the_write_rolls_back(store):
    store.upsert(items("s", 2), vecs(2))
    with pytest.raises(RuntimeError):
        with store.begin("s") as write:
            write.write(items("s", 2, tag="v2"), vecs(2))
            raise RuntimeError("embedding died")
    assert set(view(store, "s").values()) == {"v1 item 0", "v1 item 1"}
    assert store._client.count("nlweb_items", exact=True).count == 2


def test_reloading_a_url_into_another_site_moves_it(store):
    store.upsert([Item("https://x.example/a", "A", "one", "{}")], vecs(1))
    store.upsert([Item("https://x.example/a", "A again", "two", "{}")], vecs(1))
    assert view(store, "one") == {} and view(store, "two") == {"https://x.example/a": "A again"}
    assert store.count() == 1


def test_points_written_before_generations_stay_visible_and_are_replaced(store):
    from qdrant_client import models as qm

    legacy = [qm.PointStruct(id=point_id(it.url), vector=v, payload={"url": it.url, "name": it.name, "site": it.site,
                                                                      "schema_json": it.schema_json})
              for it, v in zip(items("s", 3), vecs(3))]
    store._client.upsert("nlweb_items", points=legacy, wait=True)
    assert len(view(store, "s")) == 3
    store.upsert(items("s", 1, tag="v2"), vecs(1))
    assert view(store, "s")["https://s.example/0"] == "v2 item 0" and store.count() == 3


def test_delete_site_removes_staged_leftovers_and_the_record(tmp_path):
    store = open_store(tmp_path)
    store.upsert(items("s", 3), vecs(3))
    store.begin("s").write(items("s", 2, tag="v2", start=3), vecs(2))
    crash(store)
    store = QdrantStore(dimension=2, path=tmp_path / "q")
    try:
        assert store.delete_site("s") == 3
        assert store.count() == 0 and store.sites() == []
        assert store._client.count("nlweb_items", exact=True).count == 0
        assert store._client.count("nlweb_items_generations", exact=True).count == 0
    finally:
        store.close()


def test_a_write_only_takes_items_of_its_site(store):
    with store.begin("s") as write, pytest.raises(ValueError, match="another site"):
        write.write(items("t", 1), vecs(1))
