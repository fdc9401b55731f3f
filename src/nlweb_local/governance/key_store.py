"""Where keys are kept: the `KeyStore` port and its SQLite implementation (`<data_dir>/keys.sqlite`).

The SQL is plain SQL-92 (TEXT, DOUBLE PRECISION, no AUTOINCREMENT, no upserts) so that a PostgreSQL store
can run the same statements with `%s` placeholders. Methods block (file I/O): async callers run them in
a worker thread. The authenticator keeps its own bounded cache in front (authenticate.py).
"""
from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Protocol

from ..core.errors import BadRequestError
from ..core.types import Privacy
from .identity import Role
from .keys import KeyRecord, Limits

SCHEMA = """CREATE TABLE IF NOT EXISTS api_keys (
    key_id     TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL,
    team       TEXT NOT NULL,
    models     TEXT NOT NULL,
    sites      TEXT NOT NULL,
    limits     TEXT NOT NULL,
    allow_from TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION,
    revoked_at DOUBLE PRECISION,
    privacy    TEXT NOT NULL DEFAULT 'any',
    priority   TEXT NOT NULL DEFAULT '',
    max_priority TEXT NOT NULL DEFAULT ''
)"""
# a store made before keys had a privacy class gains the column (every key in it: any)
ADD_PRIVACY = "ALTER TABLE api_keys ADD COLUMN privacy TEXT NOT NULL DEFAULT 'any'"
# ... and one made before keys had a priority class gains those (every key in it: none)
ADD_PRIORITY = ("ALTER TABLE api_keys ADD COLUMN priority TEXT NOT NULL DEFAULT ''",
                "ALTER TABLE api_keys ADD COLUMN max_priority TEXT NOT NULL DEFAULT ''")
_COLUMNS = ("key_id, name, role, team, models, sites, limits, allow_from, hash, created_at, expires_at, revoked_at, "
            "privacy, priority, max_priority")


class KeyStore(Protocol):
    def add(self, record: KeyRecord) -> None: ...
    def by_hash(self, digest: str) -> KeyRecord | None: ...
    def get(self, key_id: str) -> KeyRecord | None: ...
    def all(self) -> list[KeyRecord]: ...
    def revoke(self, key_id: str, at: float) -> KeyRecord | None: ...
    def set_hash(self, key_id: str, digest: str) -> KeyRecord | None: ...
    def count(self) -> int: ...
    def close(self) -> None: ...


def _row(r: tuple) -> KeyRecord:
    return KeyRecord(key_id=r[0], name=r[1], role=Role.parse(r[2]), team=r[3], models=tuple(json.loads(r[4])),
                     sites=tuple(json.loads(r[5])), limits=Limits.of(json.loads(r[6])), allow_from=tuple(json.loads(r[7])),
                     hash=r[8], created_at=r[9], expires_at=r[10], revoked_at=r[11], privacy=Privacy(r[12] or "any"),
                     priority=r[13] or "", max_priority=r[14] or "")


class SqliteKeyStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute(SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(api_keys)")}
            if "privacy" not in columns:
                self._db.execute(ADD_PRIVACY)
            if "priority" not in columns:
                for sql in ADD_PRIORITY:
                    self._db.execute(sql)
        except sqlite3.DatabaseError as e:
            raise BadRequestError(f"the key store {self.path} cannot be opened: {e}") from None
        self._lock = threading.Lock()

    def _one(self, sql: str, args: tuple = ()) -> KeyRecord | None:
        with self._lock:
            r = self._db.execute(sql, args).fetchone()
        return _row(r) if r else None

    def add(self, record: KeyRecord) -> None:
        with self._lock:
            self._db.execute(f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (record.key_id, record.name, record.role.label, record.team, json.dumps(list(record.models)),
                              json.dumps(list(record.sites)), json.dumps(record.limits.as_dict()), json.dumps(list(record.allow_from)), record.hash,
                              record.created_at, record.expires_at, record.revoked_at, record.privacy.value,
                              record.priority, record.max_priority))

    def by_hash(self, digest: str) -> KeyRecord | None:
        return self._one(f"SELECT {_COLUMNS} FROM api_keys WHERE hash = ?", (digest,))

    def get(self, key_id: str) -> KeyRecord | None:
        return self._one(f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,))

    def all(self) -> list[KeyRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, key_id").fetchall()
        return [_row(r) for r in rows]

    def revoke(self, key_id: str, at: float) -> KeyRecord | None:
        with self._lock:
            self._db.execute("UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL", (at, key_id))
        return self.get(key_id)

    def set_hash(self, key_id: str, digest: str) -> KeyRecord | None:
        with self._lock:
            self._db.execute("UPDATE api_keys SET hash = ? WHERE key_id = ?", (digest, key_id))
        return self.get(key_id)

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
