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


def test_unknown_engine_is_rejected_with_the_choices_when_built(tmp_path):
    """Engines are a registry plugins extend, so the config takes any name; building the deployment checks it."""
    from nlweb_local.providers.registry import build_provider as build_deployment

    cfg = tmp_path / "c.yaml"
    cfg.write_text("llm:\n  deployments:\n    - {name: x, engine: nope}\n")
    settings = load_settings(cfg, environ={})
    with pytest.raises(BadRequestError, match="deployment 'x': unknown engine 'nope'; known engines: .*llama_cpp"):
        build_deployment(settings.llm.deployments[0], {})


@pytest.mark.parametrize("text,key", [
    ("llm:\n  engine: llama_cpp\n", "llm.engine"),
    ("embedding:\n  backend: sentence_transformers\n", "embedding.backend"),
    ("store:\n  backend: qdrant\n", "store.backend"),
])
def test_keys_nothing_reads_any_more_load_with_a_warning(tmp_path, caplog, text, key):
    """A file written for an older version still loads; the log says which line to delete."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with caplog.at_level("WARNING", logger="nlweb_local.config.settings"):
        s = load_settings(cfg, environ={})
    assert f"{key}" in caplog.text and "delete that line" in caplog.text
    assert s == Settings()  # dropped, nothing else changed


def test_removed_keys_are_gone_from_the_documented_file():
    from nlweb_local.config.settings import documented_yaml

    shipped = yaml.safe_load(documented_yaml())
    assert "engine" not in shipped["llm"] and "backend" not in shipped["embedding"] and "backend" not in shipped["store"]


def test_the_embedded_keys_are_sugar_for_a_llama_cpp_deployment(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("llm:\n  model_path: /models/m.gguf\n  n_ctx: 4096\n  n_threads: 3\n  max_queue: 9\n"
                   "  call_timeout_s: 42\n  seed: 7\n  embedded_name: cpu\n"
                   "  deployments:\n    - {name: big, engine: vllm, model: q}\n")
    llm = load_settings(cfg, environ={}).llm
    d = llm.embedded_deployment()
    assert (d.name, d.engine, d.model, d.timeout_s, d.context_window, d.max_concurrency) == \
        ("cpu", "llama_cpp", "/models/m.gguf", 42, 4096, 9)
    assert d.options == {"n_ctx": 4096, "n_threads": 3, "max_queue": 9, "seed": 7, "priority_ageing_s": 10.0}
    assert (d.price_in_per_m, d.price_out_per_m, d.tier) == (0, 0, 0)
    assert [x.name for x in llm.all_deployments()] == ["cpu", "big"]
    assert llm.model_copy(update={"embedded_enabled": False}).embedded_deployment() is None
    assert [x.name for x in llm.model_copy(update={"embedded_enabled": False}).all_deployments()] == ["big"]
    assert Settings().llm.embedded_deployment().model == ""  # the packaged SmolLM2


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
