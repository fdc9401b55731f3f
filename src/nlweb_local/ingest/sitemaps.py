"""Sitemaps (sitemaps.org): a ``urlset`` lists pages, a ``sitemapindex`` lists further sitemaps.

Pure parsing only; `sources.py` fetches what a sitemap names. Gzipped sitemaps (``.xml.gz``) are
unpacked here, bounded by the same byte limit as any fetch.
"""
from __future__ import annotations

import gzip
import io
import zlib
from dataclasses import dataclass, field

from ..core.errors import SourceError
from .records import Problem, usable_url
from .xmlutil import child_text, children, local_name, parse_xml

GZIP_MAGIC = b"\x1f\x8b"


@dataclass(slots=True)
class Sitemap:
    kind: str  # "urlset" or "sitemapindex"
    locations: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def gunzip_bounded(data: bytes, origin: str, max_bytes: int) -> bytes:
    """`data` unpacked when gzipped (else as is); refuses more than `max_bytes` once unpacked."""
    if not data.startswith(GZIP_MAGIC):
        return data
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            out = f.read(max_bytes + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise SourceError(f"{origin} is a damaged gzip file: {e}") from e
    if len(out) > max_bytes:
        raise SourceError(f"{origin} unpacks to more than {max_bytes} bytes (raise ingest.max_fetch_bytes to allow it)")
    return out


def is_sitemap_root(name: str) -> bool:
    return name in ("urlset", "sitemapindex")


def parse_sitemap(data: bytes | str, origin: str) -> Sitemap:
    root = parse_xml(data, origin, "a sitemap")
    kind = local_name(root.tag)
    if not is_sitemap_root(kind):
        raise SourceError(f"{origin} is XML but not a sitemap (its root element is <{kind}>, not <urlset> or <sitemapindex>)")
    entry_name = "url" if kind == "urlset" else "sitemap"
    out = Sitemap(kind)
    seen: set[str] = set()
    for i, entry in enumerate(children(root, entry_name), start=1):
        raw = child_text(entry, "loc")
        loc = usable_url(raw, http_only=True)
        if loc is None:
            out.problems.append(Problem(f"{origin} <{entry_name}> {i}", f"no http(s) <loc> (got {raw[:80]!r})"))
        elif loc not in seen:
            seen.add(loc)
            out.locations.append(loc)
    return out
