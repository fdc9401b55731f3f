"""`ModelRegistry`: the rules over the registry store — what may be registered and where an alias may point.

    register(name, version, file=PATH | url=URL + sha256, engine, ...)   hash checked, engine known, immutable
    set_alias(alias, name, version)       create or move; the version must exist (and be served, when known)
    promote(name, version, alias)         move an alias that exists (a release)
    rollback(alias)                       back to the version before the current one, in one transaction
    history(alias), versions(name), aliases()

Every check that can fail runs before anything is written, or inside the store's transaction: a refused
change leaves the registry as it was. After each change `on_change()` runs (the server's cached alias
view reloads at once; other processes see the change by polling the registry's version).
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Callable, Collection

from ..config.settings import DeploymentSettings
from ..core.errors import BadRequestError, NotFoundError
from .artifacts import checked_sha256, quantisation_of, sha256_file
from .records import Alias, AliasChange, ModelVersion, version_key
from .store import RegistryStore

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+-]{0,127}$")  # no '@': NAME@VERSION must split one way


def checked_name(text: str, what: str) -> str:
    if not isinstance(text, str) or not _NAME.match(text):
        raise BadRequestError(f"{what} {text!r} must be 1-128 letters, digits or . _ : / + - (no '@' or spaces), "
                              "starting with a letter or digit")
    return text


class ModelRegistry:
    def __init__(self, store: RegistryStore, *, engines: Collection[str], reserved: Collection[str] = (),
                 served: Collection[str] | None = None, clock: Callable[[], float] = time.time,
                 on_change: Callable[[], Any] | None = None):
        """`engines`: the engine names a version may name (the engine registry's); `reserved`: names an alias
        may not take (deployments, llm.groups, `auto`); `served`: the NAME@VERSION keys the configured
        deployments serve (None: unknown, not checked)."""
        self.store = store
        self._engines = frozenset(engines)
        self._reserved = frozenset(reserved) | {"auto"}
        self._served = frozenset(served) if served is not None else None
        self._clock = clock
        self.on_change = on_change
        self.view: Any = None  # the server's RegistryAliases over this store (set by the composition root)
        self.canaries: Any = None  # canary.CanaryStore over the same database (set by build_registry)

    # -- reads --------------------------------------------------------------------------------------
    def versions(self, name: str | None = None) -> list[ModelVersion]:
        return self.store.versions(name)

    def aliases(self) -> list[Alias]:
        return self.store.aliases()

    def history(self, alias: str | None = None, limit: int | None = None) -> list[AliasChange]:
        return self.store.history(alias, limit)

    # -- changes ------------------------------------------------------------------------------------
    def register(self, name: str, version: str, *, file: str | Path | None = None, url: str | None = None,
                 sha256: str | None = None, engine: str = "llama_cpp", quantisation: str | None = None,
                 context_window: int | None = None, parameters: dict[str, Any] | None = None, notes: str = "",
                 by: str, progress: Callable[[int], None] | None = None) -> ModelVersion:
        """Register a file (hashed here; `sha256`, when given, must match) or a URL (its `sha256` required)."""
        checked_name(name, "model name")
        checked_name(version, "version")
        if engine not in self._engines:
            raise BadRequestError(f"engine {engine!r} is not configured here (engines: {', '.join(sorted(self._engines))}); "
                                  "pass --engine with one of them, or install the plugin that adds it")
        if context_window is not None and context_window < 1:
            raise BadRequestError(f"context window must be a positive number of tokens, got {context_window}")
        if parameters is not None and not isinstance(parameters, dict):
            raise BadRequestError("parameters must be a JSON object (sampling defaults, chat_template)")
        if (file is None) == (url is None):
            raise BadRequestError("register needs exactly one of --file PATH or --url URL")
        expected = checked_sha256(sha256) if sha256 else None
        if file is not None:
            path = Path(file).expanduser()
            if not path.is_file():
                raise BadRequestError(f"model file {path} does not exist (or is not a file)")
            artifact = str(path.resolve())
            digest = sha256_file(path, progress)
            if expected is not None and digest != expected:
                raise BadRequestError(f"{path} has SHA-256 {digest}, not the {expected} given: the file is not the "
                                      "one you meant (or it is damaged); nothing was registered")
        else:
            assert url is not None
            if not re.match(r"^[a-z][a-z0-9+.-]*://", url):
                raise BadRequestError(f"--url must be a URL (https://..., s3://...), got {url[:80]!r}")
            if expected is None:
                raise BadRequestError("a model registered by URL needs --sha256 (the file is not downloaded to hash it)")
            artifact, digest = url, expected
        v = ModelVersion(name, version, engine, artifact, digest,
                         quantisation if quantisation is not None else quantisation_of(artifact), context_window,
                         dict(parameters or {}), notes, self._clock(), by)
        self.store.add_version(v)
        self._changed()
        return v

    def set_alias(self, alias: str, name: str, version: str, *, by: str, force: bool = False) -> AliasChange | None:
        """Create or move `alias`; None when it already pointed there. `force`: even when no configured
        deployment serves that version (requests for the alias fail until one does)."""
        return self._move(alias, name, version, by=by, action="set", must_exist=False, force=force)

    def promote(self, name: str, version: str, *, alias: str, by: str, force: bool = False) -> AliasChange | None:
        """Move an existing alias to NAME@VERSION (a release); see `set_alias`."""
        return self._move(alias, name, version, by=by, action="promote", must_exist=True, force=force)

    def rollback(self, alias: str, *, by: str) -> AliasChange:
        """During a canary on `alias`: stop it (its traffic returns to the baseline at once); else move the
        alias back to the version before."""
        stopped = self.canaries.stop(checked_name(alias, "alias"), by=by) if self.canaries is not None else None
        if stopped is not None:
            self._changed()
            return stopped[1]
        change = self.store.rollback(checked_name(alias, "alias"), at=self._clock(), by=by)
        self._changed()
        return change

    def _move(self, alias: str, name: str, version: str, *, by: str, action: str, must_exist: bool,
              force: bool) -> AliasChange | None:
        checked_name(alias, "alias")
        if alias in self._reserved:
            raise BadRequestError(f"alias {alias!r} is already a deployment, an llm.groups entry or 'auto': "
                                  "pick another name")
        if self.canaries is not None and (c := self.canaries.running_on(alias)) is not None:
            raise BadRequestError(f"a canary of {c.key} is running on {alias}: let it finish (nlweb-local models canary "
                                  f"status), or stop it with nlweb-local models rollback {alias}")
        if not force:
            self.check_served(name, version, alias)
        change = self.store.set_alias(alias, name, version, action=action, at=self._clock(), by=by,
                                      must_exist=must_exist)
        if change is not None:
            self._changed()
        return change

    def check_served(self, name: str, version: str, alias: str) -> None:
        """A configured deployment serves NAME@VERSION (when the configuration is known)."""
        key = version_key(name, version)
        if self._served is not None and key not in self._served:
            if self.store.get_version(name, version) is None:  # (say the plainer fault first)
                known = [v.version for v in self.store.versions(name)]
                raise NotFoundError(f"{key} is not registered" + (f" (versions of {name}: {', '.join(known)})" if known
                                                                  else f" (nlweb-local models register {name} {version} "
                                                                  "--file PATH)"))
            raise BadRequestError(f"no configured deployment serves {key}: add one to llm.deployments with "
                                  f"`serves: {key}` (and restart), or pass --force to point {alias} at it anyway")

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def deployment(self, d: DeploymentSettings) -> DeploymentSettings:
        """Deployment `d` checked against the version it `serves`: registered, on the same engine; with no
        `model` of its own it gets the version's artifact (the GGUF path for llama.cpp)."""
        if not d.serves:
            return d
        name, _, version = d.serves.partition("@")
        v = self.store.get_version(name, version)
        if v is None:
            raise BadRequestError(f"deployment {d.name!r} serves {d.serves}, which is not registered: run "
                                  f"nlweb-local models register {name} {version} --file PATH (or fix `serves`)")
        if v.engine != d.engine:
            raise BadRequestError(f"deployment {d.name!r} runs on {d.engine}, but {d.serves} was registered for "
                                  f"{v.engine}: use engine {v.engine}, or register the version for {d.engine}")
        return d if d.model else d.model_copy(update={"model": v.artifact})

    def close(self) -> None:
        self.store.close()
