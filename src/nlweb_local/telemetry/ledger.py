"""`CostLedger`: one row per LLM call, written to SQLite (WAL) by one writer thread, off the request path.

    caller ──record(row)──► bounded deque ──(batch, or every flush_interval_s)──► writer thread ──► SQLite

`record` only appends under a lock: O(1), never touches the disk. When the queue is full the oldest row
is dropped and counted (`nlweb_ledger_dropped_rows_total`), so memory stays bounded even if the disk
stalls. `close()` drains everything (a clean shutdown loses nothing; a program that exits without
calling it is closed at exit); a crash loses at most the rows still queued (≤ max_queue, ≤
flush_interval_s of traffic).
"""
from __future__ import annotations

import atexit
import logging
import sqlite3
import threading
import time
import weakref
from collections import deque
from contextlib import closing
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger(__name__)


class CallRecord(NamedTuple):
    """One LLM call as the ledger keeps it.

    A tuple of plain values on purpose: the garbage collector stops tracking such tuples, so the
    thousands held by the recent-calls window and the write queue cost no GC time."""

    ts: float  # wall-clock time the call ended (unix seconds)
    request_id: str
    deployment: str
    local: bool
    task: str
    tokens_in: int
    tokens_out: int
    latency_s: float
    ttft_s: float | None
    cost_usd: float
    reference_usd: float  # what the reference cloud model would have charged for the same tokens
    savings_usd: float  # reference_usd - cost_usd
    error: str = ""  # error class name; "" when the call succeeded

    @property
    def ok(self) -> bool:
        return not self.error


COLUMNS = CallRecord._fields
_SCHEMA = """
CREATE TABLE IF NOT EXISTS llm_calls (
  id INTEGER PRIMARY KEY, ts REAL NOT NULL, request_id TEXT NOT NULL, deployment TEXT NOT NULL,
  local INTEGER NOT NULL, task TEXT NOT NULL, tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL,
  latency_s REAL NOT NULL, ttft_s REAL, cost_usd REAL NOT NULL, reference_usd REAL NOT NULL,
  savings_usd REAL NOT NULL, error TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS llm_calls_ts ON llm_calls(ts);
"""
_INSERT = f"INSERT INTO llm_calls ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


class CostLedger:
    def __init__(self, path: str | Path, *, metrics: Any = None, max_queue: int = 10_000, batch_size: int = 500,
                 flush_interval_s: float = 1.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._metrics = metrics
        self._max_queue = max_queue
        self._batch = batch_size
        self._interval = flush_interval_s
        self._queue: deque[CallRecord] = deque()
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._closing = False
        self.enqueued = self.written = self.dropped = 0
        with closing(_connect(self.path)) as conn:  # fail here, at start, if the file cannot be opened
            conn.executescript(_SCHEMA)
        self._thread = threading.Thread(target=self._run, name="cost-ledger-writer", daemon=True)
        self._thread.start()
        # a program that exits without close() still writes its queue (atexit runs before daemon threads die)
        ref = weakref.ref(self)
        self._at_exit = lambda: (lambda ledger: ledger.close() if ledger is not None else None)(ref())
        atexit.register(self._at_exit)

    # -- the request path ---------------------------------------------------------------------------
    def record(self, row: CallRecord) -> None:
        with self._lock:
            if self._closing:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning("cost ledger is closed; %d rows were not recorded", self.dropped)
                return
            if len(self._queue) >= self._max_queue:
                self._queue.popleft()
                self.dropped += 1
                if self._metrics is not None:
                    self._metrics.ledger_dropped.inc()
            self._queue.append(row)
            self.enqueued += 1
            full = len(self._queue) >= self._batch
        if full:
            self._wake.set()

    # -- control ------------------------------------------------------------------------------------
    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every row recorded so far is on disk (or dropped). True if it got there in time."""
        with self._lock:
            target = self.enqueued
        self._wake.set()
        with self._done:
            return self._done.wait_for(lambda: self.written + self.dropped >= target or not self._thread.is_alive(),
                                       timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Write everything still queued, then stop the writer. Idempotent."""
        with self._lock:
            self._closing = True
        atexit.unregister(self._at_exit)
        self._wake.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("cost ledger writer did not finish within %.0fs; %d rows may be lost", timeout_s, len(self._queue))

    @property
    def pending(self) -> int:
        return len(self._queue)

    # -- reads --------------------------------------------------------------------------------------
    def query(self, since: float | None = None, until: float | None = None) -> list[CallRecord]:
        """Rows with since <= ts < until (unix seconds; None: unbounded), oldest first."""
        return read_calls(self.path, since, until)

    def spend(self, since: float) -> float:
        """Dollars spent by the calls written since `since` (rows still queued: at most a second's worth)."""
        with closing(_connect(self.path)) as conn:
            return float(conn.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM llm_calls WHERE ts >= ?",
                                      (since,)).fetchone()[0])

    # -- internals ----------------------------------------------------------------------------------
    def _take(self) -> list[CallRecord]:
        with self._lock:
            n = min(len(self._queue), self._batch)
            batch = [self._queue.popleft() for _ in range(n)]
            if self._metrics is not None:
                self._metrics.ledger_queue.set(len(self._queue))
            return batch

    def _run(self) -> None:
        conn = _connect(self.path)
        try:
            while True:
                self._wake.wait(self._interval)
                self._wake.clear()
                while batch := self._take():
                    self._write(conn, batch)
                with self._lock:
                    if self._closing and not self._queue:
                        return
        finally:
            conn.close()
            with self._done:
                self._done.notify_all()

    def _write(self, conn: sqlite3.Connection, batch: list[CallRecord]) -> None:
        for attempt in range(3):
            try:
                with conn:
                    conn.executemany(_INSERT, map(tuple, batch))  # plain tuples bind ~25 % faster than NamedTuples
                break
            except sqlite3.Error as e:
                log.warning("cost ledger write failed (attempt %d of 3): %s", attempt + 1, e)
                time.sleep(0.2 * (attempt + 1))
        else:
            with self._lock:
                self.dropped += len(batch)
            if self._metrics is not None:
                self._metrics.ledger_dropped.inc(len(batch))
            log.error("cost ledger dropped %d rows after 3 failed writes to %s", len(batch), self.path)
            batch = []
        with self._done:
            self.written += len(batch)
            self._done.notify_all()
        if self._metrics is not None and batch:
            self._metrics.ledger_written.inc(len(batch))


def _range(since: float | None, until: float | None) -> tuple[str, list[float]]:
    conds, args = [], []
    if since is not None:
        conds.append("ts >= ?")
        args.append(since)
    if until is not None:
        conds.append("ts < ?")
        args.append(until)
    return (" WHERE " + " AND ".join(conds) if conds else ""), args


def _row(r: tuple) -> CallRecord:
    d = dict(zip(COLUMNS, r))
    d["local"] = bool(d["local"])
    return CallRecord(**d)


def read_calls(path: str | Path, since: float | None = None, until: float | None = None) -> list[CallRecord]:
    """Rows with since <= ts < until (unix seconds; None: unbounded), oldest first, without a writer."""
    where, args = _range(since, until)
    with closing(_connect(Path(path))) as conn:
        rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM llm_calls{where} ORDER BY ts, id", args).fetchall()
    return [_row(r) for r in rows]


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn
