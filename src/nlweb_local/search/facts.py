"""Checkable facts in a written answer, and whether the items (or the question) back each one.

A *fact* is what a reader could hold a summary to: a price (`$12.50`, `349 USD`, `free`), a duration
(`25 min`, `1 h 30 min`, `PT25M`, `2-3 minutes`), a time of day (`7:30 pm`, `19:00`), a date
(`2026-10-17`, `October 17`, `17 May 2024`), a month, a weekday or a year, a number (with its unit
when it has one: `4.8`, `3 cups`), a proper name (`Priya Raman`, `Millbrook Grange Hall`) or a quoted
title. `extract_facts(text)` finds them; `Source.of(obj)` reads the same kinds out of a schema.org item
(its JSON values, ISO durations and datetimes, prices and the item's rendered text) and of a question;
`supported(fact, sources)` says whether any source states it, compared by value, not by spelling
(`PT25M` backs `25 minutes`, `2026-10-17T11:00` backs `October 17` and `11 am`, an event from 10:00 to
12:00 backs `2 hours`).

The same extractor serves the grounding pass of /ask (search/grounding.py) and `nlweb-local eval
answers`, so what the pass lets through is exactly what the evaluation counts as supported.
"""
from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Iterable

from ..core.item_text import item_text

MONTHS = {m: i + 1 for i, m in enumerate(("january", "february", "march", "april", "may", "june", "july", "august",
                                          "september", "october", "november", "december"))}
_MONTH_ABBR = {m[:3]: n for m, n in MONTHS.items()} | {"sept": 9}
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MONTH_RE = r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sept?(?:ember)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
_NUM = r"\d+(?:[.,]\d+)*"

# Words that start sentences or join names but are not names themselves.
_NOT_NAMES = frozenset("""a an and are as at be both but by can do does each enjoy every find for from get has have here
how i if in is it its just let like look make may me more most my no not of on one or our perfect please see she so
some such that the their then there these they this those to try two use we what when where which while who why will
with yes you your all any also another best check choose consider each either great if looking many much note other
others plus since start than top use warm overall both hey hi hello sure okay ok yes no item items answer question
result results""".split())
_JOINERS = frozenset({"of", "the", "and", "de", "del", "la", "le", "du", "e", "au", "al", "&", "on", "in", "for", "a",
                      "von", "van", "da", "di", "y"})
_UNITS = {
    "cup": "cup", "cups": "cup", "tbsp": "tbsp", "tablespoon": "tbsp", "tablespoons": "tbsp", "tsp": "tsp",
    "teaspoon": "tsp", "teaspoons": "tsp", "g": "g", "gram": "g", "grams": "g", "kg": "kg", "lb": "lb", "lbs": "lb",
    "pound": "lb", "pounds": "lb", "oz": "oz", "ounce": "oz", "ounces": "oz", "ml": "ml", "l": "l", "liter": "l",
    "liters": "l", "litre": "l", "litres": "l", "quart": "quart", "quarts": "quart", "inch": "inch", "inches": "inch",
    "in": "inch", "cm": "cm", "mm": "mm", "km": "km", "mile": "mile", "miles": "mile", "mi": "mile", "feet": "ft",
    "foot": "ft", "ft": "ft", "%": "%", "percent": "%", "°f": "°f", "°c": "°c", "f": "°f", "star": "star",
    "stars": "star", "rating": "rating", "ratings": "rating", "review": "review", "reviews": "review",
    "serving": "serving", "servings": "serving", "calorie": "calorie", "calories": "calorie", "kcal": "calorie",
    "people": "person", "person": "person", "persons": "person", "guest": "person", "guests": "person",
    "piece": "piece", "pieces": "piece", "liter-capacity": "l", "l.": "l", "year": "year", "years": "year",
}
_DURATION_UNITS = {"second": 1 / 60, "seconds": 1 / 60, "sec": 1 / 60, "secs": 1 / 60, "s": 1 / 60,
                   "minute": 1, "minutes": 1, "min": 1, "mins": 1, "m": 1, "hour": 60, "hours": 60, "hr": 60, "hrs": 60,
                   "h": 60, "day": 1440, "days": 1440, "week": 10080, "weeks": 10080, "wk": 10080}
_CURRENCY = {"$": "usd", "us$": "usd", "usd": "usd", "dollar": "usd", "dollars": "usd", "€": "eur", "eur": "eur",
             "euro": "eur", "euros": "eur", "£": "gbp", "gbp": "gbp", "₹": "inr", "rs": "inr", "rs.": "inr", "inr": "inr",
             "cad": "cad", "aud": "aud", "jpy": "jpy", "¥": "jpy", "yen": "jpy"}

_CITATION = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]")
_ISO_DURATION = re.compile(r"\bP(?:\d+[YMWD])*(?:T(?:\d+(?:\.\d+)?[HMS])+)?\b")
_ISO_DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?\b")
_PRICE_BEFORE = re.compile(r"(?<![\w])(US\$|\$|€|£|₹|Rs\.?)\s?(" + _NUM + r")(?!\s*(?:-|–)?\s*(?:star|rating))", re.I)
_PRICE_AFTER = re.compile(r"\b(" + _NUM + r")\s?(USD|EUR|GBP|INR|CAD|AUD|JPY|dollars?|euros?|yen)\b", re.I)
_FREE = re.compile(r"(?<![-\w])(?<!feel )(?<!feel  )free\b(?![-\w])", re.I)
_TIME_AMPM = re.compile(r"\b(\d{1,2})(?::(\d{2}))?\s?([ap])\.?\s?m\b\.?", re.I)
_TIME_24 = re.compile(r"\b([01]?\d|2[0-3]):([0-5]\d)\b")
_DURATION = re.compile(r"\b(" + _NUM + r"|an?|half an?)(?:\s?(?:-|–|to)\s?(" + _NUM + r"))?\s?"
                       r"(seconds?|secs?|minutes?|mins?|hours?|hrs?|h|days?|weeks?|wk)\b"
                       r"(?:\s*(?:and\s+)?(" + _NUM + r")\s?(minutes?|mins?|min|m|seconds?|secs?|s)\b)?", re.I)
_DATE_MDY = re.compile(r"\b(" + _MONTH_RE + r")\.?\s+(\d{1,2})(?:st|nd|rd|th)?\b(?:,?\s+(\d{4}))?", re.I)
_DATE_DMY = re.compile(r"\b(\d{1,2})(?:st|nd|rd|th)?\s+(?:of\s+)?(" + _MONTH_RE + r")\b\.?(?:,?\s+(\d{4}))?", re.I)
_DATE_SLASH = re.compile(r"\b(\d{1,2})/(\d{1,2})/(\d{2}|\d{4})\b")
_MONTH_YEAR = re.compile(r"\b(" + _MONTH_RE + r")\.?,?\s+(\d{4})\b", re.I)
_MONTH_ONLY = re.compile(r"\b(january|february|march|april|june|july|august|september|october|november|december)\b", re.I)
_WEEKDAY = re.compile(r"\b(monday|tuesday|wednesday|thursday|friday|saturday|sunday)s?\b", re.I)
_YEAR = re.compile(r"\b(19\d{2}|20\d{2})s?\b")
_NUMBER_UNIT = re.compile(r"(?<![\w.])(\d+\s\d/\d|\d+/\d+|" + _NUM + r")(?:\s?(-|–|to)\s?(" + _NUM + r"))?"
                          r"(?:\s?(%|°[fc]|[a-z]+(?:-[a-z]+)?))?", re.I)
_QUOTE = re.compile(r"[\"“”]([^\"“”]{3,80})[\"“”]")
_TOKEN = re.compile(r"[a-z0-9]+(?:[.'][a-z0-9]+)*")
_LIST_MARK = re.compile(r"(?m)^\s*(?:\d+[.)]|[-*•])\s+")
_SENTENCE = re.compile(r"(?<=[.!?])[\"”’)]*\s+(?=[\"“(\[]?[A-Z0-9])|\n+")


@dataclass(frozen=True)
class Fact:
    kind: str  # price | duration | time | date | month | weekday | year | number | name | quote
    text: str  # as written
    value: Any  # normalised: see `supported`
    sentence_start: bool = False  # a name that opens its sentence (its first word may be an ordinary word)


def clean(text: str) -> str:
    """HTML entities and tags out, accents folded, whitespace runs single: the form every comparison uses."""
    text = html.unescape(html.unescape(text))
    text = re.sub(r"<[^>]+>", " ", text)
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    return re.sub(r"[ \t\r\f\v]+", " ", text.replace("\u00a0", " "))


def _num(s: str) -> float | None:
    s = s.strip()
    if " " in s and "/" in s:  # 1 1/2
        whole, frac = s.split(" ", 1)
        a, b = frac.split("/")
        return float(whole) + float(a) / float(b) if float(b) else None
    if "/" in s:
        a, b = s.split("/")
        return float(a) / float(b) if float(b) else None
    if s.count(",") and not s.count("."):
        parts = s.split(",")
        s = s.replace(",", "") if all(len(p) == 3 for p in parts[1:]) else s.replace(",", ".")
    else:
        s = s.replace(",", "")
    try:
        return float(s)
    except ValueError:
        return None


def _month(s: str) -> int | None:
    s = s.lower().rstrip(".")
    return MONTHS.get(s) or _MONTH_ABBR.get(s[:4] if s.startswith("sept") else s[:3])


def iso_minutes(text: str) -> float | None:
    """`PT1H30M` → 90.0; `P1DT2H` → 1560.0; None for anything else."""
    m = re.fullmatch(r"P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?",
                     text.strip())
    if not m or not any(m.groups()):
        return None
    y, mo, w, d, h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return y * 525600 + mo * 43200 + w * 10080 + d * 1440 + h * 60 + mi + s / 60


class _Spans:
    """Character spans already claimed by a more specific pattern (a price is not also a bare number)."""

    def __init__(self) -> None:
        self._taken: list[tuple[int, int]] = []

    def free(self, a: int, b: int) -> bool:
        return all(b <= x or a >= y for x, y in self._taken)

    def take(self, a: int, b: int) -> None:
        self._taken.append((a, b))


def _add(out: list[Fact], spans: _Spans, m: re.Match, fact: Fact | None, group: int = 0) -> None:
    a, b = m.span(group)
    if fact is not None and spans.free(a, b):
        out.append(fact)
        spans.take(a, b)


def _durations(m: re.Match) -> list[float]:
    unit = _DURATION_UNITS[m.group(3).lower()]
    first = m.group(1).lower()
    lo = 1.0 if first in ("a", "an") else 0.5 if first.startswith("half") else _num(first)
    values = [v * unit for v in (lo, _num(m.group(2)) if m.group(2) else None) if v is not None]
    if m.group(4) and values:  # 1 hour 30 minutes
        extra = _num(m.group(4))
        if extra is not None:
            values[-1] += extra * _DURATION_UNITS[m.group(5).lower()]
    return values


def _names(text: str, spans: _Spans, out: list[Fact]) -> None:
    for sent in _sentences_with_offsets(text):
        start, body = sent
        words = list(re.finditer(r"\S+", body))
        i = 0
        while i < len(words):
            w = words[i]
            token = w.group().strip("\"“”‘’'()[]{},;:!?*")
            if not _is_cap(token) or not spans.free(start + w.start(), start + w.end()):
                i += 1
                continue
            j, parts = i, []
            while j < len(words):
                tok = words[j].group()
                core = tok.strip("\"“”‘’'()[]{},;:!?*")
                if not spans.free(start + words[j].start(), start + words[j].end()):  # a date, a price: not a name
                    break
                if _is_cap(core):
                    parts.append(core)
                elif core.lower() in _JOINERS and parts and j + 1 < len(words) and \
                        _is_cap(words[j + 1].group().strip("\"“”‘’'()[]{},;:!?*")) and not re.search(r"[,;:!?]$", tok):
                    parts.append(core)
                else:
                    break
                j += 1
                if re.search(r"[,;:!?)\]]$|\.$", tok) and not re.fullmatch(r"(?:[A-Z]\.)+|[A-Z][a-z]?\.", core):
                    break
            opens = i == 0  # the sentence's first word: it may be an ordinary capitalised word
            while parts and parts[0].lower().rstrip(".").removesuffix("'s").removesuffix("’s") in _NOT_NAMES | _JOINERS:
                parts.pop(0)
                opens = False
            while parts and parts[-1].lower() in _JOINERS:
                parts.pop()
            name = " ".join(parts).rstrip(".")
            calendar = name.lower() in MONTHS or name.lower().rstrip("s") in WEEKDAYS
            if parts and not calendar and len(name) > 1 and name not in ("I", "AM", "PM") and \
                    not (opens and len(parts) == 1):
                out.append(Fact("name", name, tuple(tokens(name)), sentence_start=opens))
            i = max(j, i + 1)


def _is_cap(token: str) -> bool:
    return bool(token) and (token[0].isupper() or (token[0].isdigit() and any(c.isupper() for c in token))) and \
        any(c.isalpha() for c in token)


def _sentences_with_offsets(text: str) -> list[tuple[int, str]]:
    out, pos = [], 0
    for m in _SENTENCE.finditer(text):
        out.append((pos, text[pos:m.start()]))
        pos = m.end()
    out.append((pos, text[pos:]))
    return [(p, s) for p, s in out if s.strip()]


def tokens(text: str) -> list[str]:
    """Lower-case word tokens of `text`, a trailing possessive 's dropped."""
    toks = _TOKEN.findall(clean(text).lower().replace("’", "'").replace("-", " "))
    return [t[:-2] if t.endswith("'s") else t for t in toks]


def strip_citations(text: str) -> str:
    return _CITATION.sub("", text)


def extract_facts(text: str) -> list[Fact]:
    """The checkable facts of `text`, most specific first (a price is not also read as a number)."""
    text = _LIST_MARK.sub("", strip_citations(clean(text)))
    out: list[Fact] = []
    spans = _Spans()
    for m in _ISO_DURATION.finditer(text):
        v = iso_minutes(m.group())
        _add(out, spans, m, Fact("duration", m.group(), v) if v is not None else None)
    for m in _ISO_DATE.finditer(text):
        y, mo, d = int(m.group(1)), int(m.group(2)), int(m.group(3))
        _add(out, spans, m, Fact("date", m.group(), (y, mo, d)))
        if m.group(4) and m.group(4) + m.group(5) != "0000":
            out.append(Fact("time", m.group(), int(m.group(4)) * 60 + int(m.group(5))))
    for pattern, amount, cur in ((_PRICE_BEFORE, 2, 1), (_PRICE_AFTER, 1, 2)):
        for m in pattern.finditer(text):
            v = _num(m.group(amount))
            _add(out, spans, m, Fact("price", m.group(), v) if v is not None else None)
    for m in _FREE.finditer(text):
        _add(out, spans, m, Fact("price", m.group(), 0.0))
    for m in _TIME_AMPM.finditer(text):
        h, mi = int(m.group(1)), int(m.group(2) or 0)
        if 1 <= h <= 12 and mi < 60:
            h = h % 12 + (12 if m.group(3).lower() == "p" else 0)
            _add(out, spans, m, Fact("time", m.group(), h * 60 + mi))
    for m in _TIME_24.finditer(text):
        _add(out, spans, m, Fact("time", m.group(), int(m.group(1)) * 60 + int(m.group(2))))
    for m in _DURATION.finditer(text):
        if not spans.free(*m.span()):
            continue
        for v in _durations(m):
            out.append(Fact("duration", m.group(), round(v, 3)))
        spans.take(*m.span())
    for pattern, order in ((_DATE_MDY, "md"), (_DATE_DMY, "dm")):
        for m in pattern.finditer(text):
            mo = _month(m.group(1) if order == "md" else m.group(2))
            d = int(m.group(2) if order == "md" else m.group(1))
            y = int(m.group(3)) if m.group(3) else None
            if mo and 1 <= d <= 31:
                _add(out, spans, m, Fact("date", m.group(), (y, mo, d)))
    for m in _DATE_SLASH.finditer(text):
        mo, d, y = int(m.group(1)), int(m.group(2)), int(m.group(3))
        y = y + 2000 if y < 100 else y
        if 1 <= mo <= 12 and 1 <= d <= 31:
            _add(out, spans, m, Fact("date", m.group(), (y, mo, d)))
    for m in _MONTH_YEAR.finditer(text):
        mo = _month(m.group(1))
        _add(out, spans, m, Fact("month", m.group(), (int(m.group(2)), mo)) if mo else None)
    for m in _MONTH_ONLY.finditer(text):
        _add(out, spans, m, Fact("month", m.group(), (None, MONTHS[m.group(1).lower()])))
    for m in _WEEKDAY.finditer(text):
        _add(out, spans, m, Fact("weekday", m.group(), WEEKDAYS.index(m.group(1).lower())))
    for m in _YEAR.finditer(text):
        _add(out, spans, m, Fact("year", m.group(), int(m.group(1))))
    for m in _NUMBER_UNIT.finditer(text):
        if not spans.free(*m.span(1)):
            continue
        unit = _UNITS.get((m.group(4) or "").lower(), "")
        end = m.end() if unit else m.end(3) if m.group(3) else m.end(1)
        for g in (1, 3):
            if m.group(g):
                v = _num(m.group(g))
                if v is not None:
                    out.append(Fact("number", text[m.start():end], (v, unit)))
        spans.take(m.start(), end)
    for m in _QUOTE.finditer(text):
        if len(tokens(m.group(1))) >= 2:
            out.append(Fact("quote", m.group(1), tuple(tokens(m.group(1)))))
            spans.take(*m.span())
    _names(text, spans, out)
    return out


# -- sources: what an item (or the question) states -------------------------------------------------------------


def _walk(obj: Any, keys: tuple[str, ...] = ()) -> Iterable[tuple[tuple[str, ...], Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("@context", "@id", "url", "image", "thumbnailUrl", "sameAs", "logo"):
                continue
            yield from _walk(v, keys + (str(k),))
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v, keys)
    else:
        yield keys, obj


def _parse_datetime(s: str) -> datetime | None:
    s = s.strip()
    for fmt in ("%a, %d %b %Y %H:%M:%S %z", "%d %b %Y %H:%M:%S %z"):
        try:
            return datetime.strptime(s, fmt)
        except ValueError:
            pass
    m = _ISO_DATE.fullmatch(s) or _ISO_DATE.match(s)
    if m:
        try:
            return datetime(int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4) or 0), int(m.group(5) or 0))
        except ValueError:
            return None
    return None


@dataclass
class Source:
    """What one item (or the question) states, in normalised forms."""

    text: str = ""  # lower-case tokens joined by single spaces, padded with spaces
    numbers: set[float] = field(default_factory=set)
    prices: set[float] = field(default_factory=set)
    durations: set[float] = field(default_factory=set)
    times: set[int] = field(default_factory=set)
    dates: set[tuple[int, int, int]] = field(default_factory=set)
    months: set[tuple[int, int]] = field(default_factory=set)
    years: set[int] = field(default_factory=set)
    weekdays: set[int] = field(default_factory=set)
    free: bool = False

    @classmethod
    def of_text(cls, text: str) -> "Source":
        src = cls()
        src.add_text(text)
        return src

    @classmethod
    def of(cls, obj: Any, rendered: str = "") -> "Source":
        """An item's source: every JSON value (numbers, ISO durations and datetimes, prices), the length of
        an event (end − start), the item as `core.item_text` renders it (`15 min`, `4.8/5`, `12 USD`) and
        `rendered` (any other text the model was shown for it)."""
        src = cls()
        starts, ends = [], []
        for keys, v in _walk(obj):
            last = keys[-1] if keys else ""
            if isinstance(v, bool):
                if v and last == "isAccessibleForFree":
                    src.free = True
                continue
            if isinstance(v, (int, float)):
                src.numbers.add(float(v))
                if last in ("price", "lowPrice", "highPrice", "minPrice", "maxPrice"):
                    src.prices.add(float(v))
                    src.free |= v == 0
                continue
            if not isinstance(v, str):
                continue
            if last in ("price", "lowPrice", "highPrice") and (p := _num(v.replace("$", ""))) is not None:
                src.prices.add(p)
                src.free |= p == 0
            if (minutes := iso_minutes(v)) is not None:
                src.durations.add(round(minutes, 3))
                continue
            if (when := _parse_datetime(v)) is not None:
                src._add_datetime(when, has_time=bool(re.search(r"\d:\d", v)))
                if last == "startDate":
                    starts.append(when)
                elif last == "endDate":
                    ends.append(when)
            src.add_text(v)
        for a in starts:
            for b in ends:
                try:
                    minutes = (b - a).total_seconds() / 60
                except TypeError:
                    continue
                if 0 < minutes < 60 * 24 * 60:
                    src.durations.add(round(minutes, 3))
        src.add_text(f"{item_text(obj, 4000)} {rendered}")
        return src

    def _add_datetime(self, when: datetime | date, has_time: bool) -> None:
        self.dates.add((when.year, when.month, when.day))
        self.months.add((when.year, when.month))
        self.years.add(when.year)
        self.weekdays.add(when.weekday())
        if has_time and isinstance(when, datetime) and (when.hour or when.minute):
            self.times.add(when.hour * 60 + when.minute)

    def add_text(self, text: str) -> None:
        self.text += " " + " ".join(tokens(text)) + " "
        for f in extract_facts(text):
            if f.kind == "price":
                self.prices.add(f.value)
                self.free |= f.value == 0
            elif f.kind == "duration":
                self.durations.add(f.value)
            elif f.kind == "time":
                self.times.add(f.value)
            elif f.kind == "date":
                y, mo, d = f.value
                if y is not None:
                    try:
                        self._add_datetime(date(y, mo, d), has_time=False)
                    except ValueError:
                        pass
                else:
                    self.dates.add((0, mo, d))
                    self.months.add((0, mo))
            elif f.kind == "month":
                self.months.add((f.value[0] or 0, f.value[1]))
            elif f.kind == "weekday":
                self.weekdays.add(f.value)
            elif f.kind == "year":
                self.years.add(f.value)
                self.numbers.add(float(f.value))
            elif f.kind == "number":
                self.numbers.add(f.value[0])
        for n in re.findall(r"\d+(?:\.\d+)?", clean(text)):  # every digit run, wherever it stands
            self.numbers.add(float(n))

    def states(self, fact: Fact) -> bool:
        """Whether this source states `fact` (compared by value; names and quotes as whole phrases)."""
        k, v = fact.kind, fact.value
        if k == "price":
            return (self.free or 0.0 in self.prices) if v == 0 else any(abs(p - v) < 0.006 for p in self.prices)
        if k == "duration":
            return any(abs(d - v) < 0.01 for d in self.durations)
        if k == "time":
            return v in self.times
        if k == "date":
            y, mo, d = v
            return any(dm == mo and dd == d and (y is None or dy in (y, 0)) for dy, dm, dd in self.dates)
        if k == "month":
            y, mo = v
            return any(m == mo and (y is None or yy in (y, 0)) for yy, m in self.months)
        if k == "weekday":
            return v in self.weekdays or f" {WEEKDAYS[v]} " in self.text
        if k == "year":
            return v in self.years or float(v) in self.numbers
        if k == "number":
            return any(abs(n - v[0]) < 1e-6 * max(1.0, abs(n)) for n in self.numbers)
        if k in ("name", "quote"):
            phrase = " ".join(v)
            if not phrase:
                return True
            if f" {phrase} " in self.text:
                return True
            return fact.sentence_start and len(v) > 1 and f" {' '.join(v[1:])} " in self.text
        return False


_GENERIC_TAIL = frozenset({"recipe", "recipes", "event", "events", "episode", "podcast", "movie", "film"})


def supported(fact: Fact, sources: Iterable[Source]) -> bool:
    """Whether some source states `fact`. A name joined by "and"/"&" ("Kendrick Lamar and Drake") is
    supported when each side is; a trailing generic word ("... Recipe") may be left off."""
    sources = list(sources)
    if any(s.states(fact) for s in sources):
        return True
    if fact.kind not in ("name", "quote"):
        return False
    words = list(fact.value)
    while len(words) > 1 and words[-1] in _GENERIC_TAIL:
        words.pop()
        if any(s.states(Fact(fact.kind, fact.text, tuple(words), fact.sentence_start)) for s in sources):
            return True
    for joiner in ("and", "&"):
        if joiner in words:
            i = words.index(joiner)
            left, right = tuple(words[:i]), tuple(words[i + 1:])
            if left and right:
                return supported(Fact(fact.kind, fact.text, left, fact.sentence_start), sources) and \
                    supported(Fact(fact.kind, fact.text, right), sources)
    return False


def citations(text: str) -> list[int]:
    """The [n] citation numbers of `text`, in order ([1, 2] and [1][2] alike)."""
    return [int(n) for m in _CITATION.finditer(text) for n in re.split(r"\s*[,;]\s*", m.group(1))]


def sentences(text: str) -> list[str]:
    """`text` split into sentences (and lines: a bullet is a sentence), citations kept with their sentence."""
    text = clean(text).strip()
    parts: list[str] = []
    for _, s in _sentences_with_offsets(text):
        s = s.strip()
        if re.fullmatch(r"(?:\[\d+(?:\s*[,;]\s*\d+)*\]\s*)+[.!?]?", s) and parts:  # a citation cut off by the split
            parts[-1] += " " + s
        elif s:
            parts.append(s)
    return parts


_STOP = frozenset("""a an and are as at be but by can do does for from has have how i in is it its me my of on or
show some such than that the them these they this those to us was we what which who why will with would you your
about any also more most only other want wants need needs find like please give get tell here there there's it's
recipe recipes item items""".split())


def content_words(text: str) -> set[str]:
    return {t for t in tokens(strip_citations(text)) if len(t) > 2 and t not in _STOP and not t.isdigit()}
