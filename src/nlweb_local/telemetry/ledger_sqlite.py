"""`SqliteLedgerStore`: the cost ledger in one SQLite file (WAL), with a versioned schema.

The schema version is SQLite's `PRAGMA user_version`. At open, the migrations after that version run
in order inside one `BEGIN IMMEDIATE` transaction (SQLite's DDL is transactional, and so is
`user_version`): either all of them apply and the version moves to the last, or none does. A second
process opening the same file at the same time waits for the lock, then finds the work done.

    version 0   the table as nlweb-local wrote it before versions existed (no user_version set)
    version 1   llm_calls and its ts index (CREATE ... IF NOT EXISTS: a version-0 file keeps its rows)
    version 2   cache hits: columns `cache` (which cache answered; '' for an LLM call) and `saved_usd`
    version 3   `model_version`: the model registry's NAME@VERSION that served (else a fingerprint)
    version 4   `caller` and `team`: whose key the call was made for (governance), for `cost report --by`

To change the schema, append a `Migration` (plain SQL, so the PostgreSQL store can follow the same
steps); never edit one that has shipped. A file newer than this code is refused rather than guessed at.

Writes go through one connection (the cost ledger's writer thread); reads open their own short-lived
connection, so a report or a budget check never waits behind a batch (WAL: readers do not block the
writer).
"""
from __future__ import annotations

import sqlite3
import threading
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, Union

from ..core.batch_writer import sqlite_insert_rows
from .ledger_store import COLUMNS, CallRecord, LedgerStoreError, record_from_row, time_range


@dataclass(frozen=True)
class Migration:
    """One step of the schema: SQL statements, or a function of the connection, run inside the open's
    transaction (so it must not commit)."""

    description: str
    apply: Union[tuple[str, ...], Callable[[sqlite3.Connection], None]]


MIGRATIONS: tuple[Migration, ...] = (
    Migration("llm_calls: one row per LLM call, indexed by time", (
        """CREATE TABLE IF NOT EXISTS llm_calls (
  id INTEGER PRIMARY KEY, ts REAL NOT NULL, request_id TEXT NOT NULL, deployment TEXT NOT NULL,
  local INTEGER NOT NULL, task TEXT NOT NULL, tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL,
  latency_s REAL NOT NULL, ttft_s REAL, cost_usd REAL NOT NULL, reference_usd REAL NOT NULL,
  savings_usd REAL NOT NULL, error TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS llm_calls_ts ON llm_calls(ts)",
    )),
    Migration("llm_calls: cache hits (which cache answered, what the call it replaced cost)", (
        "ALTER TABLE llm_calls ADD COLUMN cache TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE llm_calls ADD COLUMN saved_usd REAL NOT NULL DEFAULT 0",
    )),
    Migration("llm_calls: the model version that served (the registry's NAME@VERSION, else a fingerprint)", (
        "ALTER TABLE llm_calls ADD COLUMN model_version TEXT NOT NULL DEFAULT ''",
    )),
    Migration("llm_calls: who the call was for (the API key id or SSO subject, and its team)", (
        "ALTER TABLE llm_calls ADD COLUMN caller TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE llm_calls ADD COLUMN team TEXT NOT NULL DEFAULT ''",
    )),
)
SCHEMA_VERSION = len(MIGRATIONS)

_INSERT_HEAD = f"INSERT INTO llm_calls ({', '.join(COLUMNS)}) VALUES "
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM llm_calls"


class SqliteLedgerStore:
    def __init__(self, path: str | Path, *, migrations: Sequence[Migration] = MIGRATIONS, timeout_s: float = 30.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._timeout = timeout_s
        self._lock = threading.Lock()
        try:
            self._conn = self._connect(check_same_thread=False)  # opened here, written from the writer thread
        except sqlite3.Error as e:
            raise LedgerStoreError(f"cannot open the cost ledger {self.path}: {e}") from e
        try:
            self._version = migrate(self._conn, migrations, where=str(self.path))
        except BaseException:
            self._conn.close()
            raise

    @property
    def schema_version(self) -> int:
        return self._version

    def __repr__(self) -> str:
        return f"SqliteLedgerStore({str(self.path)!r})"

    def write(self, rows: Sequence[CallRecord]) -> None:
        try:
            with self._lock, self._conn:
                sqlite_insert_rows(self._conn, _INSERT_HEAD, len(COLUMNS), rows)  # (not executemany: see there)
        except sqlite3.Error as e:
            raise LedgerStoreError(f"writing {len(rows)} rows to {self.path}: {e}") from e

    def query(self, since: float | None = None, until: float | None = None) -> list[CallRecord]:
        where, args = time_range(since, until)
        with closing(self._connect()) as conn:
            rows = conn.execute(f"{_SELECT}{where} ORDER BY ts, id", args).fetchall()
        return [record_from_row(r) for r in rows]

    def spend(self, since: float) -> float:
        with closing(self._connect()) as conn:
            return float(conn.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM llm_calls WHERE ts >= ?",
                                      (since,)).fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _connect(self, *, check_same_thread: bool = True) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self._timeout, check_same_thread=check_same_thread)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration], *, where: str = "") -> int:
    """Bring the database to version len(migrations) in one transaction; return that version."""
    target = len(migrations)
    saved = conn.isolation_level
    conn.isolation_level = None  # explicit BEGIN/COMMIT: the sqlite3 module would commit before DDL otherwise
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > target:
                raise LedgerStoreError(f"the cost ledger {where} has schema version {version}, newer than this "
                                       f"nlweb-local knows ({target}): upgrade nlweb-local, or point "
                                       "telemetry.ledger_path at another file")
            for number in range(version, target):
                step = migrations[number].apply
                if callable(step):
                    step(conn)
                else:
                    for statement in step:
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number + 1}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as e:
        raise LedgerStoreError(f"cannot migrate the cost ledger {where} to schema version {target}: {e}") from e
    finally:
        conn.isolation_level = saved
    return target
