"""Records → the items that get stored, by NLWeb's rules.

* One stored item per schema.org object. Within one record (a line, a page, a feed entry) the first
  object gets the record's URL and the i-th after it ``url#i``; numbering counts only the objects
  that are kept.
* Its name is the first of name / headline / title (`core.item_text.item_name`); an object with
  none is skipped as a problem.
* Page furniture: an object whose ``@type`` is only one of `CONTAINER_TYPES` (breadcrumbs, the
  website, the page itself, the publisher, images, navigation) is skipped ("skipped: container
  type") when the same record also has other objects; alone, it is kept, so a site made only of
  e.g. Organization pages still loads.
* A URL met twice in one source: the later item wins, and the earlier one is reported.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

from ..core.item_text import item_name
from ..core.types import Item
from .records import Problem, Record

CONTAINER_TYPES = frozenset({
    "BreadcrumbList", "WebSite", "WebPage", "Organization", "ImageObject", "SiteNavigationElement",
    "WPHeader", "WPFooter", "WPSideBar",
})


def _types(obj: dict[str, Any]) -> list[str]:
    t = obj.get("@type")
    values = t if isinstance(t, list) else [t]
    return [v.rsplit("/", 1)[-1].rsplit(":", 1)[-1] for v in values if isinstance(v, str) and v]


def is_container(obj: dict[str, Any]) -> bool:
    types = _types(obj)
    return bool(types) and all(t in CONTAINER_TYPES for t in types)


def build_items(records: Iterable[Record], site: str) -> tuple[list[Item], list[Problem]]:
    """The items to store (one per url, last wins) and every problem met, in source order."""
    problems: list[Problem] = []
    by_url: dict[str, tuple[Item, str]] = {}
    for rec in records:
        if not rec.url:
            problems.append(Problem(rec.where, "skipped: no url"))
            continue
        objects = list(enumerate(rec.objects, start=1))
        many = len(objects) > 1
        if any(not is_container(o) for _, o in objects):
            for k, o in objects:
                if is_container(o):
                    problems.append(Problem(f"{rec.where} item {k}" if many else rec.where,
                                            f"skipped: container type {'/'.join(_types(o))}"))
            objects = [(k, o) for k, o in objects if not is_container(o)]
        kept = 0
        for k, obj in objects:
            where = f"{rec.where} item {k}" if many else rec.where
            name = item_name(obj)
            if not name:
                problems.append(Problem(where, "skipped: no name, headline or title"))
                continue
            url = rec.url if kept == 0 else f"{rec.url}#{kept}"
            kept += 1
            if url in by_url:
                problems.append(Problem(by_url[url][1], f"duplicate url {url}: replaced by {where}"))
                del by_url[url]  # re-insert below so that source order follows the winner
            item = Item(url=url, name=name, site=site, schema_json=json.dumps(obj, ensure_ascii=False))
            by_url[url] = (item, where)
    return [item for item, _ in by_url.values()], problems
