"""The route table: the least role each route of the app needs. A route that is not listed needs `admin`
(deny by default), and tests/test_governance_routes.py fails for any route of the app missing here, so a
new endpoint is never exposed by forgetting it.

Paths are Starlette templates (`{name}` is one path segment); `prefix=True` covers a mount and all below.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .identity import Role

PUBLIC, USER, OPERATOR, ADMIN = Role.PUBLIC, Role.USER, Role.OPERATOR, Role.ADMIN


@dataclass(frozen=True, slots=True)
class RouteRule:
    path: str
    role: Role
    prefix: bool = False  # a mount: the path and everything under it
    budget_first: bool = False  # refuse up front when a day's budget is spent (its LLM calls would only degrade;
    #                             /v1 needs no such check: its call's reservation refuses with the 429)

    def matches(self, path: str) -> bool:
        if self.prefix:
            return path == self.path or path.startswith(self.path.rstrip("/") + "/")
        if "{" not in self.path:
            return path == self.path
        return _pattern(self.path).match(path) is not None


_PATTERNS: dict[str, re.Pattern[str]] = {}


def _pattern(template: str) -> re.Pattern[str]:
    p = _PATTERNS.get(template)
    if p is None:
        p = _PATTERNS[template] = re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$")
    return p


ROUTES: tuple[RouteRule, ...] = (
    # anyone: liveness and readiness probes, the chat page and its static assets
    RouteRule("/health", PUBLIC),
    RouteRule("/ready", PUBLIC),
    RouteRule("/", PUBLIC),
    RouteRule("/static", PUBLIC, prefix=True),
    RouteRule("/dashboard", PUBLIC),  # the page only (no data): it reads /admin/* with the key typed into it
    # users, within their key's models and sites
    RouteRule("/v1/chat/completions", USER),
    RouteRule("/v1/completions", USER),
    RouteRule("/v1/embeddings", USER),
    RouteRule("/v1/models", USER),
    RouteRule("/ask", USER, budget_first=True),
    RouteRule("/mcp", USER, budget_first=True),
    RouteRule("/who", USER),
    RouteRule("/sites", USER),
    RouteRule("/openapi.json", USER),  # the API's description (server/openapi.py)
    RouteRule("/chat/sse", USER, budget_first=True),
    RouteRule("/chat/ws", USER, budget_first=True),
    RouteRule("/feedback", USER),  # a rating of an answer (A/B evidence)
    # operators: read the service's state, command breakers
    RouteRule("/metrics", OPERATOR),
    RouteRule("/admin/stats", OPERATOR),
    RouteRule("/admin/breakers", OPERATOR),
    RouteRule("/admin/breakers/{name}/{action}", OPERATOR),
    RouteRule("/admin/fleet", OPERATOR),
    RouteRule("/admin/memory", OPERATOR),
    RouteRule("/admin/registry", OPERATOR),
    RouteRule("/admin/canary", OPERATOR),
    RouteRule("/admin/experiments", OPERATOR),
    RouteRule("/admin/experiments/report", OPERATOR),
    # admins: keys, model releases
    RouteRule("/admin/registry/aliases/{alias}", ADMIN),
    RouteRule("/admin/registry/aliases/{alias}/rollback", ADMIN),
    RouteRule("/admin/canary/{alias}", ADMIN),
    RouteRule("/admin/experiments/{alias}/{action}", ADMIN),  # start, stop
    RouteRule("/admin/keys", ADMIN),
    RouteRule("/admin/keys/{key_id}", ADMIN),
    RouteRule("/admin/keys/{key_id}/{action}", ADMIN),
)
DENY = RouteRule("", ADMIN)  # what an unlisted path gets


class RouteTable:
    """`rule(path)`: exact paths by one dictionary lookup, templates and mounts by a short scan."""

    def __init__(self, rules: tuple[RouteRule, ...] = ROUTES):
        self.rules = rules
        self._exact = {r.path: r for r in rules if not r.prefix and "{" not in r.path}
        self._other = [r for r in rules if r.prefix or "{" in r.path]

    def rule(self, path: str) -> RouteRule:
        r = self._exact.get(path)
        if r is not None:
            return r
        for r in self._other:
            if r.matches(path):
                return r
        return DENY

    def listed(self, template: str) -> bool:
        """Whether the table names this route template (the route-list test)."""
        return any(r.path == template for r in self.rules)
