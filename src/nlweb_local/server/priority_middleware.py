"""`PriorityMiddleware` (pure ASGI): the priority a request runs at, on every endpoint.

    x-nlweb-priority: interactive | default | batch | <integer>     (llm.priority.classes)

What the header asks for, else the caller's key's class, else its team's (`auth.teams.<team>.priority`),
else the default class; never above the highest class its key and team allow (`max_priority`: a higher
ask is lowered to it). The result goes into `core.priority.ASKED` while the request runs, and the
gateway's `RequestPriority` wrapper puts it on every LLM call the request makes (/v1's, /ask's, /mcp's,
/chat's). A value that is neither a class nor an integer is refused (400, in the endpoint's wire format,
listing the classes). It runs after authentication (it reads the caller's identity).
"""
from __future__ import annotations

from typing import Any, Mapping

from ..core.errors import BadRequestError
from ..core.priority import ASKED, PriorityClasses
from .auth import refuse

HEADER = b"x-nlweb-priority"


class CallerPriority:
    """The priority classes, and what each caller may run at: its key's and its team's class and ceiling."""

    def __init__(self, classes: PriorityClasses, teams: Mapping[str, tuple[int | None, int | None]] | None = None):
        self.classes = classes
        self._teams = dict(teams or {})  # team -> (its class, its ceiling), parsed
        self._callers: dict[int, tuple[Any, int | None, int | None]] = {}  # by id(identity): (it, class, ceiling)

    @classmethod
    def from_settings(cls, settings: Any) -> "CallerPriority":
        """From `llm.priority` and `auth.teams`; a team naming an unknown class is refused here, at start."""
        p = settings.llm.priority
        classes = PriorityClasses(p.classes, p.default_class)

        def parsed(value: str | None, what: str) -> int | None:
            return classes.parse(value, what) if value else None

        teams = {name: (parsed(t.priority, f"auth.teams.{name}.priority"),
                        parsed(t.max_priority, f"auth.teams.{name}.max_priority"))
                 for name, t in settings.auth.teams.items() if t.priority or t.max_priority}
        return cls(classes, teams)

    def resolve(self, asked: int | None, ident: Any) -> int | None:
        """What the request runs at; None when that is the context's own default (0) and nothing applies."""
        c = self.classes
        own, ceiling = self._of(ident) if ident is not None else (None, None)
        out = asked if asked is not None else own
        if out is None and c.default != 0:
            out = c.default
        if ceiling is not None and (c.default if out is None else out) > ceiling:
            out = ceiling
        return out

    def _of(self, ident: Any) -> tuple[int | None, int | None]:
        """(the caller's own class, its ceiling), worked out once per identity (the authenticator reuses them)."""
        hit = self._callers.get(id(ident))
        if hit is not None and hit[0] is ident:
            return hit[1], hit[2]
        c = self.classes
        team_class, team_max = self._teams.get(ident.team, (None, None)) if ident.team else (None, None)
        own = c.parse(ident.priority, "the key's priority") if ident.priority else team_class
        key_max = c.parse(ident.max_priority, "the key's max_priority") if ident.max_priority else None
        ceilings = [m for m in (key_max, team_max) if m is not None]
        ceiling = min(ceilings) if ceilings else None
        if len(self._callers) >= 4096:
            self._callers.clear()
        self._callers[id(ident)] = (ident, own, ceiling)
        return own, ceiling


def header_priority(headers: Any, classes: PriorityClasses) -> int | None:
    for k, v in headers:
        if k == HEADER:
            return classes.parse(v.decode("latin-1"), "x-nlweb-priority")
    return None


class PriorityMiddleware:
    def __init__(self, app: Any, *, callers: CallerPriority):
        self.app = app
        self._callers = callers

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        state = scope.get("state") or {}
        try:
            asked = header_priority(scope["headers"], self._callers.classes)
            priority = self._callers.resolve(asked, state.get("identity"))  # (a key's class no longer configured: 400)
        except BadRequestError as e:
            e.param = "x-nlweb-priority"  # type: ignore[attr-defined]
            await refuse(scope, send, e)
            return
        if priority is None:
            await self.app(scope, receive, send)
            return
        token = ASKED.set(priority)
        try:
            await self.app(scope, receive, send)
        finally:
            ASKED.reset(token)
