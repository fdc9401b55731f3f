"""Build a provider from a deployment's settings. Adapters load lazily, so an engine's optional
dependencies (torch/transformers, ...) are imported only when a deployment uses it.

Every adapter module exposes `from_settings(d: DeploymentSettings, environ) -> Provider`.
"""
from __future__ import annotations

import importlib
import os
from typing import Mapping

from ..config.settings import DeploymentSettings
from ..core.errors import BadRequestError
from .base import Provider

ADAPTERS: dict[str, str] = {
    "llama_cpp": "nlweb_local.providers.llama_cpp",
    "openai": "nlweb_local.providers.openai_compat",
    "azure_openai": "nlweb_local.providers.openai_compat",
    "vllm": "nlweb_local.providers.openai_compat",
    "llama_server": "nlweb_local.providers.openai_compat",
    "llama_cpp_server": "nlweb_local.providers.openai_compat",
    "ollama_openai": "nlweb_local.providers.openai_compat",
    "tgi_openai": "nlweb_local.providers.openai_compat",
    "ollama": "nlweb_local.providers.ollama",
    "tgi": "nlweb_local.providers.tgi",
    "transformers": "nlweb_local.providers.transformers_batched",
    "anthropic": "nlweb_local.providers.anthropic",
    "sentence_transformers": "nlweb_local.providers.sentence_transformers",
}


def build_provider(d: DeploymentSettings, environ: Mapping[str, str] | None = None) -> Provider:
    module_name = ADAPTERS.get(d.engine)
    if module_name is None:
        raise BadRequestError(f"deployment {d.name!r}: unknown engine {d.engine!r} (one of {', '.join(ADAPTERS)})")
    module = importlib.import_module(module_name)
    return module.from_settings(d, os.environ if environ is None else environ)
