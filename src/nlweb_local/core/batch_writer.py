"""`BatchWriter`: a bounded queue drained in batches by one writer thread, off the request path.

    caller ──put(row)──► bounded deque ──(batch_size rows, or every flush_interval_s)──► writer thread ──► write(batch)

`put` only appends under a lock: O(1), never touches the disk. When the queue is full the oldest row
is dropped and counted (`dropped`, and `on_drop(n)`), so memory stays bounded even if the disk stalls.
`write(batch)` runs on the writer thread and returns how many rows it kept (fewer: the rest were
given up on and count as dropped; None: all of them). `close()` drains everything: a clean shutdown loses nothing, and a
program that exits without calling it is closed at exit; a crash loses at most the rows still queued
(those of the last flush interval, unless the disk is slower than the traffic). The cost ledger and the
audit log are both written through one of these; each owns only its rows, its store and its retries.
"""
from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections import deque
from itertools import chain
from typing import Any, Callable, Generic, Sequence, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class BatchWriter(Generic[T]):
    def __init__(self, write: Callable[[list[T]], int | None], *, name: str, max_queue: int = 10_000,
                 batch_size: int = 500, flush_interval_s: float = 1.0,
                 on_drop: Callable[[int], None] | None = None, on_depth: Callable[[int], None] | None = None,
                 on_stop: Callable[[], None] | None = None):
        """`write`: called on the writer thread with up to `batch_size` rows; `on_drop(n)`: n rows were lost
        (queue full, or `write` gave up on them); `on_depth(n)`: the queue's length after a batch was taken;
        `on_stop()`: the writer thread is ending (close the store there)."""
        self._write = write
        self.name = name
        self._max_queue = max_queue
        self._batch = batch_size
        self._interval = flush_interval_s
        self._on_drop = on_drop
        self._on_depth = on_depth
        self._on_stop = on_stop
        self._queue: deque[T] = deque()
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._closing = False
        self.enqueued = self.written = self.dropped = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        # a program that exits without close() still writes its queue (atexit runs before daemon threads die)
        ref = weakref.ref(self)
        self._at_exit = lambda: (lambda writer: writer.close() if writer is not None else None)(ref())
        atexit.register(self._at_exit)

    # -- the request path ---------------------------------------------------------------------------
    def put(self, row: T) -> bool:
        """Queue `row`; False when the writer is closed (the row is counted as dropped)."""
        queue = self._queue
        with self._lock:
            if self._closing or len(queue) >= self._max_queue:
                return self._put_slow(row)
            queue.append(row)
            self.enqueued += 1
            if len(queue) < self._batch:
                return True
        self._wake.set()
        return True

    def _put_slow(self, row: T) -> bool:
        """`put` when closed, or with the queue full (the oldest row is dropped); holds the lock."""
        if self._closing:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("%s is closed; %d rows were not recorded", self.name, self.dropped)
            return False
        self._queue.popleft()
        self.dropped += 1
        self._queue.append(row)
        self.enqueued += 1
        if self._on_drop is not None:  # (called under the lock: it only counts)
            self._on_drop(1)
        if len(self._queue) >= self._batch:
            self._wake.set()
        return True

    # -- control ------------------------------------------------------------------------------------
    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every row queued so far is written (or dropped). True if it got there in time."""
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
            log.error("%s did not finish within %.0fs; %d rows may be lost", self.name, timeout_s, len(self._queue))

    @property
    def pending(self) -> int:
        return len(self._queue)

    # -- internals ----------------------------------------------------------------------------------
    def _take(self) -> list[T]:
        with self._lock:
            n = min(len(self._queue), self._batch)
            batch = [self._queue.popleft() for _ in range(n)]
            depth = len(self._queue)
        if self._on_depth is not None:
            self._on_depth(depth)
        return batch

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(self._interval)
                self._wake.clear()
                while batch := self._take():
                    self._write_one(batch)
                with self._lock:
                    if self._closing and not self._queue:
                        return
        finally:
            if self._on_stop is not None:
                self._on_stop()
            with self._done:
                self._done.notify_all()

    def _write_one(self, batch: list[T]) -> None:
        try:
            kept = self._write(batch)
            kept = len(batch) if kept is None else kept
        except Exception:  # noqa: BLE001  (a writer that raises must not kill the thread)
            log.exception("%s: writing %d rows failed; they are lost", self.name, len(batch))
            kept = 0
        lost = len(batch) - kept
        with self._done:
            self.written += kept
            self.dropped += lost
            self._done.notify_all()
        if lost and self._on_drop is not None:
            self._on_drop(lost)


_flat = chain.from_iterable
SQLITE_ROWS_PER_INSERT = 64  # rows per multi-row INSERT (x ~30 columns: far below SQLite's 32,766 parameters)


def sqlite_insert_rows(conn: Any, head: str, width: int, rows: Sequence[Sequence[Any]],
                       per_statement: int = SQLITE_ROWS_PER_INSERT) -> None:
    """Insert `rows` (each `width` values) with `head` ("INSERT INTO t (a, b) VALUES ") on the sqlite3
    connection `conn`, `per_statement` rows per statement, inside the caller's transaction.

    Why not `executemany`: the sqlite3 module lets go of the GIL around every statement step, so a writer
    thread inserting a batch row by row hands the GIL to and fro with the event loop once per row; on a
    server with one core each hand-over is a pair of thread switches and futex calls (strace counted
    ~1,500 a second at ~2,000 audited requests/s), paid on the event loop's CPU. A multi-row statement
    steps once per `per_statement` rows.

    A column whose value is the same in every row of a statement is bound once: the statement numbers
    its parameters (`?N`) and each row names that one. Binding is most of an insert's CPU (each value is
    converted and copied into SQLite: ~0.5 us a value on a slow core), and a batch repeats much — an audit
    row's kind, role, team, model, count, detail and blank content, a ledger row's deployment and
    outcome. Equal values of different types (0 and 0.0) are not shared, so what is stored is exactly
    what one row per value would store (`tests/test_sqlite_insert_rows.py`)."""
    for at in range(0, len(rows), per_statement):
        chunk = rows[at:at + per_statement]
        n = len(chunk)
        columns = list(zip(*chunk))  # (transposed in C: one tuple a column)
        if len(columns) != width:
            raise ValueError(f"sqlite_insert_rows: rows of {len(columns)} values for {width} columns")
        shared = tuple(j for j, col in enumerate(columns) if n > 1 and _same(col))
        sql = _statement(head, width, n, shared)
        values = [columns[j][0] for j in shared]
        values.extend(_flat(col for j, col in enumerate(columns) if j not in shared))  # (column by column)
        conn.execute(sql, values)


def _same(col: tuple) -> bool:
    """Every value of the column equal, and of one type (0, 0.0 and False are equal but stored apart)."""
    first = col[0]
    if col.count(first) != len(col):
        return False
    return type(first) is str or first is None or len(set(map(type, col))) == 1


_STATEMENTS: dict[tuple[str, int, int, tuple[int, ...]], str] = {}


def _statement(head: str, width: int, n: int, shared: tuple[int, ...]) -> str:
    """The INSERT of `n` rows where the columns `shared` are parameters 1..len(shared) (one for all rows)
    and every other column's values follow column by column (made once per shape, then kept)."""
    key = (head, width, n, shared)
    sql = _STATEMENTS.get(key)
    if sql is None:
        first = [0] * width  # per column: its parameter for row 0
        step = [0] * width  # and how far row i's is from it (0: one parameter for every row)
        for k, j in enumerate(shared):
            first[j] = k + 1
        nxt = len(shared) + 1
        for j in range(width):
            if not first[j]:
                first[j], step[j] = nxt, 1
                nxt += n
        sql = head + ", ".join("(" + ", ".join(f"?{f + s * i}" for f, s in zip(first, step)) + ")" for i in range(n))
        if len(_STATEMENTS) >= 512:
            _STATEMENTS.clear()
        _STATEMENTS[key] = sql
    return sql
