"""JSON-based inputs: JSON-LD documents, JSON lines and NLWeb's TSV (``url<TAB>json-ld``).

What each accepts, exactly:

* **JSON-LD document** — one JSON value: an object, an array, an object with ``@graph``, or any
  nesting of those. Each object is one item, keyed by its own ``url`` (or an http(s) ``@id``). When
  the document was fetched from a URL (`base_url`), objects without their own URL belong to it.
* **JSON lines** — one JSON value per line; blank lines are ignored. A line is either
  a *wrapper* ``{"url": ..., "schema_object" | "json_ld" | "schema_json": <item(s) or a string of JSON>}``
  whose items all belong to ``url``, or an *item* (object, ``@graph`` object or array) read like a
  JSON-LD document; an item line with its own ``url`` keeps all its ``@graph`` members under it.
* **TSV** — ``url<TAB>json-ld`` per line, split at the first tab; every item of the JSON-LD belongs
  to ``url``. A first line ``url<TAB>...`` that is not JSON is taken for a header and skipped.

A line or item that cannot be used is a `Problem` with its line number or item index; the rest loads.
"""
from __future__ import annotations

import json
from typing import Any

from ..core.errors import SourceError
from .records import Parsed, Problem, Record, expand_jsonld, url_of, usable_url

WRAPPER_KEYS = ("schema_object", "json_ld", "schema_json")


def _json_error(e: json.JSONDecodeError) -> str:
    return f"invalid JSON: {e.msg} (column {e.colno})"


def records_from_value(value: Any, where: str, *, group_url: str | None = None,
                       base_url: str | None = None) -> Parsed:
    """Records from a parsed JSON-LD value.

    `group_url` set: every item belongs to it (one record). Otherwise each item is keyed by its own
    URL, falling back to `base_url`; items with neither are problems.
    """
    out = Parsed()
    members = expand_jsonld(value)
    if not members:
        out.problems.append(Problem(where, "no schema.org items (empty array or @graph)"))
        return out
    grouped: list[dict[str, Any]] = []
    many = len(members) > 1
    for i, obj in enumerate(members, start=1):
        here = f"{where} item {i}" if many else where
        if not isinstance(obj, dict):
            out.problems.append(Problem(here, f"not a JSON object but {type(obj).__name__}"))
            continue
        own = url_of(obj)
        if group_url is not None or (own is None and base_url is not None):
            grouped.append(obj)
        elif own is None:
            out.problems.append(Problem(here, "no url (give the item a \"url\" or an http(s) \"@id\")"))
        else:
            out.records.append(Record(own, [obj], here))
    if grouped:
        out.records.insert(0, Record(group_url or base_url, grouped, where))
    return out


def parse_jsonld_document(text: str, origin: str, *, base_url: str | None = None) -> Parsed:
    try:
        value = json.loads(text, strict=False)
    except json.JSONDecodeError as e:
        raise SourceError(f"{origin} is not a JSON-LD document: {e.msg} at line {e.lineno}, column {e.colno}") from e
    return records_from_value(value, origin, base_url=base_url)


def _jsonl_line(value: Any, where: str) -> Parsed:
    if isinstance(value, dict) and any(k in value for k in WRAPPER_KEYS):
        key = next(k for k in WRAPPER_KEYS if k in value)
        url = usable_url(value.get("url"))
        if url is None:
            return Parsed(problems=[Problem(where, f"a line with \"{key}\" needs a \"url\"")])
        inner = value[key]
        if isinstance(inner, str):
            try:
                inner = json.loads(inner, strict=False)
            except json.JSONDecodeError as e:
                return Parsed(problems=[Problem(where, f"\"{key}\" holds {_json_error(e)}")])
        return records_from_value(inner, where, group_url=url)
    if isinstance(value, dict):
        return records_from_value(value, where, group_url=url_of(value))
    if isinstance(value, list):
        return records_from_value(value, where)
    return Parsed(problems=[Problem(where, f"expected a JSON object or array, got {type(value).__name__}")])


def parse_jsonl(text: str, origin: str) -> Parsed:
    out = Parsed()
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{origin}:{lineno}"
        try:
            value = json.loads(line, strict=False)
        except json.JSONDecodeError as e:
            out.problems.append(Problem(where, _json_error(e)))
            continue
        out.extend(_jsonl_line(value, where))
    return out


def parse_tsv(text: str, origin: str) -> Parsed:
    out = Parsed()
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{origin}:{lineno}"
        if "\t" not in line:
            out.problems.append(Problem(where, "no tab between the url and the JSON-LD"))
            continue
        raw_url, raw_json = line.split("\t", 1)
        if lineno == 1 and raw_url.strip().lower() == "url" and not raw_json.lstrip().startswith(("{", "[")):
            continue  # a header line
        url = usable_url(raw_url)
        if url is None:
            out.problems.append(Problem(where, f"first column is not a url: {raw_url[:80]!r}"))
            continue
        try:
            value = json.loads(raw_json, strict=False)
        except json.JSONDecodeError as e:
            out.problems.append(Problem(where, _json_error(e)))
            continue
        out.extend(records_from_value(value, where, group_url=url))
    return out
