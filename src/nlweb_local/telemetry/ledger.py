"""`CostLedger`: one row per LLM call, written to a `LedgerStore` by one writer thread, off the request path.

    caller ──record(row)──► bounded deque ──(batch, or every flush_interval_s)──► writer thread ──► LedgerStore
                                                                                  (SQLite WAL by default)

`record` only appends under a lock: O(1), never touches the disk. When the queue is full the oldest row
is dropped and counted (`nlweb_ledger_dropped_rows_total`), so memory stays bounded even if the disk
stalls. `close()` drains everything (a clean shutdown loses nothing; a program that exits without
calling it is closed at exit); a crash loses at most the rows still queued (≤ max_queue, ≤
flush_interval_s of traffic). The store (`ledger_store.LedgerStore`) owns the schema, its migrations
and the SQL; this class owns only the queue and the thread.
"""
from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections import deque
from pathlib import Path
from typing import Any

from .ledger_sqlite import SqliteLedgerStore
from .ledger_store import COLUMNS, CallRecord, LedgerStore, LedgerStoreError

__all__ = ["CallRecord", "COLUMNS", "CostLedger", "LedgerStore", "read_calls"]

log = logging.getLogger(__name__)


class CostLedger:
    def __init__(self, store: LedgerStore | str | Path, *, metrics: Any = None, max_queue: int = 10_000,
                 batch_size: int = 500, flush_interval_s: float = 1.0):
        """`store`: where rows go; a path opens (and migrates) a `SqliteLedgerStore` there, at once, so a
        file that cannot be opened fails here, at start. The ledger closes the store it was given."""
        self._store: LedgerStore = SqliteLedgerStore(store) if isinstance(store, (str, Path)) else store
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

    @property
    def store(self) -> LedgerStore:
        return self._store

    # -- reads --------------------------------------------------------------------------------------
    def query(self, since: float | None = None, until: float | None = None) -> list[CallRecord]:
        """Rows with since <= ts < until (unix seconds; None: unbounded), oldest first."""
        return self._store.query(since, until)

    def spend(self, since: float) -> float:
        """Dollars spent by the calls written since `since` (rows still queued: at most a second's worth)."""
        return self._store.spend(since)

    # -- internals ----------------------------------------------------------------------------------
    def _take(self) -> list[CallRecord]:
        with self._lock:
            n = min(len(self._queue), self._batch)
            batch = [self._queue.popleft() for _ in range(n)]
            if self._metrics is not None:
                self._metrics.ledger_queue.set(len(self._queue))
            return batch

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(self._interval)
                self._wake.clear()
                while batch := self._take():
                    self._write(self._store, batch)
                with self._lock:
                    if self._closing and not self._queue:
                        return
        finally:
            self._store.close()
            with self._done:
                self._done.notify_all()

    def _write(self, store: LedgerStore, batch: list[CallRecord]) -> None:
        for attempt in range(3):
            try:
                store.write(batch)
                break
            except LedgerStoreError as e:
                log.warning("cost ledger write failed (attempt %d of 3): %s", attempt + 1, e)
                time.sleep(0.2 * (attempt + 1))
        else:
            with self._lock:
                self.dropped += len(batch)
            if self._metrics is not None:
                self._metrics.ledger_dropped.inc(len(batch))
            log.error("cost ledger dropped %d rows after 3 failed writes to %s", len(batch), self._store)
            batch = []
        with self._done:
            self.written += len(batch)
            self._done.notify_all()
        if self._metrics is not None and batch:
            self._metrics.ledger_written.inc(len(batch))


def read_calls(path: str | Path, since: float | None = None, until: float | None = None) -> list[CallRecord]:
    """Rows with since <= ts < until (unix seconds; None: unbounded), oldest first, without a writer
    (an older file is migrated on the way, as any open does)."""
    store = SqliteLedgerStore(path)
    try:
        return store.query(since, until)
    finally:
        store.close()
