"""Which parser reads a source: by its name's extension first, then by sniffing its content.

Formats: ``tsv``, ``jsonl``, ``jsonld``, ``csv``, ``feed`` (RSS/Atom), ``html``, ``sitemap``.
A ``.json`` file is a JSON-LD document when the whole text is one JSON value, else JSON lines; an
``.xml`` file is a feed or a sitemap by its root element. A content type (for fetched sources) is
the last resort.
"""
from __future__ import annotations

import json
import re
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from .jsonld import WRAPPER_KEYS

FORMATS = ("tsv", "jsonl", "jsonld", "csv", "feed", "html", "sitemap")

_BY_SUFFIX = {".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".jsonld": "jsonld", ".csv": "csv",
              ".html": "html", ".htm": "html", ".rss": "feed", ".atom": "feed"}
_BY_CONTENT_TYPE = {"text/html": "html", "application/xhtml+xml": "html", "application/rss+xml": "feed",
                    "application/atom+xml": "feed", "application/ld+json": "jsonld", "text/csv": "csv",
                    "text/tab-separated-values": "tsv", "application/x-ndjson": "jsonl", "application/jsonl": "jsonl"}
_COMMENTS = re.compile(r"<!--.*?-->", re.S)
_FIRST_TAG = re.compile(r"<([A-Za-z_][\w:.-]*)")


def xml_root_name(text: str) -> str:
    """The local name of the first element (lower case), '' when there is none."""
    m = _FIRST_TAG.search(_COMMENTS.sub("", text[:20_000]))
    return m.group(1).rsplit(":", 1)[-1].lower() if m else ""


def _sniff_json(text: str) -> str:
    try:
        value = json.loads(text, strict=False)
    except json.JSONDecodeError:
        first = text.split("\n", 1)[0]
        try:
            json.loads(first, strict=False)
            return "jsonl"
        except json.JSONDecodeError:
            return "jsonld"  # let the JSON-LD parser explain what is wrong
    if isinstance(value, dict) and any(k in value for k in WRAPPER_KEYS):
        return "jsonl"
    return "jsonld"


def sniff_format(text: str) -> str | None:
    body = text.lstrip("\ufeff \t\r\n")
    if body.startswith("<"):
        root = xml_root_name(body)
        if root in ("rss", "feed", "rdf"):
            return "feed"
        if root in ("urlset", "sitemapindex"):
            return "sitemap"
        if root in ("html", "head", "body") or "application/ld+json" in body.lower():
            return "html"
        return None
    if body.startswith(("{", "[")):
        return _sniff_json(body)
    first = body.split("\n", 1)[0]
    if "\t" in first and first.split("\t", 1)[1].lstrip().startswith(("{", "[")):
        return "tsv"
    for delimiter in (",", ";", "\t"):
        if "url" in (c.strip().strip('"').lower() for c in first.split(delimiter)):
            return "csv"
    return None


def _suffix(name: str) -> str:
    path = urlsplit(name).path if "://" in name else name
    suffixes = PurePosixPath(path.replace("\\", "/")).suffixes
    suffixes = [s.lower() for s in suffixes if s.lower() != ".gz"]
    return suffixes[-1] if suffixes else ""


def detect_format(name: str, text: str, content_type: str = "") -> str | None:
    """The format of a source called `name` whose (decoded) content is `text`; None if unknown."""
    suffix = _suffix(name)
    if suffix in _BY_SUFFIX:
        return _BY_SUFFIX[suffix]
    sniffed = sniff_format(text)
    if sniffed:
        return sniffed
    return _BY_CONTENT_TYPE.get(content_type.split(";", 1)[0].strip().lower())
