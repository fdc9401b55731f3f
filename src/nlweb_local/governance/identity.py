"""Who is calling: the `Identity` an authenticated request carries, and the roles.

The auth middleware puts it on the ASGI scope (`scope["state"]["identity"]`, for HTTP code and the
audit log) and in a context variable for the length of the request (`current()`, for the governance
wrapper and the endpoints that apply site scopes: tasks a request starts copy it).

    user      /ask, /mcp, /v1/*, /chat/*, /who, /sites — within the key's models and sites
    operator  what a user may, plus the admin read endpoints (the dashboard's data), breakers and metrics
    admin     everything, key management included
"""
from __future__ import annotations

import enum
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import BadRequestError
from ..core.types import Privacy


class Role(enum.IntEnum):
    """Ordered: a role may do what every lower role may."""

    PUBLIC = 0  # (a route anyone may call; never a key's role)
    USER = 1
    OPERATOR = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> "Role":
        role = _ROLES.get(text.strip().lower())
        if role is None:
            raise ValueError(f"unknown role {text!r}: use admin, operator or user")
        return role


_ROLES = {"user": Role.USER, "operator": Role.OPERATOR, "admin": Role.ADMIN}


@dataclass(frozen=True, slots=True)
class Limits:
    """A key's or a team's limits (None: no limit of that kind)."""

    requests_per_minute: int | None = None
    tokens_per_day: int | None = None
    usd_per_day: float | None = None
    usd_per_month: float | None = None  # a UTC calendar month

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in (("requests_per_minute", self.requests_per_minute),
                                  ("tokens_per_day", self.tokens_per_day), ("usd_per_day", self.usd_per_day),
                                  ("usd_per_month", self.usd_per_month))
                if v is not None}

    @classmethod
    def of(cls, data: dict[str, Any] | None) -> "Limits":
        data = data or {}
        unknown = set(data) - {"requests_per_minute", "tokens_per_day", "usd_per_day", "usd_per_month"}
        if unknown:
            raise BadRequestError(f"unknown limits {sorted(unknown)}: use requests_per_minute, tokens_per_day, usd_per_day, "
                                  "usd_per_month")
        out = cls(**{k: v for k, v in data.items() if v is not None})
        for k, v in out.as_dict().items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise BadRequestError(f"limit {k} must be a non-negative number, got {v!r}")
        return out


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller. `models`/`sites` empty: no restriction. `subject`: who the key stands for
    (the key's name; an SSO subject where tokens are used)."""

    key_id: str
    name: str
    role: Role
    team: str = ""
    models: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()
    subject: str = ""
    limits: Limits = field(default_factory=Limits)  # the key's own (its team's are in the settings)
    allow_from: tuple[str, ...] = ()  # CIDR networks the key may be used from (empty: anywhere)
    privacy: Privacy = Privacy.ANY  # local_only: every LLM call this caller makes stays on local deployments
    priority: str = ""  # priority class (or integer) of its requests that name none ("": the team's, else the default)
    max_priority: str = ""  # highest class its requests may run at ("": any)

    def may(self, needed: Role) -> bool:
        return self.role >= needed

    def describe(self) -> str:
        return f"key {self.name!r} ({self.key_id}, role {self.role.label}{f', team {self.team}' if self.team else ''})"


CURRENT: ContextVar[Identity | None] = ContextVar("nlweb_identity", default=None)


def current() -> Identity | None:
    """The identity of the request being served (None: auth is off, or a public route)."""
    return CURRENT.get()
