"""Where keys are kept: the `KeyStore` port; SQLite (`<data_dir>/keys.sqlite`) by default, PostgreSQL by
URL (`auth.keys_database_url`, key_store_pg.py), with the same SQL.

The SQL is plain SQL-92 (TEXT, DOUBLE PRECISION, no AUTOINCREMENT, no upserts): `SqlKeyStore` holds the
statements, written with `?`, and the PostgreSQL store hands them to psycopg with `%s`. Every statement
is one autocommitted write or read, so several servers can share one PostgreSQL store (and the CLI can
change it beside them). Methods block (I/O): async callers run them in a worker thread. The
authenticator keeps its own bounded cache in front (authenticate.py).
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Protocol

from ..core.errors import BadRequestError, KeyStoreUnavailableError
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
log = logging.getLogger(__name__)
RETRY_AFTER_S = 5.0
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


class SqlKeyStore:
    """The statements both backends run (written with `?`); a subclass supplies `_execute` and `close`."""

    where = ""
    _errors: tuple[type[BaseException], ...] = ()

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def _execute(self, sql: str, args: tuple = ()) -> list[tuple]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _run(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._execute(sql, args)
            except self._errors as e:
                log.error("the key store %s: %s: %s", self.where, type(e).__name__, e)
                raise KeyStoreUnavailableError(f"the key store cannot be read or written now ({type(e).__name__}; "
                                               "details are in the log); API keys cannot be checked until "
                                               "it can", retry_after=RETRY_AFTER_S) from None

    def _one(self, sql: str, args: tuple = ()) -> KeyRecord | None:
        rows = self._run(sql, args)
        return _row(rows[0]) if rows else None

    def add(self, record: KeyRecord) -> None:
        self._run(f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (record.key_id, record.name, record.role.label, record.team, json.dumps(list(record.models)),
                   json.dumps(list(record.sites)), json.dumps(record.limits.as_dict()), json.dumps(list(record.allow_from)),
                   record.hash, record.created_at, record.expires_at, record.revoked_at, record.privacy.value,
                   record.priority, record.max_priority))

    def by_hash(self, digest: str) -> KeyRecord | None:
        return self._one(f"SELECT {_COLUMNS} FROM api_keys WHERE hash = ?", (digest,))

    def get(self, key_id: str) -> KeyRecord | None:
        return self._one(f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,))

    def all(self) -> list[KeyRecord]:
        return [_row(r) for r in self._run(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, key_id")]

    def revoke(self, key_id: str, at: float) -> KeyRecord | None:
        self._run("UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL", (at, key_id))
        return self.get(key_id)

    def set_hash(self, key_id: str, digest: str) -> KeyRecord | None:
        self._run("UPDATE api_keys SET hash = ? WHERE key_id = ?", (digest, key_id))
        return self.get(key_id)

    def count(self) -> int:
        return int(self._run("SELECT COUNT(*) FROM api_keys")[0][0])


class SqliteKeyStore(SqlKeyStore):
    _errors = (sqlite3.Error,)

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)
        self.where = str(self.path)
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

    def __repr__(self) -> str:
        return f"SqliteKeyStore({self.where!r})"

    def _execute(self, sql: str, args: tuple = ()) -> list[tuple]:
        return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_key_store(database_url: str | None, path: Path) -> SqlKeyStore:
    """The store `auth.keys_database_url` names (postgresql://...), else SQLite at `path`."""
    if not database_url:
        return SqliteKeyStore(path)
    if database_url.startswith(("postgresql://", "postgres://")):
        from .key_store_pg import PostgresKeyStore

        return PostgresKeyStore(database_url)
    if database_url.startswith("sqlite:///"):
        return SqliteKeyStore(Path(database_url[len("sqlite:///"):]).expanduser())
    raise BadRequestError("auth.keys_database_url must be postgresql://user@host/db (or sqlite:///PATH)")
