"""`nlweb-local models register|versions|aliases|alias|promote|rollback|history`: a release round trip
through the CLI, and refused commands that say what to do and change nothing."""
from __future__ import annotations

import hashlib
import json

import pytest
import yaml

from nlweb_local.cli.main import main


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """Run `nlweb-local --config <a config whose deployments serve smol@v1 and smol@v2> ARGS`: (rc, out, err)."""
    config = tmp_path / "nlweb-local.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "llm": {"deployments": [
        {"name": "smol-v1", "engine": "llama_cpp", "serves": "smol@v1"},
        {"name": "smol-v2", "engine": "llama_cpp", "serves": "smol@v2"}]}}))
    monkeypatch.chdir(tmp_path)

    def run(*args):
        rc = main(["--config", str(config), "models", *args])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def weights(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path), hashlib.sha256(data).hexdigest()


def test_release_round_trip(cli, tmp_path):
    v1, sha1 = weights(tmp_path, "smol-Q4_K_M.gguf", b"first weights")
    v2, sha2 = weights(tmp_path, "smol-Q8_0.gguf", b"second weights")
    rc, out, _ = cli("register", "smol", "v1", "--file", v1, "--sha256", sha1, "--context-window", "8192",
                     "--parameters", '{"temperature": 0.2}', "--notes", "baseline", "--by", "ci")
    assert rc == 0 and out.startswith(f"registered smol@v1: llama_cpp, {v1}, sha256 {sha1}, Q4_K_M")
    assert cli("register", "smol", "v2", "--file", v2, "--by", "ci")[0] == 0
    assert cli("alias", "chat-default", "smol", "v1", "--by", "alice")[1] == "chat-default: (new) -> smol@v1 (set, by alice)\n"
    assert cli("promote", "smol", "v2", "--alias", "chat-default", "--by", "bob")[1] == \
        "chat-default: smol@v1 -> smol@v2 (promote, by bob)\n"
    assert "already points at smol@v2; nothing changed" in cli("promote", "smol", "v2", "--alias", "chat-default")[1]
    assert cli("rollback", "chat-default", "--by", "carol")[1] == "chat-default: smol@v2 -> smol@v1 (rollback, by carol)\n"

    rc, out, _ = cli("history", "chat-default", "--format", "json")
    history = json.loads(out)
    assert rc == 0 and [{k: h[k] for k in ("alias", "name", "version", "by", "from")} for h in history] == [
        {"alias": "chat-default", "name": "smol", "version": "v1", "by": "alice", "from": None},
        {"alias": "chat-default", "name": "smol", "version": "v2", "by": "bob", "from": "smol@v1"},
        {"alias": "chat-default", "name": "smol", "version": "v1", "by": "carol", "from": "smol@v2"}]
    assert all(h["at"].endswith("Z") for h in history)
    rc, out, _ = cli("history", "chat-default")
    assert out.splitlines()[-1].endswith("smol@v2 -> smol@v1           rollback by carol")

    rc, out, _ = cli("versions", "smol", "--format", "json")
    versions = json.loads(out)
    assert [(v["version"], v["sha256"], v["quantisation"], v["aliases"]) for v in versions] == [
        ("v1", sha1, "Q4_K_M", ["chat-default"]), ("v2", sha2, "Q8_0", [])]
    assert (versions[0]["context_window"], versions[0]["parameters"], versions[0]["notes"]) == (8192, {"temperature": 0.2}, "baseline")
    assert "smol@v1" in cli("versions", "smol")[1] and "<- chat-default" in cli("versions")[1]
    assert cli("aliases")[1].startswith("chat-default         -> smol@v1")


def test_refused_commands_say_why_and_change_nothing(cli, tmp_path):
    v1, sha1 = weights(tmp_path, "smol.gguf", b"weights")
    rc, _, err = cli("register", "smol", "v1", "--file", v1, "--sha256", "f" * 64)
    assert rc == 2 and "has SHA-256" in err and "nothing was registered" in err
    rc, _, err = cli("register", "smol", "v1", "--file", v1, "--engine", "nonesuch")
    assert rc == 2 and "engine 'nonesuch' is not configured here" in err
    assert cli("versions", "smol")[1].startswith("no versions registered for smol")
    assert cli("register", "smol", "v1", "--file", v1)[0] == 0
    rc, _, err = cli("register", "smol", "v1", "--file", v1)
    assert rc == 2 and "already registered; versions are immutable" in err
    rc, _, err = cli("alias", "chat-default", "smol", "v7")
    assert rc == 1 and "smol@v7 is not registered (versions of smol: v1)" in err
    rc, _, err = cli("promote", "smol", "v1", "--alias", "chat-default")
    assert rc == 1 and "no alias 'chat-default'" in err
    rc, _, err = cli("alias", "smol-v1", "smol", "v1")
    assert rc == 2 and "already a deployment" in err
    rc, _, err = cli("rollback", "chat-default")
    assert rc == 1 and "no alias 'chat-default'" in err
    assert cli("history", "--format", "json")[1].strip() == "[]"
    rc, _, err = cli("alias", "chat-default", "smol")
    assert rc == 2 and "usage: nlweb-local models alias ALIAS NAME VERSION" in err
    rc, _, err = cli("promote", "smol", "v1")
    assert rc == 2 and "--alias ALIAS" in err
