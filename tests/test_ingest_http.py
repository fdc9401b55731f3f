"""URL sources against a local HTTP server (127.0.0.1 only): feeds, sitemaps, pages, limits, timeouts."""
from __future__ import annotations

import gzip
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nlweb_local.config.settings import IngestSettings
from nlweb_local.core.errors import SourceError
from nlweb_local.ingest import Ingestor
from nlweb_local.ingest.fetch import USER_AGENT, Fetcher


@dataclass
class Route:
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    status: int = 200
    location: str | None = None
    hang: bool = False
    send_length: bool = True
    trickle: str | None = None  # "headers" or "body": sent a byte every 0.2 s from there on


class LocalSite:
    """A tiny web server: `routes[path] = Route(...)`; records each request's path and User-Agent."""

    def __init__(self):
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str]] = []
        self.release = threading.Event()
        self.trickled: dict[str, tuple[int, int]] = {}  # path -> (bytes sent, bytes in the response)
        self.trickle_done = threading.Event()
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                site.requests.append((self.path, self.headers.get("User-Agent", "")))
                route = site.routes.get(self.path)
                if route is None:
                    self.send_error(404, "Not Found")
                    return
                if route.hang:
                    site.release.wait(10)
                    return
                if route.trickle:
                    self.send_trickle(route)
                    return
                self.send_response(route.status)
                if route.location:
                    self.send_header("Location", route.location)
                self.send_header("Content-Type", route.content_type)
                if route.send_length:
                    self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                self.wfile.write(route.body)

            def send_trickle(self, route):
                head = (f"HTTP/1.1 200 OK\r\nContent-Type: {route.content_type}\r\n"
                        f"Content-Length: {len(route.body)}\r\nConnection: close\r\n\r\n").encode()
                raw = head + route.body
                sent = 0 if route.trickle == "headers" else len(head)
                try:
                    self.wfile.write(raw[:sent])
                    while sent < len(raw) and not site.release.is_set():
                        self.wfile.write(raw[sent:sent + 1])
                        sent += 1
                        time.sleep(0.2)
                except OSError:  # the client hung up
                    pass
                site.trickled[self.path] = (sent, len(raw))
                site.trickle_done.set()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture()
def web():
    site = LocalSite()
    site.thread.start()
    yield site
    site.release.set()
    site.server.shutdown()
    site.server.server_close()


def make_ingestor(embedder, store, **settings):
    return Ingestor(embedder, store, IngestSettings(**{"fetch_timeout_s": 5, **settings}), progress=False)


def page(*objects) -> bytes:
    blocks = "".join(f'<script type="application/ld+json">{json.dumps(o)}</script>' for o in objects)
    return f"<!doctype html><html><head>{blocks}</head><body>hi</body></html>".encode()


def names(store, site):
    return {it.url: it.name for it in store.sample(site, 1000)}


RSS = """<?xml version="1.0"?><rss version="2.0"><channel><title>Valley Table Talk</title><link>{base}/</link>
<item><title>Trout season</title><link>{base}/ep/1</link><description>Fishing talk</description>
<enclosure url="{base}/ep/1.mp3" type="audio/mpeg" length="1"/></item>
<item><title>Written recap</title><link>{base}/recap</link><description>Notes</description></item>
</channel></rss>"""

ATOM = """<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom"><title>Blog</title>
<entry><title>Tick checks</title><link href="{base}/ticks"/><id>urn:1</id><summary>Check often</summary></entry>
</feed>"""


def test_rss_feed_by_url(web, embedder, store):
    web.routes["/feed"] = Route(RSS.format(base=web.base).encode(), "application/rss+xml")
    report = make_ingestor(embedder, store).ingest(web.url("/feed"), "pod")
    assert report.loaded == 2 and report.skipped == []
    objs = {it.url: json.loads(it.schema_json) for it in store.sample("pod", 10)}
    assert objs[web.url("/ep/1")]["@type"] == "PodcastEpisode"
    assert objs[web.url("/recap")]["@type"] == "Article"
    assert web.requests == [("/feed", USER_AGENT)]


def test_atom_feed_by_url_sniffed_without_extension_or_type(web, embedder, store):
    web.routes["/blog"] = Route(ATOM.format(base=web.base).encode(), "application/octet-stream")
    make_ingestor(embedder, store).ingest(web.url("/blog"), "blog")
    assert names(store, "blog") == {web.url("/ticks"): "Tick checks"}


def test_sitemap_index_to_sitemaps_to_pages(web, embedder, store):
    b = web.base
    web.routes["/sitemap_index.xml"] = Route(f"""<?xml version="1.0"?>
<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
<sitemap><loc>{b}/sitemap-recipes.xml</loc></sitemap>
<sitemap><loc>{b}/sitemap-gear.xml.gz</loc></sitemap>
<sitemap><loc>{b}/sitemap-gone.xml</loc></sitemap></sitemapindex>""".encode(), "application/xml")
    web.routes["/sitemap-recipes.xml"] = Route(f"""<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
<url><loc>{b}/recipes/tart</loc></url><url><loc>{b}/recipes/pair</loc></url>
<url><loc>{b}/recipes/missing</loc></url><url><loc>{b}/old-page</loc></url>
<url><loc>{b}/about</loc></url></urlset>""".encode(), "text/xml")
    web.routes["/sitemap-gear.xml.gz"] = Route(gzip.compress(
        f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"><url><loc>{b}/gear/stove</loc></url></urlset>'.encode()),
        "application/gzip")
    web.routes["/recipes/tart"] = Route(page({"@context": "https://schema.org", "@graph": [
        {"@type": "WebPage", "name": "Lemon tart page"}, {"@type": "Recipe", "name": "Lemon Tart"},
        {"@type": "BreadcrumbList", "name": "Home > Recipes"}]}))
    web.routes["/recipes/pair"] = Route(page({"@type": "Recipe", "name": "Pho"}, {"@type": "Recipe", "name": "Spring Rolls"}))
    web.routes["/old-page"] = Route(status=301, location="/new-page")
    web.routes["/new-page"] = Route(page({"@type": "Event", "name": "Moved Event"}))
    web.routes["/gear/stove"] = Route(page({"@type": "Product", "name": "JetFlame Stove"}))
    web.routes["/about"] = Route(b"<html><body>About us, no structured data</body></html>")

    report = make_ingestor(embedder, store).ingest(web.url("/sitemap_index.xml"), "crawl")
    assert names(store, "crawl") == {
        f"{b}/recipes/tart": "Lemon Tart", f"{b}/recipes/pair": "Pho", f"{b}/recipes/pair#1": "Spring Rolls",
        f"{b}/old-page": "Moved Event", f"{b}/gear/stove": "JetFlame Stove"}
    assert report.loaded == 5
    skipped = dict(report.skipped)
    assert "HTTP 404" in skipped[f"{b}/sitemap-gone.xml"]
    assert "HTTP 404" in skipped[f"{b}/recipes/missing"]
    assert "no JSON-LD" in skipped[f"{b}/about"]
    assert skipped[f"{b}/recipes/tart item 1"] == "skipped: container type WebPage"
    assert skipped[f"{b}/recipes/tart item 3"] == "skipped: container type BreadcrumbList"
    assert all(ua == USER_AGENT for _, ua in web.requests)


def test_sitemap_page_limit(web, embedder, store):
    locs = "".join(f"<url><loc>{web.base}/p/{i}</loc></url>" for i in range(5))
    web.routes["/sitemap.xml"] = Route(f"<urlset>{locs}</urlset>".encode(), "text/xml")
    for i in range(5):
        web.routes[f"/p/{i}"] = Route(page({"@type": "Thing", "name": f"Page {i}"}))
    report = make_ingestor(embedder, store, max_pages=2).ingest(web.url("/sitemap.xml"), "lim")
    assert report.loaded == 2 and sorted(names(store, "lim").values()) == ["Page 0", "Page 1"]
    assert any("only the first 2" in reason for _, reason in report.skipped)
    assert sorted(p for p, _ in web.requests) == ["/p/0", "/p/1", "/sitemap.xml"]


def test_top_level_404_is_a_source_error(web, embedder, store):
    with pytest.raises(SourceError, match=r"/nowhere\.xml: HTTP 404"):
        make_ingestor(embedder, store).ingest(web.url("/nowhere.xml"), "s")


def test_body_over_the_size_limit_is_refused(web, embedder, store):
    big = page({"@type": "Thing", "name": "x" * 5000})
    web.routes["/big-declared"] = Route(big)
    web.routes["/big-streamed"] = Route(big, send_length=False)
    ingestor = make_ingestor(embedder, store, max_fetch_bytes=2048)
    with pytest.raises(SourceError, match=r"big-declared is \d+ bytes, over the limit of 2048"):
        ingestor.ingest(web.url("/big-declared"), "s")
    with pytest.raises(SourceError, match="big-streamed is larger than the limit of 2048 bytes"):
        ingestor.ingest(web.url("/big-streamed"), "s")
    assert store.count() == 0


def test_hanging_server_hits_the_timeout_quickly(web, embedder, store):
    web.routes["/slow"] = Route(hang=True)
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"/slow: no answer within 0\.5 s"):
        make_ingestor(embedder, store, fetch_timeout_s=0.5).ingest(web.url("/slow"), "s")
    assert time.monotonic() - started < 3


def test_hanging_page_in_a_sitemap_is_a_problem_not_a_failure(web, embedder, store):
    web.routes["/sitemap.xml"] = Route(f"<urlset><url><loc>{web.base}/ok</loc></url><url><loc>{web.base}/slow</loc></url></urlset>".encode(), "text/xml")
    web.routes["/ok"] = Route(page({"@type": "Thing", "name": "Fine"}))
    web.routes["/slow"] = Route(hang=True)
    report = make_ingestor(embedder, store, fetch_timeout_s=0.5).ingest(web.url("/sitemap.xml"), "s")
    assert report.loaded == 1
    assert any(w == web.url("/slow") and "no answer" in r for w, r in report.skipped)


def test_connection_refused_and_bad_scheme(embedder, store):
    fetcher = Fetcher(IngestSettings(fetch_timeout_s=2))
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as probe:
        port = probe.server_address[1]  # bound then closed below: nothing listens there afterwards
    with pytest.raises(SourceError, match="cannot connect"):
        fetcher.fetch(f"http://127.0.0.1:{port}/x", trust=[f"http://127.0.0.1:{port}/"])  # (the operator's own URL)
    with pytest.raises(SourceError, match="only http and https"):
        fetcher.fetch("file:///etc/passwd")


def test_jsonld_document_by_url_uses_the_url_for_itemless_urls(web, embedder, store):
    web.routes["/data.jsonld"] = Route(json.dumps([{"@type": "Recipe", "name": "A"}, {"@type": "Recipe", "name": "B"}]).encode(),
                                       "application/ld+json")
    make_ingestor(embedder, store).ingest(web.url("/data.jsonld"), "ld")
    assert names(store, "ld") == {web.url("/data.jsonld"): "A", web.url("/data.jsonld") + "#1": "B"}


@pytest.mark.parametrize("phase", ["headers", "body"])
def test_a_trickling_server_is_cut_off_at_the_fetch_deadline(web, phase):
    """A byte every 0.2 s never trips a per-read timeout; the fetch deadline covers the whole document."""
    web.routes["/trickle"] = Route(page({"@type": "Thing", "name": "Slow"}), trickle=phase)
    with pytest.raises(SourceError) as caught:
        Fetcher(IngestSettings(fetch_timeout_s=1)).fetch(web.url("/trickle"), trust=[web.base])
    what = "no answer" if phase == "headers" else "not fully received"
    assert caught.value.message == f"{web.url('/trickle')}: {what} within 1 s (ingest.fetch_timeout_s)"
    assert web.trickle_done.wait(10)
    sent, total = web.trickled["/trickle"]
    assert sent < total, "the client read the whole trickle instead of giving up at its deadline"


def test_a_sitemap_crawl_stops_at_its_deadline(web, embedder, store):
    b = web.base
    slow = [f"/t/{i}" for i in range(6)]
    web.routes["/sitemap.xml"] = Route(("<urlset>" + "".join(f"<url><loc>{b}{p}</loc></url>" for p in ["/fast", *slow])
                                        + "</urlset>").encode(), "text/xml")
    web.routes["/fast"] = Route(page({"@type": "Thing", "name": "Quick page"}))
    for p in slow:
        web.routes[p] = Route(page({"@type": "Thing", "name": f"Slow {p}"}), trickle="body")
    report = make_ingestor(embedder, store, fetch_timeout_s=30, crawl_timeout_s=1).ingest(web.url("/sitemap.xml"), "c")
    assert report.loaded == 1 and names(store, "c") == {f"{b}/fast": "Quick page"}
    skipped = dict(report.skipped)
    assert set(skipped) == {b + p for p in slow}
    assert all("1 s" in why and "ingest.crawl_timeout_s" in why for why in skipped.values()), skipped
