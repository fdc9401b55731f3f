"""What every parser produces: records (schema.org objects grouped by the URL they belong to) and problems.

A `Record` is one unit of a source that owns a URL: a TSV or JSON line, a feed entry, a fetched page,
an object of a JSON-LD document. It holds every schema.org object found there; `items.py` turns each
object into one stored item (the i-th, i > 0, gets ``url#i``). A `Problem` is a part of a source
that could not be used, with where it is (``source:line``, ``source item 3``, a page URL) and why.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class Problem:
    where: str
    reason: str

    def as_tuple(self) -> tuple[str, str]:
        return (self.where, self.reason)


@dataclass(slots=True)
class Record:
    url: str | None
    objects: list[dict[str, Any]]
    where: str


@dataclass(slots=True)
class Parsed:
    """A parser's answer: the records it could read and the problems it met on the way."""

    records: list[Record] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def extend(self, other: "Parsed") -> None:
        self.records.extend(other.records)
        self.problems.extend(other.problems)


def expand_jsonld(value: Any) -> list[Any]:
    """Flatten a JSON-LD value into its top-level items: arrays and ``@graph`` (at any depth) are opened.

    A ``@graph`` wrapper's ``@context`` is copied into the items that have none. Non-object members
    are returned as they are, so that the caller can report them.
    """
    out: list[Any] = []
    _expand(value, None, out)
    return out


def _expand(value: Any, context: Any, out: list[Any]) -> None:
    if isinstance(value, list):
        for v in value:
            _expand(v, context, out)
    elif isinstance(value, dict) and "@graph" in value:
        inner_ctx = value.get("@context", context)
        _expand(value["@graph"], inner_ctx, out)
    elif isinstance(value, dict) and context is not None and "@context" not in value:
        out.append({"@context": context, **value})
    else:
        out.append(value)


def usable_url(value: Any, *, http_only: bool = False) -> str | None:
    """`value` as an absolute URL (a list gives its first usable member), else None.

    Any scheme is accepted unless `http_only` (used for ``@id``, which is often a blank node or a
    fragment like ``#recipe`` rather than an address).
    """
    if isinstance(value, list):
        for v in value:
            u = usable_url(v, http_only=http_only)
            if u:
                return u
        return None
    if isinstance(value, dict):
        return usable_url(value.get("@id") or value.get("url"), http_only=http_only)
    if not isinstance(value, str):
        return None
    u = value.strip()
    if not u or any(c.isspace() for c in u):
        return None
    parts = urlsplit(u)
    if http_only:
        return u if parts.scheme in ("http", "https") and parts.netloc else None
    return u if parts.scheme and (parts.netloc or parts.path) else None


def url_of(obj: dict[str, Any]) -> str | None:
    """An item's own URL: its ``url``, else its ``@id`` when that is an http(s) address."""
    return usable_url(obj.get("url")) or usable_url(obj.get("@id"), http_only=True)
