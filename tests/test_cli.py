"""The command line: help, config, ingestion errors and a real ingest + sites round trip."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nlweb_local.cli.main import main

FIXTURE = Path(__file__).parent / "data" / "fixture_site.jsonl"


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no nlweb-local.yaml here: defaults
    monkeypatch.setenv("NLWEB_LOCAL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NLWEB_LOCAL_SERVER__PORT", "1")  # no server there: commands run in-process
    return tmp_path


def test_console_script_help():
    exe = Path(sys.executable).parent / "nlweb-local"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for cmd in ("serve", "ingest", "ask", "sites", "config"):
        assert cmd in out.stdout


def test_config_show_prints_effective_settings(env, capsys, monkeypatch):
    monkeypatch.setenv("NLWEB_LOCAL_SEARCH__MAX_RESULTS", "7")
    assert main(["config", "show"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["search"]["max_results"] == 7 and shown["data_dir"] == str(env / "data")


def test_bad_config_is_one_clear_line(env, capsys):
    (env / "bad.yaml").write_text("search:\n  max_results: nope\n")
    assert main(["--config", str(env / "bad.yaml"), "config", "show"]) == 2
    assert "search.max_results" in capsys.readouterr().err


def test_missing_source_fails_fast_naming_it(env, capsys):
    assert main(["ingest", "nowhere.jsonl", "--site", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "nowhere.jsonl" in err and len(err.splitlines()) == 1


def test_ingest_needs_a_site(env, capsys):
    assert main(["ingest", str(FIXTURE)]) == 2
    assert "--site" in capsys.readouterr().err


def test_ingest_sites_delete_round_trip(env, capsys):
    assert main(["ingest", str(FIXTURE), "--site", "fx", "--no-progress"]) == 0
    assert "24" in capsys.readouterr().out
    assert main(["sites"]) == 0
    assert "fx\t24 items" in capsys.readouterr().out
    assert main(["ingest", "--delete-site", "fx"]) == 0
    assert "24 items removed" in capsys.readouterr().out
    assert main(["sites"]) == 0
    assert "no sites loaded" in capsys.readouterr().out


def test_a_site_typo_neither_moves_items_nor_deletes_quietly(env, capsys):
    """`ingest --site` with a mistyped name would take the real site's items (a url is in one site): refused
    (non-zero, nothing moved) unless --force; `--delete-site` of an unknown site fails listing the sites."""
    assert main(["ingest", str(FIXTURE), "--site", "fx", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["ingest", str(FIXTURE), "--site", "fxx", "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "24 in site 'fx'" in err and "did you mean 'fx'" in err and "--force" in err
    assert main(["ingest", "--delete-site", "fxx"]) != 0
    err = capsys.readouterr().err
    assert "no site 'fxx'" in err and "fx" in err.split("the sites are:")[1]
    assert main(["sites"]) == 0
    assert "fx\t24 items" in capsys.readouterr().out
    assert main(["ingest", str(FIXTURE), "--site", "fxx", "--no-progress", "--force"]) == 0
    assert "24 moved from site 'fx'" in capsys.readouterr().out
    assert main(["sites"]) == 0
    assert capsys.readouterr().out.strip() == "fxx\t24 items"


def test_unparseable_source_is_a_non_zero_exit(env, capsys):
    bad = env / "bad.json"
    bad.write_text("{this is not json")
    assert main(["ingest", str(bad), "--site", "x", "--no-progress"]) != 0
    assert "bad.json" in capsys.readouterr().err


def test_router_calibrate_hits_the_target_share(env, capsys):
    import json

    data = env / "sample.jsonl"
    rows = [{"prompt": "hi", "label": "weak"}] * 6 + [{"prompt": "Explain step by step why " + "x" * 3000, "label": "strong"}] * 2
    data.write_text("\n".join(json.dumps(r) for r in rows))
    assert main(["router", "calibrate", "--data", str(data), "--target", "0.25"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[0])
    assert out["escalated_share"] == 0.25 and out["strong_recall"] == 1.0 and out["escalation_precision"] == 1.0
    (env / "bad.jsonl").write_text('{"nope": 1}\n')
    assert main(["router", "calibrate", "--data", str(env / "bad.jsonl")]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err


def test_models_commands_against_a_fake_ollama(env, capsys, monkeypatch):
    """`models pull|load|unload|delete|list` drive Ollama's lifecycle API (a wire-faithful fake here)."""
    import json

    from fakes.ollama_fake import OllamaFake

    with OllamaFake(models=["llama3.2:1b"], pullable=["qwen2.5:0.5b"]) as fake:
        cfg = env / "c.yaml"
        cfg.write_text(f"llm:\n  deployments:\n    - {{name: ol, engine: ollama, model: 'llama3.2:1b', url: '{fake.url}'}}\n")
        base = ["--config", str(cfg), "models"]
        assert main(base + ["pull", "qwen2.5:0.5b", "--deployment", "ol"]) == 0
        assert "pulled qwen2.5:0.5b" in capsys.readouterr().out
        assert main(base + ["load", "qwen2.5:0.5b", "--deployment", "ol"]) == 0
        capsys.readouterr()
        assert main(base + ["list", "--json"]) == 0
        row = next(r for r in json.loads(capsys.readouterr().out)["deployments"] if r["name"] == "ol")
        assert row["healthy"] is True and "qwen2.5:0.5b" in row["installed"] and "qwen2.5:0.5b" in row["loaded"]
        assert main(base + ["unload", "qwen2.5:0.5b", "--deployment", "ol"]) == 0
        assert main(base + ["delete", "qwen2.5:0.5b", "--deployment", "ol"]) == 0
        capsys.readouterr()
        assert main(base + ["list", "--json"]) == 0
        row = next(r for r in json.loads(capsys.readouterr().out)["deployments"] if r["name"] == "ol")
        assert "qwen2.5:0.5b" not in row["installed"] and row["loaded"] == []
        assert main(base + ["pull", "no-such-model", "--deployment", "ol"]) != 0
        assert "no-such-model" in capsys.readouterr().err


def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subparsers(sub))


def test_every_command_s_help_renders():
    """`--help` of every command and subcommand formats (a bare % in a help text used to crash `models --help`)."""
    from nlweb_local.cli.main import build_parser

    parser = build_parser()
    names = []
    for name, sub in _subparsers(parser):
        text = sub.format_help()
        assert "usage:" in text, name
        names.append(name)
    assert {"serve", "models", "keys", "eval"} <= {n.split()[0] for n in names}
