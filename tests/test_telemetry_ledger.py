"""CostLedger: writes happen off the caller's path, a clean close loses nothing, the queue bound holds."""
import sqlite3
import threading
import time

from nlweb_local.telemetry.ledger import CallRecord, CostLedger, read_calls
from nlweb_local.telemetry.metrics import GatewayMetrics, new_registry


def row(i: int, **kw) -> CallRecord:
    base = dict(ts=1_000.0 + i, request_id=f"r{i}", deployment="local", local=True, task="chat", tokens_in=10,
                tokens_out=5, latency_s=0.1, ttft_s=0.01, cost_usd=0.001, reference_usd=0.003, savings_usd=0.002)
    base.update(kw)
    return CallRecord(**base)


def test_rows_round_trip_and_query_by_time(tmp_path):
    ledger = CostLedger(tmp_path / "l.sqlite", flush_interval_s=0.05)
    ledger.record(row(0))
    ledger.record(row(1, local=False, deployment="cloud", error="RateLimitedError", ttft_s=None))
    ledger.record(row(2))
    assert ledger.flush()
    assert ledger.query() == [row(0), row(1, local=False, deployment="cloud", error="RateLimitedError", ttft_s=None), row(2)]
    assert [r.request_id for r in ledger.query(since=1001, until=1002)] == ["r1"]
    ledger.close()
    assert len(read_calls(tmp_path / "l.sqlite")) == 3
    mode = sqlite3.connect(tmp_path / "l.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_writes_are_batched_off_the_callers_thread(tmp_path, monkeypatch):
    ledger = CostLedger(tmp_path / "l.sqlite", batch_size=50, flush_interval_s=60)
    writers: set[str] = set()
    wrote = threading.Event()
    real = ledger._write

    def spy(conn, batch):
        writers.add(threading.current_thread().name)
        real(conn, batch)
        wrote.set()

    monkeypatch.setattr(ledger, "_write", spy)
    for i in range(49):
        ledger.record(row(i))
    time.sleep(0.1)  # a wrong early write would have a chance to happen here (a negative cannot be awaited)
    assert ledger.written == 0 and ledger.pending == 49  # under a batch and before the interval: nothing written yet
    ledger.record(row(49))  # the 50th fills a batch and wakes the writer
    assert wrote.wait(10)
    assert ledger.written == 50
    assert writers == {"cost-ledger-writer"}
    ledger.close()


def test_record_does_not_wait_for_a_stalled_disk_and_the_bound_holds(tmp_path):
    """Another process holds the database's write lock: record() stays O(1), the queue stays bounded,
    the oldest rows are dropped and counted; once the disk is free, close() writes every kept row."""
    path = tmp_path / "l.sqlite"
    metrics = GatewayMetrics(new_registry())
    ledger = CostLedger(path, metrics=metrics, max_queue=100, batch_size=10, flush_interval_s=0.01)
    writing = threading.Event()
    real = ledger._write

    def spy(conn, batch):
        writing.set()
        real(conn, batch)

    ledger._write = spy
    blocker = sqlite3.connect(path, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")  # hold the write lock: the writer's inserts wait
    try:
        ledger.record(row(0))
        assert writing.wait(10)  # the writer has taken that row and is now stuck on the lock
        t0 = time.perf_counter()
        for i in range(1, 301):
            ledger.record(row(i))
        per_call = (time.perf_counter() - t0) / 300
        assert per_call < 0.001  # microseconds in practice: no disk on the caller's path
        assert ledger.pending == 100
        assert ledger.dropped == 200
        assert metrics.registry.get_sample_value("nlweb_ledger_dropped_rows_total") == 200
    finally:
        blocker.rollback()
        blocker.close()
    ledger.close()
    ids = [r.request_id for r in read_calls(path)]
    assert ids == ["r0"] + [f"r{i}" for i in range(201, 301)]  # the newest 100 kept, oldest dropped
    assert ledger.written == 101


def test_clean_close_loses_nothing(tmp_path):
    ledger = CostLedger(tmp_path / "l.sqlite", batch_size=1000, flush_interval_s=60)  # would not write for a minute
    for i in range(2500):
        ledger.record(row(i))
    ledger.close()
    assert len(read_calls(tmp_path / "l.sqlite")) == 2500
    ledger.record(row(9999))  # after close: refused and counted, not silently queued
    assert ledger.dropped == 1
    ledger.close()  # idempotent


def test_a_program_that_forgets_close_still_writes_its_rows(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "l.sqlite"
    code = ("from nlweb_local.telemetry.ledger import CallRecord, CostLedger\n"
            f"ledger = CostLedger({str(path)!r}, batch_size=10_000, flush_interval_s=3600)\n"
            "for i in range(777):\n"
            "    ledger.record(CallRecord(float(i), str(i), 'local', True, 'chat', 1, 1, 0.1, None, 0.0, 0.0, 0.0, ''))\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert len(read_calls(path)) == 777
