"""The `LedgerStore` port and its SQLite store: schema versions and migrations (an old file is migrated
and keeps its rows), rows written by column name, and `CostLedger` writing through any store."""
import sqlite3
import threading
from contextlib import closing, contextmanager

import pytest

from nlweb_local.telemetry.ledger import CallRecord, CostLedger, read_calls
from nlweb_local.telemetry.ledger_sqlite import MIGRATIONS, SCHEMA_VERSION, Migration, SqliteLedgerStore
from nlweb_local.telemetry.ledger_store import COLUMNS, LedgerStoreError

# The table exactly as the code before schema versions created it (user_version left at 0).
V0_SCHEMA = """
CREATE TABLE IF NOT EXISTS llm_calls (
  id INTEGER PRIMARY KEY, ts REAL NOT NULL, request_id TEXT NOT NULL, deployment TEXT NOT NULL,
  local INTEGER NOT NULL, task TEXT NOT NULL, tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL,
  latency_s REAL NOT NULL, ttft_s REAL, cost_usd REAL NOT NULL, reference_usd REAL NOT NULL,
  savings_usd REAL NOT NULL, error TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS llm_calls_ts ON llm_calls(ts);
"""


def row(i: int, **kw) -> CallRecord:
    base = dict(ts=1_000.0 + i, request_id=f"r{i}", deployment="local", local=True, task="chat", tokens_in=10 + i,
                tokens_out=5, latency_s=0.1, ttft_s=0.01, cost_usd=0.001 * i, reference_usd=0.003, savings_usd=0.002)
    base.update(kw)
    return CallRecord(**base)


@contextmanager
def sql(path):
    """A connection that commits on success and is closed after."""
    with closing(sqlite3.connect(path)) as conn, conn:
        yield conn


def user_version(path) -> int:
    with sql(path) as conn:
        return conn.execute("PRAGMA user_version").fetchone()[0]


def v0_file(path, rows):
    """A ledger file as the previous release wrote it: its DDL, its positional insert, WAL."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(V0_SCHEMA)
    v0 = COLUMNS[:13]  # the columns version 0 had
    with conn:
        conn.executemany(f"INSERT INTO llm_calls ({', '.join(v0)}) VALUES ({', '.join('?' * len(v0))})",
                         [tuple(r)[:13] for r in rows])
    conn.close()


def test_a_version_0_file_is_migrated_and_keeps_its_rows(tmp_path):
    path = tmp_path / "old.sqlite"
    old = [row(0), row(1, local=False, deployment="cloud", error="RateLimitedError", ttft_s=None)]
    v0_file(path, old)
    assert user_version(path) == 0

    ledger = CostLedger(path, flush_interval_s=0.01)
    assert ledger.store.schema_version == SCHEMA_VERSION == len(MIGRATIONS) >= 1
    assert user_version(path) == SCHEMA_VERSION
    ledger.record(row(2))
    ledger.close()
    assert read_calls(path) == old + [row(2)]  # old rows read back exactly, new ones follow
    with sql(path) as conn:
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "llm_calls_ts" in indexes


@pytest.mark.parametrize("n", [1, 63, 64, 65, 130])
def test_a_batch_is_written_whole_and_in_order_across_multi_row_inserts(tmp_path, n):
    """The store inserts SQLITE_ROWS_PER_INSERT (64) rows per statement: a batch of any size around that
    (one row, a statement short of full, full, one over, two full and a partial) reads back exactly."""
    path = tmp_path / "calls.sqlite"
    store = SqliteLedgerStore(path)
    rows = [row(i, error=("Boom" if i % 7 == 0 else ""), ttft_s=(None if i % 5 == 0 else 0.01)) for i in range(n)]
    try:
        store.write(rows)
        assert store.query() == rows
    finally:
        store.close()


def test_a_new_file_starts_at_the_current_version_and_reopening_changes_nothing(tmp_path):
    path = tmp_path / "new.sqlite"
    store = SqliteLedgerStore(path)
    assert store.schema_version == SCHEMA_VERSION and user_version(path) == SCHEMA_VERSION
    store.write([row(0)])
    store.close()
    again = SqliteLedgerStore(path)
    assert again.schema_version == SCHEMA_VERSION and again.query() == [row(0)]
    again.close()


def test_migrations_run_in_order_each_once(tmp_path):
    path = tmp_path / "l.sqlite"
    v0_file(path, [row(0)])
    ran = []
    steps = (*MIGRATIONS,
             Migration("record a step", lambda conn: ran.append(2)),
             Migration("add a column", ("ALTER TABLE llm_calls ADD COLUMN project TEXT NOT NULL DEFAULT ''",)))
    store = SqliteLedgerStore(path, migrations=steps)
    assert store.schema_version == len(steps) and ran == [2]
    store.write([row(1)])  # rows by name: the extra column takes its default
    assert [r.request_id for r in store.query()] == ["r0", "r1"]
    store.close()
    SqliteLedgerStore(path, migrations=steps).close()  # already there: nothing runs again
    assert ran == [2] and user_version(path) == len(steps)


def test_a_failing_migration_changes_nothing(tmp_path):
    path = tmp_path / "l.sqlite"
    v0_file(path, [row(0)])

    def boom(conn):
        raise sqlite3.OperationalError("disk on fire")

    steps = (*MIGRATIONS, Migration("add a column", ("ALTER TABLE llm_calls ADD COLUMN project TEXT",)),
             Migration("fails", boom))
    with pytest.raises(LedgerStoreError, match=f"schema version {len(steps)}.*disk on fire"):
        SqliteLedgerStore(path, migrations=steps)
    assert user_version(path) == 0  # every step of that open rolled back, the version too
    with sql(path) as conn:
        assert "project" not in [c[1] for c in conn.execute("PRAGMA table_info(llm_calls)")]
    assert read_calls(path) == [row(0)]


def test_a_file_from_a_newer_release_is_refused_not_guessed_at(tmp_path):
    path = tmp_path / "l.sqlite"
    v0_file(path, [])
    with sql(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(LedgerStoreError, match="newer than this nlweb-local knows"):
        CostLedger(path)


def test_rows_are_written_by_column_name_not_by_position(tmp_path):
    """A table whose columns sit in another order (as a later ALTER TABLE or another database leaves them)
    still gets every value in its own column."""
    path = tmp_path / "l.sqlite"
    shuffled = ", ".join(f"{c} {t}" for c, t in reversed([
        ("ts", "REAL"), ("request_id", "TEXT"), ("deployment", "TEXT"), ("local", "INTEGER"), ("task", "TEXT"),
        ("tokens_in", "INTEGER"), ("tokens_out", "INTEGER"), ("latency_s", "REAL"), ("ttft_s", "REAL"),
        ("cost_usd", "REAL"), ("reference_usd", "REAL"), ("savings_usd", "REAL"), ("error", "TEXT"),
        ("cache", "TEXT"), ("saved_usd", "REAL"), ("model_version", "TEXT"), ("caller", "TEXT"), ("team", "TEXT")]))
    with sql(path) as conn:
        conn.execute(f"CREATE TABLE llm_calls (note TEXT DEFAULT 'n/a', {shuffled}, id INTEGER PRIMARY KEY)")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    store = SqliteLedgerStore(path)
    r = row(3, deployment="cloud", task="rank", local=False, error="Boom")
    store.write([r])
    with sql(path) as conn:
        conn.row_factory = sqlite3.Row
        raw = dict(conn.execute("SELECT * FROM llm_calls").fetchone())
    assert {k: raw[k] for k in COLUMNS} == {**r._asdict(), "local": 0}
    assert raw["note"] == "n/a"
    assert store.query() == [r]
    store.close()


def test_spend_and_time_ranges(tmp_path):
    store = SqliteLedgerStore(tmp_path / "l.sqlite")
    store.write([row(i) for i in range(5)])
    assert store.spend(1_003.0) == pytest.approx(0.003 + 0.004)
    assert [r.request_id for r in store.query(since=1_001, until=1_003)] == ["r1", "r2"]
    store.close()


class ListStore:
    """A store that is not SQLite: the ledger needs nothing but the port."""

    schema_version = 1

    def __init__(self):
        self.rows, self.batches, self.closed, self.fail = [], [], False, 0
        self.threads = set()

    def write(self, rows):
        self.threads.add(threading.current_thread().name)
        if self.fail:
            self.fail -= 1
            raise LedgerStoreError("unavailable")
        self.batches.append(len(rows))
        self.rows.extend(rows)

    def query(self, since=None, until=None):
        return [r for r in self.rows if (since is None or r.ts >= since) and (until is None or r.ts < until)]

    def spend(self, since):
        return sum(r.cost_usd for r in self.rows if r.ts >= since)

    def close(self):
        self.closed = True


def test_the_ledger_writes_batches_through_any_store_and_retries_a_failed_write(tmp_path):
    store = ListStore()
    store.fail = 1  # the first write fails once, then succeeds
    ledger = CostLedger(store, batch_size=4, flush_interval_s=0.01)
    for i in range(10):
        ledger.record(row(i))
    assert ledger.flush()
    assert store.rows == [row(i) for i in range(10)] and max(store.batches) <= 4
    assert store.threads == {"cost-ledger-writer"}
    assert ledger.query(since=1_008) == [row(8), row(9)] and ledger.spend(1_009) == pytest.approx(0.009)
    ledger.close()
    assert store.closed and ledger.written == 10 and ledger.dropped == 0
