"""Finding personal data in text and putting placeholders in its place (`privacy.redact`).

    email   a mailbox: local@domain.tld
    phone   with the `phonenumbers` library when it is installed (pip install 'nlweb-local[redaction]'):
            numbers it finds valid, international (+44 20 7946 0958) or national in `privacy.phone_region`;
            without it, a strict pattern: +country code and 7 to 15 digits, or North American
            (NXX) NXX-XXXX / NXX-NXX-XXXX / NXX.NXX.XXXX — digits alone, dates and ids are not phone numbers
    card    13 to 19 digits, in groups separated by single spaces or hyphens, passing the Luhn check
    iban    a country code, 2 check digits and up to 30 letters and digits (groups of 4 may be spaced),
            of its country's length where known, passing the ISO 13616 mod-97 check
    NAME    each of `privacy.redact_patterns` (NAME: regular expression)

`Redaction` replaces each distinct value by `[KIND_n]` (the same value, the same placeholder, within one
call) and remembers the originals, so that `restore` can put them back in an answer that echoes them.
A value that overlaps one found earlier (a card inside an IBAN) is left to the first finder, in the order
above.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, Sequence

Span = tuple[int, int]
Finder = Callable[[str], Iterator[Span]]

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
                    r"[A-Za-z]{2,24}(?![\w-])")
_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
_IBAN = re.compile(r"(?<![A-Za-z0-9])([A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30})(?![A-Za-z0-9])")
_PHONE_INTL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,6}(?!\w)")
_PHONE_NANP = re.compile(r"(?<![\w+])(?:\(\d{3}\) ?|\d{3}[-.])\d{3}[-.]\d{4}(?!\w)")
_PLACEHOLDER = re.compile(r"\[([A-Z][A-Z0-9_]{0,31})_(\d{1,6})\]")

# IBAN lengths by country (ISO 13616 registry, the common ones); another country: 15 to 34 characters
IBAN_LENGTHS = {"AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
                "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24,
                "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21,
                "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21,
                "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30,
                "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
                "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20}


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of a card number's digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return len(digits) >= 13 and total % 10 == 0


def iban_valid(text: str) -> bool:
    """ISO 13616: the country's length (where known) and mod 97 of the rearranged number == 1."""
    iban = text.replace(" ", "").upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", iban):
        return False
    want = IBAN_LENGTHS.get(iban[:2])
    if want is not None and len(iban) != want:
        return False
    moved = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


def _emails(text: str) -> Iterator[Span]:
    for m in _EMAIL.finditer(text):
        yield m.span()


def _cards(text: str) -> Iterator[Span]:
    for m in _CARD.finditer(text):
        raw = m.group()
        if "  " in raw or "--" in raw:
            continue
        digits = re.sub(r"[ -]", "", raw)
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            yield m.span()


def _ibans(text: str) -> Iterator[Span]:
    for m in _IBAN.finditer(text):
        candidate = m.group(1)
        # the longest prefix that is a valid IBAN (the pattern may run on into the next word's letters)
        for end in range(len(candidate), 14, -1):
            if candidate[end - 1] != " " and iban_valid(candidate[:end]):
                yield m.start(1), m.start(1) + end
                break


def _phones_by_pattern(text: str) -> Iterator[Span]:
    for pattern in (_PHONE_INTL, _PHONE_NANP):
        for m in pattern.finditer(text):
            digits = sum(ch.isdigit() for ch in m.group())
            if 7 <= digits <= 15:
                yield m.span()


def phone_finder(region: str | None) -> Finder:
    """Phone numbers: the `phonenumbers` library where installed, else `_phones_by_pattern`."""
    try:
        import phonenumbers
    except ImportError:
        return _phones_by_pattern
    default = (region or "US").upper()

    def find(text: str) -> Iterator[Span]:
        for m in phonenumbers.PhoneNumberMatcher(text, default, leniency=phonenumbers.Leniency.VALID):
            yield m.start, m.end

    return find


def _pattern(regex: re.Pattern[str]) -> Finder:
    def find(text: str) -> Iterator[Span]:
        for m in regex.finditer(text):
            if m.end() > m.start():
                yield m.span()

    return find


class Detector:
    """The finders of the configured kinds, in order (`privacy.redact_kinds`, then `redact_patterns`)."""

    def __init__(self, kinds: Iterable[str] = ("email", "phone", "card", "iban"), patterns: Mapping[str, str] | None = None,
                 *, phone_region: str | None = None):
        builtin: dict[str, Callable[[], Finder]] = {"email": lambda: _emails, "iban": lambda: _ibans,
                                                    "card": lambda: _cards, "phone": lambda: phone_finder(phone_region)}
        wanted = list(kinds)
        unknown = [k for k in wanted if k not in builtin]
        if unknown:
            raise ValueError(f"unknown redaction kinds {unknown}: use {sorted(builtin)}")
        order = [k for k in ("email", "iban", "card", "phone") if k in wanted]  # IBANs hold card-like digit runs
        self.finders: list[tuple[str, Finder]] = [(k.upper(), builtin[k]()) for k in order]
        self.finders += [(name, _pattern(re.compile(rx))) for name, rx in (patterns or {}).items()]

    def spans(self, text: str) -> list[tuple[int, int, str]]:
        """(start, end, KIND) of every finding, without overlaps, in text order."""
        taken: list[tuple[int, int, str]] = []
        for kind, find in self.finders:
            for a, b in find(text):
                if all(b <= s or a >= e for s, e, _ in taken):
                    taken.append((a, b, kind))
        return sorted(taken)


@dataclass
class Redaction:
    """One call's placeholders: `redact` texts (the same value gets the same placeholder), `restore` answers."""

    detector: Detector
    originals: dict[str, str] = field(default_factory=dict)  # placeholder -> the value it stands for
    _by_value: dict[tuple[str, str], str] = field(default_factory=dict)
    _counts: dict[str, int] = field(default_factory=dict)

    def redact(self, text: str) -> str:
        if not text:
            return text
        spans = self.detector.spans(text)
        if not spans:
            return text
        out, at = [], 0
        for a, b, kind in spans:
            value = text[a:b]
            placeholder = self._by_value.get((kind, value))
            if placeholder is None:
                n = self._counts[kind] = self._counts.get(kind, 0) + 1
                placeholder = self._by_value[(kind, value)] = f"[{kind}_{n}]"
                self.originals[placeholder] = value
            out += [text[at:a], placeholder]
            at = b
        out.append(text[at:])
        return "".join(out)

    def redact_all(self, texts: Sequence[str]) -> list[str]:
        return [self.redact(t) for t in texts]

    def counts(self) -> dict[str, int]:
        """Distinct values replaced, by kind."""
        return dict(self._counts)

    def restore(self, text: str) -> str:
        """`text` with every placeholder of this call put back to its value (others are left as they are)."""
        if not self.originals or "[" not in text:
            return text
        return _PLACEHOLDER.sub(lambda m: self.originals.get(m.group(0), m.group(0)), text)


class StreamRestorer:
    """Restores placeholders in a streamed answer whose chunks may split one (`[EMA` + `IL_1]`): text that
    could be the start of a placeholder is held back until the next chunk shows whether it is one."""

    _MAX = 40  # no placeholder is longer: "[" + 32 + "_" + 6 + "]"

    def __init__(self, redaction: Redaction):
        self._r = redaction
        self._held = ""

    def feed(self, delta: str) -> str:
        text = self._held + delta
        cut = text.rfind("[")
        if cut != -1 and "]" not in text[cut:] and len(text) - cut < self._MAX and _could_open(text[cut:]):
            self._held, text = text[cut:], text[:cut]
        else:
            self._held = ""
        return self._r.restore(text)

    def flush(self) -> str:
        text, self._held = self._held, ""
        return self._r.restore(text)


_OPENING = re.compile(r"\[(?:[A-Z][A-Z0-9_]{0,31}(?:_\d{0,6})?)?$")


def _could_open(tail: str) -> bool:
    return _OPENING.match(tail) is not None
