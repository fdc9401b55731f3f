"""The model registry's store and rules, against SQLite and the real PostgreSQL (127.0.0.1:5432, db `test`,
one fresh schema per test, dropped after): round trips, history, rollback, and refused changes that leave
the registry exactly as it was."""
from __future__ import annotations

import hashlib
import sqlite3
import threading
import uuid

import pytest

from nlweb_local.core.errors import BadRequestError, NotFoundError
from nlweb_local.registry import ModelRegistry, ModelVersion, PostgresRegistryStore, SqliteRegistryStore
from nlweb_local.registry.artifacts import quantisation_of
from nlweb_local.registry.records import AliasChange
from nlweb_local.registry.store import SCHEMA_VERSION, RegistryStoreError, rollback_target
from postgres_server import PG_URL, pg_url

PG = PG_URL
ENGINES = ("llama_cpp", "vllm")


def pg_schema():
    """A fresh schema in the test database, and its dropper; skips when PostgreSQL is not running here."""
    psycopg = pytest.importorskip("psycopg")
    admin = psycopg.connect(pg_url(), autocommit=True, connect_timeout=3)
    schema = f"registry_{uuid.uuid4().hex[:12]}"
    admin.execute(f"CREATE SCHEMA {schema}")

    def drop():
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()

    return f"{PG}?options=-csearch_path%3D{schema}", drop


@pytest.fixture(params=["sqlite", "postgres"])
def opener(request, tmp_path):
    """A function that opens (another connection to) one registry database of the backend under test."""
    opened = []
    if request.param == "sqlite":
        def open_():
            opened.append(SqliteRegistryStore(tmp_path / "registry.sqlite"))
            return opened[-1]
        drop = None
    else:
        url, drop = pg_schema()

        def open_():
            opened.append(PostgresRegistryStore(url))
            return opened[-1]
    yield open_
    for s in opened:
        s.close()
    if drop is not None:
        drop()


@pytest.fixture
def store(opener):
    return opener()


def version(name="smol", v="v1", **kw):
    return ModelVersion(name, v, kw.pop("engine", "llama_cpp"), f"/models/{name}-{v}.gguf", "ab" * 32,
                        created_at=kw.pop("created_at", 1000.0), created_by="ci", **kw)


def snapshot(store):
    return store.version(), store.versions(), store.aliases(), store.history()


def test_versions_aliases_and_history_round_trip(store, opener):
    assert store.schema_version == SCHEMA_VERSION
    v1 = version(quantisation="Q4_K_M", context_window=8192, notes="first",
                 parameters={"temperature": 0.7, "chat_template": "{{ messages }}"})
    store.add_version(v1)
    store.add_version(version(v="v2", created_at=2000.0))
    store.add_version(version("other", "a"))
    assert store.get_version("smol", "v1") == v1  # every field back as written (parameters as JSON)
    assert [v.key for v in store.versions("smol")] == ["smol@v1", "smol@v2"]
    assert len(store.versions()) == 3

    first = store.set_alias("chat-default", "smol", "v1", action="set", at=10.0, by="alice")
    second = store.set_alias("chat-default", "smol", "v2", action="promote", at=20.0, by="bob", must_exist=True)
    assert (first.from_name, second.from_name, second.from_version) == (None, "smol", "v1")
    assert first.seq < second.seq == store.version()
    assert [(a.alias, a.key, a.updated_by) for a in store.aliases()] == [("chat-default", "smol@v2", "bob")]
    assert [c.as_dict() for c in store.history("chat-default")] == [
        {"alias": "chat-default", "name": "smol", "version": "v1", "at": "1970-01-01T00:00:10Z", "by": "alice",
         "from": None, "action": "set", "seq": first.seq},
        {"alias": "chat-default", "name": "smol", "version": "v2", "at": "1970-01-01T00:00:20Z", "by": "bob",
         "from": "smol@v1", "action": "promote", "seq": second.seq}]
    assert store.history(limit=1) == store.history("chat-default")[1:]

    again = opener()  # another connection (another process): same data, migrations already applied
    assert again.schema_version == SCHEMA_VERSION and snapshot(again) == snapshot(store)


def test_an_alias_at_an_unknown_version_changes_nothing(store):
    store.add_version(version())
    store.set_alias("chat", "smol", "v1", action="set", at=1.0, by="a")
    before = snapshot(store)
    with pytest.raises(NotFoundError, match=r"smol@v9 is not registered \(versions of smol: v1\)"):
        store.set_alias("chat", "smol", "v9", action="set", at=2.0, by="a")
    with pytest.raises(NotFoundError, match="no versions of ghost"):
        store.set_alias("new", "ghost", "v1", action="set", at=2.0, by="a")
    with pytest.raises(NotFoundError, match="no alias 'nope'"):
        store.set_alias("nope", "smol", "v1", action="promote", at=2.0, by="a", must_exist=True)
    assert snapshot(store) == before  # not even the version counter moved


def test_a_version_is_immutable(store):
    store.add_version(version())
    before = snapshot(store)
    with pytest.raises(BadRequestError, match="already registered; versions are immutable"):
        store.add_version(version(engine="vllm"))
    assert snapshot(store) == before and store.get_version("smol", "v1").engine == "llama_cpp"


def test_pointing_an_alias_where_it_points_records_nothing(store):
    store.add_version(version())
    store.set_alias("chat", "smol", "v1", action="set", at=1.0, by="a")
    before = snapshot(store)
    assert store.set_alias("chat", "smol", "v1", action="set", at=2.0, by="b") is None
    assert snapshot(store) == before


def test_rollback_walks_back_through_history(store):
    for v in ("v1", "v2", "v3"):
        store.add_version(version(v=v))
    with pytest.raises(NotFoundError, match="no alias 'chat'"):
        store.rollback("chat", at=0.0, by="x")
    for i, v in enumerate(("v1", "v2", "v3")):
        store.set_alias("chat", "smol", v, action="set", at=float(i), by="ops")
    assert store.rollback("chat", at=10.0, by="ops").version == "v2"
    back = store.rollback("chat", at=11.0, by="ops")  # again: further back, not a toggle to v3
    assert (back.version, back.from_version, back.action) == ("v1", "v2", "rollback")
    before = snapshot(store)
    with pytest.raises(BadRequestError, match="no earlier version to roll back to"):
        store.rollback("chat", at=12.0, by="ops")
    assert snapshot(store) == before
    assert [a.key for a in store.aliases()] == ["smol@v1"]


def change(version, action="set"):
    return AliasChange(0, "a", "m", version, None, None, action, 0.0, "")


def test_rollback_target_is_a_stack():
    assert rollback_target([]) is None
    assert rollback_target([change("v1")]) is None
    assert rollback_target([change("v1"), change("v2")]) == ("m", "v1")
    steps = [change("v1"), change("v2"), change("v3"), change("v2", "rollback")]
    assert rollback_target(steps) == ("m", "v1")
    assert rollback_target([*steps, change("v4", "promote")]) == ("m", "v2")


def test_concurrent_writers_on_two_connections_keep_one_history(opener):
    a, b = opener(), opener()
    for v in ("v1", "v2"):
        a.add_version(version(v=v))
    a.set_alias("chat", "smol", "v1", action="set", at=0.0, by="a")
    errors = []

    def flip(store, who, target, n=15):
        try:
            for i in range(n):
                store.set_alias("chat", "smol", target if i % 2 == 0 else ("v1" if target == "v2" else "v2"),
                                action="set", at=float(i), by=who)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=flip, args=(a, "a", "v2")), threading.Thread(target=flip, args=(b, "b", "v1"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    history = a.history("chat")
    seqs = [c.seq for c in history]
    assert seqs == sorted(set(seqs))  # one order, no duplicates
    for before, after in zip(history, history[1:]):  # each change starts where the previous one ended
        assert (after.from_name, after.from_version) == (before.name, before.version)
    assert a.aliases()[0].version == history[-1].version


def test_a_newer_sqlite_schema_is_refused(tmp_path):
    path = tmp_path / "r.sqlite"
    SqliteRegistryStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO registry_migrations (version, description) VALUES (?, 'from the future')",
                     (SCHEMA_VERSION + 1,))
    with pytest.raises(RegistryStoreError, match="newer than this nlweb-local knows"):
        SqliteRegistryStore(path)


# -- the rules (ModelRegistry) ------------------------------------------------------------------------
@pytest.fixture
def registry(store):
    return ModelRegistry(store, engines=ENGINES, reserved=["local"], served={"smol@v1", "smol@v2"},
                         clock=lambda: 1234.0)


def model_file(tmp_path, name="smol-Q4_K_M.gguf", data=b"GGUF model bytes"):
    path = tmp_path / name
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_register_hashes_the_file_and_refuses_a_mismatch(registry, tmp_path):
    path, digest = model_file(tmp_path)
    seen = []
    v = registry.register("smol", "v1", file=path, sha256=digest.upper(), by="ci", progress=seen.append)
    assert (v.sha256, v.quantisation, v.artifact, v.created_at) == (digest, "Q4_K_M", str(path.resolve()), 1234.0)
    assert sum(seen) == path.stat().st_size
    before = snapshot(registry.store)
    with pytest.raises(BadRequestError, match=f"has SHA-256 {digest}, not the {'0' * 64} given.*nothing was registered"):
        registry.register("smol", "v2", file=path, sha256="0" * 64, by="ci")
    with pytest.raises(BadRequestError, match="engine 'exllama' is not configured here"):
        registry.register("smol", "v2", file=path, engine="exllama", by="ci")
    with pytest.raises(BadRequestError, match="does not exist"):
        registry.register("smol", "v2", file=tmp_path / "missing.gguf", by="ci")
    with pytest.raises(BadRequestError, match="needs --sha256"):
        registry.register("smol", "v2", url="https://models.example/smol.gguf", by="ci")
    with pytest.raises(BadRequestError, match="64 hexadecimal digits"):
        registry.register("smol", "v2", file=path, sha256="abc", by="ci")
    with pytest.raises(BadRequestError, match="version 'v 2' must be"):
        registry.register("smol", "v 2", file=path, by="ci")
    assert snapshot(registry.store) == before
    by_url = registry.register("smol", "v2", url="https://models.example/smol-q8_0.gguf", sha256="c" * 64, by="ci")
    assert (by_url.artifact, by_url.quantisation) == ("https://models.example/smol-q8_0.gguf", "Q8_0")


def test_aliases_only_at_served_versions_and_free_names(registry, tmp_path):
    path, _ = model_file(tmp_path)
    for v in ("v1", "v3"):
        registry.register("smol", v, file=path, by="ci")
    before = snapshot(registry.store)
    with pytest.raises(BadRequestError, match="no configured deployment serves smol@v3.*--force"):
        registry.set_alias("chat", "smol", "v3", by="ops")
    for reserved in ("local", "auto"):
        with pytest.raises(BadRequestError, match="already a deployment"):
            registry.set_alias(reserved, "smol", "v1", by="ops")
    with pytest.raises(NotFoundError, match="no alias 'chat'"):
        registry.promote("smol", "v1", alias="chat", by="ops")
    assert snapshot(registry.store) == before
    assert registry.set_alias("chat", "smol", "v3", by="ops", force=True).version == "v3"


def test_quantisation_from_file_names():
    assert quantisation_of("SmolLM2-135M-Instruct-Q4_1.gguf") == "Q4_1"
    assert quantisation_of("gemma-3-270m-it-q8_0.gguf") == "Q8_0"
    assert quantisation_of("model.f16.gguf") == "F16"
    assert quantisation_of("llama-IQ3_XS.gguf") == "IQ3_XS"
    assert quantisation_of("model.gguf") == ""


def test_postgres_reconnects_after_losing_its_connection():
    import psycopg

    url, drop = pg_schema()
    store = PostgresRegistryStore(url)
    try:
        with psycopg.connect(PG, autocommit=True) as admin:  # the server drops the registry's connection
            admin.execute("SELECT pg_terminate_backend(%s)", (store._conn.info.backend_pid,))
        with pytest.raises(RegistryStoreError):
            store.version()  # the call that meets the dead connection fails, saying where
        assert store.version() == 0  # the next one reconnects
    finally:
        store.close()
        drop()


def test_the_alias_view_reads_memory_and_polls_the_version_when_due(tmp_path):
    from nlweb_local.registry import RegistryAliases

    store, other = SqliteRegistryStore(tmp_path / "r.sqlite"), SqliteRegistryStore(tmp_path / "r.sqlite")
    store.add_version(version())
    now = [0.0]
    view = RegistryAliases(store, poll_s=5.0, clock=lambda: now[0])
    assert view.target("chat") is None and view.generation == 0
    other.set_alias("chat", "smol", "v1", action="set", at=1.0, by="cli")  # another process
    now[0] = 4.9
    assert view.target("chat") is None and view.polls == 0  # not due: memory only
    now[0] = 5.0
    assert view.target("chat") == "smol@v1" and view.generation == 1 and view.polls == 1  # (no event loop: read now)
    now[0] = 10.0
    assert view.current() == 1 and view.polls == 2  # due again, nothing changed: same generation
    assert view.targets() == {"chat": "smol@v1"}
    store.close()
    other.close()
