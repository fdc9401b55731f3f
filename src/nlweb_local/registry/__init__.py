"""The model registry: models and their versions, aliases that point at versions, and every alias change.

    records.py    ModelVersion, Alias, AliasChange (and NAME@VERSION keys)
    store.py      the tables, migrations and SQL both backends run (the `RegistryStore` port)
    backends.py   SQLite (WAL, the default) and PostgreSQL (registry.database_url)
    catalog.py    ModelRegistry: the rules (hash checked, engine known, alias targets exist), on the store
    aliases.py    RegistryAliases: the router's in-memory view of the aliases, reloaded on change
    canary.py     canary releases (stages, decisions, counts in the registry database); guards.py their
                  guards; canary_split.py the wrapper that splits an alias's traffic; canary_watch.py the
                  periodic stage decision
    artifacts.py  a model file's SHA-256 and the quantisation its name states

A deployment serves a registered version (`llm.deployments[].serves: NAME@VERSION`); a request whose
`model` is a registry alias goes to the deployments serving the version the alias points at now.
"""
from __future__ import annotations

from typing import Any, Callable

from .aliases import RegistryAliases
from .backends import PostgresRegistryStore, SqliteRegistryStore, open_store
from .catalog import ModelRegistry
from .records import Alias, AliasChange, ModelVersion, split_key, version_key
from .store import RegistryStore, RegistryStoreError

__all__ = ["Alias", "AliasChange", "ModelRegistry", "ModelVersion", "PostgresRegistryStore", "RegistryAliases",
           "RegistryStore", "RegistryStoreError", "SqliteRegistryStore", "build_registry", "open_store",
           "split_key", "version_key"]


def build_registry(settings: Any, *, engines: Any = None, clock: Callable[[], float] | None = None) -> ModelRegistry:
    """The registry `settings.registry` names, with the rules the configuration implies: the engines the
    engine registry knows, alias names that are not deployments or groups, and the versions the configured
    deployments serve."""
    import time

    if engines is None:
        from ..providers.registry import ENGINES

        engines = ENGINES.names()
    llm = settings.llm
    deployments = llm.all_deployments()
    store = open_store(settings.registry.database_url, settings.data_path)
    registry = ModelRegistry(store, engines=engines, reserved=[*(d.name for d in deployments), *llm.groups],
                             served={d.serves for d in deployments if d.serves}, clock=clock or time.time)
    from .canary import CanaryStore

    try:
        registry.canaries = CanaryStore(store, clock=clock or time.time)
    except BaseException:
        store.close()
        raise
    return registry
