"""Where the registry lives: one SQLite file (WAL) by default, PostgreSQL by URL (`registry.database_url`).

Both run `store.SqlRegistryStore`'s statements; they differ only in how they connect and begin a write:

    SQLite       BEGIN IMMEDIATE: one writer at a time (another process waits up to timeout_s), readers go on
    PostgreSQL   a transaction; the first statement of every change updates the one `registry_state` row,
                 whose lock serialises writers; migrations take a transaction-scoped advisory lock
"""
from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from .store import RegistryStoreError, SqlRegistryStore

MIGRATION_LOCK = 0x6E6C7265  # PostgreSQL advisory lock key held while migrating ("nlre")


class SqliteRegistryStore(SqlRegistryStore):
    def __init__(self, path: str | Path, *, timeout_s: float = 30.0):
        super().__init__()
        self.path = Path(path).expanduser()
        self.where = str(self.path)
        self._errors = (sqlite3.Error,)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=timeout_s, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")  # a committed alias change survives a power cut
            self._conn.execute("PRAGMA foreign_keys=ON")
        except (OSError, sqlite3.Error) as e:
            raise RegistryStoreError(f"cannot open the model registry {self.path}: {e}") from e
        try:
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    def __repr__(self) -> str:
        return f"SqliteRegistryStore({self.where!r})"

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _run(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        return self._conn.execute(sql, tuple(args)).fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class PostgresRegistryStore(SqlRegistryStore):
    """PostgreSQL through psycopg 3 (pip install 'nlweb-local[postgres]'). A schema other than `public`:
    put it in the URL, e.g. `postgresql://host/db?options=-csearch_path%3Dnlweb`."""

    def __init__(self, url: str):
        super().__init__()
        try:
            import psycopg
        except ImportError as e:
            raise RegistryStoreError("registry.database_url names PostgreSQL, which needs psycopg: "
                                     "pip install 'nlweb-local[postgres]'") from e
        self.where = _redacted(url)
        self._errors = (psycopg.Error,)
        self._connect = lambda: psycopg.connect(url, autocommit=True, connect_timeout=10)
        try:
            self._conn = self._connect()
        except psycopg.Error as e:
            raise RegistryStoreError(f"cannot connect to the model registry at {self.where}: {e}") from e
        try:
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    def __repr__(self) -> str:
        return f"PostgresRegistryStore({self.where!r})"

    def _connected(self) -> None:
        if self._conn.closed or self._conn.broken:  # (the server restarted, the network dropped): once more
            self._conn.close()
            self._conn = self._connect()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._conn.transaction():
            yield

    def _lock_schema(self) -> None:
        self._run("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))  # two processes on a fresh database

    def _run(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        cur = self._conn.execute(sql.replace("?", "%s"), tuple(args))
        return cur.fetchall() if cur.description is not None else []

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_store(url: str | None, data_dir: str | Path) -> SqlRegistryStore:
    """The store `registry.database_url` names: None → `<data_dir>/registry.sqlite`; `sqlite:///PATH`; or a
    `postgresql://` (or `postgres://`) URL."""
    if not url:
        return SqliteRegistryStore(Path(data_dir).expanduser() / "registry.sqlite")
    if url.startswith("sqlite:///"):
        return SqliteRegistryStore(url[len("sqlite:///"):])  # sqlite:////abs/path, sqlite:///relative/path
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresRegistryStore(url)
    raise RegistryStoreError(f"registry.database_url must be postgresql://... or sqlite:///PATH (got {_redacted(url)!r})")


def _redacted(url: str) -> str:
    """`url` without a password (for messages and logs)."""
    head, at, tail = url.rpartition("@")
    if not at or "://" not in head:
        return url
    scheme, _, creds = head.partition("://")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{tail}" if ":" in creds else url
