"""The key store: SQLite by default, PostgreSQL by URL (`auth.keys_database_url`), the same statements and
the same behaviour (one contract test over both); against the real PostgreSQL at 127.0.0.1:5432 db `test`
(tests/postgres_server.py), each test in a schema of its own. Keys made by the CLI in PostgreSQL are
accepted by a server sharing the store, a revoke by the CLI reaches it, a dropped connection is opened
again, and a store that cannot be reached stops the start naming it (without its password)."""
from __future__ import annotations

import asyncio
import uuid

import pytest

from governance_app import client, governed_service
from nlweb_local.core.errors import KeyStoreUnavailableError
from nlweb_local.core.types import Privacy
from nlweb_local.governance.identity import Limits, Role
from nlweb_local.governance.key_store import SqliteKeyStore, open_key_store
from nlweb_local.governance.keyring import Keyring
from nlweb_local.governance.keys import KeyRecord
from postgres_server import PG_URL, pg_url

CHAT = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture()
def pg_schema():
    """A PostgreSQL URL whose search_path is a fresh schema (dropped after the test)."""
    import psycopg

    pg_url()  # skips, or fails under NLWEB_REQUIRE_POSTGRES, when no server answers
    schema = f"keys_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield PG_URL + ("&" if "?" in PG_URL else "?") + f"options=-csearch_path%3D{schema}", schema
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = open_key_store(None, tmp_path / "keys.sqlite")
        assert isinstance(s, SqliteKeyStore)
        yield s
        s.close()
    else:
        url, _ = request.getfixturevalue("pg_schema")
        s = open_key_store(url, tmp_path / "unused.sqlite")
        assert type(s).__name__ == "PostgresKeyStore"
        yield s
        s.close()


def record(key_id: str, digest: str, **kw) -> KeyRecord:
    return KeyRecord(key_id, kw.pop("name", key_id), kw.pop("role", Role.USER), digest, created_at=kw.pop("at", 1.0), **kw)


def test_both_stores_keep_the_same_records(store):
    assert store.count() == 0 and store.all() == []
    a = record("k_a", "hash-a", team="research", models=("chat",), sites=("docs",), limits=Limits(60, 1000, 2.5),
               allow_from=("10.0.0.0/8",), privacy=Privacy.LOCAL_ONLY, expires_at=99.5)
    store.add(a)
    store.add(record("k_b", "hash-b", role=Role.ADMIN, at=2.0))
    assert store.count() == 2
    assert store.by_hash("hash-a") == a and store.get("k_a") == a
    assert store.by_hash("nope") is None and store.get("nope") is None
    assert [r.key_id for r in store.all()] == ["k_a", "k_b"]
    revoked = store.revoke("k_a", 50.0)
    assert revoked.revoked_at == 50.0
    assert store.revoke("k_a", 60.0).revoked_at == 50.0  # a revoke is not moved
    moved = store.set_hash("k_b", "hash-b2")
    assert moved.hash == "hash-b2" and store.by_hash("hash-b") is None and store.by_hash("hash-b2") == moved
    assert store.count() == 2  # (a revoked key still counts: auth never falls back to open)


def test_a_keyring_over_postgresql_creates_rotates_and_revokes(tmp_path, pg_schema):
    url, _ = pg_schema
    ring = Keyring(open_key_store(url, tmp_path / "x"), tmp_path / "auth.secret")
    try:
        rec, key = ring.create("ci", Role.OPERATOR, team="t", privacy=Privacy.LOCAL_ONLY)
        assert ring.get(rec.key_id).privacy is Privacy.LOCAL_ONLY
        fresh, key2 = ring.rotate(rec.key_id)
        assert key2 != key and fresh.hash != rec.hash
        assert ring.revoke(rec.key_id).revoked_at is not None
        assert [r.key_id for r in ring.list()] == [rec.key_id]
    finally:
        ring.close()


async def test_keys_made_by_the_cli_in_postgresql_work_on_a_server_sharing_the_store(tmp_path, pg_schema, capsys):
    from nlweb_local.cli.main import main

    url, _ = pg_schema
    secret = tmp_path / "shared" / "auth.secret"
    cfg = tmp_path / "cli.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'cli-data'}\nauth:\n  keys_database_url: '{url}'\n  secret_path: {secret}\n")
    assert main(["--config", str(cfg), "keys", "create", "--name", "robot", "--role", "user"]) == 0
    out = capsys.readouterr().out
    key = out.splitlines()[-1]
    assert key.startswith("nlk_") and key == out.split()[-1]  # the last word, on its own line
    assert not (tmp_path / "cli-data" / "keys.sqlite").exists()  # nothing in SQLite
    svc = governed_service(tmp_path / "server", auth={"keys_database_url": url, "secret_path": str(secret),
                                                      "key_cache_ttl_s": 0.05})
    try:
        async with client(svc) as c:
            r = await c.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
            assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 401  # auth is on: a key exists
            key_id = svc.comp.governance.keyring.list()[0].key_id
            assert main(["--config", str(cfg), "keys", "revoke", key_id]) == 0  # another process revokes it
            await asyncio.sleep(0.1)  # (past the server's key cache)
            r = await c.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key}"})
            assert r.status_code == 401 and "was revoked" in r.json()["error"]["message"]
    finally:
        await svc.comp.close()


def test_a_dropped_connection_is_opened_again(tmp_path, pg_schema):
    import psycopg

    url, _ = pg_schema
    store = open_key_store(url, tmp_path / "x")
    try:
        store.add(record("k_a", "hash-a"))
        pid = store._conn.info.backend_pid
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        found = store.by_hash("hash-a")  # the statement finds the connection gone, opens another, runs again
        assert found is not None and found.key_id == "k_a"
        assert store._conn.info.backend_pid != pid
    finally:
        store.close()


def test_a_store_that_cannot_be_reached_stops_the_start_naming_it_without_the_password(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # (nothing listens there)
    pytest.importorskip("psycopg")
    with pytest.raises(KeyStoreUnavailableError) as e:
        open_key_store(f"postgresql://alice:hunter2@127.0.0.1:{port}/keys", tmp_path / "x")
    assert f"postgresql://alice:***@127.0.0.1:{port}/keys" in e.value.message
    assert "hunter2" not in e.value.message and e.value.status == 503
    with pytest.raises(Exception, match="keys_database_url must be postgresql"):
        open_key_store("mysql://x/y", tmp_path / "x")


async def test_a_postgresql_outage_gives_503_with_retry_after_and_cached_keys_keep_working(tmp_path, pg_schema):
    """The server's connection is cut and the database cannot be reached again (its URL now names a port
    where nothing listens): a key seen before is still served from the cache; a key not seen yet gets 503
    with Retry-After saying the key store cannot be read (not 401, not a 500 with the driver's words)."""
    import socket

    import psycopg

    url, _ = pg_schema
    svc = governed_service(tmp_path, auth={"keys_database_url": url, "key_cache_ttl_s": 300})
    seen, unseen = svc.key("seen", "user"), svc.key("unseen", "user")
    try:
        async with client(svc) as c:
            assert (await c.post("/v1/chat/completions", json=CHAT, headers={"x-api-key": seen})).status_code == 200
            store = svc.comp.governance.keyring.store
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]
            s.close()
            store._connect = lambda: psycopg.connect(f"postgresql://postgres@127.0.0.1:{dead}/test", connect_timeout=2)
            with psycopg.connect(PG_URL, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (store._conn.info.backend_pid,))
            r = await c.post("/v1/chat/completions", json=CHAT, headers={"x-api-key": unseen})
            assert r.status_code == 503, r.text
            assert "key store cannot be read or written now" in r.json()["error"]["message"]
            assert str(dead) not in r.text and int(r.headers["retry-after"]) >= 1
            assert (await c.post("/v1/chat/completions", json=CHAT, headers={"x-api-key": seen})).status_code == 200
    finally:
        await svc.comp.close()
