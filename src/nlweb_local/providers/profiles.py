"""What makes one OpenAI-compatible engine differ from another: its default URL, how it authenticates,
how it is asked for JSON, what it can do and where it reports its load. The wire adapter
(`openai_compat.py`) is the same for all of them; an engine is one `EngineProfile` entry below.

A deployment's `options` may override any profile field of the same name (for instance
`classify: false` for a cloud model without logprobs, or `json_mode: json_object` for an older
server); other option keys are the adapter's own (`api_version`, `deployment`, `embedding_model`, ...).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from ..core.errors import BadRequestError

JsonMode = Literal["json_schema", "json_object_schema", "json_object_value", "json_object", "none"]
HealthKind = Literal["models", "vllm", "llama_server"]


@dataclass(frozen=True, slots=True)
class EngineProfile:
    engine: str
    default_url: str | None  # the OpenAI-compatible base, ending in /v1 (Azure: none, the resource URL is required)
    local: bool = True  # False: requests leave the machine
    auth: Literal["bearer", "api-key"] = "bearer"
    key_required: bool = False
    default_key_env: str | None = None  # where the key is read from when the deployment names no api_key_env
    default_model: str | None = None  # None: the deployment must name its model
    context_window: int = 4096
    json_mode: JsonMode = "json_schema"  # how `ChatRequest.json_schema` is sent (see `response_format` in the adapter)
    tools: bool = True
    classify: bool = False  # first-token logprobs with top_logprobs: one-token label probabilities
    top_logprobs: int = 20
    embeddings: bool = False  # declared capability; embed() is always attempted when called
    health: HealthKind = "models"  # models: GET /models; vllm: /health + /metrics; llama_server: /health + /metrics + /slots (read by load_parsers)
    repeat_penalty_key: str | None = None  # body field for `ChatRequest.repeat_penalty`; None: not sent
    max_tokens_key: str = "max_tokens"
    stream_usage: bool = True  # ask for usage in the last streamed chunk (stream_options.include_usage)
    azure: bool = False  # deployment in the path, api-version query, api-key header


PROFILES: dict[str, EngineProfile] = {p.engine: p for p in (
    EngineProfile("openai", "https://api.openai.com/v1", local=False, key_required=True, default_key_env="OPENAI_API_KEY",
                  context_window=128_000, classify=True, max_tokens_key="max_completion_tokens"),
    EngineProfile("azure_openai", None, local=False, auth="api-key", key_required=True,
                  default_key_env="AZURE_OPENAI_API_KEY", context_window=128_000, classify=True, azure=True),
    EngineProfile("vllm", "http://127.0.0.1:8000/v1", classify=True, health="vllm", repeat_penalty_key="repetition_penalty"),
    EngineProfile("llama_server", "http://127.0.0.1:8080/v1", default_model="default", classify=True,
                  health="llama_server", repeat_penalty_key="repeat_penalty"),
    EngineProfile("llama_cpp_server", "http://127.0.0.1:8000/v1", default_model="default", context_window=2048,
                  json_mode="json_object_schema", tools=False, classify=True, repeat_penalty_key="repeat_penalty"),
    EngineProfile("ollama_openai", "http://127.0.0.1:11434/v1", context_window=4096),
    EngineProfile("tgi_openai", "http://127.0.0.1:8080/v1", default_model="tgi", json_mode="json_object_value",
                  top_logprobs=5),
)}

ADAPTER_OPTIONS = frozenset({"api_version", "deployment", "embedding_model", "embedding_deployment", "headers",
                             "max_connections"})
_OVERRIDABLE = frozenset(f.name for f in dataclasses.fields(EngineProfile)) - {"engine", "azure", "auth"}


def profile_for(engine: str, options: Mapping[str, Any] | None = None) -> EngineProfile:
    """The engine's profile with the deployment's overrides applied; unknown option keys are an error."""
    base = PROFILES.get(engine)
    if base is None:
        raise BadRequestError(f"engine {engine!r} is not OpenAI-compatible here (one of {', '.join(PROFILES)})")
    options = options or {}
    unknown = set(options) - _OVERRIDABLE - ADAPTER_OPTIONS
    if unknown:
        raise BadRequestError(f"unknown option(s) {', '.join(sorted(unknown))} for engine {engine!r}; known: "
                              f"{', '.join(sorted(_OVERRIDABLE | ADAPTER_OPTIONS))}")
    return dataclasses.replace(base, **{k: v for k, v in options.items() if k in _OVERRIDABLE})
