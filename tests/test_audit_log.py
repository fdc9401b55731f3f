"""The audit log: its hash chain (edits, deletions, reordering caught; a GDPR erasure still verifies), both
stores (SQLite, and a real PostgreSQL at 127.0.0.1:5432 db `test`, one table per test), the writer (gap
rows, nothing lost on close), a damaged log refusing to start, and the CLI."""
from __future__ import annotations

import json
import sqlite3
import uuid

import pytest

from nlweb_local.governance.audit import AuditLog, export, verify
from nlweb_local.governance.audit_chain import entry
from nlweb_local.governance.audit_store import AuditStoreError, PostgresAuditStore, SqliteAuditStore
from postgres_server import PG_URL, pg_url



def request_row(i: int, subject: str = "alice", **kw):
    fields = dict(ts=1_700_000_000.0 + i, kind="request", request_id=f"r{i}", method="POST",
                  endpoint="/v1/chat/completions", status=200, latency_s=0.01 * i, team="search", role="user",
                  model="auto", deployment="local", route_reason="local-first", privacy="any", tokens_in=10 + i,
                  tokens_out=5, cost_usd=0.0001 * i, key_id=f"key-{subject}", subject=subject, name=f"{subject}'s key",
                  content=json.dumps({"request": f"question {i}"}))
    fields.update(kw)
    return entry(**fields)


def test_linked_values_hash_as_the_chain_s_definition_says():
    """The writer's fast linking (plain tuples, conversions written out) gives the rows `row_hash` and
    `personal_hash` define, ints and floats given as other types included."""
    from nlweb_local.governance.audit_chain import GENESIS, AuditRow, check_row, link, linked_values, personal_hash, row_hash

    rows = [request_row(1), request_row(2, "bob", status="503", latency_s=1, cost_usd=0, tokens_in=7.0),
            entry(ts=5, kind="gap", count=3, detail="3 audit rows were lost")]
    values = linked_values(rows, (41, "ab" * 32))
    prev_seq, prev = 41, "ab" * 32
    for v in values:
        r = AuditRow._make(v)
        assert r.personal_hash == personal_hash(r) and r.row_hash == row_hash(r) and check_row(r, prev_seq, prev) == ""
        prev_seq, prev = r.seq, r.row_hash
    assert [r.seq for r in link(rows, None)] == [1, 2, 3] and link(rows, None)[0].prev_hash == GENESIS


class Sqlite:
    def __init__(self, tmp_path):
        self.path = tmp_path / "audit.sqlite"

    def open(self, check=True):
        return SqliteAuditStore(self.path, check=check)

    def sql(self, statement, args=()):
        with sqlite3.connect(self.path) as conn:
            conn.execute(statement, args)

    def drop(self):
        pass


class Postgres:
    def __init__(self, tmp_path):
        psycopg = pytest.importorskip("psycopg")
        pg_url()  # skips, or fails under NLWEB_REQUIRE_POSTGRES, when no server answers
        self.table = f"audit_test_{uuid.uuid4().hex[:12]}"
        self._psycopg = psycopg

    def open(self, check=True):
        return PostgresAuditStore(PG_URL, table=self.table, check=check)

    def sql(self, statement, args=()):
        with self._psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(statement.replace("audit_log", self.table).replace("?", "%s"), args)

    def drop(self):
        self.sql("DROP TABLE IF EXISTS audit_log")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path):
    b = (Sqlite if request.param == "sqlite" else Postgres)(tmp_path)
    yield b
    b.drop()


def filled(backend, n=6, subjects=("alice", "bob")):
    store = backend.open()
    store.append([request_row(i, subjects[i % len(subjects)]) for i in range(1, n + 1)])
    return store


def test_a_sound_chain_verifies_and_every_row_is_exported(backend):
    store = filled(backend)
    try:
        v = verify(store)
        assert v.ok and v.rows == 6 and v.head[0] == 6
        import io

        out = io.StringIO()
        assert export(store, out, since=1_700_000_004.0) == 3
        rows = [json.loads(line) for line in out.getvalue().splitlines()]
        assert [r["request_id"] for r in rows] == ["r4", "r5", "r6"]
        assert rows[0]["tokens_in"] == 14 and rows[0]["prev_hash"] and rows[0]["row_hash"]
    finally:
        store.close()


@pytest.mark.parametrize("tamper, first, words", [
    ("UPDATE audit_log SET status = 500 WHERE seq = 3", 3, "edited"),
    ("UPDATE audit_log SET cost_usd = 0 WHERE seq = 4", 4, "edited"),
    ("UPDATE audit_log SET subject = 'mallory' WHERE seq = 2", 2, "personal_hash"),
    ("DELETE FROM audit_log WHERE seq = 3", 3, "deleted"),
    ("DELETE FROM audit_log WHERE seq = 1", 1, "deleted"),
    # reordered: rows 3 and 4 swap places (their numbers are swapped)
    ("UPDATE audit_log SET seq = -3 WHERE seq = 3; UPDATE audit_log SET seq = 3 WHERE seq = 4; "
     "UPDATE audit_log SET seq = 4 WHERE seq = -3", 3, "reordered"),
])
def test_verify_names_the_first_broken_row(backend, tamper, first, words):
    filled(backend).close()
    for statement in tamper.split("; "):
        backend.sql(statement)
    store = backend.open(check=False)  # (as `audit verify` opens it: the service would refuse this log)
    try:
        v = verify(store)
        assert not v.ok and v.broken.seq == first, v.broken
        assert words in v.broken.why
    finally:
        store.close()


def test_erase_removes_a_subjects_identity_and_content_and_the_chain_still_verifies(backend):
    store = filled(backend)
    try:
        assert store.erase(subject="alice", ts=1_800_000_000.0) == 3
        rows = list(store.scan())
        alice = [r for r in rows if r.erased]
        assert len(alice) == 3 and all(r.subject == r.key_id == r.content == r.name == r.salt == "" for r in alice)
        assert [r.request_id for r in alice] == ["r2", "r4", "r6"] and all(r.tokens_in for r in alice)  # public kept
        bob = [r for r in rows if r.kind == "request" and not r.erased]
        assert {r.subject for r in bob} == {"bob"} and all(r.content for r in bob)
        note = rows[-1]
        assert note.kind == "erasure" and note.count == 3 and "alice" not in json.dumps(note._asdict())
        assert verify(store).ok
        assert store.erase(subject="alice") == 0  # nothing left to erase: no second erasure row
        assert len(list(store.scan())) == 7
        store.append([request_row(9, "carol")])  # the chain goes on after an erasure
        assert verify(store).ok
    finally:
        store.close()


def test_blanking_rows_by_hand_is_caught_by_the_erasure_tally(backend):
    filled(backend).close()
    backend.sql("UPDATE audit_log SET subject = '', key_id = '', name = '', content = '', salt = '', erased = 1 WHERE seq = 2")
    store = backend.open()
    try:
        v = verify(store)
        assert v.broken is None and not v.ok and "outside `nlweb-local audit erase`" in v.problem
    finally:
        store.close()


def test_removing_the_newest_rows_is_caught_with_an_expected_head(backend):
    store = filled(backend)
    head = verify(store).head
    store.close()
    backend.sql("DELETE FROM audit_log WHERE seq >= 5")
    store = backend.open()
    try:
        assert verify(store).ok  # a shorter chain is still a chain ...
        v = verify(store, expect=head)
        assert not v.ok and "newest rows were removed" in v.problem  # ... but not the one noted earlier
    finally:
        store.close()


def test_two_stores_appending_to_one_log_never_fork_the_chain(backend):
    a, b = backend.open(), backend.open()
    try:
        for i in range(10):
            (a if i % 2 else b).append([request_row(i + 1)])
        v = verify(a)
        assert v.ok and v.rows == 10
    finally:
        a.close()
        b.close()


# -- a damaged log refuses to start -----------------------------------------------------------------

def test_a_file_that_is_not_a_database_is_refused_with_its_path(tmp_path):
    path = tmp_path / "audit.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(AuditStoreError) as e:
        SqliteAuditStore(path)
    assert str(path) in e.value.message and "not start a new chain" in e.value.message
    assert path.read_bytes() == b"this is not sqlite" * 100  # left as it was


def test_an_edited_newest_row_refuses_to_open(tmp_path):
    b = Sqlite(tmp_path)
    filled(b).close()
    b.sql("UPDATE audit_log SET tokens_out = 9999 WHERE seq = 6")
    with pytest.raises(AuditStoreError) as e:
        b.open()
    assert str(b.path) in e.value.message and "row 6" in e.value.message and "audit verify" in e.value.message


def test_the_service_refuses_to_start_on_a_damaged_log(tmp_path):
    from nlweb_local.providers.testing import ScriptedProvider
    from stand_ins import scripted_service, service_settings

    settings = service_settings(tmp_path)
    (tmp_path / "audit.sqlite").write_bytes(b"\x00garbage" * 512)
    with pytest.raises(AuditStoreError) as e:
        scripted_service(settings, {"local": ScriptedProvider("local")}, telemetry=None)
    assert str(tmp_path / "audit.sqlite") in e.value.message


# -- the writer -------------------------------------------------------------------------------------

def test_a_clean_close_writes_every_queued_row(tmp_path):
    log = AuditLog(SqliteAuditStore(tmp_path / "a.sqlite"), batch_size=10_000, flush_interval_s=60)
    for i in range(1, 501):
        log.record(request_row(i))
    log.close()
    store = SqliteAuditStore(tmp_path / "a.sqlite")
    try:
        v = verify(store)
        assert v.ok and v.rows == 500
    finally:
        store.close()


def test_rows_lost_to_a_full_queue_leave_a_gap_row_on_the_chain(tmp_path):
    path = tmp_path / "a.sqlite"
    log = AuditLog(SqliteAuditStore(path), max_queue=10, batch_size=10_000, flush_interval_s=60)
    for i in range(1, 26):  # the writer waits a minute (or a full batch): the queue keeps the newest 10
        log.record(request_row(i))
    log.close()
    store = SqliteAuditStore(path)
    try:
        rows = list(store.scan())
        assert rows[0].kind == "gap" and rows[0].count == 15
        assert [r.request_id for r in rows[1:]] == [f"r{i}" for i in range(16, 26)]
        assert verify(store).ok
    finally:
        store.close()


# -- the CLI ----------------------------------------------------------------------------------------

def test_cli_verify_export_and_erase(tmp_path, capsys):
    from nlweb_local.cli.main import main

    config = tmp_path / "c.yaml"
    config.write_text(f"data_dir: {tmp_path}\n")
    b = Sqlite(tmp_path)
    filled(b).close()
    assert main(["--config", str(config), "audit", "verify"]) == 0
    out = capsys.readouterr().out
    assert "chain holds, 6 rows, head 6:" in out
    head = out.split("head ")[1].strip()
    assert main(["--config", str(config), "audit", "export", "--since", "2023-11-14T22:13:24"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(x)["request_id"] for x in lines] == ["r4", "r5", "r6"]
    assert main(["--config", str(config), "audit", "erase", "--subject", "bob"]) == 0
    assert "3 rows" in capsys.readouterr().out
    assert main(["--config", str(config), "audit", "verify", "--expect", head]) == 0
    capsys.readouterr()
    b.sql("UPDATE audit_log SET endpoint = '/ask' WHERE seq = 2")
    assert main(["--config", str(config), "audit", "verify"]) == 1
    err = capsys.readouterr().err
    assert "BROKEN at row 2 (request r2)" in err and "edited" in err


def test_the_postgres_writer_reconnects_after_losing_its_connection(tmp_path):
    b = Postgres(tmp_path)
    store = b.open()
    try:
        log = AuditLog(store, flush_interval_s=0.05)
        log.record(request_row(1))
        assert log.flush()
        (pid,), = store._execute("SELECT pg_backend_pid()")
        b.sql("SELECT pg_terminate_backend(?)", (pid,))  # the server drops the writer's connection
        log.record(request_row(2))
        assert log.flush() and log.dropped == 0  # the retry reconnected
        assert [r.request_id for r in store.scan()] == ["r1", "r2"] and verify(store).ok
        log.close()
    finally:
        b.drop()


@pytest.mark.slow
def test_serve_refuses_to_start_on_a_damaged_log_naming_it_and_why(tmp_path):
    """The whole command, in its own process: `nlweb-local serve` over a damaged audit.sqlite exits non-zero,
    naming the file and the reason, and leaves the file as it was (no new chain over it)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    data = tmp_path / "data"
    data.mkdir()
    log = data / "audit.sqlite"
    log.write_bytes(b"\x00garbage" * 512)
    exe = Path(sys.executable).parent / "nlweb-local"
    env = {**os.environ, "NLWEB_LOCAL_DATA_DIR": str(data), "NLWEB_LOCAL_SERVER__AUTOLOAD_DEMO": "false"}
    out = subprocess.run([str(exe), "serve", "--port", "0"], capture_output=True, text=True, timeout=240, env=env,
                         cwd=tmp_path)
    assert out.returncode != 0
    err = out.stderr
    assert f"nlweb-local: error: the audit log {log}" in err and "will not start a new chain" in err, err[-2000:]
    assert "ready" not in err
    assert log.read_bytes() == b"\x00garbage" * 512


def test_a_log_made_with_the_identity_indexes_loses_them_at_open_and_still_erases(backend):
    """Earlier versions indexed `subject` and `key_id` (every request paid for both); opening such a log
    drops them, and an erasure by subject or key still finds every row (by a scan)."""
    filled(backend).close()
    backend.sql("CREATE INDEX audit_log_subject ON audit_log(subject)")
    backend.sql("CREATE INDEX audit_log_key ON audit_log(key_id)")
    store = backend.open()
    try:
        if isinstance(backend, Sqlite):
            names = {r[0] for r in store._execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        else:
            names = {r[0] for r in store._execute("SELECT indexname FROM pg_indexes WHERE tablename = ?", (backend.table,))}
        assert not any(n.endswith(("_subject", "_key")) for n in names) and any(n.endswith("_ts") for n in names)
        assert store.erase(key_id="key-bob") == 3 and store.erase(subject="alice") == 3
        assert verify(store).ok
    finally:
        store.close()


def test_a_new_sqlite_log_numbers_rows_by_its_row_id_and_an_older_layout_still_appends(tmp_path):
    """New SQLite logs make `seq` the table's row id (INTEGER PRIMARY KEY: no separate unique index to update
    on every insert); a log made with the earlier BIGINT key opens, appends after its head and verifies."""
    from nlweb_local.governance.audit_store import _ddl

    new = SqliteAuditStore(tmp_path / "new.sqlite")
    try:
        new.append([request_row(i) for i in range(1, 4)])
        seq = [r for r in new._execute("PRAGMA table_info(audit_log)") if r[1] == "seq"][0]
        assert seq[2] == "INTEGER" and seq[5] == 1
        assert not new._execute("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'sqlite_autoindex%'")
        assert new._execute("SELECT rowid, seq FROM audit_log ORDER BY seq") == [(1, 1), (2, 2), (3, 3)]
        assert verify(new).ok and verify(new).head[0] == 3
    finally:
        new.close()
    old_path = tmp_path / "old.sqlite"
    with sqlite3.connect(old_path) as conn:
        for statement in _ddl("audit_log", "BIGINT PRIMARY KEY"):
            conn.execute(statement)
    first = SqliteAuditStore(old_path)
    first.append([request_row(i) for i in range(1, 3)])
    first.close()
    again = SqliteAuditStore(old_path)  # (opening checks the tail of the chain)
    try:
        again.append([request_row(i) for i in range(3, 5)])
        seq = [r for r in again._execute("PRAGMA table_info(audit_log)") if r[1] == "seq"][0]
        assert seq[2] == "BIGINT"
        v = verify(again)
        assert v.ok and v.rows == 4 and v.head[0] == 4
    finally:
        again.close()
