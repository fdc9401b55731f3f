"""Does a question in a conversation refer back to the earlier ones? Only then is it rewritten.

Merging every new question with the previous one searched for both when the user changed topic
("a waterproof jacket" after "a quick vegetarian dinner" returned recipes). A question needs the
conversation only when it says so, and people say so in a few general ways, whatever the site:

- a word that points back: them, those, these, it, its, they, their, ones, that one, the same, such;
- an opening that continues: "what about", "how about", "and", "also", "now", "instead", "only",
  "but", "more", "another", "any other", "anything else";
- a comparison with what was shown: cheaper, bigger, quicker, spicier, ... (not the comparatives
  that name things on their own: "lower back pain", "better sleep", "older adults");
- a fragment that only qualifies something: it starts with a preposition ("without ginger",
  "under $50", "for kids").

A question with none of these stands alone and is searched as it is: no LLM call, no merging. The
test is lexical on purpose: it costs nothing, needs no model, and a missed follow-up is still
answered (as a new question), whereas a false merge answers the wrong question.
"""
from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9$']+")

_POINTERS = frozenset("them those these it its they their theirs ones such".split())
_PAIRS = frozenset({("that", "one"), ("this", "one"), ("which", "one"), ("the", "one"), ("the", "same"),
                    ("the", "other"), ("the", "first"), ("the", "second"), ("the", "last"), ("the", "cheapest")})
_OPENERS = frozenset("and also now instead only but or more another else plus same ok okay".split())
_OPENING_PAIRS = frozenset({("what", "about"), ("how", "about"), ("what", "else"), ("anything", "else"),
                            ("something", "else"), ("any", "other"), ("not", "that")})
_COMPARATIVES = frozenset("""cheaper pricier bigger larger smaller shorter longer faster quicker slower easier harder
healthier spicier milder sweeter heavier warmer newer fewer simpler closer nearer""".split())
_PREPOSITIONS = frozenset("for with without in under over near from by on at except not but than".split())


def refers_back(query: str) -> bool:
    """True when `query` reads as a continuation of the conversation (see the module's doc)."""
    words = _WORD.findall(query.lower())
    if not words:
        return False
    if words[0] in _OPENERS or words[0] in _PREPOSITIONS or tuple(words[:2]) in _OPENING_PAIRS:
        return True
    if any(w in _POINTERS or w in _COMPARATIVES for w in words):
        return True
    return any(p in _PAIRS for p in zip(words, words[1:]))
