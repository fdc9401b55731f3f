"""Governance: who may call what (API keys, roles, scopes), how much (limits), and the audit log of what they did.

    identity.py       Identity, Role, the current caller (a context variable)
    keys.py           the key format, the HMAC hash, durations
    key_store.py      the KeyStore port and SQLite (portable SQL); key_store_pg.py: PostgreSQL, the same SQL
    keyring.py        create / list / revoke / rotate (the CLI and /admin/keys)
    authenticate.py   a key -> an Identity (one HMAC + one dict lookup), cached, invalidated on revoke
    tokens.py         SSO: an OIDC/JWT bearer token -> an Identity (PyJWT, a JWKS file or URL)
    routes.py         the route table: the least role of every route
    counters.py       the Counters port (atomic reserve, adjust; expiry) in process; counters_redis.py in Redis
    limits.py         requests/minute, tokens/day, $/day per key and team: reserve, then settle
    governed.py       GovernedProvider, the outermost wrapper of the gateway's fold

The HTTP side (server/auth.py: the middleware; server/keys_admin.py: /admin/keys) renders errors in each
endpoint's wire format. `build_governance(settings)` makes the parts (the composition root calls it).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from ..providers.base import Provider
from .authenticate import Authenticator
from .counters import Counters, InProcessCounters
from .identity import CURRENT, Identity, Limits, Role, current
from .keyring import Keyring
from .limits import LimitPolicy
from .routes import RouteTable

__all__ = ["Governance", "build_governance", "Identity", "Role", "Limits", "CURRENT", "current", "keys_path",
           "secret_path", "open_keyring"]


@dataclass
class Governance:
    keyring: Keyring
    authenticator: Authenticator
    limits: LimitPolicy
    routes: RouteTable
    trusted_proxies: tuple[Any, ...] = ()  # ip_network objects: whose X-Forwarded-For is believed

    def wrapper(self, *, resolve: Callable[[str], tuple[str, ...]], deployments: Callable[[], Iterable[str]],
                price: Callable[[str], Callable[[int, int], float]]) -> Callable[[Provider], Provider]:
        from .governed import governed

        return governed(self.limits, resolve=resolve, deployments=deployments, price=price)

    async def close(self) -> None:
        await self.limits.counters.close()
        self.keyring.close()


def keys_path(settings: Any) -> Path:
    a = settings.auth
    return Path(a.keys_path).expanduser() if a.keys_path else settings.data_path / "keys.sqlite"


def secret_path(settings: Any) -> Path:
    a = settings.auth
    return Path(a.secret_path).expanduser() if a.secret_path else settings.data_path / "auth.secret"


def open_keyring(settings: Any) -> Keyring:
    """The keyring over the store the settings name: PostgreSQL by `auth.keys_database_url`, else SQLite."""
    from .key_store import open_key_store

    return Keyring(open_key_store(settings.auth.keys_database_url, keys_path(settings)), secret_path(settings))


def build_counters(settings: Any) -> Counters:
    url = settings.auth.limits_redis_url
    if not url:
        return InProcessCounters()
    from .counters_redis import RedisCounters

    return RedisCounters(url)


def build_governance(settings: Any) -> Governance:
    a = settings.auth
    keyring = open_keyring(settings)
    tokens = None
    if a.jwt.jwks_file or a.jwt.jwks_url:
        from .tokens import TokenVerifier

        tokens = TokenVerifier(a.jwt, cache_entries=a.key_cache_entries)
    auth = Authenticator(keyring, enabled=a.enabled, cache_entries=a.key_cache_entries, ttl_s=a.key_cache_ttl_s,
                         tokens=tokens)
    teams = {name: Limits(t.requests_per_minute, t.tokens_per_day, t.usd_per_day, t.usd_per_month)
             for name, t in a.teams.items()}
    from .keys import parse_networks

    proxies = tuple(ipaddress.ip_network(n) for n in parse_networks(a.trusted_proxies))
    return Governance(keyring, auth, LimitPolicy(build_counters(settings), teams=teams), RouteTable(), proxies)
