"""RSS 2.0, RSS 1.0 (RDF) and Atom feeds → schema.org items.

An entry with an audio enclosure becomes a ``PodcastEpisode`` (``partOfSeries`` is the feed,
``associatedMedia`` the audio); any other entry becomes an ``Article``. The entry's URL is its link,
else a guid/id that is an http(s) URL, else (episodes only) the audio file's URL. Descriptions are
reduced to plain text. An entry without a URL or a title is a problem; the rest of the feed loads.
"""
from __future__ import annotations

import re
from email.utils import parsedate_to_datetime
from typing import Any
from xml.etree.ElementTree import Element

from ..core.errors import SourceError
from .records import Parsed, Problem, Record, usable_url
from .xmlutil import child, child_text, children, local_name, parse_xml

ITUNES = "http://www.itunes.com/dtds/podcast-1.0.dtd"
_AUDIO_SUFFIXES = (".mp3", ".m4a", ".aac", ".ogg", ".oga", ".opus", ".wav", ".flac")
_CLOCK = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2})$")


def _iso_duration(raw: str) -> str | None:
    raw = raw.strip()
    if raw.isdigit():
        secs = int(raw)
        h, m, s = secs // 3600, secs % 3600 // 60, secs % 60
    elif m_ := _CLOCK.match(raw):
        h, m, s = int(m_.group(1) or 0), int(m_.group(2)), int(m_.group(3))
    else:
        return None
    return "PT" + (f"{h}H" if h else "") + (f"{m}M" if m else "") + (f"{s}S" if s or not (h or m) else "")


def _iso_date(raw: str) -> str:
    """RFC 822 dates (RSS) become ISO 8601; anything else (Atom is already ISO) is kept."""
    try:
        return parsedate_to_datetime(raw).isoformat()
    except (TypeError, ValueError, IndexError):
        return raw


def _is_audio(url: str, mime: str) -> bool:
    if mime:
        return mime.lower().startswith("audio/")
    return url.lower().split("?", 1)[0].endswith(_AUDIO_SUFFIXES)


def _item(*, title: str, url: str | None, description: str, date: str, author: str, keywords: list[str],
          audio: dict[str, str] | None, duration: str | None, feed_title: str, feed_url: str | None) -> dict[str, Any]:
    obj: dict[str, Any] = {"@context": "https://schema.org", "@type": "PodcastEpisode" if audio else "Article"}
    obj["name"] = title
    if not audio:
        obj["headline"] = title
    if url:
        obj["url"] = url
    if description:
        obj["description"] = description
    if date:
        obj["datePublished"] = _iso_date(date)
    if author:
        obj["author"] = {"@type": "Person", "name": author}
    if keywords:
        obj["keywords"] = ", ".join(keywords)
    series = {k: v for k, v in (("name", feed_title), ("url", feed_url)) if v}
    if audio:
        media = {"@type": "AudioObject", "contentUrl": audio["url"]}
        if audio.get("type"):
            media["encodingFormat"] = audio["type"]
        if audio.get("length", "").isdigit() and audio["length"] != "0":
            media["contentSize"] = audio["length"]
        obj["associatedMedia"] = media
        if duration:
            obj["duration"] = duration
        if series:
            obj["partOfSeries"] = {"@type": "PodcastSeries", **series}
    elif series:
        obj["isPartOf"] = {"@type": "Periodical", **series}
    return obj


def _rss_entries(root: Element, channel: Element) -> tuple[str, str | None, list[dict[str, Any]]]:
    feed_title = child_text(channel, "title")
    feed_url = usable_url(child_text(channel, "link"))
    items = children(channel, "item") or children(root, "item")  # RSS 1.0 puts items beside the channel
    entries = []
    for it in items:
        enclosures = [e for e in children(it, "enclosure") if _is_audio(e.get("url", ""), e.get("type", ""))]
        audio = dict(enclosures[0].attrib) if enclosures else None
        guid = child(it, "guid")
        guid_url = usable_url(child_text(it, "guid"), http_only=True) if guid is not None and guid.get("isPermaLink", "true") != "false" else None
        link = usable_url(child_text(it, "link"), http_only=True) or guid_url or (usable_url(audio.get("url")) if audio else None)
        entries.append(dict(
            title=child_text(it, "title"), url=link,
            description=child_text(it, "description", "summary") or child_text(it, "encoded"),
            date=child_text(it, "pubDate", "date"),
            author=child_text(it, "creator", "author") or child_text(it, "author", ns=ITUNES),
            keywords=[t for t in ("".join(c.itertext()).strip() for c in children(it, "category")) if t],
            audio=audio, duration=_iso_duration(child_text(it, "duration", ns=ITUNES)) if audio else None,
        ))
    return feed_title, feed_url, entries


def _atom_link(entry: Element, rel: str) -> Element | None:
    for link in children(entry, "link"):
        if link.get("rel", "alternate") == rel:
            return link
    return None


def _atom_entries(feed: Element) -> tuple[str, str | None, list[dict[str, Any]]]:
    feed_title = child_text(feed, "title")
    feed_link = _atom_link(feed, "alternate")
    feed_url = usable_url(feed_link.get("href")) if feed_link is not None else None
    entries = []
    for en in children(feed, "entry"):
        enclosure = next((l for l in children(en, "link") if l.get("rel") == "enclosure"
                          and _is_audio(l.get("href", ""), l.get("type", ""))), None)
        audio = {"url": enclosure.get("href", ""), "type": enclosure.get("type", ""), "length": enclosure.get("length", "")} if enclosure is not None else None
        alt = _atom_link(en, "alternate")
        link = (usable_url(alt.get("href")) if alt is not None else None) or usable_url(child_text(en, "id"), http_only=True) \
            or (usable_url(audio["url"]) if audio else None)
        author = child(en, "author")
        entries.append(dict(
            title=child_text(en, "title"), url=link,
            description=child_text(en, "summary") or child_text(en, "content"),
            date=child_text(en, "published", "updated"),
            author=child_text(author, "name") if author is not None else "",
            keywords=[c.get("term", "") for c in children(en, "category") if c.get("term")],
            audio=audio, duration=_iso_duration(child_text(en, "duration", ns=ITUNES)) if audio else None,
        ))
    return feed_title, feed_url, entries


def parse_feed(data: bytes | str, origin: str) -> Parsed:
    root = parse_xml(data, origin, "an RSS or Atom feed")
    kind = local_name(root.tag)
    if kind == "feed":
        feed_title, feed_url, entries = _atom_entries(root)
    elif kind in ("rss", "RDF") and (channel := child(root, "channel")) is not None:
        feed_title, feed_url, entries = _rss_entries(root, channel)
    else:
        raise SourceError(f"{origin} is XML but not an RSS or Atom feed (its root element is <{kind}>)")
    out = Parsed()
    for i, entry in enumerate(entries, start=1):
        where = f"{origin} entry {i}"
        if not entry["title"]:
            out.problems.append(Problem(where, "entry has no title"))
        elif not entry["url"]:
            out.problems.append(Problem(where, "entry has no link, permalink guid/id or audio enclosure to use as its url"))
        else:
            out.records.append(Record(entry["url"], [_item(feed_title=feed_title, feed_url=feed_url, **entry)], where))
    if not entries:
        out.problems.append(Problem(origin, "the feed has no entries"))
    return out
