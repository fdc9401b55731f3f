"""What the pipeline produces: a request in, a sequence of domain events out.

Wire formats (NLWeb v3, v1, v0.5) are rendered from these events at the HTTP edge.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Union

from ..core.types import Item

Mode = Literal["list", "summarize", "generate"]


@dataclass(slots=True)
class AskRequest:
    query: str
    sites: list[str] = field(default_factory=list)  # empty = all sites
    prev: list[str] = field(default_factory=list)
    last_ans: list[dict[str, Any]] = field(default_factory=list)
    decontextualized_query: str | None = None
    mode: Mode = "list"
    min_score: int | None = None  # a client's explicit cut-off (fixed); None: the site-independent rule of search/cutoff.py
    max_results: int = 10
    query_id: str = ""
    conversation_id: str = ""


@dataclass(slots=True)
class RankedItem:
    item: Item
    score: int
    description: str
    similarity: float = 0.0


@dataclass(slots=True)
class Begin:
    query: str
    cache: str = ""  # the answer cache's outcome: "hit" (the events that follow are a stored answer), "miss", "" (not looked up)


@dataclass(slots=True)
class Decontextualized:
    original: str
    decontextualized: str


@dataclass(slots=True)
class Results:
    items: list[RankedItem]


@dataclass(slots=True)
class Summary:
    text: str
    items: list[RankedItem] = field(default_factory=list)  # what it was written from (not on the wire; for evaluation)


@dataclass(slots=True)
class Generated:
    answer: str
    items: list[RankedItem]


@dataclass(slots=True)
class NoResults:
    message: str


@dataclass(slots=True)
class Notice:
    """Progress or degradation notes (`intermediate_message` on the wire)."""

    text: str


@dataclass(slots=True)
class Failure:
    message: str
    status: int = 500


@dataclass(slots=True)
class End:
    error: bool = False
    stats: dict[str, Any] = field(default_factory=dict)
    degraded: bool = False  # the LLM could not rank (down or overloaded): some items are ordered by similarity only


Event = Union[Begin, Decontextualized, Results, Summary, Generated, NoResults, Notice, Failure, End]
