"""Priority classes: named levels of `CallContext.priority`, and the priority of the request being served.

    interactive  10   a person is waiting for the first token
    default       0   what a request that says nothing gets
    batch       -10   bulk work (ingestion, evaluation, offline jobs): served when nothing better waits

(the names and numbers are `llm.priority.classes`). A request asks for a class, or an integer, with the
`x-nlweb-priority` header on any endpoint; its caller's key or team may carry a default class (used when
the header is absent) and a highest class (a batch key cannot claim interactive: a higher ask is lowered
to it). The HTTP edge resolves the three into `ASKED` for the length of the request
(server/priority_middleware.py), as it does the privacy class, and the gateway's `RequestPriority`
wrapper puts it on every call's `CallContext.priority` — /v1's, /ask's, /mcp's and /chat's calls alike.
"""
from __future__ import annotations

from contextvars import ContextVar
from typing import Mapping

from .errors import BadRequestError

DEFAULT_CLASSES: Mapping[str, int] = {"interactive": 10, "default": 0, "batch": -10}
MAX_ABS = 1_000_000  # integers beyond this are refused (they would swamp ageing arithmetic)

# the priority the request being served resolved to at the edge (None: outside a request, or nothing asked)
ASKED: ContextVar[int | None] = ContextVar("nlweb_priority", default=None)


class PriorityClasses:
    """Class names and their integers; `parse` reads a header or key value: a class name or an integer."""

    def __init__(self, classes: Mapping[str, int] | None = None, default: str = "default"):
        self.classes = dict(DEFAULT_CLASSES if classes is None else classes)
        if not self.classes:
            raise ValueError("at least one priority class is needed")
        if default not in self.classes:
            raise ValueError(f"the default priority class {default!r} is not one of {', '.join(self.classes)}")
        self.default_name = default
        self.default = self.classes[default]
        self._by_lower = {k.lower(): v for k, v in self.classes.items()}

    def names(self) -> str:
        """The classes as a caller is told them: 'interactive (10), default (0), batch (-10)'."""
        return ", ".join(f"{k} ({v})" for k, v in sorted(self.classes.items(), key=lambda kv: -kv[1]))

    def parse(self, text: str, what: str = "x-nlweb-priority") -> int:
        """A class name (any case) or an integer; `BadRequestError` naming `what` and listing the classes."""
        value = text.strip() if isinstance(text, str) else ""
        known = self._by_lower.get(value.lower())
        if known is not None:
            return known
        try:
            n = int(value)
        except ValueError:
            n = None
        if n is None or abs(n) > MAX_ABS:
            raise BadRequestError(f"{what} must be a priority class ({self.names()}) or an integer "
                                  f"(higher is served first), got {str(text)[:40]!r}")
        return n

    def check(self, name: str | None, what: str) -> str | None:
        """`name` when it is a class or an integer (for a key's or team's class), else `BadRequestError`."""
        if name is None or name == "":
            return None
        self.parse(name, what)
        return name.strip()

    def name_of(self, priority: int) -> str:
        """The class of exactly `priority`, else the number (for logs and listings)."""
        for k, v in self.classes.items():
            if v == priority:
                return k
        return str(priority)

    def resolve(self, asked: int | None, default: str | None = None, highest: str | None = None) -> int | None:
        """What a request runs at: `asked` (its header), else the caller's `default` class; never above the
        caller's `highest`. None: nothing applies (the call keeps the priority its context has)."""
        out = asked if asked is not None else (self.parse(default, "priority") if default else None)
        if highest:
            top = self.parse(highest, "max_priority")
            if (self.default if out is None else out) > top:
                out = top
        return out
