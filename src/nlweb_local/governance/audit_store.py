"""Where the audit log's rows live: SQLite (WAL) by default, PostgreSQL by URL, with the same SQL.

    AuditLog's writer ──append(rows)──► AuditStore ──► one table, `audit_log`
    nlweb-local audit verify | export ──rows(...)──►
    nlweb-local audit erase ──erase(subject)──►

Both backends run the same statements (written with `?`; the PostgreSQL store hands them to psycopg
with `%s`). They differ only in how they connect, how a writer takes the table for itself and how the
file is checked at open:

    SQLite       BEGIN IMMEDIATE (one writer at a time, readers go on), synchronous=FULL: a committed
                 batch survives a power cut
    PostgreSQL   a transaction with LOCK TABLE ... IN SHARE ROW EXCLUSIVE MODE

An append reads the chain's head and links the new rows after it inside that one transaction, so two
processes (a server, and `audit erase` run beside it) can never fork the chain.

At open the store refuses a damaged log rather than start a new chain over it: a file that is not
SQLite or fails `PRAGMA quick_check`, a table without the expected columns, or a newest row (of the
last `TAIL` rows checked) whose hashes do not hold raises `AuditStoreError` naming the path and the reason.
"""
from __future__ import annotations

import re
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..core.batch_writer import sqlite_insert_rows
from ..core.errors import NlwebError
from .audit_chain import COLUMNS, AuditRow, check_row, entry, linked_values

TAIL = 100  # rows checked at open
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_TYPES = {"seq": "BIGINT PRIMARY KEY", "ts": "DOUBLE PRECISION", "latency_s": "DOUBLE PRECISION",
          "cost_usd": "DOUBLE PRECISION", "status": "INTEGER", "tokens_in": "BIGINT", "tokens_out": "BIGINT",
          "count": "BIGINT", "erased": "INTEGER"}


class AuditStoreError(NlwebError):
    """The audit log cannot be opened, is damaged, or a write failed (a failed append wrote nothing)."""

    status = 500


def _ddl(table: str, seq_type: str = _TYPES["seq"]) -> tuple[str, ...]:
    """The table and its one secondary index (time, for `export --since`). No index on `subject` or
    `key_id`: every request pays for an index on its row (with 50 keys, SQLite's insert cost 13.7 us a row
    with both, 7.4 without), while an erasure, a rare act, scans the table (0.7 s for a million rows here). Logs made by earlier versions lose those two indexes at open.
    `seq_type`: SQLite's store makes `seq` an INTEGER PRIMARY KEY, the table's own row id, so an insert
    updates one b-tree less than with BIGINT (a separate unique index): ~10.3 -> ~7.9 us a row of CPU
    (benchmarks/audit_writer.py). A log made before keeps its BIGINT key and reads the same."""
    cols = ", ".join(f"{c} {seq_type if c == 'seq' else _TYPES.get(c, 'TEXT')}{'' if c == 'seq' else ' NOT NULL'}"
                     for c in COLUMNS)
    return (f"CREATE TABLE IF NOT EXISTS {table} ({cols})",
            f"CREATE INDEX IF NOT EXISTS {table}_ts ON {table}(ts)",
            f"DROP INDEX IF EXISTS {table}_subject",
            f"DROP INDEX IF EXISTS {table}_key")


class SqlAuditStore:
    """The statements both backends run; a subclass supplies the connection and the write lock."""

    where = ""
    _errors: tuple[type[BaseException], ...] = ()
    _seq_type = _TYPES["seq"]  # (a backend's own type for the chain's row number)

    def __init__(self, table: str = "audit_log", *, check: bool = True):
        """`check`: refuse a log whose newest rows do not hold (the service); off for `audit verify`, which
        must open a damaged log to say where it broke."""
        self._check = check
        if not _NAME.match(table):
            raise AuditStoreError(f"audit table name {table!r} must be a plain lower-case SQL name")
        self.table = table
        cols = ", ".join(COLUMNS)
        self._insert = f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' * len(COLUMNS))})"
        self._select = f"SELECT {cols} FROM {table}"
        self._lock = threading.RLock()  # (erase reads rows inside its write transaction)

    # -- what a backend supplies ----------------------------------------------------------------
    def _execute(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        raise NotImplementedError

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    def _insert_rows(self, values: Sequence[Sequence[Any]]) -> None:
        """Insert linked rows (tuples in column order) inside the current write transaction."""
        self._executemany(self._insert, values)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """A transaction that holds the table's write lock."""
        raise NotImplementedError
        yield

    def close(self) -> None:
        raise NotImplementedError

    # -- open -----------------------------------------------------------------------------------
    def _prepare(self) -> None:
        """Create the table if new; refuse a damaged one (the tail of its chain must hold)."""
        with self._writing():
            for statement in _ddl(self.table, self._seq_type):
                self._execute(statement)
        try:
            tail = self._rows(f"{self._select} ORDER BY seq DESC LIMIT {TAIL}", ())
        except self._errors as e:
            raise AuditStoreError(f"the audit log {self.where} is not an audit log nlweb-local can read ({e}); "
                                  "it will not start a new chain over it: move it away or set audit.path") from e
        tail.reverse()
        if tail and self._check:
            prev_seq, prev_hash = tail[0].seq - 1, tail[0].prev_hash
            for row in tail:
                why = check_row(row, prev_seq, prev_hash)
                if why:
                    raise AuditStoreError(
                        f"the audit log {self.where} is damaged: row {row.seq}: {why}. nlweb-local will not "
                        "start a new chain over it: run `nlweb-local audit verify` to see the first broken row, "
                        "then restore the log from a backup, or move it away to start a new one deliberately")
                prev_seq, prev_hash = row.seq, row.row_hash

    # -- the port -------------------------------------------------------------------------------
    def head(self) -> tuple[int, str] | None:
        with self._lock:
            got = self._execute(f"SELECT seq, row_hash FROM {self.table} ORDER BY seq DESC LIMIT 1")
        return (int(got[0][0]), str(got[0][1])) if got else None

    def append(self, rows: Sequence[AuditRow]) -> int:
        """Link `rows` after the chain's head and insert them, in one transaction; returns how many."""
        try:
            with self._writing():
                self._insert_rows(linked_values(rows, self._head_locked()))
            return len(rows)
        except self._errors as e:
            raise AuditStoreError(f"writing {len(rows)} audit rows to {self.where}: {e}") from e

    def erase(self, *, subject: str = "", key_id: str = "", detail: str = "", ts: float = 0.0) -> int:
        """Remove the identity and content of every row of `subject` (or of API key `key_id`), and append an
        erasure row that counts them, in one transaction. Returns how many rows were erased."""
        if not subject and not key_id:
            raise AuditStoreError("name the subject (or API key id) whose rows to erase")
        field, value = ("subject", subject) if subject else ("key_id", key_id)
        try:
            with self._writing():
                found = int(self._execute(f"SELECT count(*) FROM {self.table} WHERE {field} = ? AND erased = 0",
                                          (value,))[0][0])
                if found:
                    self._execute(f"UPDATE {self.table} SET key_id = '', subject = '', name = '', content = '', "
                                  f"salt = '', erased = 1 WHERE {field} = ? AND erased = 0", (value,))
                    note = entry(ts=ts, kind="erasure", endpoint="nlweb-local audit erase", count=found,
                                 detail=detail or f"erased the identity and content of {found} rows")
                    self._insert_rows(linked_values([note], self._head_locked()))
            return found
        except self._errors as e:
            raise AuditStoreError(f"erasing from {self.where}: {e}") from e

    def rows(self, *, since: float | None = None, after_seq: int = 0, limit: int = 1000) -> list[AuditRow]:
        """Up to `limit` rows with seq > after_seq (and ts >= since), in chain order."""
        if since is None:
            return self._rows(f"{self._select} WHERE seq > ? ORDER BY seq LIMIT {int(limit)}", (after_seq,))
        return self._rows(f"{self._select} WHERE seq > ? AND ts >= ? ORDER BY seq LIMIT {int(limit)}",
                          (after_seq, since))

    def scan(self, *, since: float | None = None, page: int = 1000) -> Iterator[AuditRow]:
        """Every row (with ts >= since), in chain order, read a page at a time."""
        after = 0
        while batch := self.rows(since=since, after_seq=after, limit=page):
            yield from batch
            after = batch[-1].seq

    # -- internals ------------------------------------------------------------------------------
    def _head_locked(self) -> tuple[int, str] | None:
        got = self._execute(f"SELECT seq, row_hash FROM {self.table} ORDER BY seq DESC LIMIT 1")
        return (int(got[0][0]), str(got[0][1])) if got else None

    def _rows(self, sql: str, args: Sequence[Any]) -> list[AuditRow]:
        with self._lock:
            return [AuditRow(*r) for r in self._execute(sql, args)]


class SqliteAuditStore(SqlAuditStore):
    _errors = (sqlite3.Error,)
    _seq_type = "INTEGER PRIMARY KEY"  # (64-bit in SQLite; the row id itself)

    def __init__(self, path: str | Path, *, table: str = "audit_log", timeout_s: float = 30.0, check: bool = True):
        super().__init__(table, check=check)
        self._insert_head = f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES "
        self.path = Path(path)
        self.where = str(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=timeout_s, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise AuditStoreError(f"cannot open the audit log {self.path}: {e}") from e
        try:
            check = self._conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise AuditStoreError(f"the audit log {self.path} is damaged (SQLite quick_check: {check}); "
                                      "nlweb-local will not start a new chain over it: restore it from a backup, or "
                                      "move it away to start a new one deliberately")
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._prepare()
        except sqlite3.Error as e:
            self._conn.close()
            raise AuditStoreError(f"the audit log {self.path} cannot be read ({e}); nlweb-local will not start a "
                                  "new chain over it: move it away, or point audit.path at another file") from e
        except BaseException:
            self._conn.close()
            raise

    def __repr__(self) -> str:
        return f"SqliteAuditStore({self.where!r})"

    def _execute(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        return self._conn.execute(sql, tuple(args)).fetchall()

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)

    def _insert_rows(self, values: Sequence[Sequence[Any]]) -> None:
        """Multi-row INSERTs rather than executemany: one GIL hand-over per statement, not per row
        (`sqlite_insert_rows`)."""
        sqlite_insert_rows(self._conn, self._insert_head, len(COLUMNS), values)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class PostgresAuditStore(SqlAuditStore):
    """PostgreSQL through psycopg 3 (pip install 'nlweb-local[postgres]')."""

    def __init__(self, url: str, *, table: str = "audit_log", check: bool = True):
        super().__init__(table, check=check)
        try:
            import psycopg
        except ImportError as e:
            raise AuditStoreError("audit.database_url needs psycopg: pip install 'nlweb-local[postgres]'") from e
        self._errors = (psycopg.Error,)
        self._psycopg, self._url = psycopg, url
        self.where = _redact(url) + f" (table {table})"
        try:
            self._conn = psycopg.connect(url, autocommit=True)
        except psycopg.Error as e:
            raise AuditStoreError(f"cannot open the audit log {self.where}: {e}") from e
        try:
            self._prepare()
        except psycopg.Error as e:
            self._conn.close()
            raise AuditStoreError(f"the audit log {self.where} cannot be read ({e})") from e
        except BaseException:
            self._conn.close()
            raise

    def __repr__(self) -> str:
        return f"PostgresAuditStore({self.where!r})"

    def _execute(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        cur = self._conn.execute(sql.replace("?", "%s"), tuple(args))
        return cur.fetchall() if cur.description is not None else []

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._conn.cursor() as cur:
            cur.executemany(sql.replace("?", "%s"), rows)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        with self._lock:
            if self._conn.broken:  # the server restarted or the network dropped: the writer's retry reconnects
                self._conn = self._psycopg.connect(self._url, autocommit=True)
            with self._conn.transaction():
                self._conn.execute(f"LOCK TABLE {self.table} IN SHARE ROW EXCLUSIVE MODE")
                yield

    def _prepare(self) -> None:
        with self._lock, self._conn.transaction():  # (the table must exist before _writing can lock it)
            for statement in _ddl(self.table):
                self._execute(statement)
        super()._prepare()

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _redact(url: str) -> str:
    """`url` without its password (for messages and logs)."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def open_store(settings: Any, data_path: Path, *, table: str = "audit_log", check: bool = True) -> SqlAuditStore:
    """The store `audit` settings name: PostgreSQL when database_url is set, else SQLite at path
    (default <data_dir>/audit.sqlite). `check`: see `SqlAuditStore`."""
    if settings.database_url:
        return PostgresAuditStore(settings.database_url, table=table, check=check)
    path = Path(settings.path).expanduser() if settings.path else data_path / "audit.sqlite"
    return SqliteAuditStore(path, table=table, check=check)

