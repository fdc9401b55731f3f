"""`kill -9` during an ingest's write phase, for real: a CLI `nlweb-local ingest` process, and `serve`
during its demo load. The site must show none or all of its items — never a part — and a re-run
(or a restart of `serve`) must then show all of them exactly once.

The processes are held mid-write by the test-only hook `NLWEB_TEST_HOLD_WRITE_AFTER_BATCHES`
(off by default): after that many staged batches the ingestor says so on stderr and waits, so the
kill lands in the write phase without guessing at timings.
"""
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

from nlweb_local.config.settings import load_settings
from nlweb_local.ingest.pipeline import TEST_HOLD_ENV, TEST_HOLD_LINE

pytestmark = pytest.mark.slow

SRC = Path(__file__).resolve().parents[1] / "src"
ITEMS = 300
BATCH = 32


def cli_env(data: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NLWEB_LOCAL_")}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")])), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", NLWEB_LOCAL_DATA_DIR=str(data), NLWEB_LOCAL_INGEST__BATCH_SIZE=str(BATCH))
    env.update(extra)
    return env


def start(args: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nlweb_local.cli.main", *args], env=env, cwd=cwd,
                            stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def wait_for_line(proc: subprocess.Popen, log: Path, text: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text(errors="replace"):
        if proc.poll() is not None:
            pytest.fail(f"the process exited ({proc.returncode}) before {text!r}:\n{log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {text!r} within {timeout_s:g} s:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL


def open_store(data: Path):
    from nlweb_local.retrieval.qdrant_store import QdrantStore

    return QdrantStore(dimension=384, path=load_settings(environ={"NLWEB_LOCAL_DATA_DIR": str(data)}).store_path)


def visible(store, site: str) -> list[str]:
    """The urls of `site` that readers see (a url listed twice would show a double write)."""
    return sorted(it.url for it in store.sample(site, 10_000))


def test_kill_9_of_a_cli_ingest_in_its_write_phase_leaves_none_or_all(tmp_path):
    data, source = tmp_path / "data", tmp_path / "site.jsonl"
    urls = sorted(f"https://kill.example/item/{i}" for i in range(ITEMS))
    source.write_text("\n".join(json.dumps({"url": u, "@type": "Thing", "name": f"Item {i}",
                                            "description": f"The {i}th thing of a generated site"})
                                for i, u in enumerate(urls)) + "\n")
    log = tmp_path / "ingest.log"
    proc = start(["ingest", str(source), "--site", "kill", "--no-progress"], cli_env(data, **{TEST_HOLD_ENV: "3"}),
                 log, tmp_path)
    wait_for_line(proc, log, TEST_HOLD_LINE)  # 3 of 10 batches are in the store, uncommitted
    kill9(proc)

    store = open_store(data)
    try:
        seen = visible(store, "kill")
        assert len(seen) in (0, ITEMS), f"{len(seen)} of {ITEMS} items visible after kill -9"
        assert [r.uncommitted for r in store.recovered if r.site == "kill"] == [3 * BATCH]
    finally:
        store.close()

    again = tmp_path / "again.log"
    rerun = start(["ingest", str(source), "--site", "kill", "--no-progress"], cli_env(data), again, tmp_path)
    assert rerun.wait(300) == 0, again.read_text(errors="replace")[-3000:]
    assert f"loaded {ITEMS} items" in again.read_text()
    store = open_store(data)
    try:
        assert visible(store, "kill") == urls
        assert store.count() == ITEMS
        assert store._client.count("nlweb_items", exact=True).count == ITEMS  # no leftovers kept, even hidden
    finally:
        store.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_kill_9_of_serve_during_its_demo_load_then_serve_completes_it(tmp_path):
    from nlweb_local.ingest.demo import DEMO_SITE

    data = tmp_path / "data"
    first, second = tmp_path / "serve1.log", tmp_path / "serve2.log"
    port = str(free_port())
    proc = start(["serve", "--port", port], cli_env(data, **{TEST_HOLD_ENV: "2"}), first, tmp_path)
    wait_for_line(proc, first, TEST_HOLD_LINE)
    kill9(proc)

    proc = start(["serve", "--port", port], cli_env(data), second, tmp_path)
    try:
        wait_for_line(proc, second, "nlweb-local is ready")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = second.read_text(errors="replace")
    assert f"an earlier load of the demo site {DEMO_SITE!r} was interrupted ({2 * BATCH} uncommitted items removed)" in text
    assert "demo site loaded: loaded 286 items" in text
    store = open_store(data)
    try:
        seen = visible(store, DEMO_SITE)
        assert len(seen) == len(set(seen)) == 286 and store.count() == 286
        assert store._client.count("nlweb_items", exact=True).count == 286
    finally:
        store.close()
