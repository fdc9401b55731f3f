"""The key store in PostgreSQL (`auth.keys_database_url: postgresql://user@host/db`), so that several
servers (and the CLI beside them) share one set of keys: `SqlKeyStore`'s statements through psycopg 3
(pip install 'nlweb-local[postgres]').

Every statement is autocommitted; a connection the server dropped (a restart, the network) is opened
again on the next statement. A schema other than `public`: put it in the URL, e.g.
`postgresql://host/db?options=-csearch_path%3Dnlweb`. Every server that shares the store needs the same
server secret (`auth.secret_path`): keys are stored as HMAC-SHA256 hashes under it.
"""
from __future__ import annotations

from typing import Any

from ..core.errors import KeyStoreUnavailableError
from .key_store import RETRY_AFTER_S, SCHEMA, SqlKeyStore, log

SCHEMA_LOCK = 0x6E6C6B73  # advisory lock held while the table is made ("nlks"): two servers starting at once
# a store made before keys had a privacy class gains the column (every key in it: any)
ADD_PRIVACY = "ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS privacy TEXT NOT NULL DEFAULT 'any'"
# ... and one made before keys had a priority class gains those (every key in it: none)
ADD_PRIORITY = ("ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS priority TEXT NOT NULL DEFAULT ''",
                "ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS max_priority TEXT NOT NULL DEFAULT ''")


def redacted(url: str) -> str:
    """`url` without its password (for messages and logs)."""
    head, at, tail = url.rpartition("@")
    if not at or "://" not in head:
        return url
    scheme, _, creds = head.partition("://")
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{tail}" if ":" in creds else url


class PostgresKeyStore(SqlKeyStore):
    def __init__(self, url: str, *, connect_timeout_s: float = 10.0):
        super().__init__()
        try:
            import psycopg
        except ImportError as e:
            raise KeyStoreUnavailableError("auth.keys_database_url names PostgreSQL, which needs psycopg: "
                                           "pip install 'nlweb-local[postgres]'") from e
        self.where = redacted(url)
        self._errors = (psycopg.Error,)
        self._connect = lambda: psycopg.connect(url, autocommit=True, connect_timeout=int(max(1, connect_timeout_s)))
        try:
            self._conn: Any = self._connect()
            with self._conn.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                self._conn.execute(SCHEMA)
                self._conn.execute(ADD_PRIVACY)
                for sql in ADD_PRIORITY:
                    self._conn.execute(sql)
        except psycopg.Error as e:
            log.error("the key store %s: %s: %s", self.where, type(e).__name__, e)
            raise KeyStoreUnavailableError(f"cannot open the key store at {self.where} ({type(e).__name__}: "
                                           f"{str(e).strip()[:200]})", retry_after=RETRY_AFTER_S) from None

    def __repr__(self) -> str:
        return f"PostgresKeyStore({self.where!r})"

    def _execute(self, sql: str, args: tuple = ()) -> list[tuple]:
        if self._conn.closed or self._conn.broken:
            self._reconnect()
        try:
            cur = self._conn.execute(sql.replace("?", "%s"), args)
        except self._errors:
            if not (self._conn.closed or self._conn.broken):
                raise
            self._reconnect()  # (the server restarted, the network dropped): once more, on a new connection
            cur = self._conn.execute(sql.replace("?", "%s"), args)
        return cur.fetchall() if cur.description is not None else []

    def _reconnect(self) -> None:
        self._conn.close()
        self._conn = self._connect()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
