"""HTML pages → the schema.org items in their ``<script type="application/ld+json">`` blocks.

Every block is read (stdlib `html.parser`); a broken block is a problem and the others still load.
Common breakage is tolerated: HTML comment or CDATA wrappers, a trailing semicolon, raw newlines in
strings and trailing commas. A fetched page's items all belong to the page URL (the first is the
page, the next ``page#1`` ...); a local file without a URL keys each item by its own ``url``.
"""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from typing import Any

from .jsonld import records_from_value
from .records import Parsed, Problem

_WRAPPERS = re.compile(r"^\s*(?://\s*)?(?:<!--|<!\[CDATA\[)|(?://\s*)?(?:-->|\]\]>)\s*$")
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


class _LdJsonBlocks(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[str] = []
        self._current: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            kind = (dict(attrs).get("type") or "").split(";", 1)[0].strip().lower()
            self._current = [] if kind == "application/ld+json" else None

    def handle_data(self, data: str) -> None:
        if self._current is not None:
            self._current.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._current is not None:
            self.blocks.append("".join(self._current))
            self._current = None


def ld_json_blocks(html_text: str) -> list[str]:
    """The raw text of every JSON-LD script block, in page order."""
    parser = _LdJsonBlocks()
    parser.feed(html_text)
    parser.close()
    if parser._current:  # an unclosed block at the end of the page
        parser.blocks.append("".join(parser._current))
    return parser.blocks


def _load_block(raw: str) -> Any:
    text = _WRAPPERS.sub("", raw.strip()).strip().rstrip(";").strip()
    try:
        return json.loads(text, strict=False)
    except json.JSONDecodeError:
        return json.loads(_TRAILING_COMMA.sub(r"\1", text), strict=False)


def parse_html(html_text: str, origin: str, *, page_url: str | None = None) -> Parsed:
    out = Parsed()
    blocks = ld_json_blocks(html_text)
    values: list[Any] = []
    for n, raw in enumerate(blocks, start=1):
        if not raw.strip():
            out.problems.append(Problem(f"{origin} block {n}", "empty JSON-LD block"))
            continue
        try:
            values.append(_load_block(raw))
        except json.JSONDecodeError as e:
            out.problems.append(Problem(f"{origin} block {n}", f"invalid JSON-LD: {e.msg} (line {e.lineno}, column {e.colno})"))
    if not blocks:
        out.problems.append(Problem(origin, "no JSON-LD (<script type=\"application/ld+json\">) on the page"))
    elif values:
        out.extend(records_from_value(values, origin, group_url=page_url))
    return out
