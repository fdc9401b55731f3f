"""The engine registry: built-ins and plugins through one `register`, entry points read once, clear errors."""
from __future__ import annotations

import importlib.metadata
import sys
import textwrap

import pytest

from nlweb_local.config.settings import DeploymentSettings, load_settings
from nlweb_local.core.errors import BadRequestError
from nlweb_local.providers import registry as reg
from nlweb_local.providers.registry import BUILTIN_ENGINES, EngineRegistry, build_provider, default_registry
from nlweb_local.providers.testing import ScriptedProvider

PLUGIN = '''
from nlweb_local.providers.testing import ScriptedProvider

calls = []


def from_settings(d, environ):
    calls.append((d.name, d.model, environ.get("ACME_TOKEN")))
    return ScriptedProvider(d.name, text=f"acme serves {d.model}")
'''


@pytest.fixture()
def plugin_on_path(tmp_path, monkeypatch):
    """An installed package `acme_engine` (a dist-info folder on sys.path) with an entry point in
    `nlweb_local.engines`: exactly what `pip install acme-engine` would leave behind."""
    (tmp_path / "acme_engine.py").write_text(PLUGIN)
    dist = tmp_path / "acme_engine-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-engine\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""\
        [nlweb_local.engines]
        acme = acme_engine:from_settings
        ollama = acme_engine:from_settings
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("acme_engine", None)


def test_a_plugin_engine_is_built_by_build_provider(plugin_on_path, monkeypatch):
    monkeypatch.setattr(reg, "ENGINES", default_registry())  # a fresh process: plugins not read yet
    d = DeploymentSettings(name="rocket", engine="acme", model="acme-7b")
    p = build_provider(d, {"ACME_TOKEN": "t0k"})
    assert isinstance(p, ScriptedProvider) and p.name == "rocket"
    assert sys.modules["acme_engine"].calls == [("rocket", "acme-7b", "t0k")]
    assert "acme" in reg.ENGINES.names() and set(BUILTIN_ENGINES) <= set(reg.ENGINES.names())


def test_a_plugin_cannot_replace_a_built_in_engine(plugin_on_path, caplog):
    r = default_registry()
    with caplog.at_level("WARNING", logger="nlweb_local.providers.registry"):
        names = r.names()
    assert "acme" in names and "ollama" in names
    assert "engine 'ollama' from the package acme-engine is ignored" in caplog.text
    from nlweb_local.providers import ollama

    assert r.lookup("ollama") is ollama.from_settings


def test_entry_points_are_read_once_and_only_when_needed(monkeypatch):
    seen = []

    def fake_entry_points(*, group):
        seen.append(group)
        return [importlib.metadata.EntryPoint("acme", "nlweb_local.providers.testing:ScriptedProvider", group)]

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    r = default_registry()
    r.lookup("openai")  # a built-in: no need to look at the installed packages
    assert seen == []
    assert r.lookup("acme") is ScriptedProvider
    assert "acme" in r and r.names().count("acme") == 1
    assert seen == ["nlweb_local.engines"]


def test_built_ins_go_through_register():
    r = EngineRegistry(entry_point_group=None)
    for name, target in BUILTIN_ENGINES.items():
        r.register(name, target)
    assert r.names() == sorted(BUILTIN_ENGINES)


def test_register_a_callable_and_refuse_a_second_registration():
    r = EngineRegistry(entry_point_group=None)

    def factory(d, environ):
        return ScriptedProvider(d.name)

    r.register("mine", factory)
    assert r.build(DeploymentSettings(name="m", engine="mine"), {}).name == "m"
    with pytest.raises(ValueError, match="already registered"):
        r.register("mine", factory)
    with pytest.raises(ValueError):
        r.register("", factory)
    with pytest.raises(TypeError):
        r.register("other", 42)  # type: ignore[arg-type]


def test_a_module_path_means_its_from_settings():
    r = EngineRegistry(entry_point_group=None)
    r.register("oa", "nlweb_local.providers.openai_compat")
    from nlweb_local.providers import openai_compat

    assert r.lookup("oa") is openai_compat.from_settings
    r.register("broken", "nlweb_local.providers.openai_compat:no_such_factory")
    with pytest.raises(BadRequestError, match="names nothing"):
        r.lookup("broken")


def test_an_unknown_engine_loads_and_fails_when_built_naming_deployment_engine_and_choices(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("llm:\n  deployments:\n    - {name: x, engine: nope}\n")
    settings = load_settings(cfg, environ={})  # config knows no engine list: it loads
    with pytest.raises(BadRequestError) as e:
        build_provider(settings.llm.deployments[0], {}, registry=EngineRegistry(entry_point_group=None))
    assert "deployment 'x'" in e.value.message and "unknown engine 'nope'" in e.value.message
    assert e.value.deployment == "x"
    with pytest.raises(BadRequestError) as e:
        build_provider(settings.llm.deployments[0], {})
    assert all(name in e.value.message for name in BUILTIN_ENGINES) and "nlweb_local.engines" in e.value.message


def test_an_empty_engine_name_is_a_settings_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("llm:\n  deployments:\n    - {name: x, engine: ''}\n")
    with pytest.raises(BadRequestError, match="llm.deployments.0.engine"):
        load_settings(cfg, environ={})
