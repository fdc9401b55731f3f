"""A newcomer's first hour with the command line (issue 13): `ask`/`sites` find the server whatever
port it was given, a busy port fails before "ready", an empty store still answers, stdout stays clean."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import LiveServer
from nlweb_local.cli.main import main
from nlweb_local.cli.server_record import read_record, record_path, remove_record, write_record
from nlweb_local.core.types import Item
from nlweb_local.providers.testing import FunctionLLM, ScriptedProvider
from nlweb_local.server.app import create_app
from stand_ins import NoEmbedder, scripted_service, service_settings

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no nlweb-local.yaml here: defaults
    monkeypatch.setenv("NLWEB_LOCAL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NLWEB_LOCAL_SERVER__PORT", "1")  # nothing on the configured port
    return tmp_path / "data"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_server_record_names_a_live_server_only(tmp_path):
    record = write_record(tmp_path, "http://127.0.0.1:9123")
    assert read_record(tmp_path) == record and record.pid == os.getpid()
    remove_record(record)
    assert not record_path(tmp_path).exists() and read_record(tmp_path) is None
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record_path(tmp_path).write_text(json.dumps({"url": "http://127.0.0.1:9123", "pid": int(dead.stdout)}))
    assert read_record(tmp_path) is None  # left by a process that died (kill -9): ignored
    record_path(tmp_path).write_text("{half")
    assert read_record(tmp_path) is None


@pytest.fixture()
def running(env, tmp_path):
    """A server on a port of its own (not the configured one), recorded as `serve` records itself."""
    from nlweb_local.retrieval.qdrant_store import QdrantStore

    settings = service_settings(env)
    embedder = NoEmbedder()
    store = QdrantStore(dimension=2, path=tmp_path / "served-store")
    store.upsert([Item("https://e.example/pie", "Apple pie", "bakery", json.dumps({"@type": "Recipe", "name": "Apple pie"}))],
                 embedder.embed(["Apple pie"]))
    comp = scripted_service(settings, {"local": ScriptedProvider("local")}, embedder=embedder, store=store, telemetry=None,
                            llm=FunctionLLM(lambda t, p, s: '{"score": 90, "description": "a pie"}'))
    srv = LiveServer(create_app(settings, comp, close_components=False))
    record = write_record(env, srv.url)
    yield srv
    remove_record(record)
    srv.stop()
    store.close()


def test_sites_and_ask_find_a_server_on_another_port(running, capsys):
    assert main(["sites"]) == 0
    assert capsys.readouterr().out.split() == ["bakery"]
    assert main(["ask", "apple pie", "--json"]) == 0
    out = capsys.readouterr().out
    messages = [json.loads(line) for line in out.splitlines()]  # stdout is the answer alone
    results = [m for m in messages if m.get("message_type") == "result"]
    assert results and results[0]["content"][0]["name"] == "Apple pie"


def test_a_server_that_is_starting_is_reported_at_once_with_what_to_do(env, capsys):
    """`serve` records itself before its models load; until it answers, `ask` and `sites` say that it is
    starting (not "stop serve", not after loading models of their own only to find the store taken)."""
    record = write_record(env, f"http://127.0.0.1:{closed_port()}")  # this live process, not listening
    try:
        assert main(["sites"]) != 0
        err = capsys.readouterr().err
        assert f"(pid {os.getpid()}) is starting at {record.url}" in err and "wait until it logs 'ready'" in err
    finally:
        remove_record(record)


def test_a_server_named_with_server_must_answer(env, capsys):
    url = f"http://127.0.0.1:{closed_port()}"
    assert main(["sites", "--server", url]) != 0
    assert f"no nlweb-local server answers at {url}" in capsys.readouterr().err


def test_serve_on_a_busy_port_fails_before_anything_loads(env, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port), "--no-demo"]) == 1
    out = capsys.readouterr()
    assert f"port {port} on 127.0.0.1 is already in use" in out.err and f"--port {port + 1}" in out.err
    assert "is ready" not in out.err + out.out
    assert not record_path(env).exists()


# -- real processes ----------------------------------------------------------------------------------------
def cli(data: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nlweb_local.cli.main", *args], env=cli_env(data), cwd=data.parent,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def cli_env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NLWEB_LOCAL_")}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")])),
               NLWEB_LOCAL_DATA_DIR=str(data), NLWEB_LOCAL_SERVER__PORT="1")
    return env


@pytest.mark.slow
def test_first_hour_ask_on_a_fresh_data_dir_then_a_server_on_its_own_port(tmp_path):
    data = tmp_path / "data"
    first = cli(data, "ask", "a waterproof jacket", "--site", "cedarvalley", "--json")
    assert first.returncode == 0, first.stderr[-2000:]
    messages = [json.loads(line) for line in first.stdout.splitlines()]  # nothing but the answer on stdout
    assert any(m.get("message_type") == "result" and m.get("content") for m in messages), first.stdout[-2000:]
    assert "loading the demo site 'cedarvalley'" in first.stderr
    assert "Loading weights" not in first.stderr and " INFO " not in first.stderr  # quiet unless -v

    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "nlweb_local.cli.main", "serve", "--port", "0"], env=cli_env(data),
                            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while "nlweb-local is ready" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
            time.sleep(0.2)
        record = read_record(data)
        assert record is not None and record.pid == proc.pid and f"open {record.url}/" in log.read_text()
        sites = cli(data, "sites")
        assert sites.returncode == 0 and sites.stdout.split() == ["cedarvalley"], sites.stderr[-2000:]
        answer = cli(data, "ask", "a waterproof jacket", "--json")
        assert answer.returncode == 0 and [json.loads(line) for line in answer.stdout.splitlines()]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert not record_path(data).exists()  # removed on exit


def test_a_held_store_fails_before_any_model_loads_naming_the_server(env, capsys, monkeypatch):
    """`ingest` (and `ask`/`sites` without a server to talk to) while another process holds the embedded
    store: refused at once, naming the recorded server when it is the one holding it."""
    from nlweb_local.config.settings import load_settings
    from nlweb_local.retrieval.qdrant_store import QdrantStore

    import nlweb_local.server.components as components

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the store was checked")

    monkeypatch.setattr(components, "build_embedder", no_model)
    settings = load_settings()
    holder = QdrantStore(dimension=2, path=settings.store_path)
    source = Path(__file__).parent / "data" / "fixture_site.jsonl"
    try:
        assert main(["ingest", str(source), "--site", "fx"]) != 0
        assert "is in use by another nlweb-local process" in capsys.readouterr().err
        record = write_record(env, f"http://127.0.0.1:{closed_port()}")
        try:
            assert main(["ingest", str(source), "--site", "fx"]) != 0
            assert f"`nlweb-local serve` (pid {os.getpid()}, {record.url}) holds the store" in capsys.readouterr().err
        finally:
            remove_record(record)
    finally:
        holder.close()
