"""`Keyring`: what `nlweb-local keys ...` and `/admin/keys` do — create, list, revoke, rotate — over a
`KeyStore` and the server secret. Blocking (file I/O): async callers use a worker thread."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

from ..core.errors import BadRequestError, NotFoundError
from ..core.types import Privacy
from .identity import Limits, Role
from .key_store import KeyStore
from .keys import KeyRecord, key_hash, load_secret, new_key, parse_networks, with_new_secret

_NAME_MAX = 100


class Keyring:
    def __init__(self, store: KeyStore, secret_path: Path, *, clock: Callable[[], float] = time.time):
        self.store = store
        self.secret_path = Path(secret_path)
        self._clock = clock
        self._secret: bytes | None = None

    def secret(self, *, create: bool = False) -> bytes | None:
        """The server secret (None: none yet, and not asked to make one). A store with keys but no
        secret is refused: those keys could never be checked."""
        if self._secret is None:
            self._secret = load_secret(self.secret_path, create=create)
            if self._secret is None and self.store.count() > 0:
                raise BadRequestError(f"the key store holds keys but the auth secret {self.secret_path} is missing; "
                                      "restore it from a backup, or move the key store away and create new keys")
        return self._secret

    def create(self, name: str, role: Role, *, team: str = "", models: Sequence[str] = (), sites: Sequence[str] = (),
               expires_in_s: float | None = None, limits: Limits = Limits(),
               allow_from: Sequence[str] = (), privacy: Privacy = Privacy.ANY, priority: str = "",
               max_priority: str = "") -> tuple[KeyRecord, str]:
        """(the stored record, the whole key — shown once, never stored)."""
        name = name.strip()
        if not name or len(name) > _NAME_MAX:
            raise BadRequestError(f"a key needs a name of 1 to {_NAME_MAX} characters")
        if role is Role.PUBLIC:
            raise BadRequestError("a key's role is admin, operator or user")
        secret = self.secret(create=True)
        assert secret is not None
        key_id, key = new_key()
        now = self._clock()
        record = KeyRecord(key_id, name, role, key_hash(secret, key), team=team.strip(),
                           models=tuple(m for m in models if m), sites=tuple(s for s in sites if s), limits=limits,
                           allow_from=parse_networks(allow_from), privacy=privacy, priority=priority.strip(),
                           max_priority=max_priority.strip(),
                           created_at=now, expires_at=now + expires_in_s if expires_in_s else None)
        self.store.add(record)
        return record, key

    def list(self) -> list[KeyRecord]:
        return self.store.all()

    def get(self, key_id: str) -> KeyRecord:
        record = self.store.get(key_id)
        if record is None:
            raise NotFoundError(f"no key with id {key_id!r} (nlweb-local keys list shows them)")
        return record

    def revoke(self, key_id: str) -> KeyRecord:
        self.get(key_id)
        record = self.store.revoke(key_id, self._clock())
        assert record is not None
        return record

    def rotate(self, key_id: str) -> tuple[KeyRecord, str]:
        """A new secret for the same key (id, name, role, scopes, limits and counters kept); the old
        secret stops working at once here, and in other processes once their cache entry expires."""
        record = self.get(key_id)
        if record.revoked_at is not None:
            raise BadRequestError(f"key {key_id} is revoked; create a new key instead")
        secret = self.secret()
        assert secret is not None
        fresh, key = with_new_secret(record, secret)
        self.store.set_hash(key_id, fresh.hash)
        return fresh, key

    def close(self) -> None:
        self.store.close()
