"""The registry's tables and the SQL both backends run (SQLite by default, PostgreSQL by URL).

    registry_migrations   one row per applied schema step (the schema's version is the highest)
    registry_state        one row: `version`, bumped by every change (replicas poll it to see changes)
    model_versions        (name, version) -> engine, artifact, sha256, quantisation, context window,
                          parameters (JSON), notes, created at/by
    aliases               alias -> (name, version), who moved it last and when
    alias_history         every alias change: seq (the registry version it made), from -> to, action, at, by

Every change is one transaction that starts by bumping `registry_state.version`: in PostgreSQL that
row lock serialises writers (SQLite's BEGIN IMMEDIATE does the same), so a check made inside the
transaction (the version exists, the alias is where the caller saw it) still holds at commit. A failed
check raises and rolls back: nothing changes. Statements are written with `?`; the PostgreSQL store
hands them to psycopg as `%s`. Backends (`backends.py`) supply only the connection and the transaction.

To change the schema, append a `MIGRATIONS` step (plain SQL every backend reads); never edit one that
has shipped. A database newer than this code is refused rather than guessed at.
"""
from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Protocol, Sequence

from ..core.errors import BadRequestError, NlwebError, NotFoundError
from .experiment_store import TABLES as EXPERIMENT_TABLES
from .records import Alias, AliasChange, ModelVersion, version_key


class RegistryStoreError(NlwebError):
    """The registry database cannot be opened, migrated, read or written."""

    status = 500


MIGRATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("models, versions, aliases and their history", (
        "CREATE TABLE registry_state (id INTEGER PRIMARY KEY, version BIGINT NOT NULL)",
        "INSERT INTO registry_state (id, version) VALUES (1, 0)",
        """CREATE TABLE model_versions (
  name TEXT NOT NULL, version TEXT NOT NULL, engine TEXT NOT NULL, artifact TEXT NOT NULL, sha256 TEXT NOT NULL,
  quantisation TEXT NOT NULL, context_window INTEGER, parameters TEXT NOT NULL, notes TEXT NOT NULL,
  created_at DOUBLE PRECISION NOT NULL, created_by TEXT NOT NULL, PRIMARY KEY (name, version))""",
        """CREATE TABLE aliases (
  alias TEXT PRIMARY KEY, name TEXT NOT NULL, version TEXT NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
  updated_by TEXT NOT NULL, FOREIGN KEY (name, version) REFERENCES model_versions (name, version))""",
        """CREATE TABLE alias_history (
  seq BIGINT PRIMARY KEY, alias TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL, from_name TEXT,
  from_version TEXT, action TEXT NOT NULL, changed_at DOUBLE PRECISION NOT NULL, changed_by TEXT NOT NULL)""",
        "CREATE INDEX alias_history_alias ON alias_history (alias, seq)",
    )),
    EXPERIMENT_TABLES,  # (registry/experiment_store.py)
)
SCHEMA_VERSION = len(MIGRATIONS)

_VERSION_COLUMNS = ("name, version, engine, artifact, sha256, quantisation, context_window, parameters, notes, "
                    "created_at, created_by")
_HISTORY_COLUMNS = "seq, alias, name, version, from_name, from_version, action, changed_at, changed_by"


class RegistryStore(Protocol):
    """The port the registry's rules (`catalog.ModelRegistry`) and its cached view (`aliases.RegistryAliases`)
    are written against."""

    schema_version: int

    def version(self) -> int: ...
    def add_version(self, v: ModelVersion) -> int: ...
    def get_version(self, name: str, version: str) -> ModelVersion | None: ...
    def versions(self, name: str | None = None) -> list[ModelVersion]: ...
    def aliases(self) -> list[Alias]: ...
    def set_alias(self, alias: str, name: str, version: str, *, action: str, at: float, by: str,
                  must_exist: bool = False) -> AliasChange | None: ...
    def rollback(self, alias: str, *, at: float, by: str) -> AliasChange: ...
    def history(self, alias: str | None = None, limit: int | None = None) -> list[AliasChange]: ...
    def close(self) -> None: ...


def rollback_target(changes: Sequence[AliasChange]) -> tuple[str, str] | None:
    """The version an alias goes back to: the one before its current version, walking the alias's history
    (oldest first) as a stack — a set or promote pushes its target, a rollback pops — so repeated rollbacks
    keep going back (v1 → v2 → v3, rollback: v2, rollback: v1) instead of toggling. None: nothing before."""
    stack: list[tuple[str, str]] = []
    for c in changes:
        if c.action.startswith("canary-"):  # (a canary's start and rollback never moved the alias)
            continue
        if c.action == "rollback" and stack:
            stack.pop()
            if not stack or stack[-1] != (c.name, c.version):  # (a history edited by hand: trust the row)
                stack.append((c.name, c.version))
        else:
            stack.append((c.name, c.version))
    return stack[-2] if len(stack) >= 2 else None


class SqlRegistryStore:
    """The statements both backends run. A subclass opens `self._conn` and implements `_transaction()`
    (a context manager: commit on exit, roll back on an exception) and `_run(sql, args)`."""

    where = ""
    _errors: tuple[type[BaseException], ...] = ()
    _integrity: tuple[type[BaseException], ...] = ()

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one connection, shared by the threads that call the store
        self.schema_version = 0

    # -- backend hooks ------------------------------------------------------------------------------
    def _transaction(self) -> Any:
        raise NotImplementedError

    def _run(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _lock_schema(self) -> None:
        """Inside the migration's transaction, before anything is read: keep other openers out (SQLite's
        BEGIN IMMEDIATE already does)."""

    # -- plumbing -------------------------------------------------------------------------------------
    @contextmanager
    def _writing(self) -> Iterator[int]:
        """One write transaction; yields the registry version this change makes."""
        with self._guard(), self._transaction():
            self._run("UPDATE registry_state SET version = version + 1 WHERE id = 1")
            yield int(self._run("SELECT version FROM registry_state WHERE id = 1")[0][0])

    @contextmanager
    def _reading(self) -> Iterator[None]:
        with self._guard():
            yield

    def _connected(self) -> None:
        """Before each use: reconnect if the connection was lost (a backend that can)."""

    @contextmanager
    def _guard(self) -> Iterator[None]:
        with self._lock:
            try:
                self._connected()
                yield
            except self._errors as e:
                raise RegistryStoreError(f"model registry {self.where}: {e}") from e

    def _migrate(self) -> None:
        """Bring the schema to `SCHEMA_VERSION`, all steps in one transaction (called by the backend at open)."""
        with self._guard(), self._transaction():
            self._lock_schema()
            self._run("CREATE TABLE IF NOT EXISTS registry_migrations (version INTEGER PRIMARY KEY, "
                      "description TEXT NOT NULL)")
            row = self._run("SELECT MAX(version) FROM registry_migrations")
            current = int(row[0][0] or 0)
            if current > SCHEMA_VERSION:
                raise RegistryStoreError(f"the model registry {self.where} has schema version {current}, newer than "
                                         f"this nlweb-local knows ({SCHEMA_VERSION}): upgrade nlweb-local, or point "
                                         "registry.database_url elsewhere")
            for number in range(current, SCHEMA_VERSION):
                description, statements = MIGRATIONS[number]
                for statement in statements:
                    self._run(statement)
                self._run("INSERT INTO registry_migrations (version, description) VALUES (?, ?)",
                          (number + 1, description))
        self.schema_version = SCHEMA_VERSION

    # -- reads ------------------------------------------------------------------------------------
    def version(self) -> int:
        """The registry's change counter (cheap: one row)."""
        with self._reading():
            return int(self._run("SELECT version FROM registry_state WHERE id = 1")[0][0])

    def get_version(self, name: str, version: str) -> ModelVersion | None:
        with self._reading():
            rows = self._run(f"SELECT {_VERSION_COLUMNS} FROM model_versions WHERE name = ? AND version = ?",
                             (name, version))
        return _version(rows[0]) if rows else None

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        """Every version of `name` (None: of every model), oldest first."""
        where, args = (" WHERE name = ?", (name,)) if name else ("", ())
        with self._reading():
            rows = self._run(f"SELECT {_VERSION_COLUMNS} FROM model_versions{where} ORDER BY name, created_at, version",
                             args)
        return [_version(r) for r in rows]

    def aliases(self) -> list[Alias]:
        with self._reading():
            rows = self._run("SELECT alias, name, version, updated_at, updated_by FROM aliases ORDER BY alias")
        return [Alias(*r) for r in rows]

    def history(self, alias: str | None = None, limit: int | None = None) -> list[AliasChange]:
        """Alias changes, oldest first (`limit`: only the newest that many)."""
        where, args = (" WHERE alias = ?", [alias]) if alias else ("", [])
        tail = ""
        if limit is not None:
            tail, args = " LIMIT ?", [*args, int(limit)]
        with self._reading():
            rows = self._run(f"SELECT {_HISTORY_COLUMNS} FROM alias_history{where} ORDER BY seq DESC{tail}", args)
        return [_change(r) for r in reversed(rows)]

    # -- changes ----------------------------------------------------------------------------------
    def add_version(self, v: ModelVersion) -> int:
        """Register `v`; `BadRequestError` if that name and version exist (versions are immutable).
        Returns the registry version the change made."""
        with self._writing() as seq:
            if self._run("SELECT 1 FROM model_versions WHERE name = ? AND version = ?", (v.name, v.version)):
                raise BadRequestError(f"{v.key} is already registered; versions are immutable: register the new "
                                      "file as another version")
            self._run(f"INSERT INTO model_versions ({_VERSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (v.name, v.version, v.engine, v.artifact, v.sha256, v.quantisation, v.context_window,
                       json.dumps(v.parameters, sort_keys=True), v.notes, v.created_at, v.created_by))
            return seq

    def set_alias(self, alias: str, name: str, version: str, *, action: str, at: float, by: str,
                  must_exist: bool = False) -> AliasChange | None:
        """Point `alias` at NAME@VERSION and record the change; None when it already points there (nothing
        recorded). `NotFoundError` for an unknown version, or (`must_exist`) an alias that is not set."""
        try:
            with self._writing() as seq:
                return self._move(seq, alias, name, version, action=action, at=at, by=by, must_exist=must_exist)
        except _Unchanged:
            return None

    def rollback(self, alias: str, *, at: float, by: str) -> AliasChange:
        """Move `alias` back to the version before its current one (`rollback_target`), in one transaction."""
        with self._writing() as seq:
            rows = self._run(f"SELECT {_HISTORY_COLUMNS} FROM alias_history WHERE alias = ? ORDER BY seq", (alias,))
            if not rows:
                raise NotFoundError(f"no alias {alias!r}: set one with nlweb-local models alias {alias} NAME VERSION")
            target = rollback_target([_change(r) for r in rows])
            if target is None:
                raise BadRequestError(f"alias {alias!r} has no earlier version to roll back to "
                                      "(nlweb-local models history shows its changes)")
            change = self._move(seq, alias, *target, action="rollback", at=at, by=by, must_exist=True)
            assert change is not None  # (the target differs from the current version by construction)
            return change

    def _move(self, seq: int, alias: str, name: str, version: str, *, action: str, at: float, by: str,
              must_exist: bool) -> AliasChange | None:
        if not self._run("SELECT 1 FROM model_versions WHERE name = ? AND version = ?", (name, version)):
            known = [r[0] for r in self._run("SELECT version FROM model_versions WHERE name = ? ORDER BY created_at",
                                             (name,))]
            raise NotFoundError(f"{version_key(name, version)} is not registered "
                                + (f"(versions of {name}: {', '.join(known)})" if known else
                                   f"(no versions of {name}: nlweb-local models register {name} {version} --file PATH)"))
        rows = self._run("SELECT name, version FROM aliases WHERE alias = ?", (alias,))
        before = tuple(rows[0]) if rows else None
        if before is None and must_exist:
            raise NotFoundError(f"no alias {alias!r}: set it first with nlweb-local models alias {alias} NAME VERSION")
        if before == (name, version):
            raise _Unchanged()
        if before is None:
            self._run("INSERT INTO aliases (alias, name, version, updated_at, updated_by) VALUES (?, ?, ?, ?, ?)",
                      (alias, name, version, at, by))
        else:
            self._run("UPDATE aliases SET name = ?, version = ?, updated_at = ?, updated_by = ? WHERE alias = ?",
                      (name, version, at, by, alias))
        change = AliasChange(seq, alias, name, version, before[0] if before else None, before[1] if before else None,
                             action, at, by)
        self._run(f"INSERT INTO alias_history ({_HISTORY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (change.seq, alias, name, version, change.from_name, change.from_version, action, at, by))
        return change


class _Unchanged(Exception):
    """Raised inside a write transaction to roll it back (and its version bump) when an alias already
    points where asked."""


def _version(r: Sequence[Any]) -> ModelVersion:
    return ModelVersion(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7] or "{}"), r[8], float(r[9]), r[10])


def _change(r: Sequence[Any]) -> AliasChange:
    return AliasChange(int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], float(r[7]), r[8])
