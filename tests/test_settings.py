from pathlib import Path

import pytest
import yaml

from nlweb_local.config.settings import Settings, load_settings, settings_as_yaml
from nlweb_local.core.errors import BadRequestError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_then_file_then_environment(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("server:\n  port: 9100\nsearch:\n  max_results: 7\n")
    s = load_settings(cfg, environ={"NLWEB_LOCAL_SERVER__PORT": "9200", "NLWEB_LOCAL_DATA_DIR": "/srv/x"})
    assert s.server.port == 9200  # env beats file
    assert s.search.max_results == 7  # file beats default
    assert s.search.min_score == 51  # default
    assert s.data_dir == "/srv/x"
    assert s.store_path == Path("/srv/x/qdrant")


def test_config_file_named_by_environment(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("log_level: DEBUG\n")
    assert load_settings(environ={"NLWEB_LOCAL_CONFIG": str(cfg)}).log_level == "DEBUG"


@pytest.mark.parametrize("text,fragment", [
    ("server:\n  port: 99999\n", "server.port"),
    ("serverr:\n  port: 1\n", "serverr"),
    ("search: [1, 2]\n", "search"),
])
def test_bad_settings_name_the_field(tmp_path, text, fragment):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(BadRequestError) as e:
        load_settings(cfg, environ={})
    assert fragment in e.value.message


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(BadRequestError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml", environ={})


def test_shipped_config_file_documents_the_defaults():
    """nlweb-local.yaml in the repository must state exactly the built-in defaults."""
    from nlweb_local.config.settings import documented_yaml

    assert (ROOT / "nlweb-local.yaml").read_text() == documented_yaml(), "regenerate: nlweb-local config init --force"
    shipped = yaml.safe_load((ROOT / "nlweb-local.yaml").read_text())
    assert shipped == Settings().model_dump(mode="json")
    assert yaml.safe_load(settings_as_yaml(Settings())) == shipped


def test_search_deployment_must_exist(tmp_path):
    from nlweb_local.providers.testing import ScriptedProvider
    from stand_ins import scripted_service

    cfg = tmp_path / "c.yaml"
    cfg.write_text("llm:\n  search_deployment: big\n  deployments:\n    - {name: small, engine: ollama, model: llama3}\n")
    with pytest.raises(BadRequestError, match="'big' is not a deployment \\(local, small\\)"):
        scripted_service(load_settings(cfg, environ={}), {"local": ScriptedProvider("local")}, telemetry=None)


def test_unknown_engine_is_rejected_with_the_choices(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("llm:\n  deployments:\n    - {name: x, engine: nope}\n")
    with pytest.raises(BadRequestError, match="llm.deployments.0.engine"):
        load_settings(cfg, environ={})


async def test_routing_settings_build_the_router(tmp_path):
    from nlweb_local.core.errors import NoDeploymentError, ProviderConnectionError
    from nlweb_local.core.types import ChatRequest, Message
    from nlweb_local.providers.testing import ScriptedProvider
    from nlweb_local.server.components import build_router

    cfg = tmp_path / "c.yaml"
    cfg.write_text("llm:\n  strategy: cost\n  rollout_local_share: 0.25\n  groups: {summarize: [local], smart: [local]}\n"
                   "  breaker: {open_s: 5, min_calls: 2}\n")
    local = ScriptedProvider("local")
    router = build_router(load_settings(cfg, environ={}), providers={"local": local})
    assert router.default_strategy == "cost" and router.aliases() == {"summarize": ("local",), "smart": ("local",)}
    local.fail_with = ProviderConnectionError("down", deployment="local")
    with pytest.raises(NoDeploymentError):  # two failed attempts (two rounds): min_calls reached, the breaker opens
        await router.complete(ChatRequest([Message("user", "hi")]))
    snap = router.breaker("local")
    assert snap.state == "open" and 4.0 < snap.retry_after_s <= 5.0  # llm.breaker.open_s
    cfg.write_text("llm:\n  groups: {rank: [ghost]}\n")
    with pytest.raises(BadRequestError, match="unknown deployments"):
        build_router(load_settings(cfg, environ={}), providers={"local": ScriptedProvider("local")})
