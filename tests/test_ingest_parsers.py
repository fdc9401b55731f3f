"""Pure parsers and format detection: every input format → records/items, problems with their place."""
from __future__ import annotations

import gzip
import json

import pytest

from nlweb_local.core.errors import SourceError
from nlweb_local.ingest.detect import detect_format, sniff_format
from nlweb_local.ingest.feeds import parse_feed
from nlweb_local.ingest.html_jsonld import parse_html
from nlweb_local.ingest.items import build_items
from nlweb_local.ingest.jsonld import parse_jsonl, parse_jsonld_document, parse_tsv
from nlweb_local.ingest.sitemaps import gunzip_bounded, parse_sitemap
from nlweb_local.ingest.tabular import parse_csv


def items_of(parsed, site="s"):
    items, problems = build_items(parsed.records, site)
    return items, parsed.problems + problems


# -- JSON lines ---------------------------------------------------------------------------------

def test_jsonl_accepts_items_wrappers_and_reports_bad_lines():
    lines = [
        json.dumps({"url": "https://x.example/a", "@type": "Recipe", "name": "A"}),
        json.dumps({"@id": "https://x.example/b", "@type": "Recipe", "name": "B"}),
        json.dumps({"url": "https://x.example/c", "schema_object": [{"@type": "Recipe", "name": "C0"}, {"@type": "Recipe", "name": "C1"}]}),
        json.dumps({"url": "https://x.example/d", "json_ld": {"@type": "Event", "headline": "D"}}),
        json.dumps({"url": "https://x.example/e", "schema_json": json.dumps({"@type": "Article", "title": "E"})}),
        "{not json",
        json.dumps({"@type": "Recipe", "name": "no url"}),
        json.dumps({"schema_object": {"@type": "Recipe", "name": "wrapper without url"}}),
        json.dumps({"@id": "_:b0", "@type": "Recipe", "name": "blank node id is not a url"}),
        "",
        json.dumps(42),
    ]
    items, problems = items_of(parse_jsonl("\n".join(lines), "in.jsonl"))
    assert [(i.url, i.name) for i in items] == [
        ("https://x.example/a", "A"), ("https://x.example/b", "B"),
        ("https://x.example/c", "C0"), ("https://x.example/c#1", "C1"),
        ("https://x.example/d", "D"), ("https://x.example/e", "E"),
    ]
    where = {w: r for w, r in (p.as_tuple() for p in problems)}
    assert set(where) == {"in.jsonl:6", "in.jsonl:7", "in.jsonl:8", "in.jsonl:9", "in.jsonl:11"}
    assert "invalid JSON" in where["in.jsonl:6"]
    assert "no url" in where["in.jsonl:7"]
    assert "needs a \"url\"" in where["in.jsonl:8"]


def test_items_keep_schema_json_and_site():
    items, _ = items_of(parse_jsonl(json.dumps({"url": "https://x.example/a", "@type": "Recipe", "name": "Ä", "recipeCuisine": "Thai"}), "f"), site="mysite")
    assert items[0].site == "mysite"
    assert items[0].schema_object == {"url": "https://x.example/a", "@type": "Recipe", "name": "Ä", "recipeCuisine": "Thai"}


# -- TSV ----------------------------------------------------------------------------------------

def test_tsv_numbers_items_of_one_url_and_skips_containers():
    graph = {"@context": "https://schema.org", "@graph": [
        {"@type": "WebPage", "name": "The page"},
        {"@type": "Recipe", "name": "First"},
        {"@type": "BreadcrumbList", "itemListElement": []},
        {"@type": "Recipe", "headline": "Second"},
        {"@type": "Recipe", "description": "nameless"},
        {"@type": ["Recipe", "HowTo"], "title": "Third"},
    ]}
    text = "url\tjson\n" + "https://t.example/p\t" + json.dumps(graph) + "\nhttps://t.example/q\t{broken\nno-tab-here\n"
    items, problems = items_of(parse_tsv(text, "d.tsv"))
    assert [(i.url, i.name) for i in items] == [
        ("https://t.example/p", "First"), ("https://t.example/p#1", "Second"), ("https://t.example/p#2", "Third")]
    assert json.loads(items[0].schema_json)["@context"] == "https://schema.org"  # the @graph's context is kept
    reasons = [p.as_tuple() for p in problems]
    assert ("d.tsv:2 item 1", "skipped: container type WebPage") in reasons
    assert ("d.tsv:2 item 3", "skipped: container type BreadcrumbList") in reasons
    assert ("d.tsv:2 item 5", "skipped: no name, headline or title") in reasons
    assert any(w == "d.tsv:3" and "invalid JSON" in r for w, r in reasons)
    assert any(w == "d.tsv:4" and "no tab" in r for w, r in reasons)


def test_container_alone_is_kept():
    text = "https://t.example/org\t" + json.dumps({"@type": "Organization", "name": "Valley Co-op"})
    items, problems = items_of(parse_tsv(text, "o.tsv"))
    assert [i.name for i in items] == ["Valley Co-op"] and not problems


def test_duplicate_urls_last_wins_and_is_reported():
    text = "\n".join([
        json.dumps({"url": "https://d.example/1", "@type": "Recipe", "name": "old"}),
        json.dumps({"url": "https://d.example/2", "@type": "Recipe", "name": "other"}),
        json.dumps({"url": "https://d.example/1", "@type": "Recipe", "name": "new"}),
    ])
    items, problems = items_of(parse_jsonl(text, "dup.jsonl"))
    assert {i.url: i.name for i in items} == {"https://d.example/1": "new", "https://d.example/2": "other"}
    assert [p.as_tuple() for p in problems] == [("dup.jsonl:1", "duplicate url https://d.example/1: replaced by dup.jsonl:3")]


# -- JSON-LD documents --------------------------------------------------------------------------

def test_jsonld_document_shapes():
    single = {"@type": "Recipe", "url": "https://j.example/1", "name": "One"}
    assert [i.url for i in items_of(parse_jsonld_document(json.dumps(single), "a.jsonld"))[0]] == ["https://j.example/1"]

    nested = [
        {"@context": "https://schema.org", "@graph": [
            {"@type": "Recipe", "url": "https://j.example/2", "name": "Two"},
            {"@type": "Event", "@id": "https://j.example/3", "name": "Three"},
        ]},
        {"@type": "Product", "url": "https://j.example/4", "name": "Four"},
        {"@type": "Product", "name": "No url"},
        "a string",
    ]
    items, problems = items_of(parse_jsonld_document(json.dumps(nested), "b.json"))
    assert [(i.url, i.name) for i in items] == [
        ("https://j.example/2", "Two"), ("https://j.example/3", "Three"), ("https://j.example/4", "Four")]
    assert [p.where for p in problems] == ["b.json item 4", "b.json item 5"]

    with pytest.raises(SourceError, match="c.jsonld is not a JSON-LD document"):
        parse_jsonld_document("{oops", "c.jsonld")


def test_jsonld_document_fetched_from_url_groups_urlless_items_under_it():
    doc = [{"@type": "Recipe", "name": "A"}, {"@type": "Recipe", "name": "B"}, {"@type": "Recipe", "name": "C", "url": "https://j.example/c"}]
    items, _ = items_of(parse_jsonld_document(json.dumps(doc), "u", base_url="https://j.example/page"))
    assert [(i.url, i.name) for i in items] == [
        ("https://j.example/page", "A"), ("https://j.example/page#1", "B"), ("https://j.example/c", "C")]


# -- CSV ----------------------------------------------------------------------------------------

def test_csv_columns_become_fields():
    text = ('URL,@type,name,recipeIngredient,description\n'
            'https://c.example/1,Recipe,Soup,"[""leeks"",""potatoes""]",Warm\n'
            'https://c.example/2,,Plain thing,,\n'
            ',Recipe,No url,,\n'
            'https://c.example/3,Recipe,Too,many,values,here\n')
    items, problems = items_of(parse_csv(text, "c.csv", default_type="Product"))
    objs = {i.url: json.loads(i.schema_json) for i in items}
    assert objs["https://c.example/1"] == {"@type": "Recipe", "url": "https://c.example/1", "name": "Soup",
                                           "recipeIngredient": ["leeks", "potatoes"], "description": "Warm"}
    assert objs["https://c.example/2"] == {"@type": "Product", "url": "https://c.example/2", "name": "Plain thing"}
    assert [p.where for p in problems] == ["c.csv:4", "c.csv:5"]


def test_csv_semicolon_delimiter_and_missing_url_column():
    items, _ = items_of(parse_csv("url;name\nhttps://c.example/9;Nine\n", "s.csv"))
    assert [(i.url, i.name, json.loads(i.schema_json)["@type"]) for i in items] == [("https://c.example/9", "Nine", "Thing")]
    with pytest.raises(SourceError, match="no url column"):
        parse_csv("link,name\nhttps://x,y\n", "bad.csv")


# -- HTML ---------------------------------------------------------------------------------------

PAGE = """<!doctype html><html><head><title>t</title>
<script type="application/ld+json">
<!--
{"@context": "https://schema.org", "@graph": [
  {"@type": "WebSite", "name": "Site"},
  {"@type": "Recipe", "name": "Lemon Tart", "description": "line one
line two",},
  {"@type": "BreadcrumbList", "name": "crumbs"}
]}
-->
</script>
<script type="application/ld+json">{"@type": "Recipe", "name": </script>
<script type="text/javascript">var x = {"@type": "Recipe", "name": "not json-ld"};</script>
<script type="Application/LD+JSON; charset=utf-8">[{"@type": "Event", "name": "Tasting"}]</script>
</head><body><p>hello</p></body></html>"""


def test_html_blocks_tolerant_and_broken_block_reported():
    items, problems = items_of(parse_html(PAGE, "https://h.example/p", page_url="https://h.example/p"))
    assert [(i.url, i.name) for i in items] == [("https://h.example/p", "Lemon Tart"), ("https://h.example/p#1", "Tasting")]
    reasons = dict(p.as_tuple() for p in problems)
    assert "invalid JSON-LD" in reasons["https://h.example/p block 2"]
    assert reasons["https://h.example/p item 1"] == "skipped: container type WebSite"


def test_html_without_jsonld_is_a_problem():
    parsed = parse_html("<html><body>nothing</body></html>", "https://h.example/empty", page_url="https://h.example/empty")
    assert not parsed.records and "no JSON-LD" in parsed.problems[0].reason


# -- feeds --------------------------------------------------------------------------------------

RSS = b"""<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0" xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd" xmlns:dc="http://purl.org/dc/elements/1.1/">
<channel><title>Valley Table Talk</title><link>https://pod.example/</link>
<item><title>Chai Wars</title><link>https://pod.example/chai</link>
  <description>&lt;p&gt;Ginger &amp;amp; cardamom&lt;/p&gt;</description>
  <pubDate>Thu, 02 Oct 2025 09:00:00 GMT</pubDate><dc:creator>Dana</dc:creator>
  <enclosure url="https://pod.example/chai.mp3" type="audio/mpeg" length="1234"/>
  <itunes:duration>38:05</itunes:duration><category>tea</category><category>spices</category></item>
<item><title>Show notes only</title><guid isPermaLink="true">https://pod.example/notes</guid><description>plain</description></item>
<item><title>No link</title><guid isPermaLink="false">abc-123</guid></item>
<item><link>https://pod.example/untitled</link></item>
</channel></rss>"""


def test_rss_items_become_episodes_or_articles():
    parsed = parse_feed(RSS, "feed.rss")
    items, problems = items_of(parsed)
    objs = {i.url: json.loads(i.schema_json) for i in items}
    ep = objs["https://pod.example/chai"]
    assert ep["@type"] == "PodcastEpisode" and ep["name"] == "Chai Wars"
    assert ep["description"] == "Ginger & cardamom"
    assert ep["datePublished"] == "2025-10-02T09:00:00+00:00"
    assert ep["duration"] == "PT38M5S"
    assert ep["associatedMedia"]["contentUrl"] == "https://pod.example/chai.mp3"
    assert ep["partOfSeries"] == {"@type": "PodcastSeries", "name": "Valley Table Talk", "url": "https://pod.example/"}
    assert ep["author"]["name"] == "Dana" and ep["keywords"] == "tea, spices"
    art = objs["https://pod.example/notes"]
    assert art["@type"] == "Article" and art["headline"] == "Show notes only"
    assert [p.where for p in problems] == ["feed.rss entry 3", "feed.rss entry 4"]


ATOM = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Valley Blog</title><link href="https://blog.example/"/>
<entry><title>Tick season</title><link rel="alternate" href="https://blog.example/ticks"/><id>urn:uuid:1</id>
  <published>2026-05-14T08:00:00Z</published><author><name>June</name></author>
  <summary type="html">&lt;b&gt;Check&lt;/b&gt; after every walk</summary><category term="health"/></entry>
<entry><title>Audio walk</title><id>https://blog.example/audio</id>
  <link rel="enclosure" type="audio/ogg" href="https://blog.example/walk.ogg"/></entry>
</feed>"""


def test_atom_entries():
    items, problems = items_of(parse_feed(ATOM, "a.atom"))
    objs = {i.url: json.loads(i.schema_json) for i in items}
    assert objs["https://blog.example/ticks"]["@type"] == "Article"
    assert objs["https://blog.example/ticks"]["description"] == "Check after every walk"
    assert objs["https://blog.example/ticks"]["author"] == {"@type": "Person", "name": "June"}
    assert objs["https://blog.example/audio"]["@type"] == "PodcastEpisode"
    assert not problems


def test_feed_rejects_unsafe_or_foreign_xml():
    bomb = b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><rss><channel><title>&b;</title></channel></rss>'
    with pytest.raises(SourceError, match="unsafe XML"):
        parse_feed(bomb, "bomb.xml")
    with pytest.raises(SourceError, match="not an RSS or Atom feed"):
        parse_feed(b"<urlset/>", "x.xml")
    with pytest.raises(SourceError, match="not well-formed"):
        parse_feed(b"<rss><channel>", "cut.xml")


# -- sitemaps -----------------------------------------------------------------------------------

def test_sitemap_kinds_and_gzip():
    urlset = b"""<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
      <url><loc> https://s.example/a </loc></url><url><loc>https://s.example/a</loc></url>
      <url><loc>ftp://s.example/b</loc></url><url><loc>https://s.example/c</loc></url></urlset>"""
    sm = parse_sitemap(gunzip_bounded(gzip.compress(urlset), "s.xml.gz", 10_000), "s.xml.gz")
    assert sm.kind == "urlset" and sm.locations == ["https://s.example/a", "https://s.example/c"]
    assert len(sm.problems) == 1 and "ftp://" in sm.problems[0].reason
    idx = parse_sitemap(b'<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"><sitemap><loc>https://s.example/1.xml</loc></sitemap></sitemapindex>', "i")
    assert idx.kind == "sitemapindex" and idx.locations == ["https://s.example/1.xml"]
    with pytest.raises(SourceError, match="more than 100 bytes"):
        gunzip_bounded(gzip.compress(b"x" * 1000), "big.gz", 100)


# -- detection ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, text, expected", [
    ("a.tsv", "anything", "tsv"),
    ("a.jsonl", "{}", "jsonl"),
    ("a.csv", "x", "csv"),
    ("a.json", '{"@graph": []}', "jsonld"),
    ("a.json", '{"url": "u", "name": "x"}\n{"url": "v", "name": "y"}\n', "jsonl"),
    ("a.json", '{"url": "u", "schema_object": {}}', "jsonl"),
    ("data", "https://x.example/a\t{\"@type\": \"Thing\"}\n", "tsv"),
    ("data", "name,URL,price\nx,https://x,1\n", "csv"),
    ("feed.xml", "<?xml version='1.0'?><!-- c --><rss version='2.0'></rss>", "feed"),
    ("x.xml", "<feed xmlns='http://www.w3.org/2005/Atom'></feed>", "feed"),
    ("x.xml", "<rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'></rdf:RDF>", "feed"),
    ("sitemap.xml.gz", "<urlset></urlset>", "sitemap"),
    ("https://s.example/sitemap", "<sitemapindex></sitemapindex>", "sitemap"),
    ("https://s.example/page.php", "<!DOCTYPE html><html></html>", "html"),
    ("a.htm", "", "html"),
])
def test_detect_format(name, text, expected):
    assert detect_format(name, text) == expected


def test_unknown_content_falls_back_to_content_type_or_none():
    assert sniff_format("just some words") is None
    assert detect_format("https://x.example/feed", "just words", "application/rss+xml; charset=utf-8") == "feed"
    assert detect_format("notes.txt", "just words") is None
