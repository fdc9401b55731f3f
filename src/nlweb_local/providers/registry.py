"""One engine registry: an engine's name → a factory `from_settings(d: DeploymentSettings, environ) -> Provider`.

The built-in engines register through the same `EngineRegistry.register` a plugin's engines go through
(`BUILTIN_ENGINES` below). A factory may be given as `"module:attribute"` (or `"module"`, meaning its
`from_settings`) and is imported only when a deployment uses that engine, so an engine's optional
dependencies (torch/transformers, llama-cpp-python, ...) load only then.

A third-party package adds engines through the entry-point group `nlweb_local.engines`:

    [project.entry-points."nlweb_local.engines"]
    my_engine = "my_package.engine:from_settings"

The installed entry points are read once per registry, the first time a name no built-in has is looked
up or the list of engines is asked for. A plugin cannot replace an engine already registered (its entry
point is skipped with a warning). The configuration names engines as plain strings; an unknown one is
reported when its deployment is built, naming the deployment and every known engine.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
from typing import Callable, Mapping

from ..config.settings import DeploymentSettings
from ..core.errors import BadRequestError
from .base import Provider

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "nlweb_local.engines"
Factory = Callable[[DeploymentSettings, Mapping[str, str]], Provider]

_OPENAI_COMPAT = "nlweb_local.providers.openai_compat:from_settings"
BUILTIN_ENGINES: dict[str, str] = {
    "llama_cpp": "nlweb_local.providers.llama_cpp:from_settings",
    "openai": _OPENAI_COMPAT,
    "azure_openai": _OPENAI_COMPAT,
    "vllm": _OPENAI_COMPAT,
    "llama_server": _OPENAI_COMPAT,
    "llama_cpp_server": _OPENAI_COMPAT,
    "ollama_openai": _OPENAI_COMPAT,
    "tgi_openai": _OPENAI_COMPAT,
    "ollama": "nlweb_local.providers.ollama:from_settings",
    "tgi": "nlweb_local.providers.tgi:from_settings",
    "transformers": "nlweb_local.providers.transformers_batched:from_settings",
    "anthropic": "nlweb_local.providers.anthropic:from_settings",
    "sentence_transformers": "nlweb_local.providers.sentence_transformers:from_settings",
}


class EngineRegistry:
    """Engine names and their factories. `entry_point_group=None`: no plugins, only what is registered."""

    def __init__(self, *, entry_point_group: str | None = ENTRY_POINT_GROUP):
        self._factories: dict[str, Factory | str] = {}
        self._group = entry_point_group
        self._plugins_read = entry_point_group is None

    def register(self, name: str, factory: Factory | str) -> None:
        """Add an engine: `factory` is a callable `(d, environ) -> Provider` or `"module:attribute"`
        (`"module"`: its `from_settings`), imported on first use. A name may be registered once."""
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"an engine name must be a non-empty string, not {name!r}")
        if not (callable(factory) or (isinstance(factory, str) and factory.strip())):
            raise TypeError(f"engine {name!r}: the factory must be a callable or 'module:attribute', not {factory!r}")
        if name in self._factories:
            raise ValueError(f"engine {name!r} is already registered ({self._describe(name)})")
        self._factories[name] = factory

    def names(self) -> list[str]:
        """Every engine known, the installed plugins' included, sorted."""
        self._read_plugins()
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        if name not in self._factories:
            self._read_plugins()
        return name in self._factories

    def lookup(self, name: str) -> Factory:
        """The factory of `name`, imported now if it was registered by its import path."""
        if name not in self:
            raise BadRequestError(f"unknown engine {name!r}; known engines: {', '.join(self.names())} "
                                  f"(a package adds engines through the entry-point group {ENTRY_POINT_GROUP!r})")
        target = self._factories[name]
        if isinstance(target, str):
            target = self._factories[name] = _import_factory(name, target)
        return target

    def build(self, d: DeploymentSettings, environ: Mapping[str, str] | None = None) -> Provider:
        """The provider of one deployment; `environ` (default: the process's) holds API keys and the like."""
        if d.engine not in self:
            raise BadRequestError(f"deployment {d.name!r}: unknown engine {d.engine!r}; known engines: "
                                  f"{', '.join(self.names())} (a package adds engines through the entry-point group "
                                  f"{ENTRY_POINT_GROUP!r})", deployment=d.name)
        return self.lookup(d.engine)(d, os.environ if environ is None else environ)

    def _describe(self, name: str) -> str:
        target = self._factories[name]
        return target if isinstance(target, str) else getattr(target, "__qualname__", repr(target))

    def _read_plugins(self) -> None:
        if self._plugins_read:
            return
        self._plugins_read = True
        for ep in importlib.metadata.entry_points(group=self._group):
            if ep.name in self._factories:
                dist = getattr(ep.dist, "name", "?")
                log.warning("engine %r from the package %s is ignored: that name is already registered (%s)",
                            ep.name, dist, self._describe(ep.name))
                continue
            self._factories[ep.name] = f"{ep.module}:{ep.attr}" if ep.attr else ep.module


def _import_factory(name: str, target: str) -> Factory:
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name.strip())  # an ImportError names what is missing: let it through
    obj: object = module
    for part in (attr.strip() or "from_settings").split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise BadRequestError(f"engine {name!r}: {target!r} names nothing ({module_name} has no {attr or 'from_settings'})")
    if not callable(obj):
        raise BadRequestError(f"engine {name!r}: {target!r} is not callable")
    return obj  # type: ignore[return-value]


def default_registry() -> EngineRegistry:
    """The built-in engines, registered as a plugin registers its own, plus (read on first need) the plugins'."""
    registry = EngineRegistry()
    for name, factory in BUILTIN_ENGINES.items():
        registry.register(name, factory)
    return registry


ENGINES = default_registry()  # this process's engines: the installed packages are a process-wide fact


def build_provider(d: DeploymentSettings, environ: Mapping[str, str] | None = None, *,
                   registry: EngineRegistry | None = None) -> Provider:
    """The provider of deployment `d`, from `registry` (default: `ENGINES`)."""
    return (ENGINES if registry is None else registry).build(d, environ)
