"""A source (a file path or an http(s) URL) → records and problems, whatever its format.

`SourceReader.read` opens the source (reading the file or fetching the URL), unpacks gzip, picks the
parser (`detect.py`, unless a format is named) and, for a sitemap, fetches the pages it lists
(a sitemap index: its child sitemaps first), at most ``max_pages`` of them, a few at a time, all
within ``crawl_timeout_s`` (counted from the first fetch; each fetch also within ``fetch_timeout_s``).
A source that cannot be opened or parsed at all raises `SourceError`; a page that fails, or that the
crawl's deadline leaves unfetched, is a problem.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from ..config.settings import IngestSettings
from ..core.errors import SourceError
from .detect import FORMATS, detect_format
from .feeds import parse_feed
from .fetch import Deadline, Fetcher, decode_body
from .html_jsonld import parse_html
from .jsonld import parse_jsonl, parse_jsonld_document, parse_tsv
from .records import Parsed, Problem
from .sitemaps import gunzip_bounded, parse_sitemap
from .tabular import parse_csv

MAX_SITEMAP_DEPTH = 3


def is_url(source: str) -> bool:
    return urlsplit(source).scheme in ("http", "https")


class SourceReader:
    def __init__(self, settings: IngestSettings, *, fetcher: Fetcher | None = None, concurrency: int = 4):
        self._fetcher = fetcher or Fetcher(settings)
        self._max_bytes = settings.max_fetch_bytes
        self._max_pages = settings.max_pages
        self._crawl_timeout = settings.crawl_timeout_s
        self._concurrency = max(1, concurrency)

    def read(self, source: str, *, fmt: str | None = None, default_type: str = "Thing") -> Parsed:
        if fmt is not None and fmt not in FORMATS:
            raise SourceError(f"unknown format {fmt!r} for {source}; use one of {', '.join(FORMATS)}")
        url = source if is_url(source) else None
        trust = (url,) if url else ()  # the operator named this URL: its origin may be private, others may not
        crawl = Deadline(self._crawl_timeout, "ingest.crawl_timeout_s")
        data, content_type = self._open(source)
        text = decode_body(data, content_type)
        fmt = fmt or detect_format(source, text, content_type)
        if fmt is None:
            raise SourceError(f"cannot tell the format of {source}: give it an extension "
                              f"({', '.join(sorted({'.tsv', '.jsonl', '.json', '.csv', '.xml', '.html'}))}) or name the format")
        if fmt == "sitemap":
            return self._crawl(data, source, crawl, trust)
        return _parse(fmt, text, data, source, url=url, default_type=default_type)

    def _open(self, source: str) -> tuple[bytes, str]:
        if is_url(source):
            fetched = self._fetcher.fetch(source, trust=(source,))
            return gunzip_bounded(fetched.body, source, self._max_bytes), fetched.content_type
        path = Path(source).expanduser()
        if not path.exists():
            raise SourceError(f"{source}: no such file (give a path to a data file or an http(s) URL)")
        if path.is_dir():
            raise SourceError(f"{source} is a folder; give one file (or load each file of it in turn)")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise SourceError(f"{source} cannot be read: {e.strerror or e}") from e
        return gunzip_bounded(data, source, max(self._max_bytes, len(data) * 20)), ""

    # -- sitemaps -------------------------------------------------------------------------------

    def _crawl(self, data: bytes, origin: str, deadline: Deadline, trust: tuple[str, ...]) -> Parsed:
        out = Parsed()
        pages: list[str] = []
        self._collect_pages(data, origin, pages, out, 0, deadline, trust)
        if len(pages) > self._max_pages:
            out.problems.append(Problem(origin, f"lists {len(pages)} pages; only the first {self._max_pages} "
                                                "were fetched (raise ingest.max_pages to load more)"))
            del pages[self._max_pages:]
        if not pages:
            raise SourceError(f"{origin} is a sitemap with no usable page URLs")
        with ThreadPoolExecutor(self._concurrency, thread_name_prefix="ingest-fetch") as pool:
            for result in pool.map(lambda page: self._read_page(page, deadline, trust), pages):
                out.extend(result)
        return out

    def _collect_pages(self, data: bytes, origin: str, pages: list[str], out: Parsed, depth: int,
                       deadline: Deadline, trust: tuple[str, ...]) -> None:
        sitemap = parse_sitemap(data, origin)
        out.problems.extend(sitemap.problems)
        if sitemap.kind == "urlset":
            seen = set(pages)
            pages.extend(u for u in sitemap.locations if u not in seen)
            return
        if depth >= MAX_SITEMAP_DEPTH:
            out.problems.append(Problem(origin, f"sitemap indexes nested deeper than {MAX_SITEMAP_DEPTH}; not followed"))
            return
        for child in sitemap.locations:
            if len(pages) > self._max_pages:
                out.problems.append(Problem(child, "not fetched: the page limit (ingest.max_pages) was reached"))
                continue
            try:
                body = gunzip_bounded(self._fetcher.fetch(child, within=deadline, trust=trust).body, child, self._max_bytes)
                self._collect_pages(body, child, pages, out, depth + 1, deadline, trust)
            except SourceError as e:
                out.problems.append(Problem(child, e.message))

    def _read_page(self, url: str, deadline: Deadline, trust: tuple[str, ...]) -> Parsed:
        try:
            fetched = self._fetcher.fetch(url, within=deadline, trust=trust)
            text = fetched.text()
            fmt = detect_format(url, text, fetched.content_type) or "html"
            if fmt == "sitemap":
                return Parsed(problems=[Problem(url, "a sitemap listed as a page of a <urlset>; list it in a <sitemapindex>")])
            return _parse(fmt, text, fetched.body, url, url=url, default_type="Thing")
        except SourceError as e:
            return Parsed(problems=[Problem(url, e.message)])


def _parse(fmt: str, text: str, data: bytes, origin: str, *, url: str | None, default_type: str) -> Parsed:
    if fmt == "tsv":
        return parse_tsv(text, origin)
    if fmt == "jsonl":
        return parse_jsonl(text, origin)
    if fmt == "jsonld":
        return parse_jsonld_document(text, origin, base_url=url)
    if fmt == "csv":
        return parse_csv(text, origin, default_type=default_type)
    if fmt == "feed":
        return parse_feed(data, origin)
    if fmt == "html":
        return parse_html(text, origin, page_url=url)
    raise SourceError(f"{origin}: a {fmt} cannot be read here")
