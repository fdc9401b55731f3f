"""Type-aware, trimmed text of a schema.org item: what gets embedded and what the ranker reads.

The raw JSON-LD of a page is mostly noise for a model (ids, image URLs, instructions, nested
publisher blocks). This keeps the fields that say what an item *is*, in an order that puts the most
telling first, and caps the length, so embedding and ranking see ~50–150 tokens instead of ~1,000.
"""
from __future__ import annotations

import re
from typing import Any

# Fields worth reading, most telling first. Anything not listed is ignored.
_COMMON = ("name", "headline", "title", "alternateName", "description", "abstract", "keywords", "genre", "about", "category")
_BY_TYPE: dict[str, tuple[str, ...]] = {
    "recipe": ("recipeCategory", "recipeCuisine", "suitableForDiet", "recipeIngredient", "totalTime", "recipeYield", "nutrition"),
    "movie": ("director", "actor", "datePublished", "contentRating", "duration", "aggregateRating"),
    "tvseries": ("actor", "director", "numberOfSeasons", "datePublished"),
    "book": ("author", "bookFormat", "numberOfPages", "datePublished", "inLanguage"),
    "product": ("brand", "category", "color", "material", "offers", "aggregateRating", "weight"),
    "event": ("startDate", "endDate", "location", "eventAttendanceMode", "organizer", "performer", "offers"),
    "podcastepisode": ("partOfSeries", "datePublished", "duration", "author"),
    "article": ("author", "datePublished", "articleSection", "articleBody"),
    "newsarticle": ("author", "datePublished", "articleSection", "articleBody"),
    "blogposting": ("author", "datePublished", "articleSection", "articleBody"),
    "localbusiness": ("address", "servesCuisine", "priceRange", "openingHours", "telephone"),
    "restaurant": ("address", "servesCuisine", "priceRange", "openingHours", "menu"),
    "place": ("address", "geo"),
    "course": ("provider", "educationalLevel", "timeRequired", "coursePrerequisites"),
    "softwareapplication": ("applicationCategory", "operatingSystem", "offers", "softwareVersion"),
}
_GENERIC_EXTRA = ("author", "brand", "datePublished", "startDate", "location", "address", "offers", "recipeIngredient")
_SKIP_KEYS = {"@id", "@context", "url", "image", "thumbnailUrl", "logo", "sameAs", "mainEntityOfPage", "potentialAction",
              "recipeInstructions", "review", "publisher", "isPartOf", "breadcrumb", "video", "contentUrl", "embedUrl"}
_WS = re.compile(r"\s+")
_TAGS = re.compile(r"<[^>]+>")


def item_type(obj: Any) -> str:
    t = obj.get("@type", "Thing") if isinstance(obj, dict) else "Thing"
    if isinstance(t, list):
        t = t[0] if t else "Thing"
    return str(t)


def _flatten(value: Any, budget: int) -> str:
    """A short human reading of a JSON-LD value: names of nested things, lists joined by commas."""
    if value is None:
        return ""
    if isinstance(value, str):
        text = _WS.sub(" ", _TAGS.sub(" ", value)).strip()
        if text.startswith(("https://schema.org/", "http://schema.org/")):  # enum values: VeganDiet, InStock
            text = text.rsplit("/", 1)[-1]
        return text[:budget]
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        parts: list[str] = []
        used = 0
        for v in value:
            s = _flatten(v, budget - used)
            if s:
                parts.append(s)
                used += len(s) + 2
            if used >= budget:
                break
        return ", ".join(parts)[:budget]
    if isinstance(value, dict):
        for key in ("name", "text", "ratingValue", "price", "streetAddress", "addressLocality", "value"):
            if key in value and key not in _SKIP_KEYS:
                inner = _flatten(value[key], budget)
                if key == "price" and value.get("priceCurrency"):
                    inner = f"{inner} {value['priceCurrency']}"
                if key == "ratingValue":
                    inner = f"{inner}/{value.get('bestRating', 5)}"
                if key == "streetAddress" and value.get("addressLocality"):
                    inner = f"{inner}, {_flatten(value['addressLocality'], 60)}"
                return inner[:budget]
        return ""
    return str(value)[:budget]


def _fields_for(typ: str) -> tuple[str, ...]:
    t = typ.lower()
    if t in _BY_TYPE:
        return _BY_TYPE[t]
    for suffix in ("event", "article", "business", "product", "episode"):  # FoodEvent, NewsArticle, ...
        if t.endswith(suffix):
            return next(v for k, v in _BY_TYPE.items() if k.endswith(suffix))
    return _GENERIC_EXTRA


def item_text(obj: Any, max_chars: int = 600) -> str:
    """`Type: name. field: value. ...` capped at `max_chars`."""
    if isinstance(obj, list):
        obj = obj[0] if obj else {}
    if not isinstance(obj, dict):
        return _flatten(obj, max_chars)
    typ = item_type(obj)
    fields = _COMMON + _fields_for(typ)
    name = next((_flatten(obj[k], 200) for k in ("name", "headline", "title") if obj.get(k)), "")
    parts = [f"{typ}: {name}" if name else typ]
    seen_name = {"name", "headline", "title"}
    for key in fields:
        if key in seen_name or key in _SKIP_KEYS or key not in obj:
            continue
        text = _flatten(obj[key], 300)
        if text:
            parts.append(f"{key}: {text}")
    return ". ".join(parts)[:max_chars]


def item_name(obj: Any) -> str:
    """NLWeb's name rule: the first of name / headline / title."""
    if isinstance(obj, list):
        obj = obj[0] if obj else {}
    if isinstance(obj, dict):
        for key in ("name", "headline", "title"):
            v = obj.get(key)
            if v:
                return _flatten(v, 300)
    return ""
