"""Cheap lexical vetoes for the semantic cache: a near-duplicate embedding is not a near-duplicate question.

Sentence embeddings place "vegan lasagna without cheese" and "vegan lasagna with cheese" (or "tents under
$200" and "tents under $300") closer together than many true paraphrases. Each veto below compares two
texts' *features* and says whether they differ in a way that changes the answer; a semantic hit is
refused when any veto fires, whatever the cosine similarity.

    numbers    the sets of numbers, dates and relative days differ ("for 4" ≠ "for 6", "Saturday" ≠
               "Sunday", "next weekend" ≠ "this weekend"); number words count ("four" = "4", "a dozen" = 12)
    negation   one text is negated and the other is not ("not", "no", "without", "-n't", "gluten-free",
               "except", ...)
    contrast   the texts take different values in a group of mutually exclusive words (indoor|outdoor,
               vegan|vegetarian, beginner|advanced, under|over, morning|evening, ...)
    entities   a salient token of one text (a capitalised word after the first, an acronym, a capitalised
               first word that is not a common sentence opener) is absent from the other, case-insensitively
    substitution  the texts are the same but for one or two content words swapped on each side ("trail shoes
               for wide feet" / "... narrow feet", "baked salmon" / "grilled salmon", "how to upload a podcast" /
               "how to download a podcast"): a minimal pair, whose swapped words carry the whole difference.
               Paraphrases usually restructure more; a paraphrase by one synonym ("kids" / "children") is lost,
               which costs a hit, never a wrong answer

Features are computed once per text (`features(text)`; the index stores them beside each vector), and
`veto(a, b)` is pure: the name of the first veto that fires, or None. `nlweb-local eval cache` measures
what each veto adds to precision and costs in hit rate.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Collection

VETOES: tuple[str, ...] = ("numbers", "negation", "contrast", "entities", "substitution")

_TOKEN = re.compile(r"\$?\d+(?:[.,:]\d+)*(?:st|nd|rd|th|am|pm|k|s)?|[a-z]+(?:['’][a-z]+)?(?:-[a-z]+)*|[.?!;]", re.I)

# phrases rewritten before tokenising, so that a comparison is one token and "no more than" is not a negation
_PHRASES = [(re.compile(p, re.I), r) for p, r in (
    (r"\b(?:no|not) more than\b", " atmost "), (r"\bat most\b", " atmost "), (r"\bup to\b", " atmost "),
    (r"\b(?:no|not) less than\b", " atleast "), (r"\bat least\b", " atleast "),
    (r"\bless than\b", " under "), (r"\bfewer than\b", " under "), (r"\bmore than\b", " over "),
    (r"\bgreater than\b", " over "), (r"\ba couple of\b", " two "), (r"\ba dozen\b", " twelve "),
    (r"\bhalf an?\b", " half "), (r"\bno matter\b", " whatever "), (r"\bno-bake\b", " nobake "),
)]

_UNITS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                                     "fourteen fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if w != "_"}
_SCALES = {"dozen": 12, "hundred": 100, "thousand": 1000, "million": 1_000_000}
_ORDINALS = {w: i for i, w in enumerate("_ _ second third fourth fifth sixth seventh eighth ninth tenth".split())
             if w != "_"}
_SPECIAL = {"dozen": "12", "half": "0.5", "twice": "2", "single": "1", "double": "2", "triple": "3"}
# words after which "one" is no count ("the vegan one", "one of them", "one that ...")
_FUNCTION_WORDS = {"the", "a", "an", "of", "that", "which", "who", "is", "are", "was", "with", "for", "in", "on", "at",
                   "to", "and", "or", "but", "i", "you", "we", "it", "please", "from", "by", "near", "like", "as",
                   "than", "do", "does", "can", "should", "would", "will", "another", "more", "else", "this", "these"}
_MONTHS = {m: i + 1 for i, m in enumerate("january february march april may june july august september october "
                                          "november december".split())}
_MONTHS.update({m[:3]: i for m, i in _MONTHS.items() if m not in ("may", "march")})
_MONTHS.update({"sept": 9})
_DAYS = {d: d[:3] for d in "monday tuesday wednesday thursday friday saturday sunday".split()}
_RELATIVE_DAYS = {"today": "d0", "tonight": "d0", "tomorrow": "d+1", "yesterday": "d-1", "weekday": "weekday",
                  "weekdays": "weekday", "weekend": "weekend", "weekends": "weekend"}
_PERIODS = {"week", "weekend", "month", "year", "season", "summer", "winter", "spring", "autumn", "fall",
            *_DAYS, *_MONTHS}
_RELATIVE = {"next": "next", "coming": "next", "upcoming": "next", "last": "last", "previous": "last", "past": "last"}

# grammatical negation and the prepositions of exclusion (not verbs such as "avoid": "avoid blisters" is no negation
# of "prevent blisters")
_NEGATIONS = {"not", "no", "never", "without", "none", "nothing", "nobody", "nowhere", "neither", "nor", "cannot",
              "except", "excluding", "non"}
# "X free" is an absence ("dairy free cookies", "is this bread gluten free?") unless X is a word of price or grammar
# ("is admission free", "are there free concerts") or a noun with its article ("is the museum free?")
_FREE_IS_PRICE_AFTER = {"admission", "entry", "entrance", "parking", "shipping", "delivery", "tickets", "ticket",
                        "everything", "totally", "completely", "entirely", "fully", "mostly", "still", "stay", "all",
                        "have", "has", "had", "get", "gets", "offer", "offers", "more", *_FUNCTION_WORDS,
                        "there", "be", "were", "any", "some", "also", "its", "their", "my", "your", "our"}
_DETERMINERS = {"the", "a", "an", "this", "that", "these", "those", "its", "their", "my", "your", "our"}

# mutually exclusive values: each group maps a word to its value; two texts that both name a value of the
# group, and share none, contradict each other
_CONTRAST_GROUPS: tuple[dict[str, str], ...] = tuple({w: v for v, ws in g.items() for w in ws.split()} for g in (
    {"in": "indoor indoors inside", "out": "outdoor outdoors outside"},
    {"hot": "hot warm warmer heated", "cold": "cold colder chilled iced frozen"},
    {"cheap": "cheap cheaper cheapest inexpensive affordable budget", "dear": "expensive pricey priciest luxury premium"},
    {"free": "free", "paid": "paid ticketed"},
    {"easy": "easy easier easiest beginner beginners novice novices simple", "hard": "hard harder hardest difficult "
     "advanced challenging strenuous expert experts"},
    {"before": "before", "after": "after"},
    {"early": "early earlier earliest", "late": "late later latest"},
    {"open": "open opens opening", "close": "close closes closed closing"},
    {"start": "start starts starting begin begins beginning", "end": "end ends ending finish finishes"},
    {"morning": "morning mornings", "afternoon": "afternoon afternoons", "evening": "evening evenings night nights "
     "nighttime tonight"},
    {"am": "am", "pm": "pm"},
    {"breakfast": "breakfast", "brunch": "brunch", "lunch": "lunch lunches", "dinner": "dinner dinners supper"},
    {"spring": "spring", "summer": "summer", "autumn": "autumn fall", "winter": "winter"},
    {"vegan": "vegan", "vegetarian": "vegetarian veggie", "pescatarian": "pescatarian", "keto": "keto",
     "paleo": "paleo", "carnivore": "carnivore"},
    {"under": "under below beneath atmost max maximum within cheaper lighter smaller shorter fewer lower",
     "over": "over above atleast minimum exceeding heavier bigger larger longer higher"},
    {"men": "men men's mens male man's", "women": "women women's womens female woman's ladies"},
    {"kids": "kid kids child children toddler toddlers teen teens", "adults": "adult adults seniors"},
    {"small": "small smallest little mini compact", "large": "large largest big biggest huge oversized"},
    {"light": "light lightweight ultralight", "heavy": "heavy heavyweight"},
    {"long": "long", "short": "short"},
    {"sweet": "sweet", "savory": "savory savoury"},
    {"spicy": "spicy hot", "mild": "mild"},
    {"buy": "buy buying purchase", "rent": "rent renting rental hire", "sell": "sell selling", "borrow": "borrow"},
    {"north": "north northern", "south": "south southern", "east": "east eastern", "west": "west western"},
    {"up": "uphill ascent", "down": "downhill descent"},
    {"first": "first", "last": "last final"},
    {"sunny": "sunny dry", "rainy": "rainy rain wet"},
    {"solo": "solo alone", "group": "group groups family families couples"},
    {"new": "new", "used": "used secondhand second-hand"},
    {"audio": "audio", "video": "video"},
))

# capitalised first words that say nothing about an entity (openers of questions and requests)
_OPENERS = set("""what whats what's where wheres where's when whens how hows how's why which who whom whose is are
was were do does did can could would should will shall may might must have has had any anything some find show
list give tell recommend suggest help i i'm im my me we our you your please the a an good best top great easy
quick simple cheap looking need want searching search get make cook bake buy rent where's hey hi hello ok okay so
and also there this that these those it its one two three name explain describe compare summarize summarise
define translate write plan upcoming next local nearby new free family kid kids vegan vegetarian
gluten healthy recipes recipe ideas events podcasts podcast gear tents tent boots hiking trails cheapest
latest weekend tonight today tomorrow""".split())

_SENTENCE_END = {".", "?", "!", ";"}
_NOT_NAMES = {*_UNITS, *_TENS, *_SCALES, *_ORDINALS, *_SPECIAL, "first", *_MONTHS, *_DAYS,
              *(d + "s" for d in _DAYS)}


@dataclass(frozen=True, slots=True)
class Features:
    """What the vetoes compare, computed once per text."""

    numbers: frozenset[str]
    negated: bool
    contrast: tuple[frozenset[str], ...]  # per group of _CONTRAST_GROUPS: the values the text names
    salient: frozenset[str]  # entity tokens (lower-cased stems)
    words: frozenset[str]  # every word (lower-cased stems), to look salient tokens up in
    content: frozenset[str]  # content words (stems; no function, number, negation words; contrast words as their value)


def _stem(word: str) -> str:
    w = word.lower().replace("’", "'")
    if w.endswith("'s"):
        w = w[:-2]
    w = w.rstrip("'")
    if len(w) > 4 and w.endswith("ies"):
        w = w[:-3] + "y"
    elif len(w) > 3 and w.endswith("es") and w[-3] in "sxz":
        w = w[:-2]
    elif len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        w = w[:-1]
    return w


# words that carry no content of their own in a question (function words, question and request words)
_STOP = set("""a an the of for to in on at by with from about into onto and or but is are was were be been being do
does did i i'm my me you your we our it its it's this that these those there here what what's whats which who when
where why how can could should would will shall may might must have has had get got some any good best top great
recommended recommendation recommendations tip tips way ways step steps idea ideas list please need want make help
find show tell give near nearby local around out up just really more most very so if than then vs versus like
similar thing things something anything guide kind kinds type types use using used recipe recipes""".split())


def _content(lower: list[str]) -> frozenset[str]:
    out = set()
    for tok in lower:
        for w in tok.split("-"):
            if not w or not w[0].isalpha() or w in _STOP or w in _NEGATIONS or w in _NOT_NAMES:
                continue
            value = next((f"={g[w]}" for g in _CONTRAST_GROUPS if w in g), None)
            out.add(value or _stem(w))
    return frozenset(out)


def _same_word(a: str, b: str) -> bool:
    """Two stems of one word ('thicken'/'thicker', 'learn'/'learning'): a long common beginning."""
    k = 0
    for x, y in zip(a, b):
        if x != y:
            break
        k += 1
    return k >= 5 or (k >= 4 and k == min(len(a), len(b)))


def _substituted(a: frozenset[str], b: frozenset[str]) -> bool:
    only_a = [w for w in a - b if not any(_same_word(w, x) for x in b - a)]
    only_b = [w for w in b - a if not any(_same_word(w, x) for x in a - b)]
    return 0 < len(only_a) <= 2 and 0 < len(only_b) <= 2


def _number(tok: str) -> str | None:
    """The canonical form of a digit token ('$1,200' → '1200', '7pm' → '7', '3rd' → '#3', '7:30' → '7:30')."""
    t = tok.lstrip("$").lower()
    if not t or not t[0].isdigit():
        return None
    ordinal = t.endswith(("st", "nd", "rd", "th")) and t[:-2].isdigit()
    t = re.sub(r"(st|nd|rd|th|am|pm|s)$", "", t)
    if t.endswith("k") and t[:-1].replace(".", "", 1).isdigit():
        t = str(float(t[:-1]) * 1000)
    if ":" not in t:
        t = t.replace(",", "")
        try:
            v = float(t)
            t = str(int(v)) if v == int(v) else str(v)
        except ValueError:
            pass
    return f"#{t}" if ordinal else t


def _words_to_numbers(lower: list[str]) -> list[str]:
    """Numbers spelled as words, combined ('twenty five' → '25', 'two hundred' → '200'); 'one' only where it
    counts something (not 'the vegan one', 'one of')."""
    out: list[str] = []
    i, n = 0, len(lower)
    while i < n:
        w = lower[i]
        if w in _UNITS or w in _TENS or (w in _SCALES and i > 0 and lower[i - 1] == "a"):
            if w == "one" and not (i + 1 < n and lower[i + 1].isalpha() and lower[i + 1] not in _FUNCTION_WORDS
                                   and (i == 0 or lower[i - 1] not in _DETERMINERS or lower[i - 1] == "a")):
                i += 1  # "the vegan one", "one of them", "which one?": a pronoun, not a count
                continue
            total, current = 0, 0
            while i < n and (lower[i] in _UNITS or lower[i] in _TENS or lower[i] in _SCALES or lower[i] == "and"):
                x = lower[i]
                if x == "and":
                    if i + 1 < n and (lower[i + 1] in _UNITS or lower[i + 1] in _TENS) and current:
                        i += 1
                        continue
                    break
                if x in _SCALES:
                    current = max(current, 1) * _SCALES[x]
                    if _SCALES[x] >= 1000:
                        total, current = total + current, 0
                else:
                    current += _UNITS.get(x, 0) + _TENS.get(x, 0)
                i += 1
            out.append(str(total + current))
            continue
        if w in _ORDINALS:
            out.append(f"#{_ORDINALS[w]}")
        elif w in _SPECIAL:
            out.append(_SPECIAL[w])
        i += 1
    return out


def _dates(tokens: list[str], lower: list[str]) -> list[str]:
    out: list[str] = []
    for i, w in enumerate(lower):
        prev = lower[i - 1] if i else ""
        nxt = lower[i + 1] if i + 1 < len(lower) else ""
        if w in _DAYS or w[:-1] in _DAYS and w.endswith("s"):
            out.append("day:" + _DAYS[w.removesuffix("s") if w not in _DAYS else w])
        elif w in _MONTHS:
            ambiguous = w in ("may", "march")
            if not ambiguous or tokens[i][0].isupper() and i > 0 or nxt[:1].isdigit() or prev in ("in", "of"):
                out.append(f"month:{_MONTHS[w]}")
        elif w in _RELATIVE_DAYS:
            out.append("rel:" + _RELATIVE_DAYS[w])
        if w in _RELATIVE and nxt in _PERIODS:
            out.append(f"rel:{_RELATIVE[w]}")
    return out


def _negated(lower: list[str]) -> bool:
    for i, w in enumerate(lower):
        if w in _NEGATIONS or w.endswith(("n't", "n’t")) or w in ("dont", "doesnt", "isnt", "arent", "cant", "wont",
                                                                  "didnt", "shouldnt", "wasnt", "werent"):
            return True
        if w.endswith("-free") or w.startswith("non-"):
            return True
        if (w == "free" and i > 0 and lower[i - 1].isalpha() and lower[i - 1] not in _FREE_IS_PRICE_AFTER
                and not (i > 1 and lower[i - 2] in _DETERMINERS)):
            return True
    return False


def _salient(tokens: list[str]) -> set[str]:
    out: set[str] = set()
    start = True
    for tok in tokens:
        if tok in _SENTENCE_END:
            start = True
            continue
        if not tok[0].isalpha():
            start = False
            continue
        caps = tok[0].isupper()
        acronym = len(tok) >= 2 and tok.isupper()
        if len(tok) < 2 or tok.lower() in _NOT_NAMES:
            pass  # numbers, days and months are the numbers veto's
        elif acronym or (caps and not start) or (caps and start and _stem(tok) not in _OPENERS
                                                 and tok.lower() not in _OPENERS):
            for part in tok.split("-"):
                if part:
                    out.add(_stem(part))
        start = False
    return out


def features(text: str) -> Features:
    rewritten = text
    for pattern, repl in _PHRASES:
        rewritten = pattern.sub(repl, rewritten)
    tokens = _TOKEN.findall(rewritten)
    lower = [t.lower().replace("’", "'") for t in tokens]
    numbers = {n for t in tokens if (n := _number(t)) is not None}
    numbers.update(_words_to_numbers([p for t in lower for p in t.split("-") if p]))
    numbers.update(_dates(tokens, lower))
    words = {_stem(p) for t in lower if t[0].isalpha() for p in (t, *t.split("-"))}
    contrast = tuple(frozenset(g[w] for w in lower if w in g) |
                     frozenset(g[p] for w in lower if "-" in w for p in w.split("-") if p in g)
                     for g in _CONTRAST_GROUPS)
    return Features(frozenset(numbers), _negated(lower), contrast, frozenset(_salient(tokens)), frozenset(words),
                    _content(lower))


def veto(a: Features, b: Features, enabled: Collection[str] = VETOES) -> str | None:
    """The name of the first veto in `enabled` that fires for the pair, or None (they may share an answer)."""
    if "numbers" in enabled and a.numbers != b.numbers:
        return "numbers"
    if "negation" in enabled and a.negated != b.negated:
        return "negation"
    if "contrast" in enabled and any(x and y and not (x & y) for x, y in zip(a.contrast, b.contrast)):
        return "contrast"
    if "entities" in enabled and (any(s not in b.words for s in a.salient) or any(s not in a.words for s in b.salient)):
        return "entities"
    if "substitution" in enabled and _substituted(a.content, b.content):
        return "substitution"
    return None
