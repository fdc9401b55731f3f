"""`Authenticator`: an API key in, an `Identity` out — one dictionary lookup per request.

Found keys are cached (bounded, least recently used first out) for `ttl_s`, under the key as presented:
a key seen recently costs no HMAC (a miss hashes it and reads the store). The cache holds keys in the
clear, as the request that brought them does; the process holds the server secret too, so its memory
gives nothing away that the cache adds to. the cache is invalidated at
once by a revoke or rotate in this process (`/admin/keys`), and a revoke by another process (the CLI)
takes effect when the entry expires (`auth.key_cache_ttl_s`). Unknown keys are not cached: a miss reads
the store in a worker thread.

Auth is on when `auth.enabled` is set or the store has ever held a key (a revoked key still counts: the
server never falls back to open because keys were revoked). While off, the store is looked at again at
most every `ttl_s`, so a key created by the CLI turns auth on without a restart.
"""
from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import OrderedDict
from typing import Any, Callable

from ..core.errors import AuthError, ForbiddenError
from .identity import Identity
from .keyring import Keyring
from .keys import KeyHasher, KeyRecord, well_formed
from .tokens import looks_like_jwt


def _malformed() -> AuthError:
    return AuthError("malformed API key: expected 'nlk_' followed by the key id and secret, as printed by "
                     "`nlweb-local keys create`")


class Authenticator:
    def __init__(self, keyring: Keyring, *, enabled: bool = False, cache_entries: int = 10_000, ttl_s: float = 10.0,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 tokens: Any = None):
        """`tokens`: a `tokens.TokenVerifier` for SSO bearer tokens (None: API keys only); it turns auth on."""
        self.keyring = keyring
        self.tokens = tokens
        self.enabled = enabled or tokens is not None
        self._cache: OrderedDict[str, tuple[KeyRecord, Identity, float]] = OrderedDict()  # key -> (record, its identity, cached at)
        # the request path's first look: a header's raw value -> (identity, valid until (monotonic)); see `seen`
        self._raw: tuple[dict[bytes, tuple[Identity, float]], dict[bytes, tuple[Identity, float]]] = ({}, {})
        self._max = max(1, cache_entries)
        self._ttl = ttl_s
        self._clock = clock
        self._monotonic = monotonic
        self._networks: dict[tuple[str, ...], tuple[Any, ...]] = {}  # an allow_from, parsed (a miss re-parses)
        self._has_keys = keyring.store.count() > 0
        self._next_look = monotonic() + ttl_s
        secret = keyring.secret() if self._has_keys else None
        self._hash = KeyHasher(secret) if secret is not None else None

    @property
    def active(self) -> bool:
        return self.enabled or self._has_keys

    async def refresh(self) -> bool:
        """While auth is off: whether a key has appeared (looked up at most every ttl_s)."""
        if self.active or self._monotonic() < self._next_look:
            return self.active
        self._next_look = self._monotonic() + self._ttl
        if await asyncio.to_thread(self.keyring.store.count):
            self.keys_changed()
        return self.active

    def keys_changed(self, key_id: str | None = None) -> None:
        """A key was created, revoked or rotated here: auth is on, and `key_id`'s cached entries are gone."""
        self._has_keys = True
        if key_id is not None:
            for presented, (record, _, _) in list(self._cache.items()):
                if record.key_id == key_id:
                    self._cache.pop(presented, None)
            for raw in self._raw:
                for value, (ident, _) in list(raw.items()):
                    if ident.key_id == key_id:
                        raw.pop(value, None)

    def seen(self, value: bytes, api_key: bool = False) -> Identity | None:
        """The identity of a request's raw `Authorization` header value (`api_key`: its `x-api-key` value)
        remembered by `remember` and still valid; None otherwise (then `credential`, `known` and
        `authenticate` take it). One dictionary lookup and one clock read: the request path's common case."""
        hit = self._raw[api_key].get(value)
        if hit is not None and self._monotonic() < hit[1]:
            return hit[0]
        return None

    def remember(self, value: bytes, api_key: bool, key: str) -> None:
        """`value` (a raw header value that carried `key`, a key just found valid) answers `seen` until the
        key's cache entry would expire (`ttl_s`), or the key itself does, whichever is first; a revoke or
        rotate here forgets it at once (`keys_changed`)."""
        hit = self._cache.get(key)
        if hit is None:  # (an SSO token, or a key not cached: not remembered)
            return
        record, ident, cached_at = hit
        until = cached_at + self._ttl
        if record.expires_at is not None:
            until = min(until, self._monotonic() + (record.expires_at - self._clock()))
        raw = self._raw[api_key]
        if len(raw) >= self._max:
            raw.clear()
        raw[value] = (ident, until)

    def known(self, key: str) -> Identity | None:
        """The identity of a key seen within `ttl_s` that is still valid (no await: the request path's
        common case); None otherwise (then `authenticate` says why, or looks the key up)."""
        hit = self._cache.get(key)
        if hit is not None and self._monotonic() - hit[2] < self._ttl:
            record = hit[0]
            if record.revoked_at is None and (record.expires_at is None or self._clock() < record.expires_at):
                return hit[1]
        return None

    async def authenticate(self, key: str) -> Identity:
        """The key's (or SSO token's) identity, or `AuthError` (401) saying what is wrong with it."""
        if self.tokens is not None and looks_like_jwt(key):
            return await self.tokens.authenticate(key)
        identity = self.known(key)  # the hot path: a key seen recently, still valid
        if identity is not None:
            return identity
        hit = self._cache.get(key)
        now = self._monotonic()
        if hit is not None and now - hit[2] < self._ttl:  # seen recently, no longer valid: said below
            record = hit[0]
        elif not well_formed(key):  # (checked after the cache: a known key is well formed)
            raise _malformed()
        else:
            hasher = self._hash
            if hasher is None:
                secret = await asyncio.to_thread(self.keyring.secret)
                if secret is None:
                    raise AuthError("unknown API key (this server has no keys yet)")
                hasher = self._hash = KeyHasher(secret)
            found = await asyncio.to_thread(self.keyring.store.by_hash, hasher(key))
            if found is None:
                self._cache.pop(key, None)
                raise AuthError("unknown API key: it was never issued here, or it was rotated")
            record, identity = found, found.identity()
            self._cache[key] = (record, identity, now)
            if len(self._cache) > self._max:
                self._cache.popitem(last=False)
        status = record.status(self._clock())
        if status == "revoked":
            raise AuthError(f"API key {record.key_id} ({record.name}) was revoked; ask an admin for a new one")
        if status == "expired":
            raise AuthError(f"API key {record.key_id} ({record.name}) expired; ask an admin to rotate it or issue a new one")
        return identity

    def check_address(self, ident: Identity, address: Callable[[], str | None]) -> None:
        """`ForbiddenError` unless the key may be used from the request's address (`address()`, worked out
        only for a key with an allowlist)."""
        if not ident.allow_from:
            return
        nets = self._networks.get(ident.allow_from)
        if nets is None:
            if len(self._networks) >= 1024:
                self._networks.clear()
            nets = self._networks[ident.allow_from] = tuple(ipaddress.ip_network(n) for n in ident.allow_from)
        where = address()
        try:
            ip = ipaddress.ip_address(where) if where else None
        except ValueError:
            ip = None
        if ip is None or not any(ip in net for net in nets):
            raise ForbiddenError(f"{ident.describe()} may be used only from {', '.join(ident.allow_from)}; "
                                 f"this request came from {where or 'an unknown address'}")

    def invalidate_all(self) -> None:
        self._cache.clear()
        for raw in self._raw:
            raw.clear()
