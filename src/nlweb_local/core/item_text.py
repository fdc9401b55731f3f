"""Type-aware, trimmed text of a schema.org item: what gets embedded and what the ranker reads.

The raw JSON-LD of a page is mostly noise for a model (ids, image URLs, instructions, nested
publisher blocks). This keeps the fields that say what an item *is* and what a question is likely to
be about — for organisations their specialty, services, address and opening hours; for places their
address and hours; for events dates, place and price; for products offers and ratings — in an order
that puts the most telling first, formatted for people (`4.5/5 (120 ratings)`, `1 h 30 min`,
`2025-06-01 19:00`, `12.99 USD`), and caps the length, so embedding and ranking see ~50–150 tokens
instead of ~1,000.

A type is read through its family (`MedicalClinic` and `Dentist` are organisations, `MusicEvent` an
event), so a type nobody listed still gets its family's fields.
"""
from __future__ import annotations

import re
from typing import Any

# Fields worth reading, most telling first. Anything not listed is ignored.
_COMMON = ("name", "headline", "title", "alternateName", "description", "abstract", "keywords", "genre", "about", "category")
_ORG = ("medicalSpecialty", "availableService", "servesCuisine", "priceRange", "address", "openingHours",
        "openingHoursSpecification", "telephone", "areaServed", "hasOfferCatalog", "makesOffer", "knowsAbout",
        "amenityFeature", "aggregateRating")
_FAMILIES: dict[str, tuple[str, ...]] = {
    "recipe": ("recipeCategory", "recipeCuisine", "suitableForDiet", "recipeIngredient", "totalTime", "recipeYield",
               "nutrition", "aggregateRating"),
    "movie": ("director", "actor", "datePublished", "contentRating", "duration", "aggregateRating"),
    "tvseries": ("actor", "director", "numberOfSeasons", "datePublished", "aggregateRating"),
    "book": ("author", "bookFormat", "numberOfPages", "datePublished", "inLanguage", "aggregateRating"),
    "product": ("brand", "category", "color", "material", "size", "weight", "offers", "aggregateRating"),
    "event": ("startDate", "endDate", "location", "eventStatus", "eventAttendanceMode", "organizer", "performer",
              "offers", "isAccessibleForFree"),
    "episode": ("partOfSeries", "datePublished", "duration", "author", "actor"),
    "article": ("author", "datePublished", "articleSection", "articleBody"),
    "organization": _ORG,
    "place": ("address", "openingHours", "openingHoursSpecification", "telephone", "amenityFeature",
              "isAccessibleForFree", "publicAccess", "containedInPlace", "aggregateRating"),
    "course": ("provider", "educationalLevel", "timeRequired", "coursePrerequisites", "offers"),
    "software": ("applicationCategory", "operatingSystem", "offers", "softwareVersion", "aggregateRating"),
    "service": ("serviceType", "provider", "areaServed", "offers", "hoursAvailable", "aggregateRating"),
    "job": ("hiringOrganization", "jobLocation", "employmentType", "baseSalary", "datePosted", "validThrough"),
    "person": ("jobTitle", "worksFor", "affiliation", "knowsAbout", "address"),
    "howto": ("totalTime", "tool", "supply", "estimatedCost"),
    "music": ("byArtist", "inAlbum", "duration", "datePublished", "numTracks"),
    "creativework": ("author", "creator", "datePublished", "inLanguage", "aggregateRating"),
}
# Exact types (lower-case) and the family they read as; then suffixes, longest first.
_TYPE_FAMILY = {
    "recipe": "recipe", "movie": "movie", "tvseries": "tvseries", "book": "book", "product": "product",
    "podcastepisode": "episode", "tvepisode": "episode", "radioepisode": "episode", "episode": "episode",
    "podcastseries": "creativework", "course": "course", "softwareapplication": "software",
    "mobileapplication": "software", "webapplication": "software", "videogame": "software", "service": "service",
    "jobposting": "job", "person": "person", "howto": "howto", "musicrecording": "music", "musicalbum": "music",
    "organization": "organization", "corporation": "organization", "ngo": "organization", "library": "organization",
    "physician": "organization", "dentist": "organization", "pharmacy": "organization", "hospital": "organization",
    "hotel": "organization", "motel": "organization", "restaurant": "organization", "bakery": "organization",
    "cafeorcoffeeshop": "organization", "barorpub": "organization", "winery": "organization", "school": "organization",
    "collegeoruniversity": "organization", "touristattraction": "place", "museum": "place", "park": "place",
    "landmarksorhistoricalbuildings": "place", "campground": "organization", "place": "place", "accommodation": "place",
    "creativework": "creativework", "webpage": "creativework", "dataset": "creativework", "vehicle": "product",
    "car": "product", "individualproduct": "product", "productmodel": "product",
}
_SUFFIX_FAMILY = (("organization", "organization"), ("business", "organization"), ("store", "organization"),
                  ("clinic", "organization"), ("agency", "organization"), ("establishment", "organization"),
                  ("location", "organization"), ("destination", "place"), ("office", "organization"),
                  ("center", "organization"), ("club", "organization"), ("event", "event"),
                  ("article", "article"), ("posting", "article"), ("episode", "episode"), ("series", "tvseries"),
                  ("product", "product"), ("service", "service"), ("application", "software"), ("place", "place"),
                  ("attraction", "place"), ("venue", "place"), ("residence", "place"), ("work", "creativework"))
_GENERIC_EXTRA = ("author", "brand", "datePublished", "startDate", "location", "address", "offers", "recipeIngredient",
                  "aggregateRating")
_SKIP_KEYS = {"@id", "@context", "url", "image", "thumbnailUrl", "logo", "sameAs", "mainEntityOfPage", "potentialAction",
              "recipeInstructions", "review", "publisher", "isPartOf", "breadcrumb", "video", "contentUrl", "embedUrl",
              "geo", "hasMap"}
_LABELS = {"openingHoursSpecification": "opening hours", "openingHours": "opening hours", "aggregateRating": "rating"}
_FIELD_CHARS = 300  # one field's share; the item's whole text is capped by `max_chars`
_WS = re.compile(r"\s+")
_TAGS = re.compile(r"<[^>]+>")
_DURATION = re.compile(r"^P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")
_DATETIME = re.compile(r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2})(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?$")
_DAYS = {"monday": "Mo", "tuesday": "Tu", "wednesday": "We", "thursday": "Th", "friday": "Fr", "saturday": "Sa",
         "sunday": "Su", "publicholidays": "public holidays"}


def item_type(obj: Any) -> str:
    t = obj.get("@type", "Thing") if isinstance(obj, dict) else "Thing"
    if isinstance(t, list):
        t = t[0] if t else "Thing"
    return str(t)


def number(v: float | int) -> str:
    """A number as people write it: `57` not `57.00000000000001`, `4.35` not `4.3500000001`."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if v != v or v in (float("inf"), float("-inf")):
        return ""
    if abs(v - round(v)) < 1e-6:
        return str(int(round(v)))
    return f"{v:.2f}".rstrip("0").rstrip(".")


def _as_number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            return None
    return None


def duration(text: str) -> str | None:
    """`PT1H30M` → `1 h 30 min`; None when `text` is not an ISO 8601 duration."""
    m = _DURATION.match(text.strip())
    if not m or not any(m.groups()):
        return None
    units = ("y", "mo", "wk", "days", "h", "min", "s")
    parts = [f"{number(float(g))} {u}" for g, u in zip(m.groups(), units) if g and float(g)]
    return " ".join(parts) or "0 min"


def _text(value: str, budget: int) -> str:
    text = _WS.sub(" ", _TAGS.sub(" ", value)).strip()
    if text.startswith(("https://schema.org/", "http://schema.org/")):  # enum values: VeganDiet, InStock
        text = text.rsplit("/", 1)[-1]
    elif text.startswith("P") and (d := duration(text)):
        text = d
    elif m := _DATETIME.match(text):
        text = f"{m.group(1)} {m.group(2)}" if m.group(2) != "00:00" else m.group(1)
    return text[:budget]


def _rating(d: dict) -> str:
    v = _as_number(d.get("ratingValue"))
    if v is None:
        return ""
    best = _as_number(d.get("bestRating"))
    if best is None:  # unstated: the smallest usual scale the value fits
        best = 5.0 if v <= 5 else 10.0 if v <= 10 else 100.0
    out = f"{number(v)}/{number(best)}"
    count = _as_number(d.get("ratingCount", d.get("reviewCount")))
    return f"{out} ({number(count)} ratings)" if count else out


def _price(d: dict) -> str:
    cur = d.get("priceCurrency")
    cur = f" {cur}" if isinstance(cur, str) and cur else ""
    lo, hi = _as_number(d.get("lowPrice")), _as_number(d.get("highPrice"))
    price = _as_number(d.get("price"))
    if price is None and isinstance(d.get("priceSpecification"), dict):
        price = _as_number(d["priceSpecification"].get("price"))
        cur = cur or (f" {d['priceSpecification'].get('priceCurrency')}" if d["priceSpecification"].get("priceCurrency") else "")
    if price is not None:
        out = "free" if price == 0 else f"{number(price)}{cur}"
    elif lo is not None:
        out = f"{number(lo)}–{number(hi)}{cur}" if hi is not None and hi != lo else f"from {number(lo)}{cur}"
    elif isinstance(d.get("price"), str) and d["price"].strip():
        out = f"{d['price'].strip()}{cur}"
    else:
        out = ""
    avail = d.get("availability")
    if isinstance(avail, str) and avail:
        out = f"{out}, {_text(avail, 40)}" if out else _text(avail, 40)
    return out


def _address(d: dict) -> str:
    parts = [d.get(k) for k in ("streetAddress", "addressLocality", "addressRegion", "postalCode")]
    country = d.get("addressCountry")
    if isinstance(country, dict):
        country = country.get("name")
    parts.append(country)
    return ", ".join(_text(p, 80) for p in parts if isinstance(p, (str, int)) and str(p).strip())


def _hours(d: dict) -> str:
    days = d.get("dayOfWeek")
    days = days if isinstance(days, list) else [days] if days else []
    names = []
    for day in days:
        name = _text(str(day), 40) if day else ""
        names.append(_DAYS.get(name.lower(), name))
    opens, closes = d.get("opens"), d.get("closes")
    span = f"{str(opens)[:5]}–{str(closes)[:5]}" if opens and closes else ""
    return " ".join(x for x in (",".join(n for n in names if n), span) if x)


def _dict(value: dict, budget: int) -> str:
    typ = item_type(value).lower()
    if typ in ("aggregaterating", "rating") or "ratingValue" in value:
        return _rating(value)[:budget]
    if typ in ("offer", "aggregateoffer") or any(k in value for k in ("price", "lowPrice", "priceSpecification")):
        return _price(value)[:budget]
    if typ == "postaladdress" or "streetAddress" in value or "addressLocality" in value:
        return _address(value)[:budget]
    if typ == "openinghoursspecification" or "opens" in value:
        return _hours(value)[:budget]
    if typ in ("quantitativevalue", "monetaryamount", "distance", "mass") or "value" in value and "name" not in value:
        v = value.get("value")
        v = _dict(v, budget) if isinstance(v, dict) else number(n) if (n := _as_number(v)) is not None else _flatten(v, budget)
        unit = value.get("unitText") or value.get("currency") or value.get("unitCode") or ""
        return f"{v} {unit}".strip()[:budget]
    for key in ("name", "text", "headline"):
        if value.get(key):
            inner = _flatten(value[key], budget)
            addr = value.get("address")
            if typ not in ("person",) and isinstance(addr, (dict, str)):  # a Place: its name and where it is
                where = _dict(addr, budget) if isinstance(addr, dict) else _text(addr, budget)
                inner = f"{inner}, {where}" if where else inner
            return inner[:budget]
    if isinstance(value.get("address"), dict):
        return _address(value["address"])[:budget]
    # Anything else (nutrition, a size): its first few plain fields as `key value`.
    pairs = []
    for k, v in value.items():
        if k.startswith("@") or k in _SKIP_KEYS or isinstance(v, (dict, list)):
            continue
        s = _flatten(v, 60)
        if s:
            pairs.append(f"{k} {s}")
        if len(pairs) == 4:
            break
    return ", ".join(pairs)[:budget]


def _flatten(value: Any, budget: int) -> str:
    """A short human reading of a JSON-LD value: names of nested things, lists joined by commas."""
    if value is None or budget <= 0:
        return ""
    if isinstance(value, str):
        return _text(value, budget)
    if isinstance(value, (bool, int, float)):
        return number(value)
    if isinstance(value, list):
        parts: list[str] = []
        used = 0
        for v in value:
            s = _flatten(v, budget - used)
            if s and s not in parts:
                parts.append(s)
                used += len(s) + 2
            if used >= budget:
                break
        return ", ".join(parts)[:budget]
    if isinstance(value, dict):
        return _dict(value, budget)
    return str(value)[:budget]


def _family(typ: str) -> str | None:
    t = typ.lower()
    if t in _TYPE_FAMILY:
        return _TYPE_FAMILY[t]
    for suffix, family in _SUFFIX_FAMILY:
        if t.endswith(suffix):
            return family
    return None


def _fields_for(typ: str) -> tuple[str, ...]:
    family = _family(typ)
    return _FAMILIES[family] if family else _GENERIC_EXTRA


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
    seen = {"name", "headline", "title"}
    for key in fields:
        if key in seen or key in _SKIP_KEYS or key not in obj:
            continue
        seen.add(key)
        text = _flatten(obj[key], _FIELD_CHARS)
        if text:
            parts.append(f"{_LABELS.get(key, key)}: {text}")
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
