"""API keys: their shape, their secret and the one hash that is stored.

A key reads `nlk_<id>_<secret>`: `id` (12 hex digits) names the key in listings, logs and the audit
log; `secret` is 32 random bytes (URL-safe base64). Only `HMAC-SHA256(server secret, whole key)` is
stored. Why HMAC and not scrypt/argon2: a key is 256 random bits, so guessing it is hopeless however fast
the hash — slow hashes protect low-entropy passwords; HMAC costs ~1 µs per request where scrypt costs
tens of milliseconds (and would need a plaintext-keyed cache to be usable on the hot path); and a leaked
key database alone does not even let anyone test a guess, because the server secret
(`<data_dir>/auth.secret`, mode 0600) is not in it.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from ..core.errors import BadRequestError
from ..core.types import Privacy
from .identity import Identity, Limits, Role

PREFIX = "nlk_"
_KEY = re.compile(r"^nlk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One key as stored (never its secret)."""

    key_id: str
    name: str
    role: Role
    hash: str
    team: str = ""
    models: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    allow_from: tuple[str, ...] = ()  # CIDR networks the key may be used from (empty: anywhere)
    created_at: float = 0.0
    expires_at: float | None = None
    revoked_at: float | None = None
    privacy: Privacy = Privacy.ANY  # local_only: every LLM call made with this key stays local
    priority: str = ""  # priority class of its requests that send no x-nlweb-priority ("": the team's or default)
    max_priority: str = ""  # highest class its requests may run at ("": any)

    def identity(self) -> Identity:
        return Identity(self.key_id, self.name, self.role, self.team, self.models, self.sites, subject=self.name,
                        limits=self.limits, allow_from=self.allow_from, privacy=self.privacy, priority=self.priority,
                        max_priority=self.max_priority)

    def status(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def public(self, now: float | None = None) -> dict[str, Any]:
        """What listings show."""
        now = time.time() if now is None else now
        return {"id": self.key_id, "name": self.name, "role": self.role.label, "team": self.team,
                "models": list(self.models), "sites": list(self.sites), "limits": self.limits.as_dict(), "allow_from": list(self.allow_from),
                "created_at": self.created_at, "expires_at": self.expires_at, "revoked_at": self.revoked_at,
                "status": self.status(now), "privacy": self.privacy.value, "priority": self.priority or None,
                "max_priority": self.max_priority or None}


def new_key() -> tuple[str, str]:
    """(key id, the whole key)."""
    key_id = secrets.token_hex(6)
    return key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def with_new_secret(record: KeyRecord, secret: bytes) -> tuple[KeyRecord, str]:
    """The same key with a fresh secret (rotation): (the record to store, the whole new key)."""
    key = f"{PREFIX}{record.key_id}_{secrets.token_urlsafe(32)}"
    return replace(record, hash=key_hash(secret, key)), key


def well_formed(key: str) -> bool:
    return _KEY.match(key) is not None


def key_id_of(key: str) -> str | None:
    m = _KEY.match(key)
    return m.group(1) if m else None


def key_hash(secret: bytes, key: str) -> str:
    return hmac.digest(secret, key.encode("ascii", "replace"), "sha256").hex()


class KeyHasher:
    """`key_hash` for one secret on the hot path: HMAC-SHA256 with the inner and outer SHA-256 states
    computed once (RFC 2104; what the hmac module's own fallback does), ~1 µs a key where `hmac.digest`
    takes ~5 µs. Equal to `key_hash` (tests/test_governance_auth.py checks it)."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, secret: bytes):
        block = hashlib.sha256().block_size
        if len(secret) > block:
            secret = hashlib.sha256(secret).digest()
        secret = secret.ljust(block, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in secret))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in secret))

    def __call__(self, key: str) -> str:
        inner = self._inner.copy()
        inner.update(key.encode("ascii", "replace"))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


def load_secret(path: Path, *, create: bool) -> bytes | None:
    """The server secret; made (32 random bytes, mode 0600) when absent and `create`."""
    try:
        raw = path.read_bytes().strip()
    except FileNotFoundError:
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        raw = base64.b64encode(os.urandom(32))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(raw + b"\n")
        return base64.b64decode(raw)
    try:
        secret = base64.b64decode(raw, validate=True)
    except ValueError:
        secret = b""
    if len(secret) < 16:
        raise BadRequestError(f"the auth secret {path} is damaged (expected base64 of at least 16 bytes); "
                              "restore it from a backup (every key was hashed with it)")
    return secret


def parse_networks(values: Sequence[str]) -> tuple[str, ...]:
    """CIDR networks (or single addresses), normalised; `BadRequestError` naming a bad one."""
    out = []
    for v in values:
        try:
            out.append(str(ipaddress.ip_network(v.strip(), strict=False)))
        except ValueError:
            raise BadRequestError(f"{v!r} is not an IP network: use CIDR such as 10.0.0.0/8 or 192.0.2.7") from None
    return tuple(out)


def parse_duration(text: str) -> float:
    """'30d', '12h', '90m', '3600s', '2w' -> seconds."""
    m = _DURATION.match(text.strip())
    if not m or float(m.group(1)) <= 0:
        raise BadRequestError(f"cannot read the duration {text!r}: use e.g. 30d, 12h, 90m, 2w")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def parse_role(text: str) -> Role:
    try:
        return Role.parse(text)
    except ValueError as e:
        raise BadRequestError(str(e)) from None
