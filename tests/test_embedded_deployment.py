"""The `llm.*` keys of the embedded engine are sugar for an ordinary `llama_cpp` deployment: built through
the engine registry (as `build_components` does), it gets exactly the parameters the keys name."""
from __future__ import annotations

import inspect

import pytest

from nlweb_local.config.settings import DeploymentSettings, load_settings
from nlweb_local.core.errors import BadRequestError
from nlweb_local.providers import llama_cpp
from nlweb_local.providers.registry import build_provider

REAL = llama_cpp.LlamaCppProvider


@pytest.fixture()
def made(monkeypatch):
    """Every LlamaCppProvider constructed, as the full set of its parameters (no model is loaded)."""
    calls: list[dict] = []

    class Recorder:
        def __init__(self, *args, **kwargs):
            bound = inspect.signature(REAL).bind(*args, **kwargs)
            bound.apply_defaults()
            calls.append(dict(bound.arguments))

    monkeypatch.setattr(llama_cpp, "LlamaCppProvider", Recorder)
    return calls


@pytest.mark.parametrize("yaml_text", [
    "",  # the defaults: packaged SmolLM2, n_ctx 2048, all cores
    "llm:\n  model_path: /models/m.gguf\n  n_ctx: 4096\n  n_threads: 3\n  max_queue: 9\n  call_timeout_s: 42\n"
    "  seed: 7\n  embedded_name: cpu\n",
])
def test_the_sugar_builds_the_engine_the_keys_name(made, tmp_path, yaml_text):
    from nlweb_local.server.components import build_router

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text or "{}\n")
    settings = load_settings(cfg, environ={})
    with pytest.raises(AttributeError):  # the recorder is no provider: the router refuses it, after it was built
        build_router(settings)
    build_provider(settings.llm.embedded_deployment(), {})
    composed, direct = made
    assert composed == direct
    s = settings.llm
    assert direct == {"model_path": s.model_path, "n_ctx": s.n_ctx, "n_threads": s.n_threads, "max_queue": s.max_queue,
                      "call_timeout_s": s.call_timeout_s, "seed": s.seed, "name": s.embedded_name,
                      "priority_ageing_s": s.priority_ageing_s, "lazy_load": False, "chat_template": None,
                      "tenant_weights": None}


def test_a_llama_cpp_deployment_refuses_options_it_does_not_know(made):
    d = DeploymentSettings(name="x", engine="llama_cpp", options={"n_ctx": 1024, "n_thread": 2})
    with pytest.raises(BadRequestError, match="unknown option\\(s\\) n_thread for engine llama_cpp"):
        build_provider(d, {})
    assert made == []


def test_a_plain_llama_cpp_deployment_keeps_its_defaults(made):
    build_provider(DeploymentSettings(name="x", engine="llama_cpp", timeout_s=5), {})
    assert made == [{"model_path": None, "n_ctx": 2048, "n_threads": None, "max_queue": 64, "call_timeout_s": 5,
                     "seed": 0, "name": "x", "priority_ageing_s": 10.0, "lazy_load": False, "chat_template": None,
                     "tenant_weights": None}]
