"""`CostLedger`: one row per LLM call, written to a `LedgerStore` by one writer thread, off the request path
(a `core.batch_writer.BatchWriter`, the same one the audit log uses).

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

import logging
import time
from pathlib import Path
from typing import Any

from ..core.batch_writer import BatchWriter
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
        self._writer: BatchWriter[CallRecord] = BatchWriter(
            lambda batch: self._write(self._store, batch), name="cost-ledger-writer", max_queue=max_queue,
            batch_size=batch_size, flush_interval_s=flush_interval_s,
            on_drop=metrics.ledger_dropped.inc if metrics is not None else None,
            on_depth=metrics.ledger_queue.set if metrics is not None else None, on_stop=self._store.close)

    # -- the request path ---------------------------------------------------------------------------
    def record(self, row: CallRecord) -> None:
        self._writer.put(row)

    # -- control ------------------------------------------------------------------------------------
    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every row recorded so far is on disk (or dropped). True if it got there in time."""
        return self._writer.flush(timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Write everything still queued, then stop the writer. Idempotent."""
        self._writer.close(timeout_s)

    @property
    def pending(self) -> int:
        return self._writer.pending

    @property
    def enqueued(self) -> int:
        return self._writer.enqueued

    @property
    def written(self) -> int:
        return self._writer.written

    @property
    def dropped(self) -> int:
        return self._writer.dropped

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

    # -- the writer thread --------------------------------------------------------------------------
    def _write(self, store: LedgerStore, batch: list[CallRecord]) -> int:
        """Write `batch` (three tries); how many rows were kept (0: given up, the writer counts them dropped)."""
        for attempt in range(3):
            try:
                store.write(batch)
                break
            except LedgerStoreError as e:
                log.warning("cost ledger write failed (attempt %d of 3): %s", attempt + 1, e)
                time.sleep(0.2 * (attempt + 1))
        else:
            log.error("cost ledger dropped %d rows after 3 failed writes to %s", len(batch), self._store)
            return 0
        if self._metrics is not None:
            self._metrics.ledger_written.inc(len(batch))
        return len(batch)


def read_calls(path: str | Path, since: float | None = None, until: float | None = None) -> list[CallRecord]:
    """Rows with since <= ts < until (unix seconds; None: unbounded), oldest first, without a writer
    (an older file is migrated on the way, as any open does)."""
    store = SqliteLedgerStore(path)
    try:
        return store.query(since, until)
    finally:
        store.close()
