"""Safe XML parsing (defusedxml) and the few helpers the feed and sitemap parsers share."""
from __future__ import annotations

import html
import re
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from ..core.errors import SourceError

_TAGS = re.compile(r"<[^>]+>")
_WS = re.compile(r"\s+")


def parse_xml(data: bytes | str, origin: str, what: str) -> Element:
    """The root element; entity expansion and external references are refused (defusedxml)."""
    try:
        return fromstring(data)
    except DefusedXmlException as e:
        raise SourceError(f"{origin} was refused as unsafe XML ({type(e).__name__}); it cannot be loaded as {what}") from e
    except ParseError as e:
        raise SourceError(f"{origin} is not well-formed XML ({e}); it cannot be loaded as {what}") from e


def local_name(tag: object) -> str:
    """``{namespace}name`` → ``name``."""
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def children(el: Element, name: str) -> list[Element]:
    """Direct children whose local name is `name`, whatever their namespace."""
    return [c for c in el if local_name(c.tag) == name]


def child(el: Element, *names: str, ns: str | None = None) -> Element | None:
    for name in names:
        for c in el:
            if local_name(c.tag) == name and (ns is None or c.tag == f"{{{ns}}}{name}"):
                return c
    return None


def text_of(el: Element | None) -> str:
    """All text inside `el`, tags removed, entities decoded, whitespace collapsed."""
    if el is None:
        return ""
    raw = "".join(el.itertext())
    return _WS.sub(" ", html.unescape(_TAGS.sub(" ", raw))).strip()


def child_text(el: Element, *names: str, ns: str | None = None) -> str:
    return text_of(child(el, *names, ns=ns))
