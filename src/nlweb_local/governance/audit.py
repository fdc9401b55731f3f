"""`AuditLog`: one tamper-evident row per request, written off the request path.

    AuditMiddleware ──record(row)──► BatchWriter (bounded queue, one thread) ──append(batch)──► AuditStore
    (one row per request to /v1/*, /ask, /mcp, /chat/*,          every flush_interval_s        SQLite (WAL) or
     and every POST/PUT/PATCH/DELETE to /admin/*)                 or batch_size rows            PostgreSQL

What a row holds, and the hash chain that makes edits, deletions and reordering show (while a GDPR
erasure still verifies), is described in `audit_chain.py`; where rows live in `audit_store.py`.

Durability: `record` (or `record_later`, whose row the writer thread makes) is an O(1) append to a bounded
in-memory queue (`audit.queue` rows). The writer
commits a batch at least every `audit.flush_interval_s` (1 s by default), with SQLite's
synchronous=FULL. A clean shutdown (`close`, which the app's lifespan and `atexit` call) writes
everything queued; a crash loses at most the rows of the last flush interval. When the queue
overflows (the disk stalls), the oldest rows are dropped and the next batch begins with a `gap` row
whose `count` says how many were lost, so a loss is itself on the chain; likewise for a batch the
store refused three times.
"""
from __future__ import annotations

import json
import logging
import time
from typing import IO, Any, Callable

from ..core.batch_writer import BatchWriter
from .audit_chain import AuditRow, ChainChecker, Verification, entry
from .audit_store import AuditStoreError, SqlAuditStore

log = logging.getLogger(__name__)


class AuditLog:
    def __init__(self, store: SqlAuditStore, *, max_queue: int = 10_000, batch_size: int = 500,
                 flush_interval_s: float = 1.0, clock=time.time):
        """`store`: opened (and checked) already, so a damaged log fails at start. The log closes it."""
        self.store = store
        self._clock = clock
        self._reported = 0  # rows lost that a gap row has already recorded
        self._writer: BatchWriter[AuditRow] = BatchWriter(
            self._write, name="audit-log-writer", max_queue=max_queue, batch_size=batch_size,
            flush_interval_s=flush_interval_s, on_stop=store.close)

    def record(self, row: AuditRow) -> None:
        self._writer.put(row)

    def record_later(self, make: Callable[..., AuditRow], args: tuple) -> None:
        """Queue a row that the writer thread makes, `make(*args)`, just before writing it (the request
        path reads what the row needs; hashing, formatting and the identity's fields happen off it).
        `args` must not change after this call."""
        self._writer.put((make, args))

    def flush(self, timeout_s: float = 10.0) -> bool:
        return self._writer.flush(timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        self._writer.close(timeout_s)

    @property
    def dropped(self) -> int:
        return self._writer.dropped

    @property
    def written(self) -> int:
        return self._writer.written

    def _write(self, batch: list) -> int:
        lost = self._writer.dropped - self._reported
        rows = [r if type(r) is AuditRow else r[0](*r[1]) for r in batch]  # (record_later's: made now)
        if lost > 0:
            rows = [entry(ts=self._clock(), kind="gap", count=lost,
                          detail=f"{lost} audit rows were lost (queue full or store failing)"), *rows]
        for attempt in range(3):
            try:
                self.store.append(rows)
                self._reported += max(lost, 0)
                return len(batch)
            except AuditStoreError as e:
                log.warning("audit log write failed (attempt %d of 3): %s", attempt + 1, e)
                time.sleep(0.2 * (attempt + 1))
        log.error("audit log lost %d rows after 3 failed writes to %s (a gap row will record them)",
                  len(batch), self.store.where)
        return 0


def verify(store: SqlAuditStore, *, expect: tuple[int, str] | None = None) -> Verification:
    """Walk the whole chain in order; the first broken row, or the whole log's faults (see `ChainChecker`)."""
    checker = ChainChecker(expect)
    for row in store.scan():
        if not checker.add(row):
            break
    return checker.finish()


def export(store: SqlAuditStore, out: IO[str], *, since: float | None = None) -> int:
    """Rows with ts >= since as JSON lines (every column, hashes included); returns how many."""
    n = 0
    for row in store.scan(since=since):
        out.write(json.dumps(row._asdict(), ensure_ascii=False, separators=(",", ":")) + "\n")
        n += 1
    return n


def build_audit(settings: Any) -> AuditLog | None:
    """The audit log `settings.audit` describes (None when off). Opening checks the log: a damaged one
    raises `AuditStoreError` with its path and the reason, and the service does not start."""
    a = settings.audit
    if not a.enabled:
        return None
    from .audit_store import open_store

    return AuditLog(open_store(a, settings.data_path), max_queue=a.queue, flush_interval_s=a.flush_interval_s)
