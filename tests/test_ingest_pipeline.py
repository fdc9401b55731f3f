"""Ingestor end to end with the real embedder and a real (embedded) Qdrant store."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from nlweb_local.config.settings import IngestSettings
from nlweb_local.core.errors import NotFoundError, SiteConflictError, SourceError
from nlweb_local.core.item_text import item_text
from nlweb_local.ingest import IngestReport, Ingestor
from nlweb_local.ingest.demo import DEMO_SITE, demo_source
from nlweb_local.ingest.items import build_items
from nlweb_local.ingest.sources import SourceReader

FIXTURE = Path(__file__).parent / "data" / "fixture_site.jsonl"


@pytest.fixture()
def ingestor(embedder, store):
    return Ingestor(embedder, store, IngestSettings(batch_size=8), progress=False)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def stored(store, site: str) -> dict[str, dict]:
    return {it.url: {"name": it.name, **json.loads(it.schema_json)} for it in store.sample(site, 1000)}


def test_fixture_site_loads_every_item(ingestor, store, embedder):
    report = ingestor.ingest(str(FIXTURE), "fixture")
    assert isinstance(report, IngestReport)
    assert (report.loaded, report.replaced, report.skipped) == (24, 0, [])
    assert store.count() == 24
    items = stored(store, "fixture")
    assert items["https://fixture.example/recipes/gingerless-cardamom-chai"]["name"] == "Gingerless Cardamom Chai"
    # what got embedded is the item's text, so a plain question finds the right kind of thing
    hits = store.search(embedder.embed(["a lightweight tent for backpacking"])[0], ["fixture"], 3)
    assert "Tent" in hits[0].item.name
    assert "loaded 24 items into site 'fixture'" in report.summary()


def test_reingest_replaces_and_delete_site(ingestor, store):
    ingestor.ingest(str(FIXTURE), "fixture")
    ingestor.ingest(write(Path(store.location).parent, "other.jsonl",
                          json.dumps({"url": "https://other.example/x", "@type": "Thing", "name": "Other"})), "other")
    again = ingestor.ingest(str(FIXTURE), "fixture")
    assert (again.loaded, again.replaced) == (24, 24)
    assert store.count() == 25
    assert "24 replaced" in again.summary()
    assert ingestor.delete_site("fixture") == 24
    assert store.count() == 1 and [s.name for s in store.sites()] == ["other"]
    with pytest.raises(NotFoundError, match=r"no site 'fixture' to delete.*the sites are: other"):
        ingestor.delete_site("fixture")
    assert store.count() == 1


def test_a_mistyped_site_does_not_take_the_items_of_the_real_one(ingestor, store):
    """Loading urls that site 'fixture' holds into 'fixtrue' would move them: refused before anything is
    embedded or written, naming the site they are in; the real site keeps all its items."""
    ingestor.ingest(str(FIXTURE), "fixture")
    with pytest.raises(SiteConflictError) as e:
        ingestor.ingest(str(FIXTURE), "fixtrue")
    assert "24 in site 'fixture'" in e.value.message and "did you mean 'fixture'" in e.value.message
    assert "new site 'fixtrue'" in e.value.message and "--force" in e.value.message
    assert [(s.name, s.item_count) for s in store.sites()] == [("fixture", 24)]
    asked = []
    with pytest.raises(SiteConflictError):  # a "no" at the prompt refuses too
        ingestor.ingest(str(FIXTURE), "fixtrue", confirm_move=lambda q: asked.append(q) or False)
    assert len(asked) == 1 and [s.name for s in store.sites()] == ["fixture"]


def test_a_confirmed_move_takes_the_items_and_says_so(ingestor, store, tmp_path):
    ingestor.ingest(str(FIXTURE), "fixture")
    src = write(tmp_path, "mix.jsonl", "\n".join([
        json.dumps({"url": "https://fixture.example/recipes/gingerless-cardamom-chai", "@type": "Recipe", "name": "Chai"}),
        json.dumps({"url": "https://new.example/1", "@type": "Thing", "name": "New"})]))
    report = ingestor.ingest(src, "tea", confirm_move=lambda q: True)
    assert report.moved == {"fixture": 1} and report.replaced == 0
    assert "1 new, 0 replaced, 1 moved from site 'fixture'" in report.summary()
    assert {s.name: s.item_count for s in store.sites()} == {"fixture": 23, "tea": 2}


def test_reingest_with_changed_content_updates_the_item(ingestor, store, tmp_path):
    src = write(tmp_path, "a.jsonl", json.dumps({"url": "https://c.example/1", "@type": "Recipe", "name": "Old name"}))
    ingestor.ingest(src, "s")
    write(tmp_path, "a.jsonl", json.dumps({"url": "https://c.example/1", "@type": "Recipe", "name": "New name"}))
    report = ingestor.ingest(src, "s")
    assert report.replaced == 1 and store.count() == 1
    assert stored(store, "s")["https://c.example/1"]["name"] == "New name"


def test_malformed_line_is_reported_with_its_number_and_the_rest_loads(ingestor, store, tmp_path):
    lines = FIXTURE.read_text().splitlines()[:5]
    lines.insert(2, '{"url": "https://fixture.example/broken", "name": ')
    src = write(tmp_path, "bad.jsonl", "\n".join(lines))
    report = ingestor.ingest(src, "fixture")
    assert report.loaded == 5 and store.count() == 5
    assert len(report.skipped) == 1
    where, reason = report.skipped[0]
    assert where == f"{src}:3" and reason.startswith("invalid JSON")
    assert f"skipped {src}:3" in report.summary()


def test_missing_file_and_empty_source_raise_source_error(ingestor, tmp_path, store):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(SourceError, match="nope.jsonl: no such file"):
        ingestor.ingest(missing, "s")
    with pytest.raises(SourceError, match="no loadable schema.org items.*invalid JSON"):
        ingestor.ingest(write(tmp_path, "all-bad.jsonl", "{x\n{y\n"), "s")
    with pytest.raises(SourceError, match="cannot tell the format"):
        ingestor.ingest(write(tmp_path, "notes.txt", "hello there\n"), "s")
    with pytest.raises(SourceError, match="is a folder"):
        ingestor.ingest(str(tmp_path), "s")
    assert store.count() == 0


def test_every_file_format_through_the_ingestor(ingestor, store, tmp_path):
    tsv = write(tmp_path, "a.tsv", "https://f.example/tsv\t" + json.dumps(
        [{"@type": "Recipe", "name": "Tsv one"}, {"@type": "Recipe", "headline": "Tsv two"}]) + "\n")
    jsonld = write(tmp_path, "b.json", json.dumps({"@context": "https://schema.org", "@graph": [
        {"@type": "Event", "url": "https://f.example/ld", "name": "Ld event", "startDate": "2026-05-01"}]}))
    csv_ = write(tmp_path, "c.csv", "url,type,name,brand\nhttps://f.example/csv,Product,Csv tent,Pinewood\n")
    html = write(tmp_path, "d.html", '<html><script type="application/ld+json">{"@type": "Recipe", "url": '
                                     '"https://f.example/html", "name": "Html soup"}</script></html>')
    rss = write(tmp_path, "e.xml", "<rss version='2.0'><channel><title>F</title><item><title>Rss post</title>"
                                   "<link>https://f.example/rss</link></item></channel></rss>")
    csv_typed = write(tmp_path, "g.csv", "url,name\nhttps://f.example/typed,Typed by default\n")
    for src in (tsv, jsonld, csv_, html, rss):
        assert ingestor.ingest(src, "formats").loaded >= 1
    ingestor.ingest(csv_typed, "formats", default_type="Product")
    with pytest.raises(SourceError, match="unknown format"):
        ingestor.ingest(tsv, "formats", fmt="yaml")
    items = stored(store, "formats")
    assert {u: v["name"] for u, v in items.items()} == {
        "https://f.example/tsv": "Tsv one", "https://f.example/tsv#1": "Tsv two", "https://f.example/ld": "Ld event",
        "https://f.example/csv": "Csv tent", "https://f.example/html": "Html soup", "https://f.example/rss": "Rss post",
        "https://f.example/typed": "Typed by default"}
    assert items["https://f.example/csv"]["@type"] == "Product" and items["https://f.example/csv"]["brand"] == "Pinewood"
    assert items["https://f.example/rss"]["@type"] == "Article"
    assert items["https://f.example/typed"]["@type"] == "Product"


def test_forced_format_overrides_detection(ingestor, store, tmp_path):
    src = write(tmp_path, "export.dat", json.dumps({"url": "https://f.example/j", "@type": "Thing", "name": "J"}) + "\n")
    assert ingestor.ingest(src, "s", fmt="jsonl").loaded == 1


def test_gzipped_file(ingestor, store, tmp_path):
    import gzip

    path = tmp_path / "site.jsonl.gz"
    path.write_bytes(gzip.compress("\n".join(FIXTURE.read_text().splitlines()[:4]).encode()))
    assert ingestor.ingest(str(path), "gz").loaded == 4


class _Recorder:
    """Wraps a store; `on_write(n)` runs after the n-th batch is staged, `on_commit()` before the commit."""

    def __init__(self, inner, on_write, on_commit=lambda: None):
        self._inner, self._on_write, self._on_commit, self.batches = inner, on_write, on_commit, 0

    def begin(self, site):
        recorder, inner = self, self._inner.begin(site)

        class Write:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return inner.__exit__(*exc)

            def write(self, items, vectors):
                inner.write(items, vectors)
                recorder.batches += 1
                recorder._on_write(recorder.batches)

            def commit(self):
                recorder._on_commit()
                inner.commit()

        return Write()

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_ctrl_c_during_writes_is_deferred_until_all_are_written(embedder, store):
    def interrupt(n):
        if n == 1:
            os.kill(os.getpid(), signal.SIGINT)

    recorder = _Recorder(store, interrupt)
    ingestor = Ingestor(embedder, recorder, IngestSettings(batch_size=5), progress=False)
    # Ctrl-C as a shell delivers it: to Python's default handler. (Once in CI an earlier test's leftover
    # handler was in place and swallowed the re-raised interrupt; which one is logged if it happens again.)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            ingestor.ingest(str(FIXTURE), "fixture")
        assert recorder.batches == 5 and store.count() == 24
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        if before is not signal.default_int_handler:
            print(f"SIGINT handler left by an earlier test: {before!r}")
        signal.signal(signal.SIGINT, before)


class _FailingEmbedder:
    def __init__(self, inner):
        self._inner, self.dimension, self.calls = inner, inner.dimension, 0

    def embed(self, texts):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("embedding backend died")
        return self._inner.embed(texts)


def test_nothing_is_written_when_embedding_fails_midway(embedder, store):
    ingestor = Ingestor(_FailingEmbedder(embedder), store, IngestSettings(batch_size=8), progress=False)
    with pytest.raises(RuntimeError):
        ingestor.ingest(str(FIXTURE), "fixture")
    assert store.count() == 0


def test_embedded_text_is_item_text_not_raw_json(store, tmp_path):
    class Spy:
        dimension = store.dimension
        texts: list[str] = []

        def embed(self, texts):
            self.texts.extend(texts)
            return [[1.0] + [0.0] * (self.dimension - 1) for _ in texts]

    spy = Spy()
    Ingestor(spy, store, IngestSettings(), progress=False).ingest(str(FIXTURE), "fixture")
    first = json.loads(FIXTURE.read_text().splitlines()[0])
    assert spy.texts[0] == item_text(first)
    assert not any(t.lstrip().startswith("{") for t in spy.texts)


def test_site_name_is_required(ingestor):
    with pytest.raises(SourceError, match="no site name"):
        ingestor.ingest(str(FIXTURE), " ")


def test_progress_bar_goes_to_stderr(embedder, store, capsys, tmp_path):
    src = write(tmp_path, "few.jsonl", "\n".join(FIXTURE.read_text().splitlines()[:3]))
    Ingestor(embedder, store, IngestSettings(batch_size=2), progress=True).ingest(src, "fixture")
    out, err = capsys.readouterr()
    assert out == "" and "embedding fixture" in err


def test_demo_site_is_varied_and_loads_cleanly():
    path = demo_source()
    assert path.is_file() and path.stat().st_size < 1_500_000
    parsed = SourceReader(IngestSettings()).read(str(path))
    items, problems = build_items(parsed.records, DEMO_SITE)
    assert parsed.problems == [] and problems == []
    assert 250 <= len(items) <= 350
    objs = [json.loads(i.schema_json) for i in items]
    kinds = {}
    for o in objs:
        kinds[o["@type"]] = kinds.get(o["@type"], 0) + 1
    assert kinds["Recipe"] >= 80 and kinds["Product"] >= 40 and kinds["PodcastEpisode"] >= 10 and kinds["Article"] >= 10
    assert sum(n for k, n in kinds.items() if k.endswith("Event") or k in ("Festival",)) >= 40
    assert len({i.name for i in items}) == len(items)
    assert len({o["description"] for o in objs}) == len(objs)
    recipes = [o for o in objs if o["@type"] == "Recipe"]
    assert len({r["recipeCuisine"] for r in recipes}) >= 20
    ingredient_lists = {tuple(r["recipeIngredient"]) for r in recipes}
    assert len(ingredient_lists) == len(recipes)
    events = [o for o in objs if "startDate" in o]
    assert all(e["startDate"][:4] in ("2026", "2027") for e in events)
    chai = [o for o in recipes if "chai" in o["name"].lower()]
    assert any("ginger" in " ".join(c["recipeIngredient"]).lower() for c in chai)
    assert any("ginger" not in " ".join(c["recipeIngredient"]).lower() for c in chai)
