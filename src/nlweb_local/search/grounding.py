"""Hold a written answer to the items it was written from: check it, ground it, or say what the items say.

- `check_answer(text, evidence)`: every checkable fact of every sentence (search/facts.py) against the
  items the sentence cites (all the answer's items when it cites none) and the question; every `[n]`
  against the item it names (in range, and stating one of the sentence's facts — or, for a sentence
  without facts, sharing its words); and whether the answer merely restates the question. What
  `nlweb-local eval answers` counts.
- `ground(text, evidence, cite=...)`: the deterministic pass /ask runs on what the model wrote. A
  sentence with a fact that no item (and not the question) states is removed; so are sentences that
  talk about the conversation ("You asked ..."), only echo the question, or are nothing but an item's name. Citations are re-pointed to
  the items that state the sentence's facts, out-of-range ones dropped, and added where a sentence's
  facts come from an item it did not cite (with `cite=False`, as for summaries, they are removed).
- `extractive(evidence, cite=...)`: when nothing the model wrote survives (or what survives only
  restates the question), an answer assembled from the items' own fields (name, time, price, date,
  place, rating and the first sentence of the description), each with its citation: plain, and true.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..core.item_text import item_text, item_type
from .facts import (Fact, Source, citations, clean, content_words, extract_facts, sentences, strip_citations,
                    supported, tokens)

_META = re.compile(r"^(?:you asked|you're asking|you are asking|you want|you are looking|you're looking|the user|"
                   r"as an ai|i'm sorry|i am sorry|i hope|i can't|i cannot|let me know|sure[,!.]|certainly[,!.]|"
                   r"based on (?:the|these) items|here (?:is|are) (?:the|some|a few)? ?(?:answer|summary|items|results)\b|"
                   r"(?:question|answer|summary)\s*:)", re.I)


class Evidence:
    """The items an answer was written from (schema.org objects, in citation order) and the question."""

    def __init__(self, objects: Sequence[Any], query: str, *, rendered: Sequence[str] | None = None):
        self.objects = [o[0] if isinstance(o, list) and o else o for o in objects]
        self.query = query
        texts = rendered if rendered is not None else [""] * len(self.objects)
        self.sources = [Source.of(o, t) for o, t in zip(self.objects, texts)]
        self.question = Source.of_text(query)

    def backs(self, fact: Fact, pool: Sequence[int] | None = None) -> bool:
        """Whether the question or the items `pool` (1-based; None: all) state `fact`."""
        items = self.sources if pool is None else [self.sources[n - 1] for n in pool]
        return supported(fact, [self.question, *items])

    def from_question(self, fact: Fact) -> bool:
        return supported(fact, [self.question])


@dataclass
class SentenceCheck:
    text: str
    facts: list[Fact]
    unsupported: list[Fact]
    cited: list[int]
    bad_citations: list[int]


@dataclass
class AnswerCheck:
    sentences: list[SentenceCheck] = field(default_factory=list)
    restates: bool = False

    @property
    def facts(self) -> int:
        return sum(len(s.facts) for s in self.sentences)

    @property
    def unsupported(self) -> list[Fact]:
        return [f for s in self.sentences for f in s.unsupported]

    @property
    def citations(self) -> int:
        return sum(len(s.cited) for s in self.sentences)

    @property
    def bad_citations(self) -> int:
        return sum(len(s.bad_citations) for s in self.sentences)


def _overlaps(sentence: str, src: Source, query: str) -> bool:
    """A sentence without facts is about an item when it shares its words (two, or all it has)."""
    words = content_words(sentence)
    shared = {w for w in words if f" {w} " in src.text}
    return len(shared) >= min(2, len(words)) if words else False


def cites_well(n: int, sentence: str, facts: list[Fact], ev: Evidence) -> bool:
    """Whether citation [n] points at an item that supports `sentence`."""
    if not 1 <= n <= len(ev.sources):
        return False
    own = [f for f in facts if not ev.from_question(f)]
    src = ev.sources[n - 1]
    if own:
        return any(supported(f, [src]) for f in own)
    return _overlaps(sentence, src, ev.query)


def check_sentence(sentence: str, ev: Evidence) -> SentenceCheck:
    facts = extract_facts(sentence)
    cited = citations(sentence)
    pool = [n for n in cited if 1 <= n <= len(ev.sources)] or None  # none valid: judged against all the items
    unsupported = [f for f in facts if not ev.backs(f, pool)]
    bad = [n for n in cited if not cites_well(n, sentence, facts, ev)]
    return SentenceCheck(sentence, facts, unsupported, cited, bad)


def restates(text: str, ev: Evidence) -> bool:
    """Whether `text` merely restates the question: no fact of its own that an item states, and fewer than
    two words beyond the question's that come from the items."""
    own_facts = [f for f in extract_facts(text) if not ev.from_question(f) and ev.backs(f)]
    if own_facts:
        return False
    novel = content_words(text) - content_words(ev.query)
    from_items = {w for w in novel if any(f" {w} " in s.text for s in ev.sources)}
    return len(from_items) < 2


def check_answer(text: str, ev: Evidence) -> AnswerCheck:
    return AnswerCheck([check_sentence(s, ev) for s in sentences(text)], restates(text, ev))


# -- the grounding pass -------------------------------------------------------------------------------------------


@dataclass
class Grounded:
    text: str
    kept: int = 0  # sentences of the model's answer kept
    dropped: int = 0  # sentences removed (an unsupported fact, talk about the conversation, an echo of the question)
    recited: int = 0  # sentences whose citations were changed
    fallback: bool = False  # the answer is the extractive one


def _choose_citations(facts: list[Fact], cited: list[int], sentence: str, ev: Evidence) -> list[int]:
    """The items a sentence should cite: those stating its own facts (the ones it cited first), else the
    cited items it shares words with, else the one item it shares most words with (if any)."""
    own = [f for f in facts if not ev.from_question(f)]
    n_items = len(ev.sources)
    order = [n for n in dict.fromkeys(cited) if 1 <= n <= n_items] + [n for n in range(1, n_items + 1) if n not in cited]
    if own:
        chosen: list[int] = []
        left = list(own)
        while left:
            best = max(order, key=lambda n: (sum(supported(f, [ev.sources[n - 1]]) for f in left), n in cited, -n))
            covered = [f for f in left if supported(f, [ev.sources[best - 1]])]
            if not covered:
                break
            chosen.append(best)
            left = [f for f in left if f not in covered]
        return sorted(chosen)
    keep = [n for n in order if n in cited and _overlaps(sentence, ev.sources[n - 1], ev.query)]
    if keep:
        return keep
    words = content_words(sentence)
    scored = [(len({w for w in words if f" {w} " in ev.sources[n - 1].text}), -n) for n in range(1, n_items + 1)]
    best_count, best = max(scored, default=(0, 0))
    return [-best] if best_count >= 2 else []


def _with_citations(sentence: str, chosen: list[int]) -> str:
    """The sentence with `chosen` cited before its final stop; a line without one gets a full stop, so the
    sentences joined again split where they were checked."""
    body = re.sub(r"\s+([.,;:!?])", r"\1", strip_citations(sentence)).strip().rstrip(",;:")
    if not re.search(r"[.!?…][\"”’)]*$", body):
        body += "."
    if not chosen:
        return body
    marks = "".join(f"[{n}]" for n in chosen)
    m = re.search(r"[.!?]+[\"”’)]*$", body)
    return f"{body[:m.start()].rstrip()} {marks}{body[m.start():]}" if m else f"{body} {marks}"


def _echoes(sentence: str, facts: list[Fact], ev: Evidence) -> bool:
    """Only the question again: no fact of its own and no word beyond the question's that an item states."""
    if any(not ev.from_question(f) for f in facts):
        return False
    novel = content_words(sentence) - content_words(ev.query)
    return not any(f" {w} " in s.text for w in novel for s in ev.sources)


def _only_a_name(sentence: str, ev: Evidence) -> bool:
    """Nothing but an item's name ("West African Peanut Stew."): true, and says nothing (what is left of a
    sentence once grounding removed the rest is often just that)."""
    words = content_words(sentence)
    return bool(words) and any(words <= content_words(_name(obj)) for obj in ev.objects)


def ground(text: str, ev: Evidence, *, cite: bool) -> Grounded:
    """Keep the sentences whose facts the items state, with citations that point at those items; fall back
    to `extractive` when nothing useful is left."""
    kept: list[str] = []
    out = Grounded("")
    for s in sentences(text):
        facts = extract_facts(s)
        body = strip_citations(s).strip()
        if len(tokens(body)) < 2 or _META.match(body) or _echoes(s, facts, ev) or \
                any(not ev.backs(f) for f in facts) or _only_a_name(body, ev):
            out.dropped += 1
            continue
        cited = citations(s)
        chosen = _choose_citations(facts, cited, s, ev) if cite else []
        out.recited += chosen != cited
        kept.append(_with_citations(s, chosen))
    out.kept = len(kept)
    answer = " ".join(kept)
    if not kept or restates(answer, ev):
        return Grounded(extractive(ev, cite=cite), out.kept, out.dropped + out.kept, out.recited, fallback=True)
    out.text = answer
    return out


# -- the extractive answer ----------------------------------------------------------------------------------------

_KEY_FIELDS = (("totalTime", "ready in {}"), ("duration", "{} long"), ("startDate", "starts {}"),
               ("location", "at {}"), ("offers", "{}"), ("aggregateRating", "rated {}"), ("director", "directed by {}"),
               ("brand", "by {}"), ("partOfSeries", "from {}"), ("datePublished", "published {}"))


def _field(obj: dict, key: str) -> str:
    """One field as the item text renders it (`PT15M` → `15 min`, an offer → `12 USD`), or ''."""
    rendered = item_text({"@type": item_type(obj), "name": "x", key: obj[key]}, 200)
    parts = rendered.split(": ", 2)
    return parts[2].strip() if len(parts) == 3 else ""


def _first_sentence(text: str, limit: int = 180) -> str:
    text = clean(text).strip()
    m = re.search(r"(?<=[.!?])\s", text)
    first = text[: m.start()] if m else text
    if len(first) > limit:
        first = first[:limit].rsplit(" ", 1)[0].rstrip(",;:") + "…"
    return first


def item_facts(obj: Any, limit: int = 3) -> list[str]:
    """Up to `limit` short phrases of an item's own facts: `ready in 15 min`, `rated 4.8/5 (61 ratings)`."""
    if not isinstance(obj, dict):
        return []
    out = []
    for key, pattern in _KEY_FIELDS:
        if key in obj and len(out) < limit:
            value = _field(obj, key)
            if value and value not in ("0", "0/5"):
                out.append(pattern.format(value))
    return out


def _name(obj: Any) -> str:
    if isinstance(obj, dict):
        for key in ("name", "headline", "title"):
            if isinstance(obj.get(key), str) and obj[key].strip():
                return clean(obj[key]).strip()
    return "This item"


def _item_line(obj: Any, n: int | None) -> str:
    """`Name [n]: ready in 15 min, rated 4.8/5. First sentence of the description.`"""
    name = _name(obj)
    facts = item_facts(obj)
    desc = _first_sentence(str(obj.get("description", ""))) if isinstance(obj, dict) else ""
    if desc and set(tokens(desc)) <= set(tokens(name)):  # a description that only repeats the name
        desc = ""
    head = f"{name} [{n}]" if n is not None else name
    detail = f": {', '.join(facts)}." if facts else "."
    tail = f" {desc}" + ("" if desc.endswith((".", "!", "?", "…")) else ".") if desc else ""
    return f"{head}{detail}{tail}"


_MORE_FIELDS = (("recipeCuisine", "cuisine"), ("suitableForDiet", "diet"), ("genre", "genre"), ("keywords", "keywords"),
                ("actor", "cast"), ("author", "by"), ("category", "category"))


def fact_line(obj: Any, limit: int = 240) -> str:
    """An item as the writing model reads it: its extractive line, then a few more fields (`cuisine: Indian`)."""
    line = _item_line(obj, None)
    if isinstance(obj, dict):
        more = []
        for key, label in _MORE_FIELDS:
            if key in obj and (value := _field(obj, key)):
                more.append(f"{label}: {value[:80]}")
        if more:
            line = f"{line} {'; '.join(more)}."
    return line[:limit]


def extractive(ev: Evidence, *, cite: bool, items: int = 3) -> str:
    """An answer made of the items' own fields: one sentence per item (name, key facts, description)."""
    lines = [_item_line(obj, n if cite else None) for n, obj in enumerate(ev.objects[:items], 1)]
    if not lines:
        return ""
    return ("The best matches on the site: " if not cite else "") + " ".join(lines)
